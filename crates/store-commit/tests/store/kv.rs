//! Key-value spaces: what a commit writes and links, roots independent of history, quotas,
//! checkpoints, verify, and stores of the previous format.

use std::os::unix::fs::MetadataExt;

use anyhow::Result;
use store_commit::{
    KvQuota, KvQuotaExceeded, ModuleId, Namespace, Order, Root, Store, StoreConfig, StoreError,
};

use crate::{overwrite, quick};

fn space(n: u8) -> Namespace {
    Namespace::of_instance(&ModuleId::of_wasm(b"code"), &[n])
}

fn key(i: u32) -> [u8; 4] {
    i.to_be_bytes()
}

fn kv_file(store: &Store, root: &Root, ns: &Namespace, level: usize) -> std::path::PathBuf {
    store
        .dir()
        .join(root.to_hex())
        .join("kv")
        .join(format!("{}.{level}", ns.to_hex()))
}

/// Commits `n` keys `0..n` with value `v` into space 0 of a new store.
fn filled(dir: &std::path::Path, config: StoreConfig, n: u32) -> Result<(Store, Root)> {
    let store = Store::open(dir, config)?;
    let mut s = store.session(None)?;
    let h = s.kv(&space(0))?;
    for i in 0..n {
        h.insert(&key(i), b"value")?;
    }
    let root = s.commit()?;
    Ok((store, root))
}

#[test]
fn a_commit_writes_the_changed_keys_and_links_the_base() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, first) = filled(dir.path(), quick(), 10_000)?;
    let ns = space(0);
    let base = kv_file(&store, &first, &ns, 0);
    assert!(!kv_file(&store, &first, &ns, 1).exists());
    let mut s = store.session(Some(first))?;
    let h = s.kv(&ns)?;
    h.insert(&key(5), b"changed")?;
    assert!(h.remove(&key(6))?);
    assert!(!h.remove(&key(20_000))?);
    let second = s.commit()?;
    // The base is the same file (a hard link); the middle delta holds the two changed keys.
    let linked = kv_file(&store, &second, &ns, 0);
    assert_eq!(
        std::fs::metadata(&base)?.ino(),
        std::fs::metadata(&linked)?.ino()
    );
    let mid = std::fs::metadata(kv_file(&store, &second, &ns, 1))?.len();
    assert!(mid < 200, "the delta holds two entries: {mid} bytes");
    let index = store.index(&second)?;
    let entry = index.kv_space(&ns).expect("space");
    assert_eq!((entry.keys(), entry.levels().len()), (9_999, 2));

    // A third commit adds a top delta and links the base and the middle delta.
    let mut s = store.session(Some(second))?;
    s.kv(&ns)?.insert(&key(7), b"x")?;
    let third = s.commit()?;
    for level in 0..2 {
        assert_eq!(
            std::fs::metadata(kv_file(&store, &second, &ns, level))?.ino(),
            std::fs::metadata(kv_file(&store, &third, &ns, level))?.ino()
        );
    }
    let s = store.session(Some(third))?.kv(&ns)?;
    assert_eq!(s.get(&key(5))?.as_deref(), Some(&b"changed"[..]));
    assert_eq!(s.get(&key(6))?, None);
    assert_eq!(s.get(&key(7))?.as_deref(), Some(&b"x"[..]));
    assert_eq!(s.get(&key(8))?.as_deref(), Some(&b"value"[..]));
    assert_eq!(s.len(), 9_999);
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn deltas_fold_and_rebase_within_their_bounds() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        kv_top_entries: 20,
        kv_delta_ratio: 4,
        kv_min_delta: 50,
        kv_background: false,
        ..quick()
    };
    let (store, mut root) = filled(dir.path(), config, 1000)?;
    let ns = space(0);
    let mut seen_levels = std::collections::BTreeSet::new();
    for c in 0..100u32 {
        let mut s = store.session(Some(root))?;
        let h = s.kv(&ns)?;
        for i in 0..7 {
            h.insert(&key(c * 7 + i), &c.to_le_bytes())?;
        }
        root = s.commit()?;
        let index = store.index(&root)?;
        let entry = index.kv_space(&ns).expect("space");
        let levels = entry.levels();
        seen_levels.insert(levels.len());
        if let Some(top) = levels.get(2) {
            assert!(top.entries <= 20, "top delta past its bound");
        }
        if let Some(mid) = levels.get(1) {
            assert!(mid.entries <= 1000 / 4, "middle delta past its bound");
        }
    }
    // Top deltas, folds and rebases all happened.
    assert_eq!(seen_levels.len(), 3, "{seen_levels:?}");
    let h = store.session(Some(root))?.kv(&ns)?;
    for c in 0..100u32 {
        assert_eq!(h.get(&key(c * 7))?, Some(c.to_le_bytes().to_vec()));
    }
    assert_eq!(h.len(), 1000);
    assert!(store.verify()?.is_ok());
    Ok(())
}

