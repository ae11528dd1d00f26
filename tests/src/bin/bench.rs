//! `make bench`: ecr-replicator side by side with `skopeo copy` on two fresh local registries,
//! each case several runs into a fresh target repository, medians and ratios printed; plus the raw
//! limit for the large layer (one `curl` monolithic upload of the same blob).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use e2e::image::{Format, ImageBuilder, Pusher, TestImage};
use e2e::registry::TestRegistry;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;

struct Measured {
    seconds: f64,
    max_rss_kib: u64,
}

/// Runs a command to completion, returning wall time and the child's peak RSS (from wait4).
// The child is reaped by wait4, which std does not know about.
#[allow(unsafe_code, clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(waited, pid, "wait4 failed");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr {
            std::io::Read::read_to_string(&mut e, &mut stderr).ok();
        }
        panic!("{cmd:?} failed: {stderr}");
    }
    Measured {
        seconds,
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Tools {
    ours: PathBuf,
    src: String,
}

impl Tools {
    fn ours(&self, from: &str, dst: &str, to: &str) -> Measured {
        run_measured(
            Command::new(&self.ours)
                .args([
                    "copy",
                    &format!("{}/{from}", self.src),
                    &format!("{dst}/{to}"),
                ])
                .args([
                    "--insecure-registry",
                    &self.src,
                    "--insecure-registry",
                    dst,
                    "--output",
                    "json",
                ]),
        )
    }

    fn skopeo(&self, from: &str, dst: &str, to: &str) -> Measured {
        run_measured(Command::new("skopeo").args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--src-no-creds",
            "--dest-no-creds",
            &format!("docker://{}/{from}", self.src),
            &format!("docker://{dst}/{to}"),
        ]))
    }
}

struct Row {
    case: &'static str,
    ours: f64,
    skopeo: f64,
    rss_mib: f64,
    goal: &'static str,
}

/// Target registries of one run: one for each tool.
struct Targets {
    ours: TestRegistry,
    skopeo: TestRegistry,
}

/// Runs a case `runs` times. Each run copies into fresh, empty target registries (one per tool),
/// so neither tool can reuse blobs from an earlier run (skopeo would mount them, remembering
/// where it pushed before). With `reuse`, every run copies again into those same registries.
fn compare(
    tools: &Tools,
    case: &'static str,
    repo: &str,
    runs: usize,
    reuse: Option<&Targets>,
    goal: &'static str,
) -> (Row, Option<Targets>) {
    let (mut ours, mut theirs, mut rss) = (Vec::new(), Vec::new(), 0u64);
    let mut last = None;
    let image = format!("{repo}:v1");
    for run in 0..runs {
        let fresh = reuse.is_none().then(|| Targets {
            ours: TestRegistry::start(),
            skopeo: TestRegistry::start(),
        });
        let targets = reuse.or(fresh.as_ref()).expect("fresh or reused targets");
        // Alternate who goes first so caches favour neither.
        let (o, s) = if run % 2 == 0 {
            let o = tools.ours(&image, &targets.ours.host, &image);
            (o, tools.skopeo(&image, &targets.skopeo.host, &image))
        } else {
            let s = tools.skopeo(&image, &targets.skopeo.host, &image);
            (tools.ours(&image, &targets.ours.host, &image), s)
        };
        eprintln!(
            "  {case} run {run}: ecr-replicator {:.2}s ({} MiB), skopeo {:.2}s",
            o.seconds,
            o.max_rss_kib / 1024,
            s.seconds
        );
        ours.push(o.seconds);
        theirs.push(s.seconds);
        rss = rss.max(o.max_rss_kib);
        if fresh.is_some() {
            last = fresh;
        }
    }
    let row = Row {
        case,
        ours: median(ours),
        skopeo: median(theirs),
        rss_mib: rss as f64 / 1024.0,
        goal,
    };
    (row, last)
}

