//! `make bench`: ecr-replicator side by side with `skopeo copy` on two fresh local registries,
//! each case several runs into a fresh target repository, medians and ratios printed; plus the raw
//! limit for the large layer (one `curl` monolithic upload of the same blob); plus whole
//! registries: `ecr-replicator sync` against `skopeo sync` (first sync, then the no-op re-sync),
//! failed images counted from our report; plus OCI image layouts: an export to and an import
//! from an `oci:` directory against `skopeo copy docker://... oci:DIR` and back, and a layout
//! export job of a whole registry against one `skopeo copy` per image.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::image::{Format, ImageBuilder, Pusher, TestImage};
use e2e::measure::{run_quiet, Measured};
use e2e::registry::TestRegistry;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

const MIB: u64 = 1 << 20;

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
        run_quiet(
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
        run_quiet(Command::new("skopeo").args([
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

/// A sync case: `ecr-replicator sync` of a job, `skopeo sync` of the same repositories.
struct SyncCase {
    name: &'static str,
    /// Repositories and tags per repository in the source.
    repositories: Vec<String>,
    job: PathBuf,
    yaml: PathBuf,
}

impl Tools {
    /// `ecr-replicator sync` into `dst`; returns the run and the failed images of its report.
    fn ours_sync(&self, case: &SyncCase, dst: &str) -> (Measured, u64) {
        let job = std::fs::read_to_string(&case.job)
            .unwrap()
            .replace("DEST", dst);
        let file = case
            .job
            .with_extension(format!("{}.json", dst.replace(':', "_")));
        std::fs::write(&file, job).unwrap();
        let out = case.job.with_extension("out.json");
        let m = run_quiet(
            Command::new("sh").arg("-c").arg(format!(
                "{} sync --input {} --insecure-registry {} --insecure-registry {dst} --output json > {}",
                self.ours.display(),
                file.display(),
                self.src,
                out.display()
            )),
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        (m, report["report"]["failed"].as_u64().unwrap_or(u64::MAX))
    }

    /// `skopeo sync` of the case's repositories (all tags) into `dst`.
    fn skopeo_sync(&self, case: &SyncCase, dst: &str) -> Measured {
        run_quiet(Command::new("skopeo").args([
            "sync",
            "--all",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
            "--dest-no-creds",
            case.yaml.to_str().unwrap(),
            dst,
        ]))
    }
}

/// Seeds `repositories` x `tags` small images sharing one base layer (as services built on one
/// base image do) and writes the job and skopeo's YAML for them.
async fn sync_case(
    src: &TestRegistry,
    dir: &Path,
    name: &'static str,
    prefix: &str,
    repositories: usize,
    tags: usize,
) -> SyncCase {
    let pusher = Pusher::new(&src.host, None);
    let names: Vec<String> = (0..repositories)
        .map(|r| format!("{prefix}{r:02}"))
        .collect();
    // Repositories in parallel, each one's images in order: concurrent uploads of one blob to
    // one repository race in distribution (a manifest can meet "blob unknown" while another
    // upload of its blob commits), which is what the copy engine avoids too.
    futures::stream::iter(names.iter().enumerate())
        .for_each_concurrent(8, |(r, repository)| {
            let pusher = &pusher;
            async move {
                for t in 0..tags {
                    let image = ImageBuilder::new(Format::Oci)
                        .layer(7, 2 << 20)
                        .layer(10_000 + (r * tags + t) as u64, 64 << 10)
                        .build();
                    pusher.push(repository, &format!("v{t}"), &image).await;
                }
            }
        })
        .await;
    let job = dir.join(format!("{prefix}job.json"));
    std::fs::write(
        &job,
        serde_json::json!({
            "source": {"registry": src.host, "insecure": true},
            "destinations": [{"registry": "DEST", "insecure": true}],
            "repositories": {"include": [format!("{prefix}*")]},
            "referrers": false
        })
        .to_string(),
    )
    .unwrap();
    let yaml = dir.join(format!("{prefix}skopeo.yaml"));
    let images: String = names.iter().map(|n| format!("    {n}: []\n")).collect();
    std::fs::write(
        &yaml,
        format!("{}:\n  tls-verify: false\n  images:\n{images}", src.host),
    )
    .unwrap();
    SyncCase {
        name,
        repositories: names,
        job,
        yaml,
    }
}

/// The two sync cases: 20 repositories x 10 tags, 1 repository x 500 tags.
async fn sync_cases(src: &TestRegistry, dir: &Path) -> (SyncCase, SyncCase) {
    eprintln!("seeding the sync cases ...");
    (
        sync_case(
            src,
            dir,
            "(e) 20 repositories x 10 tags: first sync",
            "svc",
            20,
            10,
        )
        .await,
        sync_case(
            src,
            dir,
            "(g) 1 repository x 500 tags: first sync",
            "big",
            1,
            500,
        )
        .await,
    )
}

/// First sync into fresh registries (one per tool), then the no-op re-sync into the same ones;
/// medians over `runs`. Rows for both, and the failed images of every run of ours.
fn compare_sync(tools: &Tools, case: &SyncCase, runs: usize) -> (Row, Row, u64) {
    let (mut first, mut first_s, mut again, mut again_s) = (vec![], vec![], vec![], vec![]);
    let (mut rss, mut failed) = (0u64, 0u64);
    for run in 0..runs {
        let (ours_dst, skopeo_dst) = (TestRegistry::start(), TestRegistry::start());
        let (o, f) = tools.ours_sync(case, &ours_dst.host);
        let s = tools.skopeo_sync(case, &skopeo_dst.host);
        let (o2, f2) = tools.ours_sync(case, &ours_dst.host);
        let s2 = tools.skopeo_sync(case, &skopeo_dst.host);
        eprintln!(
            "  {} run {run}: first sync {:.2}s vs skopeo {:.2}s; no-op {:.2}s vs skopeo {:.2}s; failed {f}+{f2}",
            case.name, o.seconds, s.seconds, o2.seconds, s2.seconds
        );
        failed += f + f2;
        rss = rss.max(o.max_rss_kib).max(o2.max_rss_kib);
        first.push(o.seconds);
        first_s.push(s.seconds);
        again.push(o2.seconds);
        again_s.push(s2.seconds);
    }
    let row = |case, ours, skopeo, goal| Row {
        case,
        ours: median(ours),
        skopeo: median(skopeo),
        rss_mib: rss as f64 / 1024.0,
        goal,
    };
    (
        row(case.name, first, first_s, "<= 0.33"),
        row(
            if case.repositories.len() > 1 {
                "(f) 20 repositories x 10 tags: no-op re-sync"
            } else {
                "(h) 1 repository x 500 tags: no-op re-sync"
            },
            again,
            again_s,
            "<= 0.10",
        ),
        failed,
    )
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

impl Tools {
    /// `ecr-replicator copy` between the source registry's `repo:v1` and `layout` (an
    /// `oci:DIR:REF`), either way: an export without `import_to`, else an import into it.
    fn ours_layout(&self, repo: &str, layout: &str, import_to: Option<&str>) -> Measured {
        let source = format!("{}/{repo}:v1", self.src);
        let (from, to, insecure) = match import_to {
            None => (source, layout.to_string(), self.src.clone()),
            Some(dst) => (
                layout.to_string(),
                format!("{dst}/{repo}:v1"),
                dst.to_string(),
            ),
        };
        run_quiet(Command::new(&self.ours).args([
            "copy",
            &from,
            &to,
            "--insecure-registry",
            &insecure,
            "--output",
            "json",
        ]))
    }

    /// `skopeo copy --all` between the source registry's `repo:v1` and `layout`, either way.
    fn skopeo_layout(&self, repo: &str, layout: &str, import_to: Option<&str>) -> Measured {
        let (from, to) = match import_to {
            None => (
                format!("docker://{}/{repo}:v1", self.src),
                layout.to_string(),
            ),
            Some(dst) => (layout.to_string(), format!("docker://{dst}/{repo}:v1")),
        };
        run_quiet(Command::new("skopeo").args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--src-no-creds",
            "--dest-no-creds",
            &from,
            &to,
        ]))
    }
}

/// An OCI layout case: each run exports `repo:v1` into a fresh directory per tool (`oci:DIR`
/// for ours, `oci:DIR:REF` for skopeo), then imports each tool's own layout into a fresh
/// registry per tool. Rows for the export and the import.
fn compare_layout(
    tools: &Tools,
    (export_case, import_case): (&'static str, &'static str),
    repo: &str,
    runs: usize,
    scratch: &Path,
) -> (Row, Row) {
    let (mut export, mut export_s, mut import, mut import_s) = (vec![], vec![], vec![], vec![]);
    let (mut rss_export, mut rss_import) = (0u64, 0u64);
    for run in 0..runs {
        let ours_dir = tempfile::tempdir_in(scratch).unwrap();
        let skopeo_dir = tempfile::tempdir_in(scratch).unwrap();
        let ours_layout = format!("oci:{}", ours_dir.path().display());
        let skopeo_layout = format!("oci:{}:{repo}:v1", skopeo_dir.path().display());
        let o = tools.ours_layout(repo, &ours_layout, None);
        let s = tools.skopeo_layout(repo, &skopeo_layout, None);
        let (ours_dst, skopeo_dst) = (TestRegistry::start(), TestRegistry::start());
        let ours_ref = format!("{ours_layout}:{repo}:v1");
        let oi = tools.ours_layout(repo, &ours_ref, Some(&ours_dst.host));
        let si = tools.skopeo_layout(repo, &skopeo_layout, Some(&skopeo_dst.host));
        eprintln!(
            "  {repo} layout run {run}: export {:.2}s vs skopeo {:.2}s; import {:.2}s vs skopeo {:.2}s",
            o.seconds, s.seconds, oi.seconds, si.seconds
        );
        rss_export = rss_export.max(o.max_rss_kib);
        rss_import = rss_import.max(oi.max_rss_kib);
        export.push(o.seconds);
        export_s.push(s.seconds);
        import.push(oi.seconds);
        import_s.push(si.seconds);
    }
    let row = |case, ours, skopeo, rss: u64| Row {
        case,
        ours: median(ours),
        skopeo: median(skopeo),
        rss_mib: rss as f64 / 1024.0,
        goal: "-",
    };
    (
        row(export_case, export, export_s, rss_export),
        row(import_case, import, import_s, rss_import),
    )
}

/// The layout rows: the 32-layer image and the 4-platform index, each exported and imported.
fn layout_rows(tools: &Tools, runs: usize, scratch: &Path) -> Vec<Row> {
    let (i, j) = compare_layout(
        tools,
        (
            "(i) export 32 layers x 16 MiB to oci:DIR",
            "(j) import 32 layers x 16 MiB from oci:DIR",
        ),
        "many",
        runs,
        scratch,
    );
    let (k, l) = compare_layout(
        tools,
        (
            "(k) export the 4-platform index to oci:DIR",
            "(l) import the 4-platform index from oci:DIR",
        ),
        "index",
        runs,
        scratch,
    );
    vec![i, j, k, l]
}

/// (m) A layout export job of a whole sync case (every repository and tag) into a fresh
/// `oci:DIR`, against what skopeo offers for it: one `skopeo copy` per image into one `oci:DIR`
/// (skopeo sync writes no OCI layout).
fn compare_layout_job(
    tools: &Tools,
    case: &SyncCase,
    tags: usize,
    runs: usize,
    scratch: &Path,
) -> Row {
    let (mut ours, mut theirs, mut rss) = (vec![], vec![], 0u64);
    for run in 0..runs {
        let (ours_dir, skopeo_dir) = (
            tempfile::tempdir_in(scratch).unwrap(),
            tempfile::tempdir_in(scratch).unwrap(),
        );
        let job = ours_dir.path().with_extension("job.json");
        let include: Vec<String> = case.repositories.clone();
        std::fs::write(
            &job,
            serde_json::json!({
                "source": {"registry": tools.src, "insecure": true},
                "destinations": [{"layout": ours_dir.path().display().to_string()}],
                "repositories": {"include": include},
            })
            .to_string(),
        )
        .unwrap();
        let o = run_quiet(Command::new(&tools.ours).args([
            "sync",
            "--input",
            job.to_str().unwrap(),
            "--insecure-registry",
            &tools.src,
            "--output",
            "json",
        ]));
        let copies: String = case
            .repositories
            .iter()
            .flat_map(|r| (0..tags).map(move |t| (r, t)))
            .map(|(r, t)| {
                format!(
                    "skopeo copy -q --src-tls-verify=false docker://{}/{r}:v{t} oci:{}:{r}:v{t}\n",
                    tools.src,
                    skopeo_dir.path().display()
                )
            })
            .collect();
        let s = run_quiet(Command::new("sh").args(["-e", "-c", &copies]));
        eprintln!(
            "  layout job run {run}: {} images, export job {:.2}s vs skopeo copies {:.2}s",
            case.repositories.len() * tags,
            o.seconds,
            s.seconds
        );
        rss = rss.max(o.max_rss_kib);
        ours.push(o.seconds);
        theirs.push(s.seconds);
    }
    Row {
        case: "(m) export job, 20 repositories x 10 tags to oci:DIR (skopeo: a copy per image)",
        ours: median(ours),
        skopeo: median(theirs),
        rss_mib: rss as f64 / 1024.0,
        goal: "-",
    }
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
        let m = run_quiet(Command::new("curl").args([
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
    let only_sync = std::env::var("BENCH_ONLY").as_deref() == Ok("sync");
    let mut many = ImageBuilder::new(Format::Oci);
    for i in 0..32 {
        many = many.big_layer(1000 + i, 16 * MIB);
    }
    let many = many.build();
    let large = ImageBuilder::new(Format::Oci).big_layer(2000, big).build();
    let index = multi_arch_big();
    let pusher = Pusher::new(&src.host, None);
    if !only_sync {
        rt.block_on(async {
            pusher.push("many", "v1", &many).await;
            if std::env::var("BENCH_ONLY").as_deref() != Ok("layout") {
                pusher.push("large", "v1", &large).await;
            }
            pusher.push("index", "v1", &index).await;
        });
    }

    let tools = Tools {
        ours,
        src: src.host.clone(),
    };
    if std::env::var("BENCH_ONLY").as_deref() == Ok("layout") {
        let mut rows = layout_rows(&tools, runs, scratch.path());
        let wide = rt.block_on(sync_case(
            &src,
            scratch.path(),
            "(e) 20 repositories x 10 tags: first sync",
            "svc",
            20,
            10,
        ));
        rows.push(compare_layout_job(&tools, &wide, 10, runs, scratch.path()));
        print_rows(&rows, runs, big);
        return;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sync") {
        let (wide, deep) = rt.block_on(sync_cases(&src, scratch.path()));
        let (e, f, _) = compare_sync(&tools, &wide, runs);
        let (g, h, _) = compare_sync(&tools, &deep, runs);
        for r in [e, f, g, h] {
            println!(
                "| {} | {:.2} s | {:.2} s | {:.2} | {} |",
                r.case,
                r.ours,
                r.skopeo,
                r.ours / r.skopeo,
                r.goal
            );
        }
        return;
    }
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
    let (wide, deep) = rt.block_on(sync_cases(&src, scratch.path()));
    let (e, f, wide_failed) = compare_sync(&tools, &wide, runs);
    let (g, h, deep_failed) = compare_sync(&tools, &deep, runs);
    let mut rows = vec![a, b, c, d, e, f, g, h];
    rows.extend(layout_rows(&tools, runs, scratch.path()));
    rows.push(compare_layout_job(&tools, &wide, 10, runs, scratch.path()));
    let raw = rt.block_on(raw_upload(&large.blobs[1], scratch.path(), runs));

    print_rows(&rows, runs, big);
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
    println!(
        "sync cases: failed images in all runs of ours: {} (goal 0)",
        wide_failed + deep_failed
    );
}

/// The table: one row per case, with the date and the machine.
fn print_rows(rows: &[Row], runs: usize, big: u64) {
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
    for r in rows {
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
