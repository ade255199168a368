//! Power loss through the VM host: a VM opened over one `strata_fs::PowerLossFs` (one clock, one
//! simulated disk holding the store, the file cache and the pins) deploys, calls, pins, commits
//! and deletes; the power goes at each operation in turn, the loss is applied (half the cuts
//! lose every unsynced byte and name, half tear unsynced data), and a fresh `Vm::open` must show
//! every commit that returned, the one in flight whole or not at all, the pin that returned,
//! verify clean, and work on. A second test cuts the power at each operation of creating a new
//! VM directory and its first commit.
//!
//! `STRATA_POWER_STRIDE` (default 1) cuts only at every n-th operation.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use strata_fs::{Clock, Loss, NoSyncFs, PowerLossFs};
use vm_host::{ModuleId, Root, TierPolicy, Value, Vm, VmConfig, VmFiles};

use crate::crash_vm::{check_sound, check_values, counter};

/// What the scenario finished before the power went.
#[derive(Default, Debug)]
struct Done {
    /// Commits that returned, with each module's count.
    commits: Vec<(Root, Vec<(ModuleId, i64)>)>,
    /// Deletes that returned.
    deleted: Vec<Root>,
    /// The module whose pin returned.
    pinned: Option<ModuleId>,
    /// A commit, pin or delete that started and did not return.
    in_flight: Option<&'static str>,
}

fn add(s: &mut vm_host::Session, m: &ModuleId, n: i64) -> Result<i64> {
    match s.call(m, "add", &[Value::I64(n)])?[..] {
        [Value::I64(v)] => Ok(v),
        ref other => anyhow::bail!("add returned {other:?}"),
    }
}

/// With two tiers, waits for the Cranelift compile a deploy queued, so that its file-system
/// operations come at the same point of every run (the cuts count operations).
fn settle(vm: &Vm) -> Result<()> {
    ensure!(
        vm.wait_tier_up(std::time::Duration::from_secs(120)),
        "tier-up stuck"
    );
    Ok(())
}

/// Deploy A, commit; deploy B on it with a failing call, commit; a delta on a delta; delete the
/// first commit; A is pinned after the first commit. Stops at the first error (the machine is off).
fn scenario(vm: &Vm, done: &mut Done) -> Result<()> {
    let mut s = vm.session(None)?;
    let a = s.deploy(&counter(1))?;
    settle(vm)?;
    let va = add(&mut s, &a, 3)?;
    done.in_flight = Some("commit 1");
    let r1 = s.commit()?;
    done.commits.push((r1, vec![(a, va)]));
    done.in_flight = None;

    done.in_flight = Some("pin");
    vm.pin(&a)?;
    done.pinned = Some(a);
    done.in_flight = None;

    let mut s = vm.session(Some(r1))?;
    let b = s.deploy(&counter(2))?;
    settle(vm)?;
    let va = add(&mut s, &a, 4)?;
    ensure!(
        s.call(&b, "add_then_trap", &[Value::I64(100)]).is_err(),
        "the trap"
    );
    let vb = add(&mut s, &b, 5)?;
    done.in_flight = Some("commit 2");
    let r2 = s.commit()?;
    done.commits.push((r2, vec![(a, va), (b, vb)]));
    done.in_flight = None;

    let mut s = vm.session(Some(r2))?;
    let va = add(&mut s, &a, 1)?;
    done.in_flight = Some("commit 3");
    let r3 = s.commit()?;
    done.commits.push((r3, vec![(a, va), (b, vb)]));
    done.in_flight = None;

    done.in_flight = Some("delete 1");
    vm.delete(&r1)?;
    done.deleted.push(r1);
    done.in_flight = None;
    Ok(())
}

struct Machine {
    vm: Vm,
    fs: Arc<PowerLossFs>,
}

fn config(tier: TierPolicy) -> VmConfig {
    VmConfig {
        fsync: true,
        tier,
        ..VmConfig::for_tests()
    }
}

