//! The shape of the code, checked: no module imports another that imports it back (directly or
//! round a longer loop), in either crate, and the runtime's sans-IO driver stands on the ground
//! floor (it imports only the config and the plain value types).
//!
//! Imports are read from the source text (`use crate::…` and `use super::…`, test modules
//! left out), resolved to the longest module path that exists; a module's use of its own
//! ancestors (whose root files hold docs and re-exports) does not count as an edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

/// The paths named by every `use crate::…` / `use super::…` in `source`, relative to the crate.
fn imports(module: &Module, source: &str) -> Vec<Module> {
    let source = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or(source);
    let mut found = Vec::new();
    for stmt in source.split(';') {
        let Some(start) = stmt.find("use ") else {
            continue;
        };
        let stmt: String = stmt[start + 4..].split_whitespace().collect();
        let (base, rest) = if let Some(rest) = stmt.strip_prefix("crate::") {
            (Vec::new(), rest)
        } else if let Some(rest) = stmt.strip_prefix("super::") {
            (module[..module.len().saturating_sub(1)].to_vec(), rest)
        } else {
            continue;
        };
        for path in expand(rest) {
            let mut m = base.clone();
            m.extend(path.split("::").filter(|p| !p.is_empty()).map(String::from));
            found.push(m);
        }
    }
    found
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e` (enough for the module names).
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_string()];
    };
    let prefix = &path[..open];
    let inner = &path[open + 1..path.rfind('}').unwrap_or(path.len())];
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|i| !i.is_empty())
        .flat_map(|i| expand(i).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files
        .into_iter()
        .map(|f| (module_of(root, &f), f))
        .collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, file) in &modules {
        let source = fs::read_to_string(file).unwrap();
        for path in imports(module, &source) {
            let Some(target) = (1..=path.len())
                .rev()
                .map(|k| path[..k].to_vec())
                .find(|m| modules.contains_key(m))
            else {
                continue;
            };
            let ancestor = target.len() < module.len() && module[..target.len()] == target[..];
            if &target != module && !ancestor {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// A loop through `from`, if there is one.
fn loop_through(edges: &BTreeMap<Module, BTreeSet<Module>>, from: &Module) -> Option<Vec<Module>> {
    let mut stack = vec![(from.clone(), vec![from.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == from {
                return Some(path);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

fn assert_no_loops(root: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let edges = graph(&root);
    assert!(edges.len() > 5, "no imports found under {}", root.display());
    for module in edges.keys() {
        if let Some(cycle) = loop_through(&edges, module) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("/")).collect();
            panic!("import loop in {}: {}", root.display(), names.join(" → "));
        }
    }
}

#[test]
fn the_facade_has_no_import_loop() {
    assert_no_loops("src");
}

#[test]
fn the_runtime_has_no_import_loop() {
    assert_no_loops("actors/src");
}

#[test]
fn the_driver_imports_only_the_config_and_the_value_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/src");
    let edges = graph(&root);
    let allowed: BTreeSet<Module> = [vec!["config".to_string()], vec!["types".to_string()]]
        .into_iter()
        .collect();
    for (module, targets) in &edges {
        if module.first().map(String::as_str) != Some("driver") {
            continue;
        }
        for target in targets {
            let inside = target.first().map(String::as_str) == Some("driver");
            assert!(
                inside || allowed.contains(target),
                "{} imports {}",
                module.join("/"),
                target.join("/")
            );
        }
    }
}

#[test]
fn the_checker_finds_a_loop() {
    let a: Module = vec!["a".into()];
    let b: Module = vec!["b".into()];
    let edges = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([a.clone()])),
    ]);
    assert!(loop_through(&edges, &a).is_some());
    assert_eq!(
        imports(
            &vec!["x".into(), "y".into()],
            "use super::{z, w::{q}};\nuse crate::a::b;"
        ),
        vec![
            vec!["x".to_string(), "z".into()],
            vec!["x".to_string(), "w".into(), "q".into()],
            vec!["a".to_string(), "b".into()],
        ]
    );
}
