//! Tests of the commit store (store-index + store-commit) through its public API: a property test
//! against an in-memory model, a SIGKILL crash test, fault injection and simulated power loss at
//! every file-system operation of a commit and a delete, concurrency, deletion, determinism and
//! reopen cost.
//!
//! This file is also the `store` test target of store-commit (`cargo test -p store-commit`), so it
//! builds without wasmtime.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use proptest::prelude::*;
use store_commit::fs::{FaultFs, FaultMode, Fs, Op, PowerLossFs, RealFs};
use store_commit::{
    Deletion, MemoryHandle, Missing, ModuleId, PAGE_SIZE, Root, Session, Store, StoreConfig,
    StoreError,
};
use store_index::{MemoryTree, hash, state_root};

const RES: usize = 16 * PAGE_SIZE;

fn quick() -> StoreConfig {
    StoreConfig {
        fsync: false,
        ..StoreConfig::default()
    }
}

fn wasm(n: u8) -> Vec<u8> {
    let mut w = b"\0asm\x01\0\0\0".to_vec();
    w.push(n);
    w
}

fn write(mem: &MemoryHandle, at: usize, data: &[u8]) {
    assert!(at + data.len() <= mem.len());
    // SAFETY: the range is inside the memory's length and nothing else uses it meanwhile.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), mem.base().add(at), data.len()) }
}

fn read(mem: &MemoryHandle) -> Vec<u8> {
    // SAFETY: `[base, base + len)` is mapped readable and nothing writes it meanwhile.
    unsafe { std::slice::from_raw_parts(mem.base(), mem.len()).to_vec() }
}

/// Per module: bytecode, memory, blob.
type ModelState = BTreeMap<ModuleId, (Vec<u8>, Vec<u8>, Vec<u8>)>;

/// The root the model expects, computed from full contents, independently of the store's
/// incremental bookkeeping.
fn model_root(state: &ModelState) -> Root {
    let leaves: Vec<(ModuleId, store_index::Digest)> = state
        .iter()
        .map(|(id, (code, mem, blob))| {
            let code_hash = store_index::Digest::sha256(code);
            let leaf = hash::module_leaf(
                id,
                &code_hash,
                &MemoryTree::from_memory(mem).root(),
                &hash::blob(blob),
            );
            (*id, leaf)
        })
        .collect();
    state_root(leaves.iter().map(|(id, l)| (*id, *l)))
}

/// The name `--exact` needs for a test function of this module, in whichever binary it runs.
fn test_name(f: &str) -> String {
    let path = module_path!();
    match path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{f}"),
        None => f.to_string(),
    }
}

/// Same history, same roots: both a fixed sequence of deploys, writes, grows and blob changes.
fn history(dir: &Path) -> Result<Vec<Root>> {
    let store = Store::open(dir, quick())?;
    let mut roots = Vec::new();
    let mut s = store.session(None)?;
    for n in 0..3u8 {
        let code = wasm(n);
        let genesis = vec![n; (n as usize + 1) * PAGE_SIZE];
        s.deploy(ModuleId::of_wasm(&code), &code, &genesis, vec![n])?;
    }
    roots.push(s.commit()?);
    for round in 0..5u8 {
        let mut s = store.session(roots.last().copied())?;
        let id = ModuleId::of_wasm(&wasm(round % 3));
        let m = s.memory(&id, RES)?;
        write(&m, 4096 * round as usize + 10, &[round + 100; 5000]);
        if round % 2 == 0 {
            m.grow_to(m.len() + PAGE_SIZE)?;
            write(&m, m.len() - 1, &[9]);
        }
        s.set_blob(&id, vec![round; round as usize])?;
        roots.push(s.commit()?);
    }
    Ok(roots)
}

#[test]
fn deterministic_roots_across_directories() -> Result<()> {
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let ra = history(a.path())?;
    let rb = history(b.path())?;
    assert_eq!(ra, rb);
    assert_eq!(ra.len(), 6);
    assert_eq!(ra.iter().collect::<HashSet<_>>().len(), 6);
    Ok(())
}

#[test]
fn basic_errors_are_typed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    let err = s.deploy(ModuleId::of_wasm(b"other"), &code, &[], vec![]);
    assert!(
        matches!(err, Err(StoreError::InvalidInput { .. })),
        "{err:?}"
    );
    let err = s.deploy(id, &code, &[0; 100], vec![]);
    assert!(
        matches!(err, Err(StoreError::InvalidInput { .. })),
        "{err:?}"
    );
    s.deploy(id, &code, &vec![0; PAGE_SIZE], vec![])?;
    let err = s.deploy(id, &code, &[], vec![]);
    assert!(
        matches!(err, Err(StoreError::AlreadyDeployed { .. })),
        "{err:?}"
    );
    let err = s.memory(&id, 100);
    assert!(
        matches!(err, Err(StoreError::InvalidInput { .. })),
        "{err:?}"
    );
    let missing = ModuleId::of_wasm(b"missing");
    let err = s.blob(&missing);
    assert!(
        matches!(err, Err(StoreError::NotFound(Missing::Module(_)))),
        "{err:?}"
    );
    let m = s.memory(&id, 2 * PAGE_SIZE)?;
    assert!(m.grow_to(3 * PAGE_SIZE).is_err());
    assert!(m.grow_to(PAGE_SIZE + 1).is_err());
    assert!(m.grow_to(0).is_err());
    m.grow_to(2 * PAGE_SIZE)?;
    assert_eq!((m.len(), m.reservation()), (2 * PAGE_SIZE, 2 * PAGE_SIZE));
    let root = s.commit()?;
    let unknown = Root::from_hex(&"ab".repeat(32))?;
    let err = store.session(Some(unknown));
    assert!(
        matches!(err, Err(StoreError::NotFound(Missing::Commit(_)))),
        "{err:?}"
    );
    assert!(matches!(
        store.delete(&unknown),
        Err(StoreError::NotFound(_))
    ));
    // An unchanged session returns its base; so does an identical state reached again.
    let s = store.session(Some(root))?;
    assert_eq!(s.commit()?, root);
    let mut s = store.session(Some(root))?;
    let m = s.memory(&id, RES)?;
    write(&m, 5, &[1]);
    let changed = s.commit()?;
    let mut s = store.session(Some(changed))?;
    let m = s.memory(&id, RES)?;
    write(&m, 5, &[0]);
    assert_eq!(s.commit()?, root);
    assert_eq!(store.commits().len(), 2);
    Ok(())
}