#[test]
fn the_root_depends_on_the_contents_not_the_history() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        kv_top_entries: 3,
        kv_min_delta: 5,
        ..quick()
    };
    let store = Store::open(dir.path(), config)?;
    let ns = space(1);
    // One commit of the final contents.
    let mut s = store.session(None)?;
    let h = s.kv(&ns)?;
    for i in 0..30 {
        h.insert(&key(i), &[i as u8; 3])?;
    }
    let direct = s.commit()?;
    // Many commits, with overwrites and removals, in another order.
    let mut root = None;
    for round in 0..10u32 {
        let mut s = store.session(root)?;
        let h = s.kv(&ns)?;
        for i in (0..30).rev().filter(|i| i % 10 == round) {
            h.insert(&key(i), b"temporary")?;
            h.insert(&key(100 + i), b"gone")?;
        }
        for i in (0..30).filter(|i| i % 10 == round) {
            h.insert(&key(i), &[i as u8; 3])?;
        }
        root = Some(s.commit()?);
    }
    let mut s = store.session(root)?;
    let h = s.kv(&ns)?;
    for i in 0..30 {
        assert!(h.remove(&key(100 + i))?);
    }
    assert_eq!(s.commit()?, direct);
    // Emptying a space gives the root of a state that never had it.
    let mut s = store.session(Some(direct))?;
    let h = s.kv(&ns)?;
    for i in 0..30 {
        h.remove(&key(i))?;
    }
    assert_eq!(s.commit()?, store_index::empty_state_root());
    Ok(())
}

#[test]
fn quotas_bound_bytes_and_keys_and_allow_shrinking() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let mut s = store.session(None)?;
    let h = s.kv(&space(0))?;
    h.set_quota(KvQuota { bytes: 10, keys: 2 });
    h.insert(b"ab", &[0; 8])?;
    let err = h.insert(b"c", b"").expect_err("over the byte quota");
    assert!(
        matches!(
            err,
            StoreError::KvQuota(KvQuotaExceeded::Bytes {
                would_be: 11,
                quota: 10
            })
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("key-value quota exceeded"));
    h.insert(b"ab", &[1; 2])?;
    h.insert(b"c", b"")?;
    let err = h.insert(b"d", b"").expect_err("over the key quota");
    assert!(matches!(
        err,
        StoreError::KvQuota(KvQuotaExceeded::Keys {
            would_be: 3,
            quota: 2
        })
    ));
    assert_eq!((h.len(), h.bytes()), (2, 5));
    // Over a quota lowered since: overwriting with less is allowed, growing is not.
    h.set_quota(KvQuota { bytes: 1, keys: 1 });
    h.insert(b"ab", &[1; 1])?;
    assert!(h.insert(b"ab", &[1; 2]).is_err());
    assert_eq!(h.get(b"d")?, None);
    Ok(())
}

