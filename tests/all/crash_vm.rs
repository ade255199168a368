//! System crash harness through the VM host: a child process (this test binary re-executed)
//! deploys, calls and commits through `vm_host` in a loop with fsync on, printing each commit's
//! root and the counter value it holds; the parent kills it with SIGKILL at random moments, then
//! reopens the directory with `Vm::open` and checks that every reported commit is there,
//! verifies and reads back its expected value, that at most the one commit in flight at the
//! kill appeared unreported, and that no temporary leftovers remain in the store or the file
//! cache.
//!
//! `STRATA_CRASH_ROUNDS` sets the number of kills (default 10); `cargo xtask crash --rounds N`
//! runs it in release mode together with the store's own crash test.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use vm_host::{ModuleId, Root, TierPolicy, Value, Vm, VmConfig};

const CHILD: &str = "STRATA_VM_CRASH_CHILD";

/// The counter contract of the crash and load tests: the count lives in a global, in memory
/// (at 1024) and in the key-value data (key "count"); `add_then_trap` changes all three and
/// traps, so a failed call has something to undo. `TAG` is replaced to make distinct modules.
pub(crate) const COUNTER: &str = r#"(module
  (import "env" "db_read" (func $db_read (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $db_write (param i32 i32 i32 i32)))
  (memory 1)
  (global $count (mut i64) (i64.const 0))
  (data (i32.const 0) "count")
  ;; Distinct code per variant, so that each variant is its own compiled module.
  (func (export "tag") (result i64) (i64.const TAG))
  (func $add (export "add") (param $n i64) (result i64)
    (global.set $count (i64.add (global.get $count) (local.get $n)))
    (i64.store (i32.const 1024) (i64.add (i64.load (i32.const 1024)) (local.get $n)))
    (i64.store (i32.const 16) (global.get $count))
    (call $db_write (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8))
    (global.get $count))
  (func (export "add_then_trap") (param $n i64)
    (drop (call $add (local.get $n)))
    unreachable)
  (func (export "get") (result i64) (global.get $count))
  (func (export "memory_count") (result i64) (i64.load (i32.const 1024)))
  (func (export "stored_count") (result i64)
    (if (i32.lt_s (call $db_read (i32.const 0) (i32.const 5) (i32.const 32) (i32.const 8))
                  (i32.const 0))
      (then (return (i64.const -1))))
    (i64.load (i32.const 32))))"#;

/// A counter module with its own id.
pub(crate) fn counter(variant: u64) -> Vec<u8> {
    wat::parse_str(COUNTER.replace("TAG", &variant.to_string())).expect("counter wat")
}

/// What `stored_count` returns for a count: the key is absent until the first `add`.
pub(crate) fn stored(count: i64) -> i64 {
    if count == 0 { -1 } else { count }
}

/// The child: deploy, call and commit forever, reporting each step on stdout.
///
/// Lines: `ready`, `begin <base>` (a commit is about to start), `commit <root> <module> <value>`
/// per module of a finished commit (the last module line is followed by `done <root>`),
/// `deleting <root>` / `deleted <root>`.
/// Odd rounds run with two tiers: Winch artifacts at deploy and Cranelift ones written by the
/// tier-up thread, which the kill also cuts short.
fn config(seed: u64) -> VmConfig {
    VmConfig {
        tier: if seed % 2 == 1 {
            TierPolicy::WinchThenCranelift
        } else {
            TierPolicy::CraneliftOnly
        },
        ..VmConfig::default()
    }
}

