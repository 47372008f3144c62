//! The crate's file-level import graph has no circle: every `crate::` and
//! `super::` path from a file of `src/` to another file is followed (test
//! modules and comments excluded), and a cycle fails with its files named.
//! Circles were what made `core.rs` impossible to split; this keeps them out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module path of a file under `src/` (`src/session/hub.rs` ->
/// `["session", "hub"]`; `mod.rs` and `lib.rs` name their folder).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and without `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break; // test modules sit at the end of a file here
        }
        let without_comment = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        code.push_str(without_comment);
        code.push('\n');
    }
    code
}

/// Every module path a file names: `crate::a::b::C` and the expansions of
/// `use crate::a::{b, c::D}`; `super::x` is resolved against `module`.
fn named_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (root, base) in [
        ("crate::", Vec::new()),
        ("super::", module[..module.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            expand(rest, base.clone(), &mut paths);
        }
    }
    paths
}

/// Reads one path (with nested brace groups) from the start of `text`.
fn expand(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut rest = text;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut end = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                let inner = &group[..end];
                let mut level = 0;
                let mut start = 0;
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => level += 1,
                        '}' => level -= 1,
                        ',' if level == 0 => {
                            expand(inner[start..i].trim(), path.clone(), out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                expand(inner[start..].trim(), path.clone(), out);
                return;
            }
            break;
        }
        rest = &rest[ident.len()..];
        path.push(ident);
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The file a module path lands in: its longest prefix that is a file.
fn file_of<'a>(path: &[String], files: &'a BTreeMap<Vec<String>, String>) -> Option<&'a String> {
    (1..=path.len()).rev().find_map(|n| files.get(&path[..n]))
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: BTreeMap<Vec<String>, String> = paths
        .iter()
        .filter(|p| !p.ends_with("main.rs"))
        .map(|p| {
            let name = p.strip_prefix(&src).unwrap().to_string_lossy().to_string();
            (module_of(&src, p), name)
        })
        .collect();
    let mut graph = BTreeMap::new();
    for path in paths.iter().filter(|p| !p.ends_with("main.rs")) {
        let module = module_of(&src, path);
        let name = &files[&module];
        let code = code_of(&std::fs::read_to_string(path).expect("read"));
        let edges: BTreeSet<String> = named_paths(&code, &module)
            .iter()
            .filter_map(|p| file_of(p, &files))
            .filter(|to| *to != name && !module.is_empty() && to.as_str() != "lib.rs")
            .cloned()
            .collect();
        graph.insert(name.clone(), edges);
    }
    graph
}

#[test]
fn no_file_level_import_circle_in_src() {
    let graph = import_graph();
    assert!(
        graph.len() > 20,
        "the walk found the crate's files: {graph:?}"
    );
    assert!(
        graph["accept.rs"].contains("core.rs"),
        "the walk follows crate:: paths: {:?}",
        graph["accept.rs"]
    );
    assert!(
        graph["http/api.rs"].contains("http/body.rs"),
        "the walk follows super:: paths: {:?}",
        graph["http/api.rs"]
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_connection_task_does_not_reach_the_router() {
    let graph = import_graph();
    let connection = &graph["session/connection.rs"];
    assert!(
        !connection.contains("core.rs"),
        "session/connection.rs names crate::core: {connection:?}"
    );
}