#[test]
fn rollback_restores_the_checkpoint_with_one_undo_entry_per_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, root) = filled(dir.path(), quick(), 10)?;
    let mut s = store.session(Some(root))?;
    let h = s.kv(&space(0))?;
    h.insert(&key(1), b"kept")?;
    let c = s.checkpoint()?;
    for round in 0..1000u32 {
        h.insert(&key(1), &round.to_le_bytes())?;
        h.insert(&key(2), &round.to_le_bytes())?;
        h.remove(&key(3))?;
    }
    h.insert(&key(50), b"new")?;
    assert_eq!(h.undo_len(), 4);
    let other = s.kv(&space(9))?;
    other.insert(b"later", b"space")?;
    s.rollback(&c)?;
    assert_eq!(h.get(&key(1))?.as_deref(), Some(&b"kept"[..]));
    assert_eq!(h.get(&key(2))?.as_deref(), Some(&b"value"[..]));
    assert_eq!(h.get(&key(3))?.as_deref(), Some(&b"value"[..]));
    assert_eq!(h.get(&key(50))?, None);
    assert_eq!(h.len(), 10);
    // A space opened after the checkpoint is back to its base state.
    assert!(other.is_empty());
    // A rollback to the same checkpoint again works; the undo log was emptied.
    h.insert(&key(4), b"again")?;
    s.rollback(&c)?;
    assert_eq!(h.get(&key(4))?.as_deref(), Some(&b"value"[..]));
    // A dropped checkpoint's log is released at the next checkpoint.
    drop(c);
    h.insert(&key(4), b"x")?;
    let c2 = s.checkpoint()?;
    assert_eq!(h.undo_len(), 0);
    h.insert(&key(5), b"y")?;
    s.rollback(&c2)?;
    assert_eq!(h.get(&key(4))?.as_deref(), Some(&b"x"[..]));
    Ok(())
}

#[test]
fn iterators_see_a_snapshot_and_survive_writes_and_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, root) = filled(dir.path(), quick(), 100)?;
    let mut s = store.session(Some(root))?;
    let h = s.kv(&space(0))?;
    h.insert(&key(10), b"session")?;
    let forward = h.range(Some(&key(8)), Some(&key(13)), Order::Ascending)?;
    let mut backward = h.range(None, Some(&key(3)), Order::Descending)?;
    assert_eq!(h.live_iterators(), 2);
    h.insert(&key(11), b"after")?;
    h.remove(&key(9))?;
    assert_eq!(
        backward.next().transpose()?.map(|(k, _)| k),
        Some(key(2).to_vec())
    );
    let s_root = s.commit()?;
    let got: Vec<_> = forward.collect::<Result<_, _>>()?;
    let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (key(8).to_vec(), b"value".to_vec()),
        (key(9).to_vec(), b"value".to_vec()),
        (key(10).to_vec(), b"session".to_vec()),
        (key(11).to_vec(), b"value".to_vec()),
        (key(12).to_vec(), b"value".to_vec()),
    ];
    assert_eq!(got, expected);
    let rest: Vec<_> = backward
        .map(|e| e.map(|(k, _)| k))
        .collect::<Result<_, _>>()?;
    assert_eq!(rest, vec![key(1).to_vec(), key(0).to_vec()]);
    // The commit holds the writes made after the iterators were opened.
    let h = store.session(Some(s_root))?.kv(&space(0))?;
    assert_eq!(h.get(&key(9))?, None);
    assert_eq!(h.get(&key(11))?.as_deref(), Some(&b"after"[..]));
    Ok(())
}

