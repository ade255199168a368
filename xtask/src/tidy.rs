//! The tidy test: project policy checked by `cargo test`, not by review (rust-analyzer's habit).
//!
//! It fails on a `.rs` file without a `//!` opening doc, on an ignored or should-panic test, on
//! an `unsafe` block without a `SAFETY:` comment, on an `unsafe fn` without a `# Safety` doc
//! section, on a library crate without `deny(missing_docs)` or without what a package registry
//! needs (description, license, repository, keywords, categories, a README whose example lines
//! are lines of the crate's tested doc example), on a workspace dependency no member uses or an
//! internal one without a version, on a dependency edge, in any dependency table of a manifest,
//! that breaks the layering, and on library source that reaches the file system around
//! `strata_fs::Fs`.

use std::path::{Path, PathBuf};

use crate::manifest::{self, DepKind};
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

/// The dependencies of a crate's manifest, from all its dependency tables (`[dependencies]`,
/// `[dependencies.x]`, `[build-dependencies]`, `[target.<spec>.dependencies]`, and the
/// dev-dependency forms), that are workspace crates or wasmtime: `(package, is_dev)`.
fn internal_dependencies(manifest: &str, crates: &[String]) -> Vec<(String, bool)> {
    let mut deps: Vec<(String, bool)> = Vec::new();
    for dep in manifest::dependencies(manifest) {
        let name = dep.package;
        if crates.contains(&name) || name == "wasmtime" {
            let edge = (name, dep.kind == DepKind::Dev);
            if !deps.contains(&edge) {
                deps.push(edge);
            }
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
        "cache-redis" => &["cache-core", "wasmtime"],
        "strata-fs" | "store-index" => &[],
        "store-commit" => &["store-index", "strata-fs"],
        "vm-host" => &[
            "cache-core",
            "cache-pinned",
            "cache-lru",
            "cache-fs",
            "cache-redis",
            "store-index",
            "store-commit",
            "strata-fs",
            "wasmtime",
        ],
        "vm-cosmwasm" => &[
            "vm-host",
            "cache-core",
            "cache-pinned",
            "cache-lru",
            "cache-fs",
            "store-index",
            "store-commit",
            "strata-fs",
            "wasmtime",
        ],
        "vmhost" => &["vm-host", "vm-cosmwasm"],
        _ => &[],
    }
}

/// Whether `krate` may have `dep` as a dependency: the layering of [`allowed`], and for a
/// dev-dependency also any crate whose manifest says `publish = false` (a dev-only crate such as
/// a test harness; its own dependencies are held to the layering in its own row).
fn edge_allowed(krate: &str, dep: &str, is_dev: bool, dev_only: &[String]) -> bool {
    allowed(krate).contains(&dep) || (is_dev && dev_only.iter().any(|d| d == dep))
}

/// Layering violations of the crates under `crates/`, as `from -> to` lines.
fn broken_layers(crates: &[manifest::Crate]) -> Vec<String> {
    let names: Vec<String> = crates.iter().map(|c| c.name.clone()).collect();
    let dev_only: Vec<String> = crates
        .iter()
        .filter(|c| c.is_unpublished())
        .map(|c| c.name.clone())
        .collect();
    let mut broken = Vec::new();
    for krate in crates {
        for (dep, is_dev) in internal_dependencies(&krate.manifest, &names) {
            if !edge_allowed(&krate.name, &dep, is_dev, &dev_only) {
                let kind = if is_dev { " (dev)" } else { "" };
                broken.push(format!("{} -> {dep}{kind}", krate.name));
            }
        }
    }
    broken
}

#[test]
fn crates_keep_their_layers() {
    let crates = manifest::crates(&root()).expect("crates/ readable");
    assert!(crates.len() >= 7, "tidy found too few crates: {crates:?}");
    let broken = broken_layers(&crates);
    assert!(
        broken.is_empty(),
        "dependency edges that break the layering (tidy.rs `allowed` lists the permitted ones): {broken:?}"
    );
}

#[test]
fn layering_rules_reject_bad_edges() {
    let crates = vec![
        "cache-core".to_owned(),
        "vm-host".to_owned(),
        "store-index".to_owned(),
    ];
    let manifest = r#"[package]
name = "x"
[dependencies]
vm-host.workspace = true
[dependencies.wasmtime]
workspace = true
[target.'cfg(unix)'.dependencies]
renamed = { package = "store-index", path = "../store-index" }
[dev-dependencies]
cache-core.workspace = true
"#;
    assert_eq!(
        internal_dependencies(manifest, &crates),
        vec![
            ("vm-host".to_owned(), false),
            ("wasmtime".to_owned(), false),
            ("store-index".to_owned(), false),
            ("cache-core".to_owned(), true),
        ]
    );
    assert!(!allowed("store-commit").contains(&"wasmtime"));
    assert!(!allowed("cache-fs").contains(&"vm-host"));

    // A dev-only crate is allowed as a dev-dependency, not as a dependency; wasmtime never
    // becomes a dev-dependency of the store.
    let harness = vec!["harness".to_owned()];
    assert!(edge_allowed("store-commit", "harness", true, &harness));
    assert!(!edge_allowed("store-commit", "harness", false, &harness));
    assert!(!edge_allowed("store-commit", "wasmtime", true, &harness));

    let sample = |name: &str, text: &str| manifest::Crate {
        dir: root().join("crates").join(name),
        name: name.to_owned(),
        manifest: format!("[package]\nname = \"{name}\"\n{text}"),
    };
    let crates = vec![
        sample("store-index", ""),
        sample(
            "store-commit",
            "[dependencies]\nstore-index.workspace = true\n[target.'cfg(unix)'.dependencies.wasmtime]\nworkspace = true\n[dev-dependencies]\nvm-host.workspace = true\n",
        ),
        sample("vm-host", ""),
    ];
    assert_eq!(
        broken_layers(&crates),
        vec![
            "store-commit -> wasmtime".to_owned(),
            "store-commit -> vm-host (dev)".to_owned()
        ]
    );
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
/// `#[cfg(test)] mod tests { .. }` (by convention last in its file, private or `pub(crate)`) is a
/// unit test, excepted;
/// so is a line that reads `/proc` (procfs is the kernel's interface, not storage: e.g. the
/// store's pagemap reader).
fn fs_offences(text: &str) -> Vec<String> {
    // The unit tests' module may be shared with sibling modules' tests (`pub(crate)`).
    let code = [
        "#[cfg(test)]\nmod tests {",
        "#[cfg(test)]\npub(crate) mod tests {",
    ]
    .iter()
    .fold(text, |code, start| {
        code.split(start).next().unwrap_or_default()
    });
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
        "Module::deserialize_open_file(&engine, std::fs::File::from(memfd))",
    ] {
        assert_eq!(fs_offences(bad).len(), 1, "{bad}");
    }
    for fine in [
        "use std::os::unix::fs::FileExt;",
        "use strata_fs::{File, Fs};",
        "let f = File::open(\"/proc/self/pagemap\").ok();",
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    use std::fs;\n}",
        "fn f() {}\n#[cfg(test)]\npub(crate) mod tests {\n    use std::fs;\n}",
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

/// Whether `line` declares an `unsafe fn` (after visibility and qualifiers such as `const` or
/// `extern "C"`), as code, not in a comment or a string.
fn declares_unsafe_fn(line: &str) -> bool {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.peek() {
        let qualifier = *word == "pub"
            || word.starts_with("pub(")
            || ["const", "async", "default", "extern"].contains(word)
            || word.starts_with('"');
        if !qualifier {
            break;
        }
        words.next();
    }
    if words.next() != Some("unsafe") {
        return false;
    }
    while let Some(word) = words.next() {
        match word {
            "fn" => return words.next().is_some(),
            "extern" => {}
            abi if abi.starts_with('"') => {}
            _ => return false,
        }
    }
    false
}

/// Line numbers (1-based) of the `unsafe fn`s of `text` whose doc comment has no `# Safety`
/// section. The doc comment is the run of `///` lines (and attributes) right above the `fn`.
fn unsafe_fns_without_safety_doc(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut missing = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if !declares_unsafe_fn(line) {
            continue;
        }
        let documented = lines[..n]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("///") || l.starts_with("#[") || l.starts_with("#!["))
            .any(|l| l.trim_start_matches('/').trim() == "# Safety");
        if !documented {
            missing.push(n + 1);
        }
    }
    missing
}