fn child(dir: &Path, seed: u64) -> Result<()> {
    let vm = Vm::open(dir, config(seed))?;
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for i in 0u64.. {
        let base = vm.latest();
        let mut s = vm.session(base)?;
        // A new module now and then (and always in an empty store): a deploy in the commit.
        if s.modules().is_empty() || (s.modules().len() < 4 && next() % 8 == 0) {
            s.deploy(&counter(seed * 100_000 + i))?;
        }
        let modules = s.modules();
        for _ in 0..1 + next() % 3 {
            let m = modules[(next() % modules.len() as u64) as usize];
            if next() % 4 == 0 {
                // A failed call is never part of a commit.
                ensure!(
                    s.call(&m, "add_then_trap", &[Value::I64(1_000_000)])
                        .is_err()
                );
            }
            s.call(&m, "add", &[Value::I64(1 + (next() % 9) as i64)])?;
        }
        let mut values = Vec::new();
        for m in &modules {
            let [Value::I64(v)] = s.call(m, "get", &[])?[..] else {
                bail!("get returned something else");
            };
            values.push((*m, v));
        }
        writeln!(out, "begin")?;
        out.flush()?;
        let root = s.commit()?;
        for (m, v) in values {
            writeln!(out, "commit {root} {m} {v}")?;
        }
        writeln!(out, "done {root}")?;
        out.flush()?;
        // Deletes keep the store small (the parent verifies it after every kill): above 8
        // commits, one of them, not the newest, goes after every commit.
        let commits = vm.commits();
        if commits.len() > 8 {
            let victim = commits[(next() % (commits.len() as u64 - 1)) as usize].root;
            writeln!(out, "deleting {victim}")?;
            out.flush()?;
            vm.delete(&victim)?;
            writeln!(out, "deleted {victim}")?;
            out.flush()?;
        }
    }
    Ok(())
}

/// The counter value of each module of a commit.
type Values = Vec<(ModuleId, i64)>;

/// What the parent learnt from one child's lines.
#[derive(Default)]
struct Report {
    /// In order: finished commits with their values, and finished deletes (`None`).
    events: Vec<(Root, Option<Values>)>,
    commits: usize,
    /// A deletion that started and did not report its end.
    deleting: Option<Root>,
    /// Whether the kill came between `begin` and `done`.
    in_commit: bool,
    ready: bool,
}

fn parse(lines: &[String]) -> Result<Report> {
    let mut report = Report::default();
    let mut pending: Values = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["begin"] => report.in_commit = true,
            ["commit", _root, m, v] => pending.push((ModuleId::from_hex(m)?, v.parse()?)),
            ["done", root] => {
                report
                    .events
                    .push((Root::from_hex(root)?, Some(std::mem::take(&mut pending))));
                report.commits += 1;
                report.in_commit = false;
            }
            ["deleting", root] => report.deleting = Some(Root::from_hex(root)?),
            ["deleted", root] => {
                report.events.push((Root::from_hex(root)?, None));
                report.deleting = None;
            }
            [.., last] if last.ends_with("ready") => report.ready = true,
            // The test harness's own output.
            _ => {}
        }
    }
    Ok(report)
}

/// A reopened VM directory is sound: no leftovers in the store, and everything verifies.
pub(crate) fn check_sound(vm: &Vm, what: &str) -> Result<()> {
    for entry in std::fs::read_dir(vm.dir().join("store"))? {
        let name = entry?.file_name();
        ensure!(
            !name.to_string_lossy().starts_with('.'),
            "{what}: leftover {name:?}"
        );
    }
    let outcome = vm.verify()?;
    ensure!(outcome.is_ok(), "{what}: {:?}", outcome.problems);
    Ok(())
}

/// Every counter module of commit `root` reads back its count in its global, its memory and
/// its key-value data.
pub(crate) fn check_values(
    vm: &Vm,
    root: &Root,
    values: &[(ModuleId, i64)],
    what: &str,
) -> Result<()> {
    let mut s = vm.session(Some(*root))?;
    for (m, v) in values {
        ensure!(
            s.call(m, "get", &[])? == [Value::I64(*v)]
                && s.call(m, "memory_count", &[])? == [Value::I64(*v)]
                && s.call(m, "stored_count", &[])? == [Value::I64(stored(*v))],
            "{what}: commit {root} module {m} does not read back {v}"
        );
    }
    Ok(())
}

/// The temp files in the file cache's engine folders.
fn cache_temp_files(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let cache = dir.join("cache");
    if !cache.exists() {
        return Ok(found);
    }
    for folder in std::fs::read_dir(cache)? {
        let folder = folder?.path();
        if !folder.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&folder)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                found.push(name);
            }
        }
    }
    Ok(found)
}

