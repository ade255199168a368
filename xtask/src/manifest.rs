//! A small reader of the `Cargo.toml` files of this workspace, enough for `check-crates` and the
//! tidy test: the package's name and flags, its registry fields, and every dependency from every
//! dependency table.
//!
//! xtask has no dependencies (no `toml` crate), so this reads TOML line by line. It understands
//! what cargo manifests here use: `[dependencies]`, `[dev-dependencies]`, `[build-dependencies]`,
//! their `[target.<spec>.*]` forms (spec bare, or quoted like `'cfg(unix)'`), one table per
//! dependency (`[dependencies.x]`), dotted keys (`x.workspace = true`), inline tables, renames
//! (`package = "..."`), comments, and arrays spread over several lines. The dependency reader
//! serves only the tidy test, so it is compiled only for tests.

use std::path::{Path, PathBuf};

#[cfg(test)]
/// Which table a dependency was declared in (target-specific tables count as their kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DepKind {
    /// `[dependencies]`: part of the crate as others see it.
    Normal,
    /// `[build-dependencies]`.
    Build,
    /// `[dev-dependencies]`: tests, benches, examples only.
    Dev,
}

#[cfg(test)]
/// One dependency as declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dep {
    /// The name the manifest declares it under (the key of `[workspace.dependencies]` when it
    /// says `workspace = true`).
    pub(crate) key: String,
    /// The package it names: `package = "..."` when renamed, else the key.
    pub(crate) package: String,
    pub(crate) kind: DepKind,
}

/// Splits a dotted TOML key (`target.'cfg(unix)'.dependencies`) into its parts, unquoted.
fn key_parts(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    for c in key.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '.') => parts.push(std::mem::take(&mut current).trim().to_owned()),
            (None, c) => current.push(c),
        }
    }
    parts.push(current.trim().to_owned());
    parts
}

/// The line without its comment (a `#` outside a string).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `[` minus `]` outside strings: how many arrays or tables a line leaves open.
fn bracket_balance(text: &str) -> i32 {
    let mut quote = None;
    let mut depth = 0;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

#[cfg(test)]
/// The dependency kind a table name's part stands for.
fn kind_of(part: &str) -> Option<DepKind> {
    match part {
        "dependencies" => Some(DepKind::Normal),
        "build-dependencies" | "build_dependencies" => Some(DepKind::Build),
        "dev-dependencies" | "dev_dependencies" => Some(DepKind::Dev),
        _ => None,
    }
}

#[cfg(test)]
/// What a table header opens, as far as dependencies go.
enum Table {
    /// A table of dependencies, one per key.
    Deps(DepKind),
    /// The table of one dependency (`[dependencies.x]`).
    One(DepKind, String),
    Other,
}

#[cfg(test)]
fn table(header: &str) -> Table {
    let parts = key_parts(header);
    let (kind, rest) = match parts.first().map(String::as_str) {
        Some("target") if parts.len() >= 3 => (kind_of(&parts[2]), &parts[3..]),
        Some(first) => (kind_of(first), &parts[1..]),
        None => (None, &parts[..]),
    };
    match (kind, rest) {
        (Some(kind), []) => Table::Deps(kind),
        (Some(kind), [name, ..]) => Table::One(kind, name.clone()),
        (None, _) => Table::Other,
    }
}

#[cfg(test)]
/// The string value of `name = "value"` inside `text` (an inline table or a whole line).
fn string_field(text: &str, name: &str) -> Option<String> {
    let mut rest = text;
    while let Some(at) = rest.find(name) {
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c == '{' || c == ',' || c == '.' || c.is_whitespace());
        let after = rest[at + name.len()..].trim_start();
        if before_ok && let Some(value) = after.strip_prefix('=') {
            let value = value.trim_start();
            let quote = value.chars().next()?;
            if quote == '"' || quote == '\'' {
                let end = value[1..].find(quote)?;
                return Some(value[1..1 + end].to_owned());
            }
        }
        rest = &rest[at + name.len()..];
    }
    None
}

/// Logical lines (arrays and inline tables spread over several lines joined), without comments,
/// trimmed, each with whether it is a table header.
fn logical_lines(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in manifest.lines() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if !pending.is_empty() {
            pending.push(' ');
        }
        pending.push_str(line);
        // A header is balanced by itself; a value continues while brackets stay open.
        if bracket_balance(&pending) <= 0 {
            out.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        out.push(pending);
    }
    out
}

