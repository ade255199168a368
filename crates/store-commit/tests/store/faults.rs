//! Fault injection (`FaultFs`) at every file-system operation of a commit and of a delete: the
//! error is reported, the store is poisoned, and a reopen finds every earlier commit intact.

use crate::{RES, quick, wasm, write};
use anyhow::Result;
use std::sync::Arc;
use store_commit::{Bytecode, ModuleId, PAGE_SIZE, Root, Session, Store, StoreConfig, StoreError};
use strata_fs::{FaultFs, FaultMode, NoSyncFs};

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