#[test]
fn unsafe_fns_have_a_safety_section() {
    let mut found = Vec::new();
    for path in sources() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for n in unsafe_fns_without_safety_doc(&text) {
            found.push(format!("{}:{n}", relative(&path)));
        }
    }
    assert!(
        found.is_empty(),
        "unsafe fns without a `# Safety` section in their doc comment: {found:?}"
    );
}

#[test]
fn safety_sections_are_found_where_they_are() {
    // Written with `UNSAFE` so that this file does not trip the checks it tests.
    let text = r#"
/// Reads.
///
/// # Safety
///
/// The range must be mapped.
#[inline]
pub(crate) UNSAFE fn documented(&self) {}

/// Writes, without saying when that is sound.
pub UNSAFE fn undocumented() {}

// # Safety in a plain comment does not count.
const UNSAFE extern "C" fn plain_comment() {}

UNSAFE impl Send for X {}
let f = "UNSAFE fn in a string";
    UNSAFE { call() };
"#
    .replace("UNSAFE", "unsafe");
    assert_eq!(unsafe_fns_without_safety_doc(&text), vec![11, 14]);
    assert!(declares_unsafe_fn("    pub unsafe fn f()"));
    assert!(declares_unsafe_fn("unsafe extern \"C\" fn f()"));
    assert!(!declares_unsafe_fn("unsafe impl Send for X {}"));
    assert!(!declares_unsafe_fn("// unsafe fn f()"));
}