#[test]
fn verify_checks_every_key_value_table() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, first) = filled(dir.path(), quick(), 100)?;
    let mut s = store.session(Some(first))?;
    s.kv(&space(0))?.insert(&key(1), b"changed")?;
    let second = s.commit()?;
    assert!(store.verify()?.is_ok());
    let ns = space(0);
    let delta = kv_file(&store, &second, &ns, 1);
    let mut bytes = std::fs::read(&delta)?;
    let at = bytes.len() / 3;
    bytes[at] ^= 1;
    overwrite(&delta, &bytes)?;
    let report = store.verify()?;
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].reason.contains("key-value table"),
        "{}",
        report.problems[0]
    );
    // A truncated table is refused when a session opens the space.
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    overwrite(&delta, &bytes[..10])?;
    let err = store
        .session(Some(second))?
        .kv(&ns)
        .expect_err("damaged table");
    assert!(matches!(err, StoreError::Corrupted { .. }), "{err}");
    Ok(())
}

#[test]
fn a_store_of_format_version_1_is_refused_naming_both_versions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    drop(Store::open(dir.path(), quick())?);
    // The FORMAT marker as format version 1 wrote it.
    let marker = dir.path().join("FORMAT");
    let mut bytes = std::fs::read(&marker)?;
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    overwrite(&marker, &bytes)?;
    let err = Store::open(dir.path(), quick()).expect_err("old format");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Incompatible { .. }), "{text}");
    assert!(
        text.contains("format version 1, this build reads version 2: upgrade required"),
        "{text}"
    );
    Ok(())
}

/// Which key-value commit a crash test interrupts.
#[derive(Clone, Copy, Debug)]
enum KvCommit {
    /// A top delta over a base and a middle delta.
    Delta,
    /// A middle delta past its bound: a new base.
    Rebase,
    /// The adoption of a middle delta that a background compaction merged.
    Adopt,
}

/// The key-value thresholds of the crash tests: a rebase once the middle delta passes 50 keys.
fn crash_config(background: bool) -> StoreConfig {
    StoreConfig {
        kv_top_entries: 10,
        kv_delta_ratio: 4,
        kv_min_delta: 50,
        kv_background: background,
        ..StoreConfig::default()
    }
}

type Pairs = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

fn pairs(store: &Store, root: &Root) -> Result<Pairs> {
    let h = store.session(Some(*root))?.kv(&space(0))?;
    let out: Pairs = h
        .range(None, None, Order::Ascending)?
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(out.len() as u64 == h.len(), "key count differs");
    Ok(out)
}

/// A store over `fs` with a base of 200 keys and a middle delta of 3; for `Adopt`, a third
/// commit whose top delta of 15 keys started a background fold, finished. Returns the commits.
fn kv_case(
    dir: &std::path::Path,
    fs: Arc<dyn strata_fs::Fs>,
    what: KvCommit,
) -> Result<(Store, Vec<Root>)> {
    let background = matches!(what, KvCommit::Adopt);
    let store = Store::open_with_fs(dir, crash_config(background), fs)?;
    let mut s = store.session(None)?;
    let h = s.kv(&space(0))?;
    for i in 0..200 {
        h.insert(&key(i), b"base")?;
    }
    let r0 = s.commit()?;
    let mut s = store.session(Some(r0))?;
    let h = s.kv(&space(0))?;
    for i in 0..3 {
        h.insert(&key(i), b"mid")?;
    }
    let r1 = s.commit()?;
    let mut roots = vec![r0, r1];
    if background {
        let mut s = store.session(Some(r1))?;
        let h = s.kv(&space(0))?;
        for i in 0..15 {
            h.insert(&key(100 + i), b"top")?;
        }
        roots.push(s.commit()?);
        store.wait_for_compactions();
    }
    Ok((store, roots))
}

fn kv_commit_under_test(store: &Store, base: Root, what: KvCommit) -> Result<Root> {
    let mut s = store.session(Some(base))?;
    let h = s.kv(&space(0))?;
    let n = match what {
        KvCommit::Delta | KvCommit::Adopt => 4,
        KvCommit::Rebase => 60,
    };
    for i in 0..n {
        h.insert(&key(i * 3), b"new")?;
    }
    h.remove(&key(199))?;
    Ok(s.commit()?)
}

