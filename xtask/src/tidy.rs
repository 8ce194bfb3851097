//! Tidy checks that run as tests: the crate stack is respected, and every
//! crate and module says what it is in a `//!` doc.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// The layers, bottom to top. A crate may depend only on crates below it.
const STACK: &[&str] = &[
    // Test support, below everything; a dev-dependency only (checked).
    TESTKIT,
    "micelio-identity",
    "micelio-wire",
    "micelio-transport",
    "micelio-gossip",
    "micelio-state",
    "micelio-partyline",
    "micelio-ssh",
    "micelio-plugins",
];

/// The test-support crate: any crate may use it, only for tests.
const TESTKIT: &str = "micelio-testkit";

/// The binary that composes every layer; it sits on top of the stack.
const BINARY: &str = "micelio";

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    manifest_path: PathBuf,
    dependencies: Vec<Dependency>,
}

#[derive(Deserialize)]
struct Dependency {
    name: String,
    kind: Option<String>,
}

fn metadata() -> Metadata {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(crate::project_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Example programs (`examples/plugins/…`): like the binary, on top of
/// the stack, and nothing may depend on them.
const EXAMPLE_PREFIX: &str = "micelio-example-";

/// The layer of a workspace crate, or `None` for a crate outside the stack.
fn rank(name: &str) -> Option<usize> {
    if name == BINARY || name.starts_with(EXAMPLE_PREFIX) {
        return Some(STACK.len());
    }
    STACK.iter().position(|c| *c == name)
}

/// Every violation of the stack among `deps` (crate → its micelio deps).
fn layering_violations(deps: &BTreeMap<String, Vec<(String, String)>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (krate, list) in deps {
        let Some(own) = rank(krate) else {
            problems.push(format!(
                "{krate} is not in the crate stack of xtask/src/tidy.rs: place it on purpose"
            ));
            continue;
        };
        for (dep, kind) in list {
            if dep == TESTKIT && kind != "dev" {
                problems.push(format!(
                    "{krate} depends on {TESTKIT} ({kind}): test support is a dev-dependency only"
                ));
                continue;
            }
            match rank(dep) {
                Some(r) if r < own => {}
                Some(_) => problems.push(format!(
                    "{krate} depends on {dep} ({kind}), which is not below it in the stack"
                )),
                None => problems.push(format!(
                    "{krate} depends on {dep}, which is not in the stack"
                )),
            }
        }
    }
    problems
}

fn workspace_micelio_deps(meta: &Metadata) -> BTreeMap<String, Vec<(String, String)>> {
    let mut map = BTreeMap::new();
    for p in &meta.packages {
        if !meta.workspace_members.contains(&p.id) || p.name == "xtask" {
            continue;
        }
        let deps = p
            .dependencies
            .iter()
            .filter(|d| d.name.starts_with("micelio") && d.name != p.name)
            .map(|d| {
                (
                    d.name.clone(),
                    d.kind.clone().unwrap_or_else(|| "normal".into()),
                )
            })
            .collect();
        map.insert(p.name.clone(), deps);
    }
    map
}

#[test]
fn crates_depend_only_on_layers_below() {
    let meta = metadata();
    let deps = workspace_micelio_deps(&meta);
    assert!(
        deps.contains_key("micelio-identity"),
        "the workspace has its crates"
    );
    let problems = layering_violations(&deps);
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

/// Crates that link an Apple framework (or pull one in: chrono's `clock`
/// feature brings `iana-time-zone`). The release cross-builds macOS without
/// an SDK, so none may be in the macOS build.
const APPLE_LINKERS: &[&str] = &[
    "core-foundation",
    "core-foundation-sys",
    "security-framework",
    "security-framework-sys",
    "system-configuration",
    "system-configuration-sys",
    "native-tls",
    "iana-time-zone",
    "objc",
    "objc-sys",
    "objc2",
    "cocoa",
    "io-kit-sys",
];

/// The crates of `cargo tree --prefix none --format {p}` output that link
/// an Apple framework.
fn apple_linkers(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| APPLE_LINKERS.contains(name))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_macos_build_links_no_apple_framework() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--workspace",
            "--target",
            "aarch64-apple-darwin",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(crate::project_root())
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("micelio-ssh"), "the tree has the workspace");
    let found = apple_linkers(&tree);
    assert!(
        found.is_empty(),
        "the macOS build would link Apple frameworks through {found:?} \
         (see `cargo tree -i <crate> --target aarch64-apple-darwin`)"
    );
}

#[test]
fn the_apple_check_names_what_it_finds() {
    let tree = "micelio v0.1.0\ntokio v1.0.0\ncore-foundation-sys v0.8.7\niana-time-zone v0.1.65\ncore-foundation-sys v0.8.7 (*)\n";
    assert_eq!(
        apple_linkers(tree),
        ["core-foundation-sys", "iana-time-zone"]
    );
    assert!(apple_linkers("micelio v0.1.0\nchrono v0.4.0\n").is_empty());
}

#[test]
fn the_layering_check_catches_an_upward_dependency() {
    let mut deps = BTreeMap::new();
    deps.insert(
        "micelio-wire".to_owned(),
        vec![("micelio-gossip".to_owned(), "dev".to_owned())],
    );
    deps.insert("micelio-oddity".to_owned(), Vec::new());
    deps.insert(
        "micelio-gossip".to_owned(),
        vec![("micelio-wire".to_owned(), "normal".to_owned())],
    );
    let problems = layering_violations(&deps);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("micelio-oddity"));
    assert!(problems[1].contains("micelio-wire depends on micelio-gossip"));
}

