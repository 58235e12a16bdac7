//! The shape of `src/`, checked from its text (no engine): the top-level
//! modules (`src/X.rs` or `src/X/`) import one another without a cycle, so
//! the data flow walks downhill, and `metrics` is a leaf that imports none
//! of them.
//!
//! A module's imports are the `crate::X` paths in its files (grouped ones,
//! `crate::{X, Y::Z}`, too); `super::` inside a module's folder names the
//! same module. Comments are skipped, so a doc link is not an import.
//! `lib.rs` (which declares the modules) and `src/bin/` (the binary, a user
//! of the library) are not modules of the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to, if any.
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(SRC).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "bin" => None,
        _ => Some(first.trim_end_matches(".rs").to_owned()),
    }
}

/// The modules named by the `crate::` paths of `source` (comments skipped).
fn imported_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let mut modules = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{C, D}, e::F}`: the first name of each entry.
            let mut depth = 0;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && (c.is_alphabetic() || c == '_') => {
                        modules.insert(identifier(&group[i..]));
                        entry_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = identifier(rest);
            if !name.is_empty() {
                modules.insert(name);
            }
        }
    }
    modules
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Each top-level module of `src/` and the other ones it imports.
fn import_graph() -> Graph {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let source = std::fs::read_to_string(file).unwrap();
        let imports = graph.entry(module.clone()).or_default();
        imports.extend(
            imported_modules(&source)
                .into_iter()
                .filter(|imported| *imported != module),
        );
    }
    graph
}

/// A cycle of `graph` as `a → b → … → a`, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

fn describe(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(module, imports)| {
            let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
            format!("  {module} → {}\n", imports.join(", "))
        })
        .collect()
}

#[test]
fn the_modules_of_src_import_each_other_without_a_cycle() {
    let graph = import_graph();
    // The reading works: the modules are found, and so are their imports.
    for module in ["call", "config", "engine", "metrics", "pool", "sandbox"] {
        assert!(
            graph.contains_key(module),
            "{module} not found:\n{}",
            describe(&graph)
        );
    }
    assert!(
        graph["call"].contains("pool") && graph["pool"].contains("sandbox"),
        "imports not read:\n{}",
        describe(&graph)
    );
    for (module, imports) in &graph {
        for imported in imports {
            assert!(
                graph.contains_key(imported),
                "{module} imports crate::{imported}, which is no module of src/"
            );
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "an import cycle between the modules of src/: {}\n{}",
            cycle.join(" → "),
            describe(&graph)
        );
    }
}

#[test]
fn metrics_is_a_leaf() {
    let graph = import_graph();
    assert_eq!(
        graph["metrics"],
        BTreeSet::new(),
        "metrics, which every module reports into, imports no module of the crate"
    );
}

#[test]
fn the_tool_policy_is_pure() {
    let graph = import_graph();
    assert_eq!(
        graph["policy"],
        BTreeSet::new(),
        "policy decides from the rules it is given; the proxy enforces them"
    );
}

#[test]
fn the_reader_sees_grouped_imports_and_skips_comments() {
    let source = "use crate::{call, config::{Config, EngineKind}, engine::Engine};\n\
                  // crate::pool is only mentioned\n\
                  let x = crate::report::RunStatus::Success; /// [`crate::proxy`]\n";
    let found: Vec<String> = imported_modules(source).into_iter().collect();
    assert_eq!(found, ["call", "config", "engine", "report"]);
    let graph = Graph::from([
        ("a".into(), BTreeSet::from(["b".into()])),
        ("b".into(), BTreeSet::from(["c".into()])),
        ("c".into(), BTreeSet::from(["a".into()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}
