//! Simulated power loss (`PowerLossFs`: what was not synced is undone, files and directory entries
//! alike) at every operation of a commit and a delete (immediate or deferred), of a newly created
//! store directory, and at random points of long sequences.

use crate::faults::{EMLINK, Links, session_under_test};
use crate::{ModelState, RES, model_root, quick, read, wasm, write};
use anyhow::{Context, Result, ensure};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use store_commit::{Bytecode, Deletion, ModuleId, PAGE_SIZE, Root, Store, StoreConfig, SyncMode};
use strata_fs::{Clock, FaultFs, Loss, NoSyncFs, Op, PowerLossFs};

/// Every module's bytecode, memory and blob in a commit, read back through the files.
pub(crate) fn contents(store: &Store, root: &Root) -> Result<ModelState> {
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
    power_case_with(Links::Work, SyncMode::EachFile)
}

/// [`power_case`], with every hard link refused (`EMLINK`, by a `FaultFs` above the power-loss
/// layer) once the two commits are made, when `links` says so.
fn power_case_with(links: Links, sync: SyncMode) -> Result<PowerCase> {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(PowerLossFs::new(
        Arc::new(NoSyncFs::real()),
        dir.path(),
        Clock::new(),
    ));
    let faults = Arc::new(FaultFs::new(fs.clone()));
    faults.set_logging(false);
    let config = StoreConfig {
        sync,
        ..StoreConfig::default()
    };
    let store = Store::open_with_fs(dir.path(), config, faults.clone())?;
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
    let mut committed = HashMap::new();
    for r in [r0, base] {
        committed.insert(r, contents(&store, &r)?);
    }
    if links == Links::AtLimit {
        faults.fail_every(Op::HardLink, EMLINK);
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

/// Base files at their hard-link limit are copied: the copies are as durable as every new file.
#[test]
fn power_loss_at_every_operation_of_a_commit_that_copies() -> Result<()> {
    let ops = power_loss_at_every_operation_of_a_commit(Links::AtLimit, SyncMode::EachFile)?;
    eprintln!("power loss at each of {ops} operations of a commit that copies every linked file");
    Ok(())
}

/// A commit made durable by one `syncfs` (`SyncMode::WholeFileSystem`), which the power-loss
/// layer models as a sync of everything under its root: every cut keeps exactly the commits
/// acknowledged, in fewer operations than with a sync per file.
#[test]
fn power_loss_at_every_operation_of_a_commit_synced_by_syncfs() -> Result<()> {
    let each = power_loss_at_every_operation_of_a_commit(Links::Work, SyncMode::EachFile)?;
    let whole = power_loss_at_every_operation_of_a_commit(Links::Work, SyncMode::WholeFileSystem)?;
    assert!(
        whole < each,
        "syncfs: {whole} operations, a sync per file: {each}"
    );
    Ok(())
}

/// Cuts the power at every operation of one commit; returns how many it took.
fn power_loss_at_every_operation_of_a_commit(links: Links, sync: SyncMode) -> Result<u64> {
    // Count the operations of one clean commit.
    let case = power_case_with(links, sync)?;
    let s = session_under_test(&case.store, case.base, &case.ids)?;
    let before = case.fs.ops();
    let root = s.commit()?;
    let commit_ops = case.fs.ops() - before;
    let expected = HashMap::from([(root, contents(&case.store, &root)?)]);
    assert!(
        commit_ops > 15,
        "a commit took only {commit_ops} operations"
    );
    drop(case);

    // The cut at k fails operation k of the commit; k == commit_ops cuts just after it returned.
    for k in 0..=commit_ops {
        let case = power_case_with(links, sync)?;
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
        fs.power_cut(Loss::Unsynced)?;
        let may = if k == commit_ops {
            committed.extend(expected.clone());
            HashMap::new()
        } else {
            expected.clone()
        };
        let what = format!("commit ({links:?}, {sync:?}), power lost at op {k} of {commit_ops}");
        let store = check_after_power_loss(dir.path(), &committed, &may, &what)?;
        // The store works again: the same commit, or no-op if it survived.
        assert_eq!(session_under_test(&store, base, &ids)?.commit()?, root);
        assert_eq!(contents(&store, &root)?, expected[&root], "{what}");
    }
    Ok(commit_ops)
}

#[test]
fn power_loss_at_every_operation_of_a_commit_and_a_delete() -> Result<()> {
    let commit_ops = power_loss_at_every_operation_of_a_commit(Links::Work, SyncMode::EachFile)?;

    // Count the operations of one clean delete.
    let case = power_case()?;
    let before = case.fs.ops();
    case.store.delete(&case.base)?;
    let delete_ops = case.fs.ops() - before;
    assert!(
        delete_ops >= 3,
        "a delete took only {delete_ops} operations"
    );
    eprintln!("power loss at each of {commit_ops} commit and {delete_ops} delete operations");
    drop(case);

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
        fs.power_cut(Loss::Unsynced)?;
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

/// A deferred deletion (the delete under a live session, then the session's end) with the power
/// cut at every operation: after a reopen the commit is either whole and listed or gone, and gone
/// whenever the delete was acknowledged. The open that finishes it, cut at every operation, never
/// lists it. Withdrawing it (committing its state again), cut at every operation: acknowledged,
/// the commit survives.
#[test]
fn power_loss_at_every_operation_of_a_deferred_delete() -> Result<()> {
    let deferred = Deletion::Deferred { sessions: 1 };
    let case = power_case()?;
    let live = case.store.session(Some(case.base))?;
    let before = case.fs.ops();
    assert_eq!(case.store.delete(&case.base)?, deferred);
    let delete_ops = case.fs.ops() - before;
    drop(live);
    let total = case.fs.ops() - before;
    assert!(!case.store.contains(&case.base));
    assert!(delete_ops >= 2, "the marker took {delete_ops} operations");
    eprintln!("power loss at each of {total} operations of a deferred delete");
    drop(case);

    // The delete, then the session's end.
    for k in 0..=total {
        let case = power_case()?;
        let live = case.store.session(Some(case.base))?;
        case.fs.cut_at(case.fs.ops() + k);
        let result = case.store.delete(&case.base);
        assert_eq!(result.is_ok(), k >= delete_ops, "op {k}: {result:?}");
        drop(live);
        let PowerCase {
            dir,
            fs,
            store,
            base,
            mut committed,
            ..
        } = case;
        drop(store);
        fs.power_cut(Loss::Unsynced)?;
        let base_state = committed.remove(&base).context("base")?;
        let may = match result {
            Ok(_) => HashMap::new(),
            Err(_) => HashMap::from([(base, base_state)]),
        };
        let what = format!("deferred delete, power lost at op {k} of {total}");
        check_after_power_loss(dir.path(), &committed, &may, &what)?;
    }

    // The open after a crash that left the marker, cut at every operation.
    let mut k = 0;
    loop {
        let case = power_case()?;
        let live = case.store.session(Some(case.base))?;
        assert_eq!(case.store.delete(&case.base)?, deferred);
        // The crash: the session never ends.
        case.fs.cut_at(case.fs.ops());
        drop(live);
        let marker = case.dir.path().join(case.base.to_hex()).join("deleted");
        let PowerCase {
            dir,
            fs,
            store,
            base,
            mut committed,
            ..
        } = case;
        drop(store);
        fs.power_cut(Loss::Unsynced)?;
        assert!(marker.exists(), "the deletion was not recorded");
        committed.remove(&base);
        let fs = Arc::new(PowerLossFs::new(
            Arc::new(NoSyncFs::real()),
            dir.path(),
            Clock::new(),
        ));
        fs.cut_at(k);
        let opened = Store::open_with_fs(dir.path(), StoreConfig::default(), fs.clone());
        let finished = opened.is_ok();
        if let Ok(store) = &opened {
            assert!(!store.contains(&base));
        }
        drop(opened);
        fs.power_cut(Loss::Unsynced)?;
        let what = format!("open finishing a deferred delete, power lost at op {k}");
        check_after_power_loss(dir.path(), &committed, &HashMap::new(), &what)?;
        if finished {
            eprintln!("an open that finishes a deferred delete: {k} operations");
            break;
        }
        k += 1;
    }

    // Withdrawing it.
    let case = power_case()?;
    let live = case.store.session(Some(case.base))?;
    let unchanged = case.store.session(Some(case.base))?;
    assert_eq!(
        case.store.delete(&case.base)?,
        Deletion::Deferred { sessions: 2 }
    );
    let before = case.fs.ops();
    assert_eq!(unchanged.commit()?, case.base);
    drop(live);
    let revive_ops = case.fs.ops() - before;
    assert!(case.store.contains(&case.base));
    drop(case);
    for k in 0..=revive_ops {
        let case = power_case()?;
        let live = case.store.session(Some(case.base))?;
        let unchanged = case.store.session(Some(case.base))?;
        case.store.delete(&case.base)?;
        case.fs.cut_at(case.fs.ops() + k);
        let result = unchanged.commit();
        drop(live);
        let PowerCase {
            dir,
            fs,
            store,
            base,
            mut committed,
            ..
        } = case;
        drop(store);
        fs.power_cut(Loss::Unsynced)?;
        let mut may = HashMap::new();
        if result.is_err() {
            may.insert(base, committed.remove(&base).context("base")?);
        }
        let what = format!("withdrawn deferred delete, power lost at op {k} of {revive_ops}");
        check_after_power_loss(dir.path(), &committed, &may, &what)?;
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
        // The simulated disk: the existing temporary directory.
        let fs = Arc::new(PowerLossFs::new(
            Arc::new(NoSyncFs::real()),
            tmp.path(),
            Clock::new(),
        ));
        fs.cut_at(fs.ops() + k);
        let committed =
            Store::open_with_fs(&dir, StoreConfig::default(), fs.clone()).and_then(|store| {
                let mut s = store.session(None)?;
                s.deploy(Bytecode::hash(&code[..]), vec![1; PAGE_SIZE], vec![1])?;
                s.commit()
            });
        let what = format!("new store, power lost at op {k}");
        fs.power_cut(Loss::Unsynced).context(what.clone())?;
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
        let fs = Arc::new(PowerLossFs::new(
            Arc::new(NoSyncFs::real()),
            dir.path(),
            Clock::new(),
        ));
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
                    s.deploy(Bytecode::hash(&code[..]), mem.clone(), vec![step as u8])?;
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
        fs.power_cut(Loss::Unsynced)?;
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
        s.deploy(Bytecode::hash(&code[..]), vec![1; PAGE_SIZE], vec![])?;
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