#[test]
fn the_layering_check_keeps_test_support_out_of_normal_dependencies() {
    let mut deps = BTreeMap::new();
    deps.insert(
        "micelio-gossip".to_owned(),
        vec![(TESTKIT.to_owned(), "dev".to_owned())],
    );
    assert!(layering_violations(&deps).is_empty());
    deps.insert(
        "micelio-wire".to_owned(),
        vec![(TESTKIT.to_owned(), "normal".to_owned())],
    );
    let problems = layering_violations(&deps);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("dev-dependency only"));
}

/// Whether a Rust source starts (after blank lines) with a `//!` doc.
fn has_module_doc(source: &str) -> bool {
    source
        .lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty())
        .is_some_and(|l| l.starts_with("//!"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            // Generated code is documented by the module that includes it.
            if path.file_name().is_some_and(|n| n == "generated") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every Rust source (src, tests, benches, examples) of the workspace
/// member `p`, with its text.
fn sources(p: &Package) -> Vec<(PathBuf, String)> {
    let Some(root) = p.manifest_path.parent() else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for sub in ["src", "tests", "benches", "examples"] {
        rust_files(&root.join(sub), &mut files);
    }
    files
        .into_iter()
        .map(|f| {
            let text = fs::read_to_string(&f).expect("readable source");
            (f, text)
        })
        .collect()
}

/// The workspace members of `meta`.
fn members(meta: &Metadata) -> impl Iterator<Item = &Package> {
    meta.packages
        .iter()
        .filter(|p| meta.workspace_members.contains(&p.id))
}

#[test]
fn every_crate_and_module_has_a_doc() {
    let meta = metadata();
    let mut missing = Vec::new();
    let mut checked = 0;
    for p in members(&meta) {
        for (f, text) in sources(p) {
            checked += 1;
            if !has_module_doc(&text) {
                missing.push(f.display().to_string());
            }
        }
    }
    assert!(checked > 10, "found the sources ({checked})");
    assert!(
        missing.is_empty(),
        "files without a `//!` doc:\n{}",
        missing.join("\n")
    );
}

#[test]
fn module_doc_detection() {
    assert!(has_module_doc("\n//! Hello\nfn x() {}"));
    assert!(!has_module_doc("// plain comment\n//! late"));
    assert!(!has_module_doc("fn x() {}"));
    assert!(!has_module_doc(""));
}

/// Crates allowed to know prost: micelio-wire owns the encoding, and xtask
/// generates its code.
const PROST_OWNERS: &[&str] = &["micelio-wire", "xtask"];

/// Whether Rust `source` names the prost crate (a path, an import or an
/// `extern crate`), ignoring comments.
fn names_prost(source: &str) -> bool {
    source.lines().any(|line| {
        let code = line.split("//").next().unwrap_or("");
        code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .any(|word| word == "prost")
    })
}

#[test]
fn only_micelio_wire_knows_prost() {
    let meta = metadata();
    let mut found = Vec::new();
    let mut checked = 0;
    for p in members(&meta).filter(|p| !PROST_OWNERS.contains(&p.name.as_str())) {
        for d in &p.dependencies {
            if d.name.starts_with("prost") {
                found.push(format!("{} depends on {}", p.name, d.name));
            }
        }
        for (f, text) in sources(p) {
            checked += 1;
            if names_prost(&text) {
                found.push(format!("{} names prost", f.display()));
            }
        }
    }
    assert!(checked > 10, "found the sources ({checked})");
    assert!(
        found.is_empty(),
        "only micelio-wire may know prost (use micelio_wire::WireMessage):\n{}",
        found.join("\n")
    );
}

#[test]
fn prost_detection() {
    assert!(names_prost("use prost::Message;"));
    assert!(names_prost("x: ::prost::bytes::Bytes,"));
    assert!(!names_prost("// prost is hidden behind micelio-wire"));
    assert!(!names_prost("let prosthetic = 1;"));
    assert!(!names_prost("use micelio_wire::WireMessage;"));
}
