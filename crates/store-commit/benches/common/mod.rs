//! Helpers shared by store-commit's benchmarks: disk footprints and the extra measurements
//! `cargo xtask bench` copies into docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};

/// Bytes on disk under `dir`, counting each inode once (hard links share theirs):
/// (allocated, apparent).
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let (mut allocated, mut apparent) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if seen.insert(md.ino()) {
                allocated += md.blocks() * 512;
                apparent += md.len();
            }
        }
    }
    (allocated, apparent)
}

/// Leaves `text` where `cargo xtask bench` collects extra measurements:
/// `$CARGO_TARGET_DIR/strata-bench/<name>` (else the workspace's `target/`).
pub fn extra_report(name: &str, text: &str) {
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("strata-bench");
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(out.join(name), text);
    }
}