/// The disk: every operation of the VM goes through `fs`; the real syncs are skipped (the
/// simulation tracks them).
fn disk(root: &Path) -> Arc<PowerLossFs> {
    Arc::new(PowerLossFs::new(
        Arc::new(NoSyncFs::real()),
        root,
        Clock::new(),
    ))
}

fn boot(dir: &Path, tier: TierPolicy) -> Result<Machine> {
    let fs = disk(dir);
    let files = VmFiles { fs: fs.clone() };
    let vm = Vm::open_with(dir, config(tier), files, |_| Ok(()))?;
    Ok(Machine { vm, fs })
}

/// Half the cuts lose every unsynced byte and name, half keep the names and tear the data.
fn loss(k: u64) -> Loss {
    if k.is_multiple_of(2) {
        Loss::Unsynced
    } else {
        Loss::TornData
    }
}

/// Reopens after the loss and checks it against what finished; returns whether the commit or
/// delete in flight took effect.
fn check(dir: &Path, done: &Done, what: &str, tier: TierPolicy) -> Result<bool> {
    let vm = Vm::open(dir, config(tier))?;
    settle(&vm)?;
    check_sound(&vm, what)?;
    let on_disk: Vec<Root> = vm.commits().into_iter().map(|c| c.root).collect();
    let mut expected: HashMap<Root, &Vec<(ModuleId, i64)>> =
        done.commits.iter().map(|(r, v)| (*r, v)).collect();
    for root in &done.deleted {
        expected.remove(root);
        ensure!(!on_disk.contains(root), "{what}: deleted {root} is back");
    }
    // The first commit, if its delete was in flight, may be there or not; if there, whole.
    let deleting = (done.in_flight == Some("delete 1")).then(|| done.commits[0].clone());
    if let Some((root, _)) = &deleting {
        expected.remove(root);
    }
    for (root, values) in &expected {
        ensure!(on_disk.contains(root), "{what}: commit {root} lost");
        check_values(&vm, root, values, what)?;
    }
    // Besides those, only the commit in flight may be there (whole), or the deleted one if
    // its delete was in flight.
    let extra: Vec<&Root> = on_disk
        .iter()
        .filter(|r| !expected.contains_key(r) && deleting.as_ref().is_none_or(|(d, _)| d != *r))
        .collect();
    ensure!(extra.len() <= 1, "{what}: unexpected commits {extra:?}");
    let mut took_effect = false;
    for root in extra {
        ensure!(
            done.in_flight.is_some_and(|f| f.starts_with("commit")),
            "{what}: commit {root} from nowhere"
        );
        let mut s = vm.session(Some(*root))?;
        for m in s.modules() {
            s.call(&m, "get", &[])?;
        }
        took_effect = done.in_flight.is_some_and(|f| f.starts_with("commit"));
    }
    if let Some((root, values)) = &deleting {
        took_effect = !on_disk.contains(root);
        if !took_effect {
            check_values(&vm, root, values, what)?;
        }
    }
    if let Some(id) = done.pinned {
        ensure!(vm.pins().contains(&id), "{what}: pin of {id} lost");
    }
    // The VM works on: a new commit on the newest one.
    let mut s = vm.session(vm.latest())?;
    if let Some(m) = s.modules().first().copied() {
        add(&mut s, &m, 1)?;
    } else {
        s.deploy(&counter(3))?;
    }
    s.commit()?;
    ensure!(vm.verify()?.is_ok(), "{what}: after a new commit");
    Ok(took_effect)
}

#[test]
fn power_loss_at_every_operation_of_deploy_call_commit_delete_through_the_vm() -> Result<()> {
    power_loss_through_the_vm(TierPolicy::CraneliftOnly)
}

/// The same with two artifacts per module in the file cache: Winch at deploy, Cranelift from
/// the tier-up thread (its writes are cut like any other).
#[test]
fn power_loss_through_the_vm_with_winch_and_cranelift_artifacts() -> Result<()> {
    power_loss_through_the_vm(TierPolicy::WinchThenCranelift)
}

