//! Committed files may be mapped: a session maps its base image copy-on-write under the memory
//! it hands out, and a commit compares written pages with a read-only view of it. A mapped file
//! that shrinks, or whose page cannot be read in, raises `SIGBUS` in the store's own code (not in
//! wasm), which kills the process. So the store never writes, truncates or rewrites a file once
//! it is committed, and writes every file read-only (`0o444`): nobody short of the owner changing
//! the modes (or root) can open it for writing either. These tests check both on the file-system
//! operations and on the disk.

use crate::faults::{EMLINK, linked_history};
use crate::{RES, quick, write};
use anyhow::Result;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store_commit::{Deletion, Store, StoreConfig};
use strata_fs::{FaultFs, NoSyncFs, Op};

/// Every regular file under the store directory but the lock: content hash and inode.
fn committed_files(dir: &Path) -> Result<BTreeMap<PathBuf, ([u8; 32], u64)>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                todo.push(path);
            } else if path != dir.join("LOCK") {
                let hash = Sha256::digest(std::fs::read(&path)?).into();
                out.insert(path, (hash, meta.ino()));
            }
        }
    }
    Ok(out)
}

/// Whether `path` lies in a temporary directory of the store (`<store>/.tmp-*`), or is one.
fn in_tmp(dir: &Path, path: &Path) -> bool {
    path.strip_prefix(dir)
        .ok()
        .and_then(|rel| rel.components().next())
        .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with(".tmp-"))
}

/// A history of commits (links, then copies of files at their link limit), a commit from a
/// session that keeps mapped memories open, immediate and deferred deletions, and a reopen that
/// finishes a deferred one. Every operation that can put bytes into a file (`write_file`,
/// `create_new`, `write`, `write_at`) targets a file the store has just created in a temporary
/// directory, never a committed one (the `deleted` marker, an empty new file, is the one file
/// created in a commit directory); the only file opened for writing without being created is the
/// lock; and every committed file that survives has the bytes and inode it had when committed.
#[test]
fn nothing_in_the_store_writes_or_truncates_a_file_that_may_be_mapped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FaultFs::new(Arc::new(NoSyncFs::real())));
    let store = Store::open_with_fs(dir.path(), StoreConfig::default(), fs.clone())?;
    // Some links pass, then every one is refused: the later commits copy their unchanged files.
    fs.fail_after(Op::HardLink, 6, EMLINK);
    let (roots, id) = linked_history(&store, 6)?;
    fs.heal();
    let before = committed_files(dir.path())?;

    // Sessions with mapped memories on two commits while others are committed and deleted.
    let mut kept = store.session(Some(roots[3]))?;
    let m = kept.memory(&id, RES)?;
    write(&m, 7, &[42]);
    let mut doomed = store.session(Some(roots[2]))?;
    let mapped = doomed.memory(&id, RES)?;
    assert!(matches!(
        store.delete(&roots[2])?,
        Deletion::Deferred { .. }
    ));
    assert_eq!(store.delete(&roots[1])?, Deletion::Deleted);
    // Compares the written page with the base image through the read-only view.
    let next = kept.commit()?;
    // The last session on the deleted commit ends: its files go while the mapping is alive.
    drop(doomed);
    drop(store);
    let store = Store::open_with_fs(dir.path(), quick(), fs.clone())?;
    assert!(!store.contains(&roots[2]) && store.contains(&next));
    // The mapping of the removed commit still reads its image (unlinked, not truncated).
    // SAFETY: `[base, base + len)` is mapped readable and nothing writes it meanwhile.
    let first = unsafe { *mapped.base() };
    assert_eq!(first, 1);
    drop(mapped);

    let log = fs.take_log();
    let writes = [Op::WriteFile, Op::CreateNew, Op::Write, Op::WriteAt];
    let mut written = 0;
    for (op, path) in &log {
        if writes.contains(op) {
            written += 1;
            let marker = *op == Op::CreateNew && path.file_name() == Some("deleted".as_ref());
            assert!(
                in_tmp(dir.path(), path) || marker,
                "{op:?} of {} outside a temporary directory",
                path.display()
            );
        }
        if *op == Op::Lock {
            assert_eq!(path, &dir.path().join("LOCK"));
        }
    }
    assert!(written > 20, "only {written} writes logged");

    let after = committed_files(dir.path())?;
    let mut compared = 0;
    for (path, was) in &before {
        if let Some(now) = after.get(path) {
            assert_eq!(
                now,
                was,
                "{} changed after it was committed",
                path.display()
            );
            compared += 1;
        }
    }
    assert!(compared > 20, "only {compared} files compared");
    Ok(())
}

