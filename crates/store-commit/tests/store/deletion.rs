//! Deletion: deferred while sessions hold a commit (durably: a crash before they end does not
//! bring it back), revived by committing its state again, and never changing another commit.

use crate::{RES, quick, read, wasm, write};
use anyhow::{Context, Result, ensure};
use std::path::Path;
use std::time::Duration;
use store_commit::{Bytecode, Deletion, ModuleId, PAGE_SIZE, Root, Store, StoreConfig, StoreError};

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
fn a_deferred_delete_syncs_only_when_the_store_syncs() -> Result<()> {
    use std::sync::Arc;
    use strata_fs::{FaultFs, Op, RealFs};
    for fsync in [false, true] {
        let dir = tempfile::tempdir()?;
        let fs = Arc::new(FaultFs::new(Arc::new(RealFs)));
        let config = StoreConfig {
            fsync,
            ..StoreConfig::default()
        };
        let store = Store::open_with_fs(dir.path(), config, fs.clone())?;
        let code = wasm(1);
        let mut s = store.session(None)?;
        s.deploy(Bytecode::hash(&code[..]), vec![4; PAGE_SIZE], vec![1])?;
        let root = s.commit()?;
        let s = store.session(Some(root))?;
        fs.take_ops();
        ensure!(store.delete(&root)? == Deletion::Deferred { sessions: 1 });
        let ops = fs.take_ops();
        ensure!(
            ops.contains(&Op::CreateNew),
            "the marker is written: {ops:?}"
        );
        let synced = ops
            .iter()
            .any(|op| matches!(op, Op::SyncDir | Op::SyncFile | Op::SyncData | Op::Syncfs));
        ensure!(synced == fsync, "fsync {fsync}: {ops:?}");
        drop(s);
        ensure!(!dir.path().join(root.to_hex()).exists());
    }
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

const DEFERRED_CHILD: &str = "STRATA_STORE_DEFERRED_CHILD";

/// The child of [`deferred_deletions_survive_a_crash`]: commits `a`, its child `b` and
/// grandchild `c`; defers the deletion of `a` under a live session; defers that of `c` and
/// withdraws it by committing `c`'s state again; reports the roots and waits to be killed.
fn deferred_child(dir: &Path) -> Result<()> {
    let store = Store::open(dir, StoreConfig::default())?;
    let code = wasm(1);
    let id = ModuleId::of_wasm(&code);
    let mut s = store.session(None)?;
    s.deploy(Bytecode::hash(&code[..]), vec![4; 2 * PAGE_SIZE], vec![1])?;
    let a = s.commit()?;
    let mut s = store.session(Some(a))?;
    write(&s.memory(&id, RES)?, 0, &[5]);
    let b = s.commit()?;
    let mut s = store.session(Some(b))?;
    write(&s.memory(&id, RES)?, 1, &[6]);
    let c = s.commit()?;
    let _on_a = store.session(Some(a))?;
    let _on_c = store.session(Some(c))?;
    let unchanged = store.session(Some(c))?;
    ensure!(store.delete(&a)? == Deletion::Deferred { sessions: 1 });
    ensure!(store.delete(&c)? == Deletion::Deferred { sessions: 2 });
    ensure!(unchanged.commit()? == c);
    println!("roots {a} {b} {c}");
    println!("deferred");
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}

/// A process killed (SIGKILL) while deferred deletions wait for their sessions: the next open
/// finishes the deletion (it used to bring the commit back) and keeps the commit whose deletion
/// was withdrawn; the other commits are intact and everything verifies.
#[test]
fn deferred_deletions_survive_a_crash() -> Result<()> {
    if let Ok(dir) = std::env::var(DEFERRED_CHILD) {
        return deferred_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir()?;
    let name = strata_harness::test_name!(deferred_deletions_survive_a_crash);
    let env = [(DEFERRED_CHILD, dir.path().as_os_str())];
    let child = strata_harness::Child::spawn(&name, &env, Some("deferred"))?;
    let ready = child.wait_ready(Duration::from_secs(60));
    let lines = child.kill()?;
    ensure!(ready, "the child never deferred the deletions: {lines:?}");
    let line = lines
        .iter()
        .find(|l| l.contains("roots "))
        .context("no report")?;
    let roots = line
        .rsplit(' ')
        .take(3)
        .map(Root::from_hex)
        .collect::<Result<Vec<_>, _>>()?;
    let (c, b, a) = (roots[0], roots[1], roots[2]);

    let store = Store::open(dir.path(), quick())?;
    assert!(!store.contains(&a), "the deleted commit came back");
    assert!(!dir.path().join(a.to_hex()).exists());
    assert!(store.contains(&c), "the revived commit was deleted");
    assert!(store.contains(&b));
    assert_eq!(store.commits().len(), 2);
    let report = store.verify()?;
    assert!(report.is_ok(), "{:?}", report.problems);
    let id = ModuleId::of_wasm(&wasm(1));
    assert_eq!(store.read_memory(&b, &id)?[..3], [5, 4, 4]);
    assert_eq!(store.read_memory(&c, &id)?[..3], [5, 6, 4]);
    for name in std::fs::read_dir(dir.path())? {
        let name = name?.file_name();
        assert!(
            !name.to_string_lossy().starts_with('.'),
            "leftover {name:?}"
        );
    }
    // Reopening again changes nothing.
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    assert_eq!(store.commits().len(), 2);
    Ok(())
}
