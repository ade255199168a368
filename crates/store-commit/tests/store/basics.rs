//! Basic promises of the store's API: the same history gives the same roots in any directory,
//! errors are typed, checkpoints and rollbacks restore everything, the types are thread-safe.

use crate::{RES, quick, read, wasm, write};
use anyhow::Result;
use std::collections::HashSet;
use std::path::Path;
use store_commit::{
    Bytecode, MemoryHandle, Missing, ModuleId, PAGE_SIZE, Root, Session, Store, StoreError,
};

/// Same history, same roots: both a fixed sequence of deploys, writes, grows and blob changes.
fn history(dir: &Path) -> Result<Vec<Root>> {
    let store = Store::open(dir, quick())?;
    let mut roots = Vec::new();
    let mut s = store.session(None)?;
    for n in 0..3u8 {
        let code = wasm(n);
        let genesis = vec![n; (n as usize + 1) * PAGE_SIZE];
        s.deploy(Bytecode::hash(&code[..]), genesis.clone(), vec![n])?;
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
    // The id cannot disagree with the bytecode: `Bytecode` is made only by hashing.
    assert_eq!(Bytecode::hash(&code[..]).id(), id);
    let err = s.deploy(Bytecode::hash(&code[..]), vec![0; 100], vec![]);
    assert!(
        matches!(err, Err(StoreError::InvalidInput { .. })),
        "{err:?}"
    );
    s.deploy(Bytecode::hash(&code[..]), vec![0; PAGE_SIZE], vec![])?;
    let err = s.deploy(Bytecode::hash(&code[..]), vec![], vec![]);
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
fn checkpoint_rollback_restores_content_length_blobs_and_deploys() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![3; 2 * PAGE_SIZE], vec![1])?;
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
    s.deploy(Bytecode::hash(&code2[..]), vec![], vec![])?;
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
fn store_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send_sync::<MemoryHandle>();
    send::<Session>();
    send::<store_commit::Checkpoint>();
}
