//! Fault injection (`FaultFs`) at every file-system operation of a commit and of a delete: the
//! error is reported, the store is poisoned, and a reopen finds every earlier commit intact.
//! Files at their hard-link limit (`EMLINK`) are copied instead, without an error.

use crate::power_loss::contents;
use crate::{RES, quick, wasm, write};
use anyhow::Result;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use store_commit::{Bytecode, ModuleId, PAGE_SIZE, Root, Session, Store, StoreConfig, StoreError};
use strata_fs::{FaultFs, FaultMode, NoSyncFs, Op};

const EIO: i32 = 5;
pub(crate) const EMLINK: i32 = 31;

struct FaultCase {
    dir: tempfile::TempDir,
    fs: Arc<FaultFs>,
    store: Store,
    base: Root,
    ids: [ModuleId; 3],
}

fn fault_case() -> Result<FaultCase> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FaultFs::new(Arc::new(NoSyncFs::real())));
    fs.set_logging(false);
    let config = StoreConfig::default(); // fsync on: the sync calls are part of what can fail
    let store = Store::open_with_fs(dir.path(), config, fs.clone())?;
    let codes = [wasm(1), wasm(2), wasm(3)];
    let ids = [0, 1, 2].map(|i| ModuleId::of_wasm(&codes[i]));
    let mut s = store.session(None)?;
    s.deploy(
        Bytecode::hash(&codes[0][..]),
        vec![1; 2 * PAGE_SIZE],
        vec![1],
    )?;
    s.deploy(Bytecode::hash(&codes[1][..]), vec![2; PAGE_SIZE], vec![2])?;
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

pub(crate) fn session_under_test(
    store: &Store,
    base: Root,
    ids: &[ModuleId; 3],
) -> Result<Session> {
    let code = wasm(3);
    let mut s = store.session(Some(base))?;
    s.deploy(Bytecode::hash(&code[..]), vec![4; PAGE_SIZE], vec![4])?;
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
    fault_injection_at_every_operation_of(Links::Work)
}

/// The same with every hard link refused with `EMLINK`: every operation of the copies.
#[test]
fn fault_injection_at_every_operation_of_a_commit_that_copies() -> Result<()> {
    fault_injection_at_every_operation_of(Links::AtLimit)
}

/// Whether hard links of unchanged files work, or every one fails with `EMLINK`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Links {
    Work,
    AtLimit,
}

