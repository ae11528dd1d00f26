//! The function processes: each function's instances polling watch's Runtime API, restarted when
//! one exits and killed with the harness (or the test process).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::rig::workspace;

/// Processes per function: as many invocations of one function as run at once (a Rust
/// `lambda_runtime` process serves one invocation at a time; more wait in watch's queue, as
/// `cargo lambda watch --concurrency 4` had them).
pub const FUNCTION_INSTANCES: usize = 4;

/// The function processes: [`FUNCTION_INSTANCES`] of each function, started by one thread that
/// restarts any that exits (as Lambda starts a new instance) and kills them all when dropped.
pub(super) struct FunctionInstances {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One function process (an instance) and how to start it again.
struct Instance {
    function: &'static str,
    /// Its number among the function's instances.
    slot: usize,
    command: Command,
    child: Option<Child>,
    /// When it was last started.
    started: Instant,
}

impl FunctionInstances {
    /// Starts every instance; each polls `runtime_api/<function>` and logs to `log`.
    pub(super) fn start(
        binaries: &std::collections::HashMap<&'static str, PathBuf>,
        deployed: &std::collections::HashMap<String, crate::deployed::DeployedFunction>,
        runtime: std::sync::Arc<crate::deployed::RuntimeApi>,
        runtime_api: &str,
        env: &[(String, String)],
        log: &std::fs::File,
    ) -> Result<Self, String> {
        let mut instances = Vec::new();
        let mut names: Vec<_> = binaries.iter().collect();
        names.sort();
        for (function, binary) in names {
            for slot in 0..FUNCTION_INSTANCES {
                // What cargo-lambda's watch gives each function it starts (`watcher.rs`), then
                // the harness's variables.
                // Its memory as deployed (the Runtime API proxy gives each invocation the
                // deadline of its deployed timeout).
                let memory_mb = deployed[*function].memory_mb.to_string();
                let mut command = Command::new(binary);
                command
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb)
                    // The work bucket only where the deployment names it: a function that
                    // needs it and is not given it fails here as on AWS.
                    .envs(
                        env.iter()
                            .filter(|(k, _)| {
                                k != crate::deployed::WORK_BUCKET_VARIABLE
                                    || deployed[*function].work_bucket
                            })
                            .map(|(k, v)| (k, v)),
                    )
                    .env(
                        "AWS_LAMBDA_RUNTIME_API",
                        format!("{runtime_api}/{function}/{slot}"),
                    )
                    .env("AWS_LAMBDA_FUNCTION_NAME", function)
                    .env("AWS_LAMBDA_MAX_CONCURRENCY", "1")
                    .env("AWS_LAMBDA_INSTANCE_ID", format!("{function}-{slot}"))
                    .current_dir(workspace())
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().map_err(|e| e.to_string())?)
                    .stderr(log.try_clone().map_err(|e| e.to_string())?);
                die_with_parent(&mut command);
                instances.push(Instance {
                    function,
                    slot,
                    command,
                    child: None,
                    started: Instant::now(),
                });
            }
        }
        let log = log.try_clone().map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        // One thread starts, watches and stops every process: no other thread's end can touch
        // them, and each dies with the test process (`PR_SET_PDEATHSIG`, this thread's end).
        let thread = std::thread::Builder::new()
            .name("lambda-instances".into())
            .spawn({
                let stop = stop.clone();
                move || supervise(instances, &stop, &runtime, log, started_tx)
            })
            .map_err(|e| e.to_string())?;
        let started = started_rx
            .recv()
            .unwrap_or_else(|_| Err("the instance thread ended".into()));
        let instances = FunctionInstances {
            stop,
            thread: Some(thread),
        };
        started.map(|()| instances)
    }
}

impl Drop for FunctionInstances {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the instances (reporting on `started`), restarts any that exits (at most once a
/// second each, noted in the log), and kills them all when `stop` is set.
fn supervise(
    mut instances: Vec<Instance>,
    stop: &std::sync::atomic::AtomicBool,
    runtime: &crate::deployed::RuntimeApi,
    mut log: std::fs::File,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    use std::io::Write;
    let mut failure = None;
    for instance in &mut instances {
        match instance.command.spawn() {
            Ok(child) => instance.child = Some(child),
            Err(e) => {
                failure = Some(format!(
                    "cannot start {} ({:?}): {e}",
                    instance.function,
                    instance.command.get_program()
                ));
                break;
            }
        }
    }
    let failed = failure.is_some();
    let _ = started.send(failure.map_or(Ok(()), Err));
    while !failed && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // Instances whose invocation ran past the function's timeout end, as Lambda ends the
        // sandbox (restarted below like any that exits).
        let timed_out = std::mem::take(&mut *runtime.to_stop.lock().unwrap());
        for instance in &mut instances {
            let id = format!("{}-{}", instance.function, instance.slot);
            if let (true, Some(child)) = (timed_out.contains(&id), &mut instance.child) {
                let _ = writeln!(log, "e2e: {id} timed out; stopping it");
                let _ = child.kill();
            }
        }
        for instance in &mut instances {
            if let Some(child) = &mut instance.child {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        let _ = writeln!(
                            log,
                            "e2e: {} instance (pid {}) exited ({status}); starting another",
                            instance.function,
                            child.id()
                        );
                        instance.child = None;
                    }
                    Ok(None) | Err(_) => continue,
                }
            }
            if instance.started.elapsed() < Duration::from_secs(1) {
                continue;
            }
            instance.started = Instant::now();
            match instance.command.spawn() {
                Ok(child) => instance.child = Some(child),
                Err(e) => {
                    let _ = writeln!(log, "e2e: cannot start {}: {e}", instance.function);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for instance in &mut instances {
        if let Some(child) = &mut instance.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes the process `command` starts die with the thread that starts it (the supervisor): the
/// kernel kills it if the test process dies or exits without dropping the harness.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
