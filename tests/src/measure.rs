//! Running a program to completion and measuring it: wall time and peak RSS (for the bench and
//! the scale run).

use std::process::{Command, Stdio};
use std::time::Instant;

/// What a run took.
pub struct Measured {
    /// Wall time.
    pub seconds: f64,
    /// The child's peak resident set, KiB.
    pub max_rss_kib: u64,
}

/// Runs a command to completion (stdout as the command set it, or discarded), returning wall
/// time and the child's peak RSS (from wait4). Panics with its stderr if it fails.
// The child is reaped by wait4, which std does not know about.
#[allow(unsafe_code, clippy::zombie_processes)]
pub fn run_measured(cmd: &mut Command) -> Measured {
    // stderr to a file, not a pipe nobody reads while the child runs: skopeo's progress lines
    // for 500 images fill a pipe and block it.
    let stderr_file = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let child = cmd.stderr(stderr_file.reopen().unwrap()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(waited, pid, "wait4 failed");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let stderr = std::fs::read_to_string(stderr_file.path()).unwrap_or_default();
        drop(child);
        panic!("{cmd:?} failed: {stderr}");
    }
    Measured {
        seconds,
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

/// `run_measured` with stdout discarded.
pub fn run_quiet(cmd: &mut Command) -> Measured {
    run_measured(cmd.stdout(Stdio::null()))
}