fn power_loss_through_the_vm(tier: TierPolicy) -> Result<()> {
    let stride: u64 = std::env::var("STRATA_POWER_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    // A clean run counts the operations (after the open) of the store, cache and pins together.
    let dir = tempfile::tempdir()?;
    let m = boot(dir.path(), tier)?;
    let base = m.fs.ops();
    let mut done = Done::default();
    scenario(&m.vm, &mut done)?;
    let total = m.fs.ops() - base;
    ensure!(done.deleted.len() == 1 && done.pinned.is_some() && done.in_flight.is_none());
    drop(m);
    ensure!(total > 60, "the scenario took only {total} operations");

    let (mut cuts, mut in_flight, mut took_effect) = (0, 0, 0);
    for k in (0..=total).step_by(stride as usize) {
        let dir = tempfile::tempdir()?;
        let m = boot(dir.path(), tier)?;
        m.fs.cut_at(m.fs.ops() + k);
        let mut done = Done::default();
        let result = scenario(&m.vm, &mut done);
        ensure!(
            result.is_ok() == (k == total),
            "cut at {k} of {total}: {result:?}"
        );
        let Machine { vm, fs } = m;
        drop(vm);
        fs.power_cut(loss(k))?;
        let what = format!(
            "power lost at op {k} of {total} ({:?}, {:?})",
            done.in_flight,
            loss(k)
        );
        let effect = check(dir.path(), &done, &what, tier).with_context(|| what.clone())?;
        cuts += 1;
        in_flight += u64::from(done.in_flight.is_some());
        took_effect += u64::from(effect);
    }
    println!(
        "power_vm ({tier:?}): {cuts} power cuts over {total} operations (store, cache and \
         pins), {in_flight} failed a commit, pin or delete, {took_effect} of those were durable \
         anyway"
    );
    ensure!(in_flight > 0 && took_effect > 0 && took_effect < in_flight);
    Ok(())
}

/// The power goes at each operation of opening a new VM directory (two levels missing), its
/// first deploy and commit, and a pin. After the loss the directory opens cleanly whether it is
/// there or not; once an open returned, the directory survives (its parent was synced), and a
/// commit or pin that returned is there.
#[test]
fn power_loss_at_every_operation_of_creating_a_vm_directory() -> Result<()> {
    let wasm = counter(1);
    let mut k = 0;
    loop {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("new").join("vm");
        let fs = disk(tmp.path());
        fs.cut_at(k);
        let mut opened = false;
        let mut committed = None;
        let result = (|| -> Result<()> {
            let vm = Vm::open_with(
                &dir,
                config(TierPolicy::CraneliftOnly),
                VmFiles { fs: fs.clone() },
                |_| Ok(()),
            )?;
            opened = true;
            let (id, root) = vm.deploy(&wasm)?;
            committed = Some(root);
            vm.pin(&id)?;
            Ok(())
        })();
        fs.power_cut(loss(k))?;
        let what = format!("new VM directory, power lost at op {k} ({:?})", loss(k));
        ensure!(
            !opened || dir.join("store").is_dir(),
            "{what}: an opened VM directory was lost"
        );
        let vm = Vm::open(&dir, config(TierPolicy::CraneliftOnly)).context(what.clone())?;
        check_sound(&vm, &what)?;
        if let Some(root) = committed {
            ensure!(
                vm.commits().iter().any(|c| c.root == root),
                "{what}: commit lost"
            );
        }
        if result.is_ok() {
            ensure!(vm.pins().len() == 1, "{what}: pin lost");
            ensure!(k > 20, "creating a VM took only {k} operations");
            println!(
                "power_vm: {} power cuts while creating a VM directory",
                k + 1
            );
            return Ok(());
        }
        k += 1;
    }
}
