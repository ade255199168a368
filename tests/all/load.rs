//! Load test: many threads run sessions, calls (some failing), commits and deletes on one VM at
//! once, with pinned modules and a small LRU and file cache (cache pressure), for
//! `STRATA_LOAD_SECONDS` (default 3). The mix includes hostile contracts: a loop rewriting one
//! 64 KiB value (ends out of fuel), a loop writing distinct keys (ends at the key-value quota),
//! and deploys of a module that grows a table (refused at deploy); each fails its call or
//! deploy without a trace in the session. Afterwards every commit verifies and every surviving
//! commit reads back the counters it was committed with; the report gives the operation counts,
//! the peak RSS (VmHWM) and the open files and mappings before and after, which must return to
//! within a small margin of where they started once the sessions are dropped.
//!
//! The work runs in a child process (this test binary re-executed), so that the file and
//! mapping counts are not disturbed by the other tests of the binary.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use sync::Mutex;
use vm_host::{ModuleError, ModuleId, Root, Value, Vm, VmConfig, VmError};

use crate::crash_vm::{counter, stored};

/// `std`'s mutex, poisoning mapped to a panic (a panicking worker fails the test anyway).
mod sync {
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

const CHILD: &str = "STRATA_LOAD_CHILD";
const MODULES: usize = 8;
const THREADS: usize = 4;
/// The key-value quota of every module in the load VM.
const KV_QUOTA: u64 = 256 << 10;
/// The fuel of a hostile call: some 15 rewrites of 64 KiB, or the quota's worth of distinct keys.
const HOSTILE_FUEL: u64 = 1_000_000;

/// The hostile key-value loops of `hostile_kv.rs`, without its probe: `rewrite_forever` rewrites
/// key "k" with 64 KiB until the fuel runs out, `distinct_forever` writes 1 KiB under ever new
/// keys until the quota stops it.
const HOSTILE_KV: &str = r#"(module
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (memory 2)
  (data (i32.const 0) "k")
  (func (export "rewrite_forever")
    (loop $l
      (call $w (i32.const 0) (i32.const 1) (i32.const 65536) (i32.const 65536))
      (br $l)))
  (func (export "distinct_forever")
    (loop $l
      (i32.store (i32.const 16) (i32.add (i32.load (i32.const 16)) (i32.const 1)))
      (call $w (i32.const 16) (i32.const 4) (i32.const 65536) (i32.const 1024))
      (br $l))))"#;

/// A module whose code grows its table by 50 M elements (389 MiB outside `memory_limit` when
/// it could run): refused at deploy.
const TABLE_GROW: &str = r#"(module (import "env" "db_remove" (func (param i32 i32)))
  (memory 1)
  (table $t 1 funcref)
  (func (export "grow") (drop (table.grow $t (ref.null func) (i32.const 50000000)))))"#;

/// Counts of open file descriptors and memory mappings of this process.
fn fds_and_maps() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    (fds, maps)
}

#[derive(Default)]
struct Counts {
    sessions: AtomicU64,
    calls: AtomicU64,
    failed_calls: AtomicU64,
    commits: AtomicU64,
    deletes: AtomicU64,
    deferred: AtomicU64,
    /// Hostile calls (out of fuel or over the quota), each failed as expected.
    hostile_calls: AtomicU64,
    /// Deploys of the table-growing module, each refused.
    refused_deploys: AtomicU64,
}

/// What each committed root holds: the counter of every module it has.
type Expected = Mutex<HashMap<Root, Vec<(ModuleId, i64)>>>;

struct Shared {
    vm: Vm,
    modules: Vec<ModuleId>,
    /// The hostile key-value module (deployed with the counters; its calls always fail).
    hostile: ModuleId,
    table_grow: Vec<u8>,
    expected: Expected,
    counts: Counts,
    stop: AtomicBool,
}

