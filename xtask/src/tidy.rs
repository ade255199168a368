//! The tidy test: project policy checked by `cargo test`, not by review (rust-analyzer's habit).
//!
//! It fails on a `.rs` file without a `//!` opening doc, on an ignored or should-panic test, on
//! an `unsafe` block without a `SAFETY:` comment, on a library crate without `deny(missing_docs)`,
//! and on a dependency edge that breaks the layering of the crates.

use std::path::{Path, PathBuf};

use crate::root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests", "fuzz"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "tidy found too few sources: {files:?}");
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|p| relative(&p))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` opening doc: {missing:?}"
    );
}

#[test]
fn no_ignored_or_should_panic_tests() {
    // Built from pieces so that this file does not trip its own check.
    let banned = [concat!("#[", "ignore"), concat!("#[", "should_panic")];
    let mut found = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if banned.iter().any(|b| line.contains(b)) {
                found.push(format!("{}:{}", relative(&path), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tests must assert the Err they expect: {found:?}"
    );
}

#[test]
fn unsafe_blocks_name_their_invariant() {
    let mut found = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let opens_block = code.contains("unsafe {") && !code.contains("unsafe fn");
            if !opens_block {
                continue;
            }
            // The comment may stand up to a few lines above (before a `let` or an attribute).
            let window = &lines[n.saturating_sub(8)..=n];
            if !window.iter().any(|l| l.contains("SAFETY:")) {
                found.push(format!("{}:{}", relative(&path), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "unsafe blocks without `// SAFETY:`: {found:?}"
    );
}

/// The `[dependencies]` of a crate's manifest that are workspace crates.
fn internal_dependencies(manifest: &str, crates: &[String]) -> Vec<String> {
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if !in_deps {
            continue;
        }
        let name = line.split(['=', '.', ' ']).next().unwrap_or("");
        if crates.iter().any(|c| c == name) || name == "wasmtime" {
            deps.push(name.to_owned());
        }
    }
    deps
}

/// Which dependencies each crate may have among the workspace crates and wasmtime.
fn allowed(krate: &str) -> &'static [&'static str] {
    match krate {
        "cache-core" => &["wasmtime"],
        "cache-pinned" | "cache-lru" => &["cache-core", "wasmtime"],
        "cache-fs" => &["cache-core", "strata-fs", "wasmtime"],
        "strata-fs" | "store-index" => &[],
        "store-commit" => &["store-index", "strata-fs"],
        "vm-host" => &[
            "cache-core",
            "cache-pinned",
            "cache-lru",
            "cache-fs",
            "store-index",
            "store-commit",
            "strata-fs",
            "wasmtime",
        ],
        _ => &[],
    }
}

#[test]
fn crates_keep_their_layers() {
    let crates_dir = root().join("crates");
    let crates: Vec<String> = std::fs::read_dir(&crates_dir)
        .expect("crates/ exists")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut broken = Vec::new();
    for krate in &crates {
        let manifest =
            std::fs::read_to_string(crates_dir.join(krate).join("Cargo.toml")).unwrap_or_default();
        for dep in internal_dependencies(&manifest, &crates) {
            if !allowed(krate).contains(&dep.as_str()) {
                broken.push(format!("{krate} -> {dep}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependency edges that break the layering: {broken:?}"
    );
}

#[test]
fn layering_rules_reject_bad_edges() {
    let crates = vec!["cache-core".to_owned(), "vm-host".to_owned()];
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nvm-host.workspace = true\nwasmtime = { workspace = true }\n[dev-dependencies]\ncache-core.workspace = true\n";
    assert_eq!(
        internal_dependencies(manifest, &crates),
        vec!["vm-host".to_owned(), "wasmtime".to_owned()]
    );
    assert!(!allowed("store-commit").contains(&"wasmtime"));
    assert!(!allowed("cache-fs").contains(&"vm-host"));
}

#[test]
fn cache_core_knows_no_file_system() {
    let mut files = Vec::new();
    rust_files(&root().join("crates/cache-core/src"), &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.contains("std::fs") || text.contains("File::")
        })
        .map(|p| relative(p))
        .collect();
    assert!(
        offenders.is_empty(),
        "cache-core must not touch the file system: {offenders:?}"
    );
}

#[test]
fn library_crates_deny_missing_docs() {
    let crates_dir = root().join("crates");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&crates_dir)
        .expect("crates/ exists")
        .flatten()
    {
        let lib = entry.path().join("src/lib.rs");
        if let Ok(text) = std::fs::read_to_string(&lib)
            && !text.contains("#![deny(missing_docs)]")
        {
            missing.push(relative(&lib));
        }
    }
    assert!(
        missing.is_empty(),
        "library crates without deny(missing_docs): {missing:?}"
    );
}