#[test]
fn corruption_is_detected_and_a_broken_commit_can_be_rewritten() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![1; 2 * PAGE_SIZE], vec![1])?;
    let base = s.commit()?;
    let change = |store: &Store| -> Result<Root> {
        let mut s = store.session(Some(base))?;
        let m = s.memory(&id, RES)?;
        write(&m, 70_000, &[2; 3]);
        Ok(s.commit()?)
    };
    let root = change(&store)?;
    drop(store);
    let commit = dir.path().join(root.to_hex());
    let base_dir = dir.path().join(base.to_hex());
    // A flipped bit in an image (shared by both commits through a hard link) fails verify.
    let image = base_dir.join("memory").join(id.to_hex());
    let mut bytes = std::fs::read(&image)?;
    bytes[5] ^= 1;
    std::fs::write(&image, &bytes)?;
    let store = Store::open(dir.path(), quick())?;
    let report = store.verify()?;
    assert_eq!(
        (report.checked, report.problems.len()),
        (2, 2),
        "{report:?}"
    );
    bytes[5] ^= 1;
    std::fs::write(&image, &bytes)?;
    // A truncated image is refused at open of the memory, not mapped (no SIGBUS).
    std::fs::write(&image, &bytes[..PAGE_SIZE])?;
    let mut s = store.session(Some(base))?;
    let err = s.memory(&id, RES).unwrap_err();
    assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
    drop(s);
    std::fs::write(&image, &bytes)?;
    drop(store);
    // A damaged index: the commit is not listed, verify names it, committing it again repairs it.
    let index = commit.join("index");
    let mut bytes = std::fs::read(&index)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&index, &bytes)?;
    let store = Store::open(dir.path(), quick())?;
    assert!(!store.contains(&root));
    let report = store.verify()?;
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(report.problems[0].path.ends_with(root.to_hex()));
    assert_eq!(change(&store)?, root);
    assert!(store.verify()?.is_ok());
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    assert!(store.verify()?.is_ok());
    assert_eq!(store.read_memory(&root, &id)?[70_000], 2);
    Ok(())
}

/// A forged index (valid checksum, same root: the delta's page count is not part of the root) that
/// claims a huge delta is refused as corrupt, not allocated (which aborted the process).
#[test]
fn a_forged_delta_page_count_is_an_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![1; 2 * PAGE_SIZE], vec![1])?;
    let base = s.commit()?;
    let mut s = store.session(Some(base))?;
    write(&s.memory(&id, RES)?, 5000, &[2; 3]);
    let root = s.commit()?;
    drop(store);
    let index_path = dir.path().join(root.to_hex()).join("index");
    let original = std::fs::read(&index_path)?;
    for pages in [3, 1 << 24, u32::MAX] {
        let index = store_index::CommitIndex::decode(&original)?;
        let entry = &index.modules()[0];
        let mut delta = entry.memory().delta().context("a delta")?;
        delta.pages = pages;
        let entry = entry
            .clone()
            .with_memory(entry.memory().clone().with_delta(delta));
        let index = store_index::CommitIndex::new(index.seq(), index.parent(), vec![entry])?;
        std::fs::write(&index_path, index.encode()?)?;
        let store = Store::open(dir.path(), quick())?;
        assert!(store.contains(&root), "the forged index still loads");
        let err = store.read_memory(&root, &id).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        let mut s = store.session(Some(root))?;
        let err = s.memory(&id, RES).unwrap_err();
        assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
        drop(s);
        let report = store.verify()?;
        assert_eq!(report.problems.len(), 1, "{report:?}");
    }
    std::fs::write(&index_path, &original)?;
    let store = Store::open(dir.path(), quick())?;
    assert_eq!(store.read_memory(&root, &id)?[5000], 2);
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn large_blobs_are_stored_as_patches_that_survive_deleting_the_base() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut blob: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let mut s = store.session(None)?;
    s.deploy(id, &code, &[], blob.clone())?;
    let mut roots = vec![s.commit()?];
    for i in 0..5usize {
        // Shifted data: an insertion near the start moves everything after it.
        blob.splice(i * 10..i * 10, [i as u8; 7]);
        let mut s = store.session(roots.last().copied())?;
        s.set_blob(&id, blob.clone())?;
        roots.push(s.commit()?);
        let patch = dir
            .path()
            .join(roots[i + 1].to_hex())
            .join(format!("blob/{id}.diff"));
        assert!(patch.exists(), "commit {i} stored the whole blob");
        assert!(std::fs::metadata(&patch)?.len() < 10_000);
    }
    // A completely different blob is stored whole.
    let mut s = store.session(roots.last().copied())?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let other: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    s.set_blob(&id, other.clone())?;
    let whole = s.commit()?;
    assert!(
        !dir.path()
            .join(whole.to_hex())
            .join(format!("blob/{id}.diff"))
            .exists()
    );
    store.delete(&roots[0])?;
    store.delete(&roots[3])?;
    assert_eq!(store.read_blob(&roots[5], &id)?, blob);
    assert_eq!(store.session(Some(roots[5]))?.blob(&id)?, blob);
    assert_eq!(store.read_blob(&whole, &id)?, other);
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn incompatible_format_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    drop(Store::open(dir.path(), quick())?);
    let marker = dir.path().join("FORMAT");
    let mut bytes = std::fs::read(&marker)?;
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&marker, bytes)?;
    let err = Store::open(dir.path(), quick()).unwrap_err();
    assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
    Ok(())
}

