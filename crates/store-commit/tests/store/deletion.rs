//! Deletion: deferred while sessions hold a commit, revived by committing its state again, and
//! never changing another commit.

use crate::{RES, quick, read, wasm, write};
use anyhow::Result;
use store_commit::{Bytecode, Deletion, ModuleId, PAGE_SIZE, Store, StoreError};

#[test]
fn deferred_delete_waits_for_sessions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![4; PAGE_SIZE], vec![1])?;
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
fn committing_a_deferred_deleted_state_revives_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![4; PAGE_SIZE], vec![1])?;
    let root = s.commit()?;
    let s = store.session(Some(root))?;
    assert_eq!(store.delete(&root)?, Deletion::Deferred { sessions: 1 });
    assert_eq!(s.commit()?, root);
    assert!(store.contains(&root));
    assert_eq!(store.read_memory(&root, &id)?[0], 4);
    Ok(())
}

#[test]
fn deleting_an_intermediate_commit_keeps_its_children() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![1; 4 * PAGE_SIZE], vec![1])?;
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