#[cfg(test)]
/// Every dependency of every dependency table of `manifest`, in order of appearance.
pub(crate) fn dependencies(manifest: &str) -> Vec<Dep> {
    let mut deps: Vec<Dep> = Vec::new();
    let mut current = Table::Other;
    for line in logical_lines(manifest) {
        if line.starts_with('[') && !line.starts_with("[[") {
            let header = line.trim_start_matches('[').trim_end_matches(']');
            current = table(header);
            if let Table::One(kind, name) = &current {
                deps.push(Dep {
                    key: name.clone(),
                    package: name.clone(),
                    kind: *kind,
                });
            }
            continue;
        }
        if line.starts_with("[[") {
            current = Table::Other;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match &current {
            Table::Deps(kind) => {
                let parts = key_parts(key.trim());
                let name = parts[0].clone();
                let renamed = if parts.get(1).is_some_and(|p| p == "package") {
                    string_field(&line, "package")
                } else if parts.len() == 1 {
                    string_field(value, "package")
                } else {
                    None
                };
                match deps.iter_mut().find(|d| d.key == name && d.kind == *kind) {
                    Some(dep) => {
                        if let Some(package) = renamed {
                            dep.package = package;
                        }
                    }
                    None => deps.push(Dep {
                        package: renamed.unwrap_or_else(|| name.clone()),
                        key: name,
                        kind: *kind,
                    }),
                }
            }
            Table::One(kind, name) => {
                if key.trim() == "package"
                    && let Some(package) = string_field(&line, "package")
                    && let Some(dep) = deps
                        .iter_mut()
                        .rev()
                        .find(|d| &d.key == name && d.kind == *kind)
                {
                    dep.package = package;
                }
            }
            Table::Other => {}
        }
    }
    deps
}

#[cfg(test)]
/// The entries of the root manifest's `[workspace.dependencies]` (and
/// `[workspace.dependencies.x]` tables): each key with its specification as written (the inline
/// table, or its `field = value` lines joined).
pub(crate) fn workspace_dependencies(manifest: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    // `Some(None)`: in `[workspace.dependencies]`; `Some(Some(i))`: in the table of entry `i`.
    let mut in_table: Option<Option<usize>> = None;
    for line in logical_lines(manifest) {
        if line.starts_with('[') {
            let parts = key_parts(line.trim_start_matches('[').trim_end_matches(']'));
            let ours = parts.len() >= 2 && parts[0] == "workspace" && parts[1] == "dependencies";
            in_table = match parts.len() {
                2 if ours => Some(None),
                3 if ours => {
                    entries.push((parts[2].clone(), String::new()));
                    Some(Some(entries.len() - 1))
                }
                _ => None,
            };
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match in_table {
            Some(None) => {
                let mut parts = key_parts(key.trim());
                let name = parts.remove(0);
                let spec = match parts.first() {
                    Some(field) => format!("{field} = {}", value.trim()),
                    None => value.trim().to_owned(),
                };
                match entries.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, existing)) => {
                        existing.push_str(", ");
                        existing.push_str(&spec);
                    }
                    None => entries.push((name, spec)),
                }
            }
            Some(Some(i)) => {
                let spec = &mut entries[i].1;
                if !spec.is_empty() {
                    spec.push_str(", ");
                }
                spec.push_str(&line);
            }
            None => {}
        }
    }
    entries
}

#[cfg(test)]
/// Whether a dependency specification (as [`workspace_dependencies`] gives it) names a `path`.
pub(crate) fn has_path(spec: &str) -> bool {
    string_field(spec, "path").is_some()
}

#[cfg(test)]
/// Whether a dependency specification (as [`workspace_dependencies`] gives it) names a
/// `path` without a `version`: cargo refuses to package a crate that depends on it.
pub(crate) fn path_without_version(spec: &str) -> bool {
    string_field(spec, "path").is_some() && string_field(spec, "version").is_none()
}

/// The value of `field` in the `[package]` table: a string, or the raw text of any other value
/// (`true` for `publish.workspace = true`, `["a", "b"]` for an array).
pub(crate) fn package_field(manifest: &str, field: &str) -> Option<String> {
    let mut in_package = false;
    for line in logical_lines(manifest) {
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let parts = key_parts(key.trim());
        if parts[0] != field {
            continue;
        }
        let value = value.trim();
        if parts.len() == 2 && parts[1] == "workspace" {
            return Some("workspace".to_owned());
        }
        return Some(
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .to_owned(),
        );
    }
    None
}