#[test]
fn unchanged_files_are_hard_links_and_deltas_are_bounded() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let (a, b) = (wasm(1), wasm(2));
    let (ia, ib) = (ModuleId::of_wasm(&a), ModuleId::of_wasm(&b));
    let mut s = store.session(None)?;
    s.deploy(ia, &a, &vec![1; 16 * PAGE_SIZE], vec![1])?;
    s.deploy(ib, &b, &vec![2; PAGE_SIZE], vec![2])?;
    let r0 = s.commit()?;
    let mut s = store.session(Some(r0))?;
    let m = s.memory(&ia, RES)?;
    write(&m, 3 * 4096, &[7; 4096]);
    let r1 = s.commit()?;
    let ino = |r: &Root, f: String| -> Result<u64> {
        Ok(std::fs::metadata(dir.path().join(r.to_hex()).join(f))?.ino())
    };
    let (ha, hb) = (ia.to_hex(), ib.to_hex());
    for f in [
        format!("bytecode/{ha}"),
        format!("bytecode/{hb}"),
        format!("memory/{ha}"),
        format!("memory/{ha}.tree"),
        format!("memory/{hb}"),
        format!("blob/{ha}"),
    ] {
        assert_eq!(ino(&r0, f.clone())?, ino(&r1, f)?);
    }
    assert!(
        dir.path()
            .join(r1.to_hex())
            .join(format!("memory/{ha}.diff"))
            .exists()
    );
    // Keep writing new pages: past 1/8 of the memory the commit writes a new image instead.
    let mut root = r1;
    let mut images = HashSet::new();
    for i in 0..40usize {
        let mut s = store.session(Some(root))?;
        let m = s.memory(&ia, RES)?;
        write(&m, (10 + i * 3) * 4096, &[i as u8; 4096]);
        root = s.commit()?;
        images.insert(ino(&root, format!("memory/{ha}"))?);
        let index = store.index(&root)?;
        let delta = index
            .module(&ia)
            .and_then(|e| e.memory().delta())
            .map_or(0, |d| d.pages);
        assert!(
            delta as usize * 4096 * 8 <= 16 * PAGE_SIZE,
            "delta of {delta} pages"
        );
    }
    assert!(images.len() >= 2, "no new full image was written");
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn checkpoint_rollback_restores_content_length_blobs_and_deploys() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![3; 2 * PAGE_SIZE], vec![1])?;
    let base = s.commit()?;
    // Base with a delta, so restoring has to re-apply patched pages.
    let mut s = store.session(Some(base))?;
    let m = s.memory(&id, RES)?;
    write(&m, 100, &[9; 10]);
    let base = s.commit()?;

    let mut s = store.session(Some(base))?;
    let m = s.memory(&id, RES)?;
    let at_open = read(&m);
    let c0 = s.checkpoint()?;
    write(&m, 0, &[5; 9000]);
    m.grow_to(4 * PAGE_SIZE)?;
    write(&m, 3 * PAGE_SIZE + 1, &[6; 3]);
    s.set_blob(&id, vec![2])?;
    let after_first = read(&m);
    let c1 = s.checkpoint()?;
    write(&m, 50, &[1; 70000]);
    m.grow_to(5 * PAGE_SIZE)?;
    let code2 = wasm(2);
    let id2 = ModuleId::of_wasm(&code2);
    s.deploy(id2, &code2, &[], vec![])?;
    s.set_blob(&id, vec![3])?;
    s.rollback(&c1)?;
    assert_eq!(read(&m), after_first);
    assert_eq!(s.blob(&id)?, vec![2]);
    assert!(!s.contains(&id2));
    s.rollback(&c0)?;
    assert_eq!(m.len(), 2 * PAGE_SIZE);
    assert_eq!(read(&m), at_open);
    assert_eq!(s.blob(&id)?, vec![1]);
    // Rolling forward to a later checkpoint works too.
    s.rollback(&c1)?;
    assert_eq!(read(&m), after_first);
    s.rollback(&c0)?;
    assert_eq!(s.commit()?, base, "a rolled-back session equals its base");
    let other = store.session(None)?.checkpoint()?;
    let mut s = store.session(Some(base))?;
    assert!(matches!(
        s.rollback(&other),
        Err(StoreError::InvalidInput { .. })
    ));
    Ok(())
}

#[test]
fn deferred_delete_waits_for_sessions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![4; PAGE_SIZE], vec![1])?;
    let root = s.commit()?;
    let mut s1 = store.session(Some(root))?;
    let s2 = store.session(Some(root))?;
    assert_eq!(store.delete(&root)?, Deletion::Deferred { sessions: 2 });
    assert!(!store.contains(&root));
    assert!(matches!(
        store.session(Some(root)),
        Err(StoreError::NotFound(_))
    ));
    // The sessions still read and commit from it.
    let m = s1.memory(&id, RES)?;
    assert_eq!(read(&m)[0], 4);
    write(&m, 0, &[5]);
    let child = s1.commit()?;
    assert!(dir.path().join(root.to_hex()).exists());
    drop(s2);
    assert!(!dir.path().join(root.to_hex()).exists());
    assert_eq!(store.read_memory(&child, &id)?[..2], [5, 4]);
    assert_eq!(store.commits().len(), 1);
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let err = Store::open(dir.path(), quick()).unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    drop(store);
    Store::open(dir.path(), quick())?;
    Ok(())
}

#[test]
fn committing_a_deferred_deleted_state_revives_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![4; PAGE_SIZE], vec![1])?;
    let root = s.commit()?;
    let s = store.session(Some(root))?;
    assert_eq!(store.delete(&root)?, Deletion::Deferred { sessions: 1 });
    assert_eq!(s.commit()?, root);
    assert!(store.contains(&root));
    assert_eq!(store.read_memory(&root, &id)?[0], 4);
    Ok(())
}

#[test]
fn store_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send_sync::<MemoryHandle>();
    send::<Session>();
    send::<store_commit::Checkpoint>();
}

#[test]
fn deleting_an_intermediate_commit_keeps_its_children() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![1; 4 * PAGE_SIZE], vec![1])?;
    let mut roots = vec![s.commit()?];
    let mut expected = Vec::new();
    for i in 0..4u8 {
        let mut s = store.session(roots.last().copied())?;
        let m = s.memory(&id, RES)?;
        write(&m, i as usize * 4096, &[i + 10; 4096]);
        expected.push(read(&m));
        roots.push(s.commit()?);
    }
    store.delete(&roots[0])?;
    store.delete(&roots[2])?;
    for (i, r) in roots.iter().enumerate().skip(1) {
        if i == 2 {
            assert!(!store.contains(r));
            continue;
        }
        assert_eq!(store.read_memory(r, &id)?, expected[i - 1]);
        let mut s = store.session(Some(*r))?;
        assert_eq!(read(&s.memory(&id, RES)?), expected[i - 1]);
    }
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    let report = store.verify()?;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.checked, 3);
    assert_eq!(store.latest(), roots.last().copied());
    Ok(())
}

#[test]
fn reopen_with_a_thousand_commits_reads_no_memory_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(id, &code, &vec![1; PAGE_SIZE], vec![])?;
    let mut root = s.commit()?;
    const N: usize = 1000;
    for i in 1..N {
        let mut s = store.session(Some(root))?;
        s.set_blob(&id, (i as u32).to_le_bytes().to_vec())?;
        root = s.commit()?;
    }
    drop(store);
    let fs = Arc::new(FaultFs::new(Arc::new(RealFs)));
    let store = Store::open_with_fs(dir.path(), quick(), fs.clone())?;
    let log = fs.take_log();
    let reads: Vec<_> = log
        .iter()
        .filter(|(op, _)| matches!(op, Op::ReadFile | Op::OpenRead))
        .collect();
    assert_eq!(reads.len(), N + 1, "one index per commit plus the marker");
    assert!(
        log.iter()
            .all(|(_, p)| !p.to_string_lossy().contains("/memory")),
        "reopen touched a memory file"
    );
    let commits = store.commits();
    assert_eq!(commits.len(), N);
    assert!(commits.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.latest(), Some(root));
    Ok(())
}

/// A file system that never syncs (fault tests count the sync calls, but need not wait for them).
#[derive(Debug)]
struct NoSync;