/// What a registry needs of a library crate's manifest and folder that `krate` lacks.
fn registry_gaps(krate: &manifest::Crate) -> Vec<String> {
    let field = |name: &str| manifest::package_field(&krate.manifest, name);
    let mut gaps = Vec::new();
    for name in ["description", "license", "repository", "readme"] {
        if field(name).is_none() {
            gaps.push(format!("no `{name}`"));
        }
    }
    match field("keywords").map(|k| manifest::string_array(&k)) {
        None => gaps.push("no `keywords`".to_owned()),
        Some(k) if k.is_empty() || k.len() > 5 => gaps.push("1 to 5 keywords".to_owned()),
        Some(_) => {}
    }
    match field("categories").map(|c| manifest::string_array(&c)) {
        None => gaps.push("no `categories`".to_owned()),
        Some(c) if c.is_empty() || c.len() > 5 => gaps.push("1 to 5 categories".to_owned()),
        Some(_) => {}
    }
    if let Some(readme) = field("readme")
        && !krate.dir.join(&readme).is_file()
    {
        gaps.push(format!("`{readme}` missing"));
    }
    gaps
}

#[test]
fn library_crates_carry_registry_fields() {
    let mut gaps = Vec::new();
    for krate in manifest::crates(&root()).expect("crates/ readable") {
        if krate.is_published_library() {
            for gap in registry_gaps(&krate) {
                gaps.push(format!("{}: {gap}", krate.name));
            }
        }
    }
    assert!(
        gaps.is_empty(),
        "library crates without what a registry needs (or mark a dev-only crate `publish = false`): {gaps:?}"
    );
}

