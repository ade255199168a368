//! The tidy test: project policy checked by `cargo test`, not by review (rust-analyzer's habit).
//!
//! It fails on a `.rs` file without a `//!` opening doc, on an ignored or should-panic test, on
//! an `unsafe` block without a `SAFETY:` comment, on a library crate without `deny(missing_docs)`,
//! on a dependency edge that breaks the layering of the crates, and on library source that
//! reaches the file system around `strata_fs::Fs`.

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

/// The file-system calls a library may not make itself: they go through `strata_fs::Fs`.
const FS_CALLS: [&str; 4] = ["std::fs", "File::open", "File::create", "OpenOptions"];

/// Whether `rel` (a path under the repository root) is library source that must reach the file
/// system only through strata-fs. The exceptions, and only these: strata-fs itself; the `vmhost`
/// binary crate and every `src/bin/` (they read the user's files); unit tests (`tests.rs`, a
/// `tests/` folder); benches, xtask and the `tests` crate (not under `crates/*/src`).
fn must_use_strata_fs(rel: &str) -> bool {
    let Some(rest) = rel.strip_prefix("crates/") else {
        return false;
    };
    let Some((krate, inside)) = rest.split_once('/') else {
        return false;
    };
    krate != "strata-fs"
        && krate != "vmhost"
        && inside.starts_with("src/")
        && !inside.contains("/bin/")
        && !inside.ends_with("/tests.rs")
        && !inside.contains("/tests/")
}

/// The lines of library source `text` that call the file system around strata-fs. An inline
/// `#[cfg(test)] mod tests { .. }` (by convention last in its file) is a unit test, excepted;
/// so is a line that reads `/proc` (procfs is the kernel's interface, not storage: e.g. the
/// store's pagemap reader).
fn fs_offences(text: &str) -> Vec<String> {
    let code = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines() {
        let calls = FS_CALLS.iter().any(|call| line.contains(call));
        let squeezed: String = line.split_whitespace().collect();
        // `use std::{fs, ..}` and friends.
        let grouped = squeezed.split("std::{").skip(1).any(|group| {
            let group = group.split('}').next().unwrap_or_default();
            group
                .split(',')
                .any(|item| item == "fs" || item.starts_with("fs::"))
        });
        if (calls || grouped) && !line.contains("\"/proc/") {
            found.push(line.trim().to_owned());
        }
    }
    found
}

#[test]
fn only_strata_fs_touches_the_file_system() {
    let mut offenders = Vec::new();
    for path in sources() {
        let rel = relative(&path);
        if !must_use_strata_fs(&rel) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in fs_offences(&text) {
            offenders.push(format!("{rel}: {line}"));
        }
    }
    assert!(
        offenders.is_empty(),
        "file-system calls around strata_fs::Fs (only crates/strata-fs may name std::fs): {offenders:#?}"
    );
}

#[test]
fn the_strata_fs_rule_catches_each_form_and_only_its_exceptions_pass() {
    for bad in [
        "use std::fs;",
        "let b = std::fs::read(p)?;",
        "use std::{fs, io};",
        "use std::{io, fs::File};",
        "let f = File::open(p)?;",
        "let f = File::create(p)?;",
        "let o = OpenOptions::new();",
    ] {
        assert_eq!(fs_offences(bad).len(), 1, "{bad}");
    }
    for fine in [
        "use std::os::unix::fs::FileExt;",
        "use strata_fs::{File, Fs};",
        "let f = File::open(\"/proc/self/pagemap\").ok();",
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    use std::fs;\n}",
    ] {
        assert!(fs_offences(fine).is_empty(), "{fine}");
    }
    assert!(must_use_strata_fs("crates/store-commit/src/lib.rs"));
    assert!(must_use_strata_fs("crates/vm-host/src/vm.rs"));
    for excepted in [
        "crates/strata-fs/src/real.rs",
        "crates/vmhost/src/main.rs",
        "crates/vm-host/src/bin/vmhost/main.rs",
        "crates/cache-fs/src/tests.rs",
        "crates/store-commit/benches/store.rs",
        "tests/all/store.rs",
        "xtask/src/tidy.rs",
    ] {
        assert!(!must_use_strata_fs(excepted), "{excepted}");
    }
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
