//! The library's modules form layers: no module reaches itself through `crate::` paths (the job
//! and its key policy below the verification, the verification below the connections' users,
//! reports below the steps). A new cycle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A file's `crate::<module>` references outside comments and its tests.
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .flat_map(|l| {
            l.match_indices("crate::")
                .map(|(at, _)| {
                    l[at + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn modules() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let texts: Vec<String> = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("dir")
                .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
                .collect()
        } else if name != "lib" {
            vec![std::fs::read_to_string(&path).expect("read")]
        } else {
            continue;
        };
        let mut deps: BTreeSet<String> = texts.iter().flat_map(|t| references(t)).collect();
        deps.remove(&name);
        // `x.rs` and its directory `x/` are one module.
        modules.entry(name).or_default().extend(deps);
    }
    modules
}

#[test]
fn no_module_reaches_itself() {
    let modules = modules();
    assert!(modules.contains_key("job") && modules.contains_key("steps"));
    for start in modules.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in modules.get(&at).into_iter().flatten() {
                let mut path = path.clone();
                path.push(next.clone());
                assert!(next != start, "a module cycle: {}", path.join(" -> "));
                if modules.contains_key(next) && seen.insert(next.clone()) {
                    stack.push((next.clone(), path));
                }
            }
        }
    }
}