/// One `curl` monolithic PUT of the blob from a file: the registry's raw ingest limit.
async fn raw_upload(blob: &e2e::image::Blob, dir: &Path, runs: usize) -> f64 {
    let file = dir.join("blob.bin");
    {
        let mut out = tokio::fs::File::create(&file).await.unwrap();
        let mut stream = blob.data.stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.unwrap()).await.unwrap();
        }
        out.flush().await.unwrap();
    }
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    for run in 0..runs {
        let target = TestRegistry::start();
        let registry = &target.host;
        let resp = http
            .post(format!("http://{registry}/v2/raw/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let url = format!("{location}&digest={}", blob.digest);
        let m = run_measured(Command::new("curl").args([
            "-sS",
            "-f",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            file.to_str().unwrap(),
            &url,
        ]));
        eprintln!("  raw curl upload run {run}: {:.2}s", m.seconds);
        times.push(m.seconds);
    }
    std::fs::remove_file(&file).ok();
    median(times)
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let big: u64 = std::env::var("BENCH_BIG_MIB")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2048)
        * MIB;
    let ours = std::env::current_exe()
        .unwrap()
        .with_file_name("ecr-replicator");
    assert!(
        ours.exists(),
        "build the CLI first: cargo build --release -p ecr-replicator"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let src = TestRegistry::start();
    let scratch = tempfile::tempdir().unwrap();

    eprintln!("seeding the source registry ...");
    let mut many = ImageBuilder::new(Format::Oci);
    for i in 0..32 {
        many = many.big_layer(1000 + i, 16 * MIB);
    }
    let many = many.build();
    let large = ImageBuilder::new(Format::Oci).big_layer(2000, big).build();
    let index = multi_arch_big();
    let pusher = Pusher::new(&src.host, None);
    rt.block_on(async {
        pusher.push("many", "v1", &many).await;
        pusher.push("large", "v1", &large).await;
        pusher.push("index", "v1", &index).await;
    });

    let tools = Tools {
        ours,
        src: src.host.clone(),
    };
    let (a, a_targets) = compare(
        &tools,
        "(a) 32 layers x 16 MiB",
        "many",
        runs,
        None,
        "<= 0.66",
    );
    let (b, _) = compare(
        &tools,
        "(b) one large layer",
        "large",
        runs,
        None,
        "see raw",
    );
    let (c, _) = compare(&tools, "(c) 4-platform index", "index", runs, None, "-");
    let (d, _) = compare(
        &tools,
        "(d) second copy, all present",
        "many",
        runs,
        a_targets.as_ref(),
        "<= 0.10",
    );
    let rows = [a, b, c, d];
    let raw = rt.block_on(raw_upload(&large.blobs[1], scratch.path(), runs));

    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("\nBench {date}, {cores} cores, median of {runs} runs, loopback registries (distribution 2.8), large layer {} MiB", big / MIB);
    println!("| case | ecr-replicator | skopeo | ratio | goal | peak RSS (ours) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} s | {:.2} s | {:.2} | {} | {:.0} MiB |",
            r.case,
            r.ours,
            r.skopeo,
            r.ours / r.skopeo,
            r.goal,
            r.rss_mib
        );
    }
    let b = &rows[1];
    let size_mib = big as f64 / MIB as f64;
    println!(
        "| (b) raw limit: one curl PUT of the same blob | {:.2} s | | ours/raw throughput {:.2} | >= 0.90 | |",
        raw,
        raw / b.ours
    );
    println!(
        "\nthroughput (b): ecr-replicator {:.0} MiB/s, skopeo {:.0} MiB/s, raw upload {:.0} MiB/s",
        size_mib / b.ours,
        size_mib / b.skopeo,
        size_mib / raw
    );
}

/// A 4-platform index, 2 layers of 32 MiB per platform (generated, never held whole).
fn multi_arch_big() -> TestImage {
    let children = ["amd64", "arm64", "ppc64le", "s390x"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            ImageBuilder::new(Format::Oci)
                .arch(arch)
                .big_layer(3000 + i as u64 * 10, 32 * MIB)
                .big_layer(3001 + i as u64 * 10, 32 * MIB)
                .build()
        })
        .collect();
    e2e::image::index(children)
}