use std::sync::Arc;
use strata_fs::{Clock, FaultFs, FaultMode, Loss, NoSyncFs, PowerLossFs};

/// After a reopen: no leftovers, everything verifies, the earlier commits whole, and the
/// interrupted one whole or absent (present when `done`).
fn check_kv_after(
    dir: &std::path::Path,
    before: &[(Root, Pairs)],
    new: &(Root, Pairs),
    done: bool,
    what: &str,
) -> Result<Store> {
    let store = Store::open(dir, quick())?;
    for name in std::fs::read_dir(dir)? {
        let name = name?.file_name();
        anyhow::ensure!(
            !name.to_string_lossy().starts_with('.'),
            "{what}: leftover {name:?}"
        );
    }
    let report = store.verify()?;
    anyhow::ensure!(report.is_ok(), "{what}: {:?}", report.problems);
    for (root, content) in before {
        anyhow::ensure!(
            &pairs(&store, root)? == content,
            "{what}: commit {root} lost"
        );
    }
    if store.contains(&new.0) {
        anyhow::ensure!(pairs(&store, &new.0)? == new.1, "{what}: torn commit");
    } else {
        anyhow::ensure!(!done, "{what}: acknowledged commit lost");
    }
    Ok(store)
}

#[test]
fn power_loss_at_every_operation_of_key_value_commits() -> Result<()> {
    for what in [KvCommit::Delta, KvCommit::Rebase, KvCommit::Adopt] {
        let setup = || -> Result<_> {
            let dir = tempfile::tempdir()?;
            let fs = Arc::new(PowerLossFs::new(
                Arc::new(NoSyncFs::real()),
                dir.path(),
                Clock::new(),
            ));
            let (store, roots) = kv_case(dir.path(), fs.clone(), what)?;
            Ok((dir, fs, store, roots))
        };
        let (_dir, fs, store, roots) = setup()?;
        let base = *roots.last().expect("commits");
        let before: Vec<(Root, Pairs)> = roots
            .iter()
            .map(|r| Ok((*r, pairs(&store, r)?)))
            .collect::<Result<_>>()?;
        let start = fs.ops();
        let root = kv_commit_under_test(&store, base, what)?;
        let ops = fs.ops() - start;
        let levels = |r: &Root| -> Result<Vec<store_index::TableRef>> {
            Ok(store
                .index(r)?
                .kv_space(&space(0))
                .expect("space")
                .levels()
                .to_vec())
        };
        let (now, then) = (levels(&root)?, levels(&base)?);
        match what {
            KvCommit::Delta => assert_eq!(now.len(), 3),
            KvCommit::Rebase => assert_eq!(now.len(), 1),
            // The merged middle delta (3 + 15 entries) replaced the base commit's.
            KvCommit::Adopt => {
                assert_eq!(now[1].entries, 18, "{now:?}");
                assert_ne!(now[1], then[1]);
            }
        }
        let new = (root, pairs(&store, &root)?);
        drop(store);
        for k in 0..=ops {
            let (dir, fs, store, roots) = setup()?;
            let base = *roots.last().expect("commits");
            fs.cut_at(fs.ops() + k);
            let result = kv_commit_under_test(&store, base, what);
            assert_eq!(result.is_ok(), k == ops, "{what:?} op {k}: {result:?}");
            drop(store);
            fs.power_cut(Loss::Unsynced)?;
            let label = format!("{what:?} commit, power lost at op {k} of {ops}");
            let store = check_kv_after(dir.path(), &before, &new, k == ops, &label)?;
            assert_eq!(kv_commit_under_test(&store, base, what)?, root, "{label}");
        }
    }
    Ok(())
}