/// The code lines of the Rust code blocks of a markdown text, trimmed, without blank and
/// comment-only lines.
fn readme_code_lines(markdown: &str) -> Vec<String> {
    let mut block = None;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(fence) = trimmed.strip_prefix("```") {
            block = match block {
                None => Some(fence == "rust" || fence.is_empty()),
                Some(_) => None,
            };
            continue;
        }
        let in_rust = block == Some(true);
        if in_rust && !trimmed.is_empty() && !trimmed.starts_with("//") {
            lines.push(trimmed.to_owned());
        }
    }
    lines
}

/// The lines of the `//!` docs of `lib` as a doctest sees them (hidden `# ` lines included).
fn doc_lines(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("# ").unwrap_or(l).to_owned()
        })
        .collect()
}

#[test]
fn readme_examples_are_lines_of_the_tested_crate_docs() {
    // A README is not compiled; each code line of its example must be a line of the crate's
    // doc example, which `cargo test` runs, so the README cannot drift from the API.
    let mut drifted = Vec::new();
    for krate in manifest::crates(&root()).expect("crates/ readable") {
        let Ok(readme) = std::fs::read_to_string(krate.dir.join("README.md")) else {
            continue;
        };
        let lib = std::fs::read_to_string(krate.dir.join("src/lib.rs")).unwrap_or_default();
        let docs = doc_lines(&lib);
        for line in readme_code_lines(&readme) {
            if !docs.contains(&line) {
                drifted.push(format!("{}: {line}", krate.name));
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "README example lines not in the crate's lib.rs doc example: {drifted:?}"
    );
}

#[test]
fn readme_lines_are_read_from_rust_blocks_only() {
    let readme =
        "# x\n```sh\ncargo run\n```\n```rust\n// a comment\nlet a = 1;\n\n  a.b()?;\n```\ntext\n";
    assert_eq!(readme_code_lines(readme), vec!["let a = 1;", "a.b()?;"]);
    assert_eq!(
        doc_lines("//! ```\n//! # fn main() {\n//!     let a = 1;\nfn x() {}\n"),
        vec!["```", "fn main() {", "let a = 1;"]
    );
}

#[test]
fn no_unused_workspace_dependencies() {
    let root_manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root manifest");
    let mut members: Vec<String> = manifest::crates(&root())
        .expect("crates/ readable")
        .into_iter()
        .map(|c| c.manifest)
        .collect();
    for dir in ["xtask", "tests"] {
        members
            .push(std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap_or_default());
    }
    let used: Vec<String> = members
        .iter()
        .flat_map(|m| manifest::dependencies(m))
        .map(|d| d.key)
        .collect();
    let unused: Vec<String> = manifest::workspace_dependencies(&root_manifest)
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| !used.contains(key))
        .collect();
    assert!(
        unused.is_empty(),
        "workspace dependencies no member uses: {unused:?}"
    );
}

#[test]
fn internal_workspace_dependencies_carry_versions() {
    // Without a version next to the path, `cargo package` refuses the crates that depend on it.
    // A crate kept off registries (`publish = false`, a test harness) is the opposite case: it
    // may only be a dev-dependency, and only without a version does `cargo package` drop it from
    // the packaged manifest instead of looking for it on the registry.
    let root_manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root manifest");
    let unpublished: Vec<String> = manifest::crates(&root())
        .expect("crates")
        .into_iter()
        .filter(|c| c.is_unpublished())
        .map(|c| c.name)
        .collect();
    let wrong: Vec<String> = manifest::workspace_dependencies(&root_manifest)
        .into_iter()
        .filter(|(key, spec)| {
            manifest::has_path(spec)
                && manifest::path_without_version(spec) != unpublished.contains(key)
        })
        .map(|(key, _)| key)
        .collect();
    assert!(
        wrong.is_empty(),
        "internal workspace dependencies need a version next to their path, except crates marked \
         publish = false, which must have none: {wrong:?}"
    );
}