impl Fs for NoSync {
    fn create_dir(&self, p: &Path) -> std::io::Result<()> {
        RealFs.create_dir(p)
    }
    fn write_file(&self, p: &Path, d: &[u8], s: bool) -> std::io::Result<()> {
        RealFs.write_file(p, d, s)
    }
    fn sync_file(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn sync_dir(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn rename(&self, f: &Path, t: &Path) -> std::io::Result<()> {
        RealFs.rename(f, t)
    }
    fn hard_link(&self, o: &Path, l: &Path) -> std::io::Result<()> {
        RealFs.hard_link(o, l)
    }
    fn remove_all(&self, p: &Path) -> std::io::Result<()> {
        RealFs.remove_all(p)
    }
    fn read_dir(&self, p: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        RealFs.read_dir(p)
    }
    fn read_file(&self, p: &Path) -> std::io::Result<Vec<u8>> {
        RealFs.read_file(p)
    }
    fn open_read(&self, p: &Path) -> std::io::Result<std::fs::File> {
        RealFs.open_read(p)
    }
    fn exists(&self, p: &Path) -> std::io::Result<bool> {
        RealFs.exists(p)
    }
    fn lock(&self, p: &Path) -> std::io::Result<std::fs::File> {
        RealFs.lock(p)
    }
}

struct FaultCase {
    dir: tempfile::TempDir,
    fs: Arc<FaultFs>,
    store: Store,
    base: Root,
    ids: [ModuleId; 3],
}

fn fault_case() -> Result<FaultCase> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FaultFs::new(Arc::new(NoSync)));
    fs.set_logging(false);
    let config = StoreConfig::default(); // fsync on: the sync calls are part of what can fail
    let store = Store::open_with_fs(dir.path(), config, fs.clone())?;
    let codes = [wasm(1), wasm(2), wasm(3)];
    let ids = [0, 1, 2].map(|i| ModuleId::of_wasm(&codes[i]));
    let mut s = store.session(None)?;
    s.deploy(ids[0], &codes[0], &vec![1; 2 * PAGE_SIZE], vec![1])?;
    s.deploy(ids[1], &codes[1], &vec![2; PAGE_SIZE], vec![2])?;
    let r0 = s.commit()?;
    let mut s = store.session(Some(r0))?;
    let m = s.memory(&ids[0], RES)?;
    write(&m, 10, &[3; 10]);
    let base = s.commit()?;
    Ok(FaultCase {
        dir,
        fs,
        store,
        base,
        ids,
    })
}

/// The commit under test: a new module, a delta on top of a delta, a grown memory, a new blob.
fn faulty_session(case: &FaultCase) -> Result<Session> {
    session_under_test(&case.store, case.base, &case.ids)
}

fn session_under_test(store: &Store, base: Root, ids: &[ModuleId; 3]) -> Result<Session> {
    let code = wasm(3);
    let mut s = store.session(Some(base))?;
    s.deploy(ids[2], &code, &vec![4; PAGE_SIZE], vec![4])?;
    let m = s.memory(&ids[0], RES)?;
    write(&m, 20_000, &[5; 10]);
    let m = s.memory(&ids[1], RES)?;
    m.grow_to(2 * PAGE_SIZE)?;
    write(&m, PAGE_SIZE + 5, &[6]);
    s.set_blob(&ids[1], vec![7])?;
    Ok(s)
}

#[test]
fn fault_injection_at_every_operation_of_a_commit() -> Result<()> {
    // Count the operations of one clean commit (session creation and memory opening excluded).
    let case = fault_case()?;
    let s = faulty_session(&case)?;
    let before = case.fs.ops();
    let expected_root = s.commit()?;
    let n = case.fs.ops() - before;
    assert!(n > 15, "a commit should take more than {n} operations");
    let base_memory = case.store.read_memory(&case.base, &case.ids[0])?;
    for k in 0..n {
        for mode in [FaultMode::Once, FaultMode::FromThenOn] {
            let case = fault_case()?;
            let s = faulty_session(&case)?;
            let errno = if k % 2 == 0 { 28 } else { 5 }; // ENOSPC, EIO
            case.fs.fail_at(case.fs.ops() + k, mode, errno);
            let result = s.commit();
            let err = result.expect_err("an injected fault must fail the commit");
            assert!(matches!(err, StoreError::Io { .. }), "op {k}: {err}");
            case.fs.heal();
            // Writes are refused after the error, reads still work.
            if case.store.is_poisoned() {
                let s = faulty_session(&case)?;
                assert!(matches!(s.commit(), Err(StoreError::Poisoned)));
                assert!(matches!(
                    case.store.delete(&case.base),
                    Err(StoreError::Poisoned)
                ));
            }
            assert_eq!(
                case.store.read_memory(&case.base, &case.ids[0])?,
                base_memory
            );
            // Reopen: everything committed before is intact, the failed commit whole or absent.
            let FaultCase {
                dir,
                fs,
                store: old,
                base,
                ids,
            } = case;
            drop(old);
            let store = Store::open(dir.path(), quick())?;
            let report = store.verify()?;
            assert!(report.is_ok(), "op {k} {mode:?}: {:?}", report.problems);
            assert!(store.contains(&base));
            let extra: Vec<_> = store
                .commits()
                .into_iter()
                .filter(|c| c.root != base)
                .collect();
            assert!(extra.len() <= 2, "op {k}: {extra:?}");
            for c in &extra {
                assert!(c.root == expected_root || Some(c.root) == store.index(&base)?.parent());
            }
            for name in std::fs::read_dir(dir.path())? {
                let name = name?.file_name();
                assert!(
                    !name.to_string_lossy().starts_with('.'),
                    "leftover {name:?}"
                );
            }
            // The store works again after reopening.
            let case = FaultCase {
                store,
                fs,
                dir,
                base,
                ids,
            };
            assert_eq!(faulty_session(&case)?.commit()?, expected_root);
        }
    }
    Ok(())
}

