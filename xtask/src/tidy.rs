//! Tidy tests: they keep the parts of the project in step, the way rust-analyzer's xtask
//! does. Commands are leaves, modules form no circle, every command is in the README, and
//! lists that must agree do.

use camino::{Utf8Path, Utf8PathBuf};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use clap::CommandFactory;

use crate::cli::Cli;

fn src_dir() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate sits in the workspace").to_path_buf()
}

/// Every module of the crate: its path (`oci/source`, `` for the crate root) -> its source,
/// without the unit tests (they may reach anywhere).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Utf8Path, base: &Utf8Path, out: &mut BTreeMap<String, String>) {
        for e in dir.read_dir_utf8().expect("src is readable").flatten() {
            let p = e.into_path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(base).unwrap().with_extension("");
                let rel = rel.to_string();
                let module = match rel.as_str() {
                    "main" => String::new(),
                    r => r.strip_suffix("/mod").unwrap_or(r).to_string(),
                };
                let text = fs::read_to_string(&p).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or_default().to_string();
                out.insert(module, text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src_dir(), &src_dir(), &mut out);
    out
}

/// The longest module that `path` (a `::` path below the crate root) names.
fn resolve(path: &[&str], modules: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("/")).find(|m| modules.contains_key(m))
}

/// Which modules each module uses, through `crate::` and `super::` paths.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (module, text) in modules {
        let mut used = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            if text[..i].ends_with("::") || text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let path: Vec<&str> = path_after(&text[i + "crate::".len()..]);
            used.extend(resolve(&path, modules));
        }
        for (i, _) in text.match_indices("super::") {
            let before = &text[..i];
            if before.ends_with("super::") || before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut rest = &text[i..];
            let mut parent: Vec<&str> = if module.is_empty() { vec![] } else { module.split('/').collect() };
            while let Some(r) = rest.strip_prefix("super::") {
                parent.pop();
                rest = r;
            }
            let mut path: Vec<&str> = parent;
            path.extend(path_after(rest));
            used.extend(resolve(&path, modules).or_else(|| (!path.is_empty()).then(|| path.join("/"))));
        }
        used.remove(module);
        out.insert(module.clone(), used);
    }
    out
}

/// The identifiers of a path up to its end (`a::b::{c, d}` gives `a`, `b`).
fn path_after(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(&rest[..end]);
        match rest[end..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out
}

/// A circle in `graph`, if there is one, as the list of its nodes.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == m).unwrap();
                    let mut circle = stack[from..].to_vec();
                    circle.push(m.clone());
                    return Some(circle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn top(module: &str) -> &str {
    module.split('/').next().unwrap_or(module)
}

#[test]
fn commands_are_leaves() {
    let modules = modules();
    let graph = imports(&modules);
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        for u in used.iter().filter(|u| top(u) == "commands" && u.as_str() != "commands") {
            // A command's own submodules (commands/smoke/cluster) may use their parent.
            let command_of = |m: &str| m.split('/').nth(1).map(str::to_string);
            let same_command = top(module) == "commands" && command_of(module) == command_of(u);
            if !module.is_empty() && !same_command {
                wrong.push(format!("{module} uses {u}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "commands are leaves: only main may use a command module; move what they share below them:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn modules_form_no_circle() {
    let modules = modules();
    let graph = imports(&modules);
    if let Some(c) = find_circle(&graph) {
        panic!("these modules use each other in a circle: {}", c.join(" -> "));
    }
    // And the top-level modules (oci, cluster, deploy, ...) are layers.
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, used) in &graph {
        for u in used.iter().filter(|u| top(u) != top(m)) {
            tops.entry(top(m).to_string()).or_default().insert(top(u).to_string());
        }
    }
    if let Some(c) = find_circle(&tops) {
        panic!("these top-level modules use each other in a circle: {}", c.join(" -> "));
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
        }
        m
    };
    assert_eq!(find_circle(&g(&[("a", "b"), ("b", "c")])), None);
    let c = find_circle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4);
    let mods: BTreeMap<String, String> = [("oci".to_string(), String::new()), ("oci/store".to_string(), String::new())]
        .into_iter()
        .chain([("oci/image".to_string(), "use super::store::{Store};\nuse crate::oci::Digest;".to_string())])
        .collect();
    assert_eq!(imports(&mods)["oci/image"], BTreeSet::from(["oci/store".to_string(), "oci".to_string()]));
}

#[test]
fn every_command_is_in_the_readme() {
    let readme = fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut missing = Vec::new();
    let cli = Cli::command();
    for c in cli.get_subcommands() {
        let name = c.get_name();
        if !readme.contains(&format!("cargo xtask {name}")) {
            missing.push(format!("cargo xtask {name}"));
        }
        for sub in c.get_subcommands() {
            let full = format!("cargo xtask {name} {}", sub.get_name());
            if !readme.contains(&full) {
                missing.push(full);
            }
        }
    }
    assert!(missing.is_empty(), "README.md does not mention: {}", missing.join(", "));
}

#[test]
fn every_command_module_is_a_command() {
    let cli = Cli::command();
    let names: BTreeSet<String> = cli.get_subcommands().map(|c| c.get_name().replace('-', "_")).collect();
    let modules: BTreeSet<String> = modules()
        .keys()
        .filter_map(|m| m.strip_prefix("commands/"))
        .filter(|m| !m.contains('/'))
        .map(String::from)
        .collect();
    assert_eq!(modules, names, "commands/ holds one module per command of cli.rs, named like it");
}

/// The verbs `doctor` checks the scheduler's service account for are what k8s/'s Role
/// grants and what `manifests check` allows.
#[test]
fn the_scheduler_rbac_lists_agree() {
    use crate::deploy::check::ALLOWED_RULES;
    use crate::deploy::manifests::{load, parse};
    let docs = load(&repo_root(), &[repo_root().join("k8s/airflow").as_path()]).unwrap();
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in docs.iter().filter(|d| d.kind() == "Role") {
        let mut problems = Vec::new();
        let Some(crate::deploy::manifests::Typed::Role(role)) = parse(d, &mut problems) else { panic!("{problems:?}") };
        for rule in role.rules.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                granted.entry(r.clone()).or_default().extend(rule.verbs.iter().cloned());
            }
        }
    }
    for &(resource, verbs) in crate::deploy::check::SCHEDULER_NEEDS {
        let allowed = ALLOWED_RULES.iter().find(|(r, _)| *r == resource).map(|(_, v)| *v).unwrap_or_default();
        for v in verbs.iter().copied() {
            assert!(allowed.contains(&v), "doctor checks `{v}` on {resource}, which manifests check does not allow");
            assert!(
                granted.get(resource).is_some_and(|g| g.contains(v)),
                "doctor checks `{v}` on {resource}, which k8s/airflow's Role does not grant"
            );
        }
    }
}