/// Every file of a commit (written, linked, or copied at the link limit), every index and the
/// format marker are read-only on disk, and stay so after a reopen and more commits.
#[test]
fn committed_files_are_read_only_on_disk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FaultFs::new(Arc::new(NoSyncFs::real())));
    let store = Store::open_with_fs(dir.path(), quick(), fs.clone())?;
    fs.set_logging(false);
    fs.fail_after(Op::HardLink, 4, EMLINK);
    let (roots, id) = linked_history(&store, 5)?;
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    let mut s = store.session(roots.last().copied())?;
    s.set_blob(&id, vec![9])?;
    s.commit()?;
    let files = committed_files(dir.path())?;
    assert!(files.len() > 30, "only {} files", files.len());
    for path in files.keys() {
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o444, "{} has mode {mode:o}", path.display());
    }
    let lock = std::fs::metadata(dir.path().join("LOCK"))?;
    assert_ne!(
        lock.permissions().mode() & 0o200,
        0,
        "the lock stays writable"
    );
    Ok(())
}

/// Files under `dir` this process holds open (`/proc/self/fd`), deleted ones included.
fn open_files_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter(|target| target.starts_with(dir))
                .count()
        })
        .unwrap_or(0)
}

/// Mappings of files under `dir` (`/proc/self/maps`), deleted ones included.
fn mappings_under(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.lines().filter(|l| l.contains(&dir)).count())
        .unwrap_or(0)
}

/// Sessions keep what they read of a commit's module (the delta, the blob) for the next
/// session, and a closed memory's reservation keeps its image mapped: a session over a warm
/// commit opens and reads no file. Nothing holds a file open once the sessions are gone, and
/// deleting a commit unmaps its image.
#[test]
fn warm_commits_are_read_once_and_hold_no_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FaultFs::new(Arc::new(NoSyncFs::real())));
    let store = Store::open_with_fs(dir.path(), quick(), fs.clone())?;
    let code = store_commit::Bytecode::hash(crate::wasm(1).as_slice());
    let id = code.id();
    let mut s = store.session(None)?;
    s.deploy(
        code,
        vec![1u8; 2 * store_commit::PAGE_SIZE],
        b"blob".to_vec(),
    )?;
    let mut roots = vec![s.commit()?];
    for i in 0..3u8 {
        let mut s = store.session(roots.last().copied())?;
        write(&s.memory(&id, RES)?, 4096 * usize::from(i), &[i + 2]);
        s.set_blob(&id, vec![i; 10])?;
        roots.push(s.commit()?);
    }
    let open_session = |root| -> Result<u64> {
        let before = fs.ops();
        let mut s = store.session(Some(root))?;
        let memory = s.memory(&id, RES)?;
        s.blob(&id)?;
        drop((memory, s));
        Ok(fs.ops() - before)
    };
    let lock = open_files_under(&dir.path().join("LOCK"));
    for root in &roots {
        assert!(open_session(*root)? > 0, "a cold commit is read");
        assert_eq!(open_session(*root)?, 0, "a warm one is not");
        assert_eq!(open_files_under(dir.path()), lock, "no file stays open");
    }
    let last = *roots.last().expect("commits");
    assert_eq!(mappings_under(&dir.path().join(last.to_hex())), 1);
    assert_eq!(store.delete(&last)?, Deletion::Deleted);
    assert_eq!(mappings_under(&dir.path().join(last.to_hex())), 0);
    assert_eq!(open_files_under(dir.path()), lock);
    Ok(())
}