#[test]
fn fault_injection_at_every_operation_of_a_delete() -> Result<()> {
    let case = fault_case()?;
    let before = case.fs.ops();
    case.store.delete(&case.base)?;
    let n = case.fs.ops() - before;
    for k in 0..n {
        let case = fault_case()?;
        case.fs
            .fail_at(case.fs.ops() + k, FaultMode::FromThenOn, 28);
        assert!(case.store.delete(&case.base).is_err());
        assert!(case.store.is_poisoned());
        case.fs.heal();
        let FaultCase {
            dir, store: old, ..
        } = case;
        drop(old);
        let store = Store::open(dir.path(), quick())?;
        assert!(store.verify()?.is_ok());
        assert_eq!(
            store.commits().len(),
            2 - usize::from(store.commits().len() < 2)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Simulated power loss: every directory back to its last sync, every file to its last sync.

/// Every module's bytecode, memory and blob in a commit, read back through the files.
fn contents(store: &Store, root: &Root) -> Result<ModelState> {
    let index = store.index(root)?;
    let mut s = store.session(Some(*root))?;
    let mut out = ModelState::new();
    for m in index.modules() {
        let mem = store.read_memory(root, &m.id())?;
        ensure!(
            read(&s.memory(&m.id(), RES)?) == mem,
            "mapped memory differs"
        );
        out.insert(
            m.id(),
            (s.bytecode(&m.id())?, mem, store.read_blob(root, &m.id())?),
        );
    }
    Ok(out)
}

/// Reopens after the loss and checks: no leftovers, everything verifies, exactly the `must`
/// commits plus any of the `may` ones are listed, and each has its expected content.
fn check_after_power_loss(
    dir: &Path,
    must: &HashMap<Root, ModelState>,
    may: &HashMap<Root, ModelState>,
    what: &str,
) -> Result<Store> {
    // Without fsync: what happens after the loss is not under test, and real syncs are slow.
    let store = Store::open(dir, quick())?;
    for name in std::fs::read_dir(dir)? {
        let name = name?.file_name();
        ensure!(
            !name.to_string_lossy().starts_with('.'),
            "{what}: leftover {name:?}"
        );
    }
    let report = store.verify()?;
    ensure!(report.is_ok(), "{what}: {:?}", report.problems);
    for root in must.keys() {
        ensure!(
            store.contains(root),
            "{what}: acknowledged commit {root} lost"
        );
    }
    for c in store.commits() {
        let expected = must
            .get(&c.root)
            .or_else(|| may.get(&c.root))
            .with_context(|| format!("{what}: unexpected commit {}", c.root))?;
        ensure!(
            &contents(&store, &c.root)? == expected,
            "{what}: commit {} has the wrong content",
            c.root
        );
        ensure!(model_root(expected) == c.root, "{what}: model root differs");
    }
    Ok(store)
}

struct PowerCase {
    dir: tempfile::TempDir,
    fs: Arc<PowerLossFs>,
    store: Store,
    base: Root,
    ids: [ModuleId; 3],
    /// The two commits made before the one under test, with their contents.
    committed: HashMap<Root, ModelState>,
}

/// The same two commits as [`fault_case`], made durable through a [`PowerLossFs`] (fsync on; the
/// real syncs are skipped, the simulation tracks them).
fn power_case() -> Result<PowerCase> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(PowerLossFs::new(Arc::new(NoSync)));
    let store = Store::open_with_fs(dir.path(), StoreConfig::default(), fs.clone())?;
    let codes = [wasm(1), wasm(2), wasm(3)];
    let ids = [0, 1, 2].map(|i| ModuleId::of_wasm(&codes[i]));
    let mut s = store.session(None)?;
    s.deploy(ids[0], &codes[0], &vec![1; 2 * PAGE_SIZE], vec![1])?;
    s.deploy(ids[1], &codes[1], &vec![2; PAGE_SIZE], vec![2])?;
    let r0 = s.commit()?;
    let mut s = store.session(Some(r0))?;
    let m = s.memory(&ids[0], RES)?;
    write(&m, 10, &[3; 10]);
    let base = s.commit()?;
    let mut committed = HashMap::new();
    for r in [r0, base] {
        committed.insert(r, contents(&store, &r)?);
    }
    Ok(PowerCase {
        dir,
        fs,
        store,
        base,
        ids,
        committed,
    })
}

#[test]
fn power_loss_at_every_operation_of_a_commit_and_a_delete() -> Result<()> {
    // Count the operations of one clean commit and of one clean delete.
    let case = power_case()?;
    let s = session_under_test(&case.store, case.base, &case.ids)?;
    let before = case.fs.ops();
    let root = s.commit()?;
    let commit_ops = case.fs.ops() - before;
    let expected = HashMap::from([(root, contents(&case.store, &root)?)]);
    let before = case.fs.ops();
    case.store.delete(&case.base)?;
    let delete_ops = case.fs.ops() - before;
    assert!(
        commit_ops > 15,
        "a commit took only {commit_ops} operations"
    );
    assert!(
        delete_ops >= 3,
        "a delete took only {delete_ops} operations"
    );
    eprintln!("power loss at each of {commit_ops} commit and {delete_ops} delete operations");
    drop(case);

    // The cut at k fails operation k of the commit; k == commit_ops cuts just after it returned.
    for k in 0..=commit_ops {
        let case = power_case()?;
        let s = session_under_test(&case.store, case.base, &case.ids)?;
        case.fs.cut_at(case.fs.ops() + k);
        let result = s.commit();
        assert_eq!(result.is_ok(), k == commit_ops, "op {k}: {result:?}");
        let PowerCase {
            dir,
            fs,
            store,
            base,
            ids,
            mut committed,
        } = case;
        drop(store);
        fs.power_cut()?;
        let may = if k == commit_ops {
            committed.extend(expected.clone());
            HashMap::new()
        } else {
            expected.clone()
        };
        let what = format!("commit, power lost at op {k} of {commit_ops}");
        let store = check_after_power_loss(dir.path(), &committed, &may, &what)?;
        // The store works again: the same commit, or no-op if it survived.
        assert_eq!(session_under_test(&store, base, &ids)?.commit()?, root);
        assert_eq!(contents(&store, &root)?, expected[&root], "{what}");
    }

    for k in 0..=delete_ops {
        let case = power_case()?;
        case.fs.cut_at(case.fs.ops() + k);
        let result = case.store.delete(&case.base);
        assert_eq!(result.is_ok(), k == delete_ops, "op {k}: {result:?}");
        let PowerCase {
            dir,
            fs,
            store,
            base,
            ids,
            mut committed,
        } = case;
        drop(store);
        fs.power_cut()?;
        let base_state = committed.remove(&base).context("base")?;
        let may = if k == delete_ops {
            HashMap::new()
        } else {
            HashMap::from([(base, base_state)])
        };
        let what = format!("delete, power lost at op {k} of {delete_ops}");
        let store = check_after_power_loss(dir.path(), &committed, &may, &what)?;
        if store.contains(&base) {
            store.delete(&base)?;
        }
        let r0 = *committed.keys().next().context("r0")?;
        let mut s = store.session(Some(r0))?;
        write(&s.memory(&ids[0], RES)?, 0, &[9]);
        let next = s.commit()?;
        drop(store);
        let store = Store::open(dir.path(), quick())?;
        assert!(store.contains(&next) && store.verify()?.is_ok(), "{what}");
    }
    Ok(())
}

/// A store whose directory `Store::open` creates: its commits survive a power loss only if the new
/// directories' entries were synced into their parents (found by this test: they were not).
#[test]
fn power_loss_keeps_the_commits_of_a_newly_created_store_directory() -> Result<()> {
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut state = ModelState::new();
    state.insert(id, (code.clone(), vec![1; PAGE_SIZE], vec![1]));
    let root = model_root(&state);
    // Every operation of open + commit, and just after.
    let mut k = 0;
    loop {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("new").join("store");
        let fs = Arc::new(PowerLossFs::new(Arc::new(NoSync)));
        assert!(fs.exists(tmp.path())?); // the simulated disk: the existing temporary directory
        fs.cut_at(fs.ops() + k);
        let committed =
            Store::open_with_fs(&dir, StoreConfig::default(), fs.clone()).and_then(|store| {
                let mut s = store.session(None)?;
                s.deploy(id, &code, &vec![1; PAGE_SIZE], vec![1])?;
                s.commit()
            });
        let what = format!("new store, power lost at op {k}");
        fs.power_cut().context(what.clone())?;
        let store = Store::open(&dir, quick()).context(what.clone())?;
        if let Ok(r) = &committed {
            assert_eq!(*r, root);
            assert!(store.contains(&root), "{what}: acknowledged commit lost");
        }
        for c in store.commits() {
            assert_eq!(c.root, root, "{what}");
            assert_eq!(contents(&store, &root)?, state, "{what}");
        }
        assert!(store.verify()?.is_ok(), "{what}");
        if committed.is_ok() {
            eprintln!("open + first commit of a new store: {k} operations");
            return Ok(());
        }
        k += 1;
    }
}

/// Seeded sequences of commits (deploys, writes, grows, blob changes, large blobs) and deletes,
/// with the power cut at a random operation; then the same checks as above for everything
/// acknowledged before the cut.
#[test]
fn power_loss_at_random_points_of_commit_and_delete_sequences() -> Result<()> {
    let rounds: u64 = std::env::var("STRATA_POWER_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(24);
    let (mut cut_inside, mut cut_deletes, mut acked_total) = (0, 0, 0);
    for round in 0..rounds {
        let mut rng = (round + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let dir = tempfile::tempdir()?;
        let fs = Arc::new(PowerLossFs::new(Arc::new(NoSync)));
        let config = StoreConfig {
            delta_ratio: 4,
            ..StoreConfig::default()
        };
        let store = Store::open_with_fs(dir.path(), config, fs.clone())?;
        // About 25 operations per commit: cut somewhere in (or just after) ten steps.
        fs.cut_at(fs.ops() + next() % 260);
        let mut acked: HashMap<Root, ModelState> = HashMap::new();
        let mut order: Vec<Root> = Vec::new();
        // What was in flight at the cut: a commit's expected state, or a delete.
        let mut in_flight: Option<(Root, Option<ModelState>)> = None;
        for step in 0..10u64 {
            if order.len() > 2 && next() % 4 == 0 {
                let victim = order[(next() % order.len() as u64) as usize];
                match store.delete(&victim) {
                    Ok(_) => {
                        order.retain(|r| *r != victim);
                        acked.remove(&victim);
                        continue;
                    }
                    Err(_) => {
                        in_flight = Some((victim, None));
                        break;
                    }
                }
            }
            let base = match order.len() {
                0 => None,
                n => Some(order[(next() % n as u64) as usize]),
            };
            let mut state = base.map(|b| acked[&b].clone()).unwrap_or_default();
            let Ok(mut s) = store.session(base) else {
                break;
            };
            let mut work = || -> Result<()> {
                if state.len() < 3 && (state.is_empty() || next() % 3 == 0) {
                    let code = (round * 100 + step).to_le_bytes().to_vec();
                    let mem = vec![step as u8; (1 + next() % 3) as usize * PAGE_SIZE];
                    let id = ModuleId::of_wasm(&code);
                    s.deploy(id, &code, &mem, vec![step as u8])?;
                    state.insert(id, (code, mem, vec![step as u8]));
                }
                let ids: Vec<ModuleId> = state.keys().copied().collect();
                let id = ids[(next() % ids.len() as u64) as usize];
                let entry = state.get_mut(&id).context("module")?;
                let m = s.memory(&id, RES)?;
                if next() % 4 == 0 && m.len() < RES {
                    m.grow_to(m.len() + PAGE_SIZE)?;
                    entry.1.resize(m.len(), 0);
                }
                for _ in 0..1 + next() % 6 {
                    let at = (next() as usize) % (m.len() - 8);
                    let bytes = next().to_le_bytes();
                    write(&m, at, &bytes);
                    entry.1[at..at + 8].copy_from_slice(&bytes);
                }
                entry.2 = if next() % 3 == 0 {
                    // Large: stored as a patch against the base's full blob when that pays.
                    let mut big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
                    big[(next() % 70_000) as usize] ^= 0x5a;
                    big
                } else {
                    next().to_le_bytes().to_vec()
                };
                s.set_blob(&id, entry.2.clone())?;
                Ok(())
            };
            if work().is_err() {
                break; // an operation before the commit hit the cut
            }
            let expected_root = model_root(&state);
            match s.commit() {
                Ok(root) => {
                    assert_eq!(root, expected_root, "round {round}");
                    if !acked.contains_key(&root) {
                        order.push(root);
                    }
                    acked.insert(root, state);
                }
                Err(_) => {
                    in_flight = Some((expected_root, Some(state)));
                    break;
                }
            }
        }
        drop(store);
        fs.power_cut()?;
        let mut may = HashMap::new();
        acked_total += acked.len();
        if let Some((root, state)) = in_flight {
            cut_inside += 1;
            cut_deletes += usize::from(state.is_none());
            match state {
                Some(state) => {
                    may.insert(root, state);
                }
                None => {
                    may.insert(root, acked.remove(&root).context("victim")?);
                }
            }
        }
        let what = format!("round {round}");
        let store = check_after_power_loss(dir.path(), &acked, &may, &what)?;
        // A new commit works after the loss.
        let mut s = store.session(store.latest())?;
        let code = wasm(200);
        s.deploy(ModuleId::of_wasm(&code), &code, &vec![1; PAGE_SIZE], vec![])?;
        let root = s.commit()?;
        drop(store);
        let store = Store::open(dir.path(), quick())?;
        assert!(store.contains(&root), "{what}");
        assert!(store.verify()?.is_ok(), "{what}");
    }
    eprintln!(
        "{rounds} rounds, {cut_inside} cut inside a commit or delete ({cut_deletes} deletes), \
         {acked_total} acknowledged commits checked after the loss"
    );
    assert!(
        rounds < 4 || cut_inside * 2 >= rounds,
        "only {cut_inside} of {rounds} cuts hit a commit or delete"
    );
    Ok(())
}

#[test]
fn concurrent_sessions_and_deletes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let mut s = store.session(None)?;
    let ids: Vec<ModuleId> = (0..4u8)
        .map(|t| {
            let code = wasm(t);
            let id = ModuleId::of_wasm(&code);
            s.deploy(id, &code, &vec![t; 2 * PAGE_SIZE], vec![t])
                .map(|()| id)
        })
        .collect::<Result<_, _>>()?;
    let genesis = s.commit()?;
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(t, id)| {
            let (store, id) = (store.clone(), *id);
            std::thread::spawn(move || -> Result<Vec<(Root, Vec<u8>)>> {
                let mut mine = Vec::new();
                let mut base = genesis;
                for i in 0..15usize {
                    let mut s = match store.session(Some(base)) {
                        Ok(s) => s,
                        Err(StoreError::NotFound(_)) => store.session(Some(genesis))?,
                        Err(e) => return Err(e.into()),
                    };
                    let m = s.memory(&id, RES)?;
                    write(
                        &m,
                        (i * 4099) % (2 * PAGE_SIZE - 8),
                        &[(t * 16 + i) as u8 | 0x80; 8],
                    );
                    let content = read(&m);
                    base = s.commit()?;
                    mine.push((base, content));
                    // Delete an older commit of this thread now and then; others may hold it.
                    if i % 3 == 2 {
                        let old = mine.remove(0).0;
                        match store.delete(&old) {
                            Ok(_) | Err(StoreError::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(mine)
            })
        })
        .collect();
    let mut kept = Vec::new();
    for (t, th) in threads.into_iter().enumerate() {
        let mine = th
            .join()
            .map_err(|_| anyhow::anyhow!("thread panicked"))??;
        kept.extend(mine.into_iter().map(|(r, c)| (ids[t], r, c)));
    }
    let report = store.verify()?;
    assert!(report.is_ok(), "{:?}", report.problems);
    for (id, root, content) in kept {
        assert_eq!(store.read_memory(&root, &id)?, content);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Crash test.

const CRASH_CHILD: &str = "STRATA_STORE_CRASH_CHILD";

fn crash_child(dir: &Path, seed: u64) -> Result<()> {
    use std::io::Write;
    let store = Store::open(dir, StoreConfig::default())?;
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let base = store.latest();
        let mut s = store.session(base)?;
        if s.modules().len() < 3 && next() % 4 == 0 || s.modules().is_empty() {
            let code = (seed * 1000 + i).to_le_bytes().to_vec();
            let pages = 1 + (next() % 4) as usize;
            s.deploy(
                ModuleId::of_wasm(&code),
                &code,
                &vec![i as u8; pages * PAGE_SIZE],
                vec![],
            )?;
        }
        let modules = s.modules();
        let id = modules[(next() % modules.len() as u64) as usize];
        let m = s.memory(&id, RES)?;
        if next() % 5 == 0 && m.len() < RES {
            m.grow_to(m.len() + PAGE_SIZE)?;
        }
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % (m.len() - 16);
            write(&m, at, &next().to_le_bytes());
        }
        s.set_blob(&id, next().to_le_bytes().to_vec())?;
        writeln!(out, "begin")?;
        out.flush()?;
        let root = s.commit()?;
        writeln!(out, "commit {root}")?;
        out.flush()?;
        // Deletes keep the store small (the parent verifies all of it after every kill): a third
        // of the time above 4 commits, and always above 8.
        let commits = store.commits();
        if commits.len() > 8 || (commits.len() > 4 && next() % 3 == 0) {
            let victim = commits[(next() % (commits.len() as u64 - 1)) as usize].root;
            writeln!(out, "deleting {victim}")?;
            out.flush()?;
            store.delete(&victim)?;
            writeln!(out, "deleted {victim}")?;
            out.flush()?;
        }
    }
    Ok(())
}

#[test]
fn crash_test_sigkill_at_random_moments() -> Result<()> {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        let seed = std::env::var("STRATA_CRASH_SEED")?.parse()?;
        return crash_child(Path::new(&dir), seed);
    }
    let rounds: u64 = std::env::var("STRATA_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let name = test_name("crash_test_sigkill_at_random_moments");
    let mut live: HashSet<Root> = HashSet::new();
    let mut total = 0;
    let (mut kills_in_commit, mut kills_in_delete, mut unreported_seen) = (0, 0, 0);
    let start = std::time::Instant::now();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["--exact", &name, "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD, dir.path())
            .env("STRATA_CRASH_SEED", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let wait = 20 + (round * 7919) % 80;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill()?;
        child.wait()?;
        let lines = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        let mut in_doubt: HashSet<Root> = HashSet::new();
        let mut in_commit = false;
        for line in &lines {
            if line.ends_with("begin") {
                in_commit = true;
                continue;
            }
            // The harness may print its own text before the first line of ours.
            let mut words = line.split(' ').rev();
            let (Some(hex), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(root) = Root::from_hex(hex) else {
                continue; // test harness output
            };
            match what {
                "commit" => {
                    live.insert(root);
                    total += 1;
                    in_commit = false;
                }
                "deleting" => {
                    in_doubt.insert(root);
                }
                "deleted" => {
                    in_doubt.remove(&root);
                    live.remove(&root);
                }
                _ => bail!("unexpected line {line}"),
            }
        }
        kills_in_commit += u64::from(in_commit);
        kills_in_delete += u64::from(!in_doubt.is_empty());
        let store = Store::open(dir.path(), StoreConfig::default())?;
        for name in std::fs::read_dir(dir.path())? {
            let name = name?.file_name();
            ensure!(
                !name.to_string_lossy().starts_with('.'),
                "leftover {name:?}"
            );
        }
        let report = store.verify()?;
        ensure!(report.is_ok(), "round {round}: {:?}", report.problems);
        for root in &in_doubt {
            if !store.contains(root) {
                live.remove(root);
            }
        }
        let on_disk: HashSet<Root> = store.commits().into_iter().map(|c| c.root).collect();
        for root in &live {
            ensure!(
                on_disk.contains(root),
                "round {round}: reported commit {root} lost"
            );
            let index = store.index(root)?;
            for m in index.modules() {
                store.read_memory(root, &m.id())?;
            }
        }
        // At most the one commit in flight at the kill was not reported.
        let unreported: Vec<_> = on_disk.difference(&live).collect();
        ensure!(
            unreported.len() <= 1,
            "round {round}: unreported commits {:?}, child said {:?}",
            unreported
                .iter()
                .map(|r| store.index(r).map(|i| (**r, i.seq(), i.parent())))
                .collect::<Vec<_>>(),
            &lines[lines.len().saturating_sub(6)..]
        );
        unreported_seen += unreported.len();
        live = on_disk;
        if (round + 1) % 100 == 0 || round + 1 == rounds {
            println!(
                "store crash: {} rounds in {:.1} s, {total} commits reported, {kills_in_commit} \
                 kills inside a commit ({unreported_seen} of those commits appeared whole), \
                 {kills_in_delete} inside a delete, {} commits alive",
                round + 1,
                start.elapsed().as_secs_f64(),
                live.len()
            );
        }
    }
    ensure!(total > 0, "the child never committed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Property test against an in-memory model.

#[derive(Clone, Debug)]
enum SessionOp {
    Deploy {
        module: u8,
        pages: u8,
        fill: u8,
    },
    Write {
        module: u8,
        at: u32,
        len: u16,
        byte: u8,
    },
    Grow {
        module: u8,
        pages: u8,
    },
    Blob {
        module: u8,
        blob: Vec<u8>,
    },
    /// Make the blob large (stored as a patch when that pays), or edit a large blob.
    BigBlob {
        module: u8,
        at: u32,
        insert: bool,
    },
    Checkpoint,
    Rollback,
}

#[derive(Clone, Debug)]
enum ModelOp {
    Session {
        base: u8,
        ops: Vec<SessionOp>,
        commit: bool,
    },
    Delete(u8),
    Reopen,
}

fn session_op() -> impl Strategy<Value = SessionOp> {
    prop_oneof![
        1 => (0u8..4, 0u8..4, any::<u8>())
            .prop_map(|(module, pages, fill)| SessionOp::Deploy { module, pages, fill }),
        4 => (0u8..4, any::<u32>(), 1u16..9000, any::<u8>())
            .prop_map(|(module, at, len, byte)| SessionOp::Write { module, at, len, byte }),
        1 => (0u8..4, 0u8..3).prop_map(|(module, pages)| SessionOp::Grow { module, pages }),
        1 => (0u8..4, proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(module, blob)| SessionOp::Blob { module, blob }),
        1 => (0u8..4, any::<u32>(), any::<bool>())
            .prop_map(|(module, at, insert)| SessionOp::BigBlob { module, at, insert }),
        1 => Just(SessionOp::Checkpoint),
        1 => Just(SessionOp::Rollback),
    ]
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (any::<u8>(), proptest::collection::vec(session_op(), 0..12), prop::bool::weighted(0.85))
            .prop_map(|(base, ops, commit)| ModelOp::Session { base, ops, commit }),
        1 => any::<u8>().prop_map(ModelOp::Delete),
        1 => Just(ModelOp::Reopen),
    ]
}

fn run_model(ops: Vec<ModelOp>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        fsync: false,
        delta_ratio: 4,
        ..StoreConfig::default()
    };
    let mut store = Store::open(dir.path(), config.clone())?;
    let mut model: HashMap<Root, ModelState> = HashMap::new();
    let mut order: Vec<Root> = Vec::new();
    for op in ops {
        match op {
            ModelOp::Reopen => {
                drop(store);
                store = Store::open(dir.path(), config.clone())?;
            }
            ModelOp::Delete(i) => {
                if order.is_empty() {
                    continue;
                }
                let root = order.remove(i as usize % order.len());
                model.remove(&root);
                assert_eq!(store.delete(&root)?, Deletion::Deleted);
            }
            ModelOp::Session { base, ops, commit } => {
                let base = match base as usize % (order.len() + 1) {
                    0 => None,
                    i => Some(order[i - 1]),
                };
                let mut state: ModelState = base.map(|b| model[&b].clone()).unwrap_or_default();
                let mut s = store.session(base)?;
                let mut handles: HashMap<ModuleId, MemoryHandle> = HashMap::new();
                let mut saved: Option<(store_commit::Checkpoint, ModelState)> = None;
                for op in ops {
                    let pick = |m: u8, state: &ModelState| {
                        let keys: Vec<ModuleId> = state.keys().copied().collect();
                        (!keys.is_empty()).then(|| keys[m as usize % keys.len()])
                    };
                    match op {
                        SessionOp::Deploy {
                            module,
                            pages,
                            fill,
                        } => {
                            let code = wasm(module);
                            let id = ModuleId::of_wasm(&code);
                            let mut mem = vec![0u8; pages as usize * PAGE_SIZE];
                            for (i, b) in mem.iter_mut().enumerate().step_by(997) {
                                *b = fill.wrapping_add(i as u8);
                            }
                            let r = s.deploy(id, &code, &mem, vec![fill]);
                            match state.entry(id) {
                                Entry::Occupied(_) => assert!(
                                    matches!(r, Err(StoreError::AlreadyDeployed { .. })),
                                    "{r:?}"
                                ),
                                Entry::Vacant(v) => {
                                    r?;
                                    v.insert((code, mem, vec![fill]));
                                }
                            }
                        }
                        SessionOp::Write {
                            module,
                            at,
                            len,
                            byte,
                        } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            let m = match handles.get(&id) {
                                Some(m) => m.clone(),
                                None => s.memory(&id, RES)?,
                            };
                            handles.insert(id, m.clone());
                            let mem = &mut state.get_mut(&id).context("module")?.1;
                            if mem.is_empty() {
                                continue;
                            }
                            let at = at as usize % mem.len();
                            let len = (len as usize).min(mem.len() - at);
                            let data: Vec<u8> = (0..len)
                                .map(|i| byte.wrapping_add((i / 4096) as u8))
                                .collect();
                            write(&m, at, &data);
                            mem[at..at + len].copy_from_slice(&data);
                        }
                        SessionOp::Grow { module, pages } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            let m = match handles.get(&id) {
                                Some(m) => m.clone(),
                                None => s.memory(&id, RES)?,
                            };
                            handles.insert(id, m.clone());
                            let mem = &mut state.get_mut(&id).context("module")?.1;
                            let new = mem.len() + pages as usize * PAGE_SIZE;
                            let r = m.grow_to(new);
                            if new > RES {
                                assert!(matches!(r, Err(StoreError::InvalidInput { .. })));
                            } else {
                                r?;
                                mem.resize(new, 0);
                            }
                        }
                        SessionOp::Blob { module, blob } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            s.set_blob(&id, blob.clone())?;
                            state.get_mut(&id).context("module")?.2 = blob;
                        }
                        SessionOp::BigBlob { module, at, insert } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            let blob = &mut state.get_mut(&id).context("module")?.2;
                            if blob.len() < 70_000 {
                                *blob = (0..70_000u32).map(|i| (i % 251) as u8 ^ module).collect();
                            } else {
                                let at = at as usize % blob.len();
                                if insert {
                                    blob.insert(at, module);
                                } else {
                                    blob[at] ^= 0x5a;
                                }
                            }
                            s.set_blob(&id, blob.clone())?;
                        }
                        SessionOp::Checkpoint => saved = Some((s.checkpoint()?, state.clone())),
                        SessionOp::Rollback => {
                            if let Some((c, st)) = &saved {
                                s.rollback(c)?;
                                state = st.clone();
                                handles.retain(|id, _| state.contains_key(id));
                            }
                        }
                    }
                    // The session's view matches the model at every step.
                    for (id, m) in &handles {
                        assert_eq!(&read(m), &state[id].1, "memory of {id} diverged");
                    }
                }
                for id in state.keys() {
                    assert_eq!(s.blob(id)?, state[id].2);
                }
                if !commit {
                    continue;
                }
                let root = s.commit()?;
                assert_eq!(root, model_root(&state), "root differs from the model's");
                if !model.contains_key(&root) {
                    order.push(root);
                }
                model.insert(root, state);
            }
        }
    }
    // Every readable commit matches the model, through the files and through a mapped session.
    let mut listed: Vec<Root> = store.commits().into_iter().map(|c| c.root).collect();
    listed.sort();
    let mut expected: Vec<Root> = model.keys().copied().collect();
    expected.sort();
    assert_eq!(listed, expected);
    for (root, state) in &model {
        let mut s = store.session(Some(*root))?;
        assert_eq!(s.modules(), state.keys().copied().collect::<Vec<_>>());
        for (id, (code, mem, blob)) in state {
            assert_eq!(&store.read_memory(root, id)?, mem);
            assert_eq!(&read(&s.memory(id, RES)?), mem);
            assert_eq!(&s.blob(id)?, blob);
            assert_eq!(&s.bytecode(id)?, code);
        }
    }
    let report = store.verify()?;
    assert!(report.is_ok(), "{:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for a longer run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(model_op(), 1..25)) {
        run_model(ops).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }
}