fn fault_injection_at_every_operation_of(links: Links) -> Result<()> {
    // Count the operations of one clean commit (session creation and memory opening excluded).
    let case = fault_case()?;
    let s = faulty_session(&case)?;
    if links == Links::AtLimit {
        case.fs.fail_every(Op::HardLink, EMLINK);
    }
    case.fs.set_logging(true);
    let before = case.fs.ops();
    let expected_root = s.commit()?;
    let n = case.fs.ops() - before;
    let log = case.fs.take_ops();
    let copies = log.iter().filter(|op| **op == Op::CreateNew).count();
    assert_eq!(copies > 0, links == Links::AtLimit, "{copies} copies");
    assert!(n > 15, "a commit should take more than {n} operations");
    let base_memory = case.store.read_memory(&case.base, &case.ids[0])?;
    for k in 0..n {
        // A refused link is not a fault that fails the commit: the copy follows.
        if log[k as usize] == Op::HardLink && links == Links::AtLimit {
            continue;
        }
        for mode in [FaultMode::Once, FaultMode::FromThenOn] {
            let case = fault_case()?;
            let s = faulty_session(&case)?;
            if links == Links::AtLimit {
                case.fs.fail_every(Op::HardLink, EMLINK);
            }
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

/// Writes a history of `rounds` commits on top of three deployed modules, each commit changing
/// one module's memory (so the other files are linked from the base): the roots, oldest first.
pub(crate) fn linked_history(store: &Store, rounds: usize) -> Result<(Vec<Root>, ModuleId)> {
    let codes = [wasm(1), wasm(2), wasm(3)];
    let ids = [0, 1, 2].map(|i| ModuleId::of_wasm(&codes[i]));
    let mut s = store.session(None)?;
    // Zero pages in the middle and at the end: a copied image keeps them as holes.
    let mut genesis = vec![1; 4 * PAGE_SIZE];
    genesis[PAGE_SIZE..2 * PAGE_SIZE].fill(0);
    genesis[3 * PAGE_SIZE..].fill(0);
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.deploy(Bytecode::hash(&codes[0][..]), genesis, blob)?;
    s.deploy(Bytecode::hash(&codes[1][..]), vec![2; PAGE_SIZE], vec![2])?;
    s.deploy(Bytecode::hash(&codes[2][..]), vec![3; PAGE_SIZE], vec![3])?;
    let mut roots = vec![s.commit()?];
    for i in 0..rounds {
        let mut s = store.session(roots.last().copied())?;
        let m = s.memory(&ids[(i + 1) % 3], RES)?;
        write(&m, 100 + i, &[i as u8 + 10]);
        roots.push(s.commit()?);
    }
    Ok((roots, ids[0]))
}

/// After about 65,000 commits sharing one unchanged file, `link()` fails with `EMLINK`. The
/// commit copies the file instead: it succeeds with the same root and index as with links, the
/// store is not poisoned (it was, and stayed so across reopens), and every commit reads back
/// unchanged, before and after a reopen.
#[test]
fn files_at_their_link_limit_are_copied_and_the_store_goes_on() -> Result<()> {
    let rounds = 8;
    let reference_dir = tempfile::tempdir()?;
    let reference = Store::open(reference_dir.path(), quick())?;
    let (expected, _) = linked_history(&reference, rounds)?;

    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FaultFs::new(Arc::new(NoSyncFs::real())));
    // fsync on: the copies are synced like every new file.
    let store = Store::open_with_fs(dir.path(), StoreConfig::default(), fs.clone())?;
    // Four links pass, then every one is refused: the first linking commit links some files and
    // copies the rest, every later one copies.
    let allowed = 4;
    fs.fail_after(Op::HardLink, allowed, EMLINK);
    fs.take_log();
    let (roots, image_module) = linked_history(&store, rounds)?;
    assert!(!store.is_poisoned(), "EMLINK poisoned the store");
    let log = fs.take_log();
    let links = log.iter().filter(|(op, _)| *op == Op::HardLink).count() as u64;
    let copies = log.iter().filter(|(op, _)| *op == Op::CreateNew).count() as u64;
    assert!(links > allowed + 10, "only {links} links tried");
    assert_eq!(copies, links - allowed, "every refused link is a copy");
    let synced = |path: &Path| log.iter().any(|(op, p)| *op == Op::SyncFile && p == path);
    for (op, path) in &log {
        if *op == Op::CreateNew {
            // Written into the temporary directory and synced there, like every new file.
            assert!(synced(path), "copy {} not synced", path.display());
        }
    }
    let check = |store: &Store| -> Result<()> {
        assert_eq!(roots, expected, "a copy changed a root");
        let report = store.verify()?;
        assert!(report.is_ok(), "{:?}", report.problems);
        for root in &roots {
            assert_eq!(store.index(root)?, reference.index(root)?);
            assert_eq!(contents(store, root)?, contents(&reference, root)?);
        }
        Ok(())
    };
    check(&store)?;
    // The image of the last commit is a copy (one link: its own), still sparse.
    let image = dir
        .path()
        .join(roots[rounds].to_hex())
        .join(format!("memory/{image_module}"));
    let meta = std::fs::metadata(&image)?;
    assert_eq!(meta.nlink(), 1, "the image was linked, not copied");
    assert_eq!(meta.len(), 4 * PAGE_SIZE as u64);
    assert!(
        meta.blocks() * 512 < meta.len(),
        "the copy lost its holes: {} blocks",
        meta.blocks()
    );

    // After a reopen with working links: the same contents, and the next commit links to the
    // copies.
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    check(&store)?;
    let mut s = store.session(roots.last().copied())?;
    s.set_blob(&image_module, vec![9])?;
    let next = s.commit()?;
    assert!(std::fs::metadata(&image)?.nlink() == 2);
    assert!(store.verify()?.is_ok() && store.contains(&next));
    Ok(())
}

/// Only `EMLINK` is answered with a copy: a link failing otherwise fails the commit and
/// poisons the store, as every I/O error of a commit does.
#[test]
fn a_link_failing_otherwise_still_fails_the_commit() -> Result<()> {
    let case = fault_case()?;
    case.fs.fail_every(Op::HardLink, EIO);
    let err = faulty_session(&case)?.commit().unwrap_err();
    assert!(matches!(&err, StoreError::Io { op: "link", .. }), "{err}");
    assert!(case.store.is_poisoned());
    Ok(())
}