#[test]
fn crash_vm_sigkill_during_deploy_call_commit() -> Result<()> {
    if let Some(dir) = std::env::var_os(CHILD) {
        let seed = std::env::var("STRATA_CRASH_SEED")?.parse()?;
        return child(Path::new(&dir), seed);
    }
    let rounds = strata_harness::crash_rounds(10);
    let dir = tempfile::tempdir()?;
    let name = strata_harness::test_name!(crash_vm_sigkill_during_deploy_call_commit);
    // Every commit reported and not deleted since, with its values.
    let mut live: HashMap<Root, Values> = HashMap::new();
    let (mut total_commits, mut kills_in_commit, mut kills_in_delete) = (0, 0, 0);
    let mut cache_temps_left = 0;
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let start = Instant::now();
    for round in 0..rounds {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let seed = round.to_string();
        let env = [
            (CHILD, dir.path().as_os_str()),
            ("STRATA_CRASH_SEED", seed.as_ref()),
        ];
        // The harness prints "test <name> ... " before the child's first line.
        let child = strata_harness::Child::spawn(&name, &env, Some("ready"))?;
        // Kill at a random moment after the VM is open: 0 to 300 ms into the loop.
        let _ = child.wait_ready(Duration::from_secs(30));
        std::thread::sleep(Duration::from_micros(rng % 300_000));
        let lines = child.kill()?;
        let report = parse(&lines)?;
        ensure!(
            report.ready,
            "round {round}: the child did not start: {:?}",
            &lines[..lines.len().min(8)]
        );
        kills_in_commit += u64::from(report.in_commit);
        kills_in_delete += u64::from(report.deleting.is_some());
        total_commits += report.commits;
        for (root, event) in report.events {
            match event {
                Some(values) => live.insert(root, values),
                None => live.remove(&root),
            };
        }

        // Temp files of cache saves the kill cut short: the reopen removes them (their
        // writer is gone).
        let leftovers = cache_temp_files(dir.path())?;
        cache_temps_left += leftovers.len();
        // Reopen: the store cleans up, everything verifies.
        let vm = Vm::open(dir.path(), config(round))?;
        let after = cache_temp_files(dir.path())?;
        ensure!(
            after.is_empty(),
            "round {round}: cache temp files survive the reopen: {after:?} (before: {leftovers:?})"
        );
        check_sound(&vm, &format!("round {round}"))?;
        let on_disk: HashSet<Root> = vm.commits().into_iter().map(|c| c.root).collect();
        if let Some(root) = report.deleting
            && !on_disk.contains(&root)
        {
            live.remove(&root);
        }
        for (root, values) in &live {
            ensure!(
                on_disk.contains(root),
                "round {round}: reported commit {root} lost"
            );
            check_values(&vm, root, values, &format!("round {round}"))?;
        }
        // At most the commit in flight at the kill appeared without being reported.
        let unreported: Vec<&Root> = on_disk.iter().filter(|r| !live.contains_key(r)).collect();
        ensure!(
            unreported.len() <= 1,
            "round {round}: unreported commits {unreported:?}"
        );
        // An unreported commit is a whole one: it opens, and its modules all call.
        for root in unreported {
            let mut s = vm.session(Some(*root))?;
            for m in s.modules() {
                s.call(&m, "get", &[])?;
            }
            live.insert(*root, Vec::new());
        }
        if (round + 1) % 100 == 0 {
            println!(
                "crash_vm: {} rounds checked in {:.1} s, {total_commits} commits reported, \
                 {kills_in_commit} kills inside a commit, {kills_in_delete} inside a delete",
                round + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "crash_vm: {rounds} rounds in {:.1} s, {total_commits} commits reported, \
         {kills_in_commit} kills inside a commit, {kills_in_delete} inside a delete, \
         {cache_temps_left} cache temp files left by kills (all removed by the reopen), \
         {} commits alive at the end",
        start.elapsed().as_secs_f64(),
        live.len()
    );
    ensure!(
        total_commits > 0 || rounds == 0,
        "the children never committed"
    );
    Ok(())
}
