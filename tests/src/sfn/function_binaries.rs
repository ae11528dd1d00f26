//! The function binaries the local runs start: where the test build left them, and building them
//! there when one is missing or older than its sources.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::rig::{functions, workspace};

/// The cargo target directory the test build used: the one this executable was built into
/// (`<target>/<profile>/deps/<test>` or `<target>/<profile>/<bin>`), else `CARGO_TARGET_DIR`
/// (relative: to the workspace), else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let mut dir = exe.parent()?;
        if dir.file_name()? == "deps" {
            dir = dir.parent()?;
        }
        // The profile directory holds a `.fingerprint` of cargo's; its parent is the target dir
        // (a `--target <triple>` build has one more level, which the functions do not use).
        dir.join(".fingerprint")
            .is_dir()
            .then(|| dir.parent().map(Path::to_path_buf))
            .flatten()
    });
    from_exe
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .filter(|dir| !dir.is_empty())
                .map(|dir| workspace().join(dir))
        })
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where the function binaries are: the `debug` profile of [`target_dir`], as `cargo test
/// --workspace --all-targets` and `cargo build --workspace --bins` leave them.
pub fn functions_dir() -> PathBuf {
    target_dir().join("debug")
}

/// The function binaries, by function name, built once per process if any is missing or older
/// than a source it was built from (cargo's dep-info, `<bin>.d`): `cargo test -p e2e` builds
/// no binary of the `functions` crate.
pub(super) fn function_binaries() -> std::collections::HashMap<&'static str, PathBuf> {
    static CHECKED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let dir = functions_dir();
    let binaries: std::collections::HashMap<&'static str, PathBuf> = functions()
        .into_iter()
        .map(|(_, function)| (function, dir.join(function)))
        .collect();
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if *checked {
        return binaries;
    }
    let mut outdated: Vec<String> = binaries
        .iter()
        .filter_map(|(function, path)| {
            outdated_binary(path).map(|why| format!("{function} ({why})"))
        })
        .collect();
    outdated.sort();
    if !outdated.is_empty() {
        build_function_binaries(&dir, &outdated);
        if let Some((function, path)) = binaries.iter().find(|(_, path)| !path.is_file()) {
            panic!(
                "{function} is still missing at {} after building the functions; build them \
                 into {} (profile debug): `cargo build --workspace --bins`",
                path.display(),
                target_dir().display()
            );
        }
    }
    *checked = true;
    binaries
}

/// Why the binary at `path` cannot be used as is: missing, or older than one of its sources.
fn outdated_binary(path: &Path) -> Option<String> {
    let Ok(built) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return Some("missing".into());
    };
    // `<bin>.d`: "<bin>: <source> <source> ...", spaces in paths escaped.
    let mut dep_info = path.as_os_str().to_owned();
    dep_info.push(".d");
    let text = std::fs::read_to_string(dep_info).ok()?;
    let (_, sources) = text.lines().next()?.split_once(": ")?;
    sources
        .replace("\\ ", "\0")
        .split_whitespace()
        .map(|source| PathBuf::from(source.replace('\0', " ")))
        .find(|source| {
            std::fs::metadata(source)
                .and_then(|m| m.modified())
                .is_ok_and(|changed| changed > built)
        })
        .map(|source| format!("older than {}", source.display()))
}

/// Builds the function binaries into the test build's target dir: `cargo build --workspace
/// --bin <function>...`, the `functions` crate's binaries with the dependencies' features of a
/// workspace build (what `cargo test --workspace --all-targets` links them with; `-p functions`
/// alone would build another variant of half the dependency tree). Panics saying what to run
/// when it fails.
fn build_function_binaries(dir: &Path, outdated: &[String]) {
    use std::io::Write;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.args(["build", "--workspace"]);
    for (_, function) in functions() {
        command.args(["--bin", function]);
    }
    command
        .arg("--target-dir")
        .arg(target_dir())
        .current_dir(workspace())
        .stdin(Stdio::null());
    // Without what cargo set for this test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`,
    // ...): build scripts rerun when those change (ring's does, and with it rustls, the AWS
    // SDK...), which would rebuild half the tree here and again in the next workspace build.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo = [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&key)
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_");
        if set_by_cargo {
            command.env_remove(key);
        }
    }
    // Straight to stderr, not through the test harness's capture: the build's output follows.
    let _ = writeln!(
        std::io::stderr(),
        "e2e: building the function binaries in {} (outdated: {})",
        dir.display(),
        outdated.join(", ")
    );
    let status = command.status();
    if !matches!(&status, Ok(s) if s.success()) {
        panic!(
            "the state machine tests run the function binaries from {} and could not build them \
             ({status:?}; outdated: {}): run `cargo build --workspace --bins` (`cargo test \
             --workspace --all-targets` builds them too) and fix what it reports",
            dir.display(),
            outdated.join(", ")
        );
    }
}