#[cfg(test)]
/// The strings of a one-line TOML array such as `["a", "b"]`.
pub(crate) fn string_array(value: &str) -> Vec<String> {
    value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().trim_matches('"').trim_matches('\'').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A crate under `crates/`.
#[derive(Debug)]
pub(crate) struct Crate {
    /// Its folder, `crates/<name>`.
    pub(crate) dir: PathBuf,
    /// The package name.
    pub(crate) name: String,
    /// The text of its `Cargo.toml`.
    pub(crate) manifest: String,
}

impl Crate {
    /// Whether it has a library target (`src/lib.rs` or a `[lib]` table).
    pub(crate) fn is_library(&self) -> bool {
        self.dir.join("src/lib.rs").exists() || self.manifest.lines().any(|l| l.trim() == "[lib]")
    }

    /// Whether it is kept off registries by its own manifest (`publish = false`): a dev-only
    /// or internal crate (the workspace default, which library crates inherit, is `true`).
    pub(crate) fn is_unpublished(&self) -> bool {
        package_field(&self.manifest, "publish").as_deref() == Some("false")
    }

    /// A library that a package registry may carry: the crates `check-crates` checks alone and
    /// whose registry fields the tidy test requires.
    pub(crate) fn is_published_library(&self) -> bool {
        self.is_library() && !self.is_unpublished()
    }
}

/// Every crate under `<root>/crates` (folders with a `Cargo.toml`), sorted by name.
pub(crate) fn crates(root: &Path) -> Result<Vec<Crate>, String> {
    let dir = root.join("crates");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("Cargo.toml");
        let Ok(manifest) = std::fs::read_to_string(&path) else {
            continue;
        };
        let name = package_field(&manifest, "name")
            .ok_or_else(|| format!("{} has no package name", path.display()))?;
        out.push(Crate {
            dir: entry.path(),
            name,
            manifest,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[package]
name = "sample" # a comment
publish = false
keywords = ["a", "b"]
description.workspace = true

[lib]
path = "lib.rs"

[dependencies]
plain = "1"
wasmtime = { workspace = true, features = ["wat"] }
dotted.workspace = true
spread = { version = "1", features = [
    "std", # the standard library
    "x",
] }
renamed = { package = "real-name", version = "1" }
"quoted" = "2"

[dependencies.table-dep]
version = "1"
features = ["a"]

[dependencies.renamed-table]
package = "real-table"
path = "../real"

[target.'cfg(target_os = "linux")'.dependencies]
linux-only.workspace = true

[target."x86_64-unknown-linux-gnu".dependencies.cfg-table]
path = "../cfg-table"

[target.x86_64-pc-windows-gnu.build-dependencies]
windows-build = "1"

[build-dependencies]
build-dep = "1"

[dev-dependencies]
dev-dep = { workspace = true }
wasmtime = { workspace = true, features = ["wat"] }

[target.'cfg(unix)'.dev-dependencies.unix-dev]
version = "1"

[[bench]]
name = "not-a-dep"
harness = false

[features]
default = ["plain/std"]
"#;

    #[test]
    fn reads_every_dependency_table() {
        let got: Vec<(String, String, DepKind)> = dependencies(SAMPLE)
            .into_iter()
            .map(|d| (d.key, d.package, d.kind))
            .collect();
        let want = [
            ("plain", "plain", DepKind::Normal),
            ("wasmtime", "wasmtime", DepKind::Normal),
            ("dotted", "dotted", DepKind::Normal),
            ("spread", "spread", DepKind::Normal),
            ("renamed", "real-name", DepKind::Normal),
            ("quoted", "quoted", DepKind::Normal),
            ("table-dep", "table-dep", DepKind::Normal),
            ("renamed-table", "real-table", DepKind::Normal),
            ("linux-only", "linux-only", DepKind::Normal),
            ("cfg-table", "cfg-table", DepKind::Normal),
            ("windows-build", "windows-build", DepKind::Build),
            ("build-dep", "build-dep", DepKind::Build),
            ("dev-dep", "dev-dep", DepKind::Dev),
            ("wasmtime", "wasmtime", DepKind::Dev),
            ("unix-dev", "unix-dev", DepKind::Dev),
        ];
        let want: Vec<(String, String, DepKind)> = want
            .iter()
            .map(|(k, p, kind)| (k.to_string(), p.to_string(), *kind))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reads_package_fields() {
        assert_eq!(package_field(SAMPLE, "name").as_deref(), Some("sample"));
        assert_eq!(package_field(SAMPLE, "publish").as_deref(), Some("false"));
        assert_eq!(
            package_field(SAMPLE, "description").as_deref(),
            Some("workspace")
        );
        assert_eq!(
            string_array(&package_field(SAMPLE, "keywords").unwrap()),
            vec!["a", "b"]
        );
        assert_eq!(package_field(SAMPLE, "license"), None);
        // Fields of other tables are not the package's.
        assert_eq!(package_field(SAMPLE, "path"), None);
    }

    #[test]
    fn reads_workspace_dependencies() {
        let root = "[workspace]\nmembers = [\"crates/*\"]\n[workspace.dependencies]\na = { path = \"crates/a\", version = \"0.1.0\" }\nb.version = \"1\"\nb.features = [\n  \"x\",\n]\n[workspace.dependencies.c]\nversion = \"2\"\n[workspace.lints.rust]\nunsafe_code = \"deny\"\n";
        let entries = workspace_dependencies(root);
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
        assert_eq!(entries[1].1, r#"version = "1", features = [ "x", ]"#);
        assert_eq!(entries[2].1, r#"version = "2""#);
        assert!(!path_without_version(&entries[0].1));
        assert!(path_without_version(r#"{ path = "crates/a" }"#));
        assert!(path_without_version(
            r#"path = "crates/a", features = ["x"]"#
        ));
        assert!(!path_without_version(r#"version = "1""#));
    }

    #[test]
    fn splits_quoted_keys() {
        assert_eq!(
            key_parts(r#"target.'cfg(all(unix, target_arch = "x86_64"))'.dependencies"#),
            vec![
                "target",
                r#"cfg(all(unix, target_arch = "x86_64"))"#,
                "dependencies"
            ]
        );
        assert_eq!(strip_comment(r##"a = "#1" # note"##), r##"a = "#1" "##);
    }
}