fn worker(shared: &Shared, seed: u64) -> Result<()> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let vm = &shared.vm;
    while !shared.stop.load(Ordering::Relaxed) {
        // A base: usually the newest commit, sometimes an older one.
        let commits = vm.commits();
        let base = if commits.is_empty() || next() % 3 != 0 {
            vm.latest()
        } else {
            Some(commits[(next() % commits.len() as u64) as usize].root)
        };
        let mut s = match vm.session(base) {
            Ok(s) => s,
            // Deleted meanwhile by another worker.
            Err(VmError::Store(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        shared.counts.sessions.fetch_add(1, Ordering::Relaxed);
        let touched = 1 + next() % 3;
        for _ in 0..touched {
            let m = shared.modules[(next() % MODULES as u64) as usize];
            if next() % 5 == 0 {
                let err = s
                    .call(&m, "add_then_trap", &[Value::I64(1000)])
                    .expect_err("the call traps");
                ensure!(matches!(err, VmError::Trap { .. }), "{err}");
                shared.counts.failed_calls.fetch_add(1, Ordering::Relaxed);
            }
            let n = (next() % 5) as i64 + 1;
            s.call(&m, "add", &[Value::I64(n)])?;
            shared.counts.calls.fetch_add(1, Ordering::Relaxed);
        }
        match next() % 10 {
            0 => hostile_call(shared, &mut s, "rewrite_forever")?,
            1 => hostile_call(shared, &mut s, "distinct_forever")?,
            2 if next() % 2 == 0 => {
                let err = s
                    .deploy(&shared.table_grow)
                    .expect_err("a module growing a table is refused");
                ensure!(
                    matches!(
                        &err,
                        VmError::InvalidModule(ModuleError::StatefulInstruction { instruction, .. })
                            if *instruction == "table.grow"
                    ),
                    "{err:?}"
                );
                shared
                    .counts
                    .refused_deploys
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if next() % 4 == 0 {
            continue; // dropped without a commit
        }
        let mut values = Vec::new();
        for m in &shared.modules {
            let v = s.call(m, "get", &[])?;
            let Some(Value::I64(v)) = v.first().copied() else {
                bail!("get returned {v:?}");
            };
            values.push((*m, v));
        }
        let root = s.commit()?;
        shared.counts.commits.fetch_add(1, Ordering::Relaxed);
        let mut expected = shared.expected.lock();
        if let Some(old) = expected.insert(root, values.clone()) {
            ensure!(old == values, "one root, two states: {root}");
        }
        drop(expected);
        // Deletes keep the number of commits bounded: above 16, one goes after every commit.
        {
            let commits = vm.commits();
            if commits.len() > 16 {
                let victim = commits[(next() % (commits.len() as u64 - 2)) as usize].root;
                match vm.delete(&victim) {
                    Ok(vm_host::Deletion::Deleted) => {
                        shared.counts.deletes.fetch_add(1, Ordering::Relaxed);
                        // The test's own record stays as small as the store.
                        shared.expected.lock().remove(&victim);
                    }
                    Ok(_) => {
                        shared.counts.deferred.fetch_add(1, Ordering::Relaxed);
                    }
                    // Already deleted by another worker.
                    Err(VmError::Store(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}

/// Runs a hostile loop of the hostile module with [`HOSTILE_FUEL`]: it must fail out of fuel
/// (the rewrite loop) or over the quota (distinct keys) and leave the module's data empty.
fn hostile_call(shared: &Shared, s: &mut vm_host::Session, function: &str) -> Result<()> {
    s.set_fuel(HOSTILE_FUEL);
    let err = s
        .call(&shared.hostile, function, &[])
        .expect_err("a hostile loop must fail");
    s.set_fuel(VmConfig::for_tests().default_fuel);
    let expected = match function {
        "rewrite_forever" => matches!(err, VmError::OutOfFuel(f) if f == HOSTILE_FUEL),
        _ => matches!(err, VmError::KvQuotaExceeded { quota, .. } if quota == KV_QUOTA),
    };
    ensure!(expected, "{function}: {err:?}");
    ensure!(
        s.kv_get(&shared.hostile, b"k")?.is_none()
            && s.kv_get(&shared.hostile, &1u32.to_le_bytes())?.is_none(),
        "{function} left a trace"
    );
    shared.counts.hostile_calls.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn load_child() -> Result<()> {
    let seconds: f64 = std::env::var("STRATA_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile::tempdir()?;
    let (fds0, maps0) = fds_and_maps();
    let config = VmConfig {
        // Room for about two compiled modules (about 12 KiB each): the others are evicted and
        // come back from the file cache, itself limited to four, or are compiled again.
        lru_bytes: 32 << 10,
        fs_cache_bytes: Some(48 << 10),
        max_kv_bytes: KV_QUOTA,
        ..VmConfig::for_tests()
    };
    let vm = Vm::open(dir.path(), config)?;
    // All modules in one commit, so that every commit has all of them.
    let mut s = vm.session(None)?;
    let modules: Vec<ModuleId> = (0..MODULES)
        .map(|i| Ok(s.deploy(&counter(1_000_000 + i as u64))?))
        .collect::<Result<_>>()?;
    let hostile = s.deploy(&wat::parse_str(HOSTILE_KV)?)?;
    s.commit()?;
    vm.pin(&modules[0])?;
    vm.pin(&modules[1])?;
    let shared = Arc::new(Shared {
        vm: vm.clone(),
        modules,
        hostile,
        table_grow: wat::parse_str(TABLE_GROW)?,
        expected: Mutex::new(HashMap::new()),
        counts: Counts::default(),
        stop: AtomicBool::new(false),
    });
    // Warm up: every module loaded and instantiated once.
    worker_round(&shared)?;
    let (fds1, maps1) = fds_and_maps();

    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || worker(&shared, t as u64 + 1))
        })
        .collect();
    // RSS at each tenth of the run: it must level off, not grow with the work done.
    let mut rss = Vec::new();
    for tenth in 1..=10 {
        let until = Duration::from_secs_f64(seconds * f64::from(tenth) / 10.0);
        std::thread::sleep(until.saturating_sub(start.elapsed()));
        rss.push(strata_harness::status_kib("VmRSS:") / 1024);
    }
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (fds2, maps2) = fds_and_maps();

    // Everything verifies, and every surviving commit holds what it was committed with.
    let outcome = vm.verify()?;
    ensure!(outcome.is_ok(), "verify: {:?}", outcome.problems);
    let expected = shared.expected.lock().clone();
    let commits = vm.commits();
    let mut checked = 0;
    for c in &commits {
        let Some(values) = expected.get(&c.root) else {
            continue; // the deploys
        };
        let mut s = vm.session(Some(c.root))?;
        for (m, v) in values {
            ensure!(
                s.call(m, "get", &[])? == [Value::I64(*v)],
                "commit {} lost its state",
                c.root
            );
            ensure!(s.call(m, "stored_count", &[])? == [Value::I64(stored(*v))]);
            ensure!(s.call(m, "memory_count", &[])? == [Value::I64(*v)]);
        }
        checked += 1;
    }
    let stats = vm.stats();
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let c = &shared.counts;
    let (sessions, calls, failed, commits_made, deletes, deferred) = (
        load(&c.sessions),
        load(&c.calls),
        load(&c.failed_calls),
        load(&c.commits),
        load(&c.deletes),
        load(&c.deferred),
    );
    let (hostile_calls, refused_deploys) = (load(&c.hostile_calls), load(&c.refused_deploys));
    println!(
        "load: {elapsed:.1} s, {THREADS} threads, {MODULES} modules (2 pinned, LRU 32 KiB, file cache 48 KiB)"
    );
    println!(
        "load: sessions {sessions}, calls {calls} (+{failed} failed on purpose), commits {commits_made}, deletes {deletes} (+{deferred} deferred)"
    );
    println!(
        "load: hostile calls {hostile_calls} (out of fuel or over the quota), table-growing deploys refused {refused_deploys}"
    );
    println!(
        "load: {} commits left, {checked} read back, {} verified, {} artifacts verified; compiles {}, instantiations {}",
        commits.len(),
        outcome.commits,
        outcome.artifacts,
        stats.compiles,
        stats.instantiations
    );
    for layer in &stats.layers {
        println!("load: cache layer {layer:?}");
    }
    drop(shared);
    drop(vm);
    let (fds3, maps3) = fds_and_maps();
    println!(
        "load: peak RSS {} MiB (VmHWM), RSS now {} MiB; RSS at each tenth of the run (MiB): {rss:?}",
        strata_harness::status_kib("VmHWM:") / 1024,
        strata_harness::status_kib("VmRSS:") / 1024
    );
    println!(
        "load: open fds {fds0} at start, {fds1} after warm-up, {fds2} after the run, {fds3} after dropping the VM"
    );
    println!(
        "load: mappings {maps0} at start, {maps1} after warm-up, {maps2} after the run, {maps3} after dropping the VM"
    );
    ensure!(commits_made > 0, "no commits");
    ensure!(hostile_calls > 0, "no hostile calls");
    // Bounded memory: the second half of the run adds little to the first (a leak per operation
    // would double it). Loose, for noisy short runs.
    ensure!(
        rss[9] <= rss[4] + rss[4] / 2 + 16,
        "RSS grows with the work done: {rss:?} MiB"
    );
    // No leaks: what the run opened is closed again once its sessions are gone.
    ensure!(
        fds2 <= fds1 + 4,
        "file descriptors leaked: {fds1} -> {fds2}"
    );
    ensure!(
        fds3 <= fds0 + 4,
        "file descriptors leaked: {fds0} -> {fds3}"
    );
    ensure!(maps2 <= maps1 + 64, "mappings leaked: {maps1} -> {maps2}");
    ensure!(maps3 <= maps0 + 64, "mappings leaked: {maps0} -> {maps3}");
    Ok(())
}

/// One session touching every module, committed: loads and instantiates each once.
fn worker_round(shared: &Shared) -> Result<()> {
    let mut s = shared.vm.session(shared.vm.latest())?;
    let mut values = Vec::new();
    for m in &shared.modules {
        let v = s.call(m, "add", &[Value::I64(1)])?;
        let Some(Value::I64(v)) = v.first().copied() else {
            bail!("add returned {v:?}");
        };
        values.push((*m, v));
    }
    let root = s.commit()?;
    shared.expected.lock().insert(root, values);
    Ok(())
}

#[test]
fn load_threads_sessions_commits_deletes_under_cache_pressure() -> Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return load_child();
    }
    let name =
        strata_harness::test_name!(load_threads_sessions_commits_deletes_under_cache_pressure);
    let output = strata_harness::run(&name, &[(CHILD, "1".as_ref())])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines().filter(|l| l.starts_with("load:")) {
        println!("{line}");
    }
    ensure!(
        output.status.success(),
        "the load child failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(stdout.contains("load: peak RSS"), "the child ran no load");
    Ok(())
}