#[test]
fn fault_injection_at_every_operation_of_key_value_commits() -> Result<()> {
    for what in [KvCommit::Delta, KvCommit::Rebase, KvCommit::Adopt] {
        let setup = || -> Result<_> {
            let dir = tempfile::tempdir()?;
            let fs = Arc::new(FaultFs::new(Arc::new(NoSyncFs::real())));
            fs.set_logging(false);
            let (store, roots) = kv_case(dir.path(), fs.clone(), what)?;
            Ok((dir, fs, store, roots))
        };
        let (_dir, fs, store, roots) = setup()?;
        let base = *roots.last().expect("commits");
        let before: Vec<(Root, Pairs)> = roots
            .iter()
            .map(|r| Ok((*r, pairs(&store, r)?)))
            .collect::<Result<_>>()?;
        let start = fs.ops();
        let root = kv_commit_under_test(&store, base, what)?;
        let ops = fs.ops() - start;
        let new = (root, pairs(&store, &root)?);
        drop(store);
        for k in 0..ops {
            for mode in [FaultMode::Once, FaultMode::FromThenOn] {
                let (dir, fs, store, roots) = setup()?;
                let base = *roots.last().expect("commits");
                fs.fail_at(fs.ops() + k, mode, 5);
                let err = kv_commit_under_test(&store, base, what)
                    .expect_err("an injected fault fails the commit");
                let err = err.downcast::<StoreError>()?;
                assert!(
                    matches!(err, StoreError::Io { .. }),
                    "{what:?} op {k}: {err}"
                );
                fs.heal();
                drop(store);
                let label = format!("{what:?} commit, fault {mode:?} at op {k} of {ops}");
                let store = check_kv_after(dir.path(), &before, &new, false, &label)?;
                assert_eq!(kv_commit_under_test(&store, base, what)?, root, "{label}");
            }
        }
    }
    Ok(())
}

#[test]
fn background_compactions_are_adopted_and_bound_every_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        kv_top_entries: 10,
        kv_delta_ratio: 4,
        kv_min_delta: 50,
        ..quick()
    };
    let (store, mut root) = filled(dir.path(), config, 1000)?;
    let ns = space(0);
    let first_base = store.index(&root)?.kv_space(&ns).expect("space").levels()[0];
    let (mut bases, mut staged_links) = (std::collections::BTreeSet::new(), 0);
    for c in 0..120u32 {
        let mut s = store.session(Some(root))?;
        let h = s.kv(&ns)?;
        for i in 0..7 {
            h.insert(&key((c * 37 + i * 101) % 1000), &c.to_le_bytes())?;
        }
        if c % 5 == 0 {
            h.remove(&key(c))?;
        }
        let before = store.index(&root)?;
        root = s.commit()?;
        let index = store.index(&root)?;
        let levels = index.kv_space(&ns).expect("space").levels();
        bases.insert(levels[0].file_hash);
        // No commit writes more than the top's cap; merged tables come in as links.
        let old = before.kv_space(&ns).expect("space").levels();
        for (l, t) in levels.iter().enumerate() {
            if old.get(l) != Some(t) && t.entries > 160 {
                staged_links += 1;
                let path = kv_file(&store, &root, &ns, l);
                assert!(std::fs::metadata(&path)?.nlink() >= 1);
            }
        }
        if c % 3 == 0 {
            store.wait_for_compactions();
        }
    }
    assert!(
        bases.len() > 1 && bases.contains(&first_base.file_hash),
        "no rebase: {bases:?}"
    );
    assert!(staged_links > 0, "no merged table was adopted");
    // The contents are right, verify passes, and a reopen leaves no staged file behind.
    let h = store.session(Some(root))?.kv(&ns)?;
    assert_eq!(
        h.get(&key((119 * 37) % 1000))?,
        Some(119u32.to_le_bytes().to_vec())
    );
    assert!(store.verify()?.is_ok());
    drop(h);
    drop(store);
    let store = Store::open(dir.path(), quick())?;
    for name in std::fs::read_dir(dir.path())? {
        let name = name?.file_name();
        assert!(
            !name.to_string_lossy().starts_with('.'),
            "leftover {name:?}"
        );
    }
    assert!(store.verify()?.is_ok());
    Ok(())
}
