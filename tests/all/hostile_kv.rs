//! Hostile contracts against the key-value host ABI: a loop rewriting one 64 KiB value, a loop
//! writing distinct keys, a loop reading a large value. Each must end with a typed fuel or quota
//! error, keep the host's memory bounded (one undo entry per key, the quota on the data, peak
//! RSS measured in a child process) and pay fuel for every host call and byte moved.

use anyhow::{Result, ensure};
use vm_host::{HostCosts, HostState, ModuleId, Root, Session, Value, Vm, VmConfig, VmError};
use wasmtime::{Caller, Linker};

/// Key "k" at 0, a counter used as a distinct 4-byte key at 16, values read from and into the
/// second page (64 KiB at 65536). `probe.undo_len` is the test host's view of the undo log.
const KV_LOOPS: &str = r#"(module
  (import "env" "db_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (import "env" "db_remove" (func $d (param i32 i32)))
  (import "probe" "undo_len" (func $undo (result i32)))
  (memory 2)
  (data (i32.const 0) "k")
  ;; Rewrites "k" with 64 KiB until the fuel runs out; traps if the undo log grows past one entry.
  (func (export "rewrite_forever")
    (loop $l
      (call $w (i32.const 0) (i32.const 1) (i32.const 65536) (i32.const 65536))
      (if (i32.gt_u (call $undo) (i32.const 1)) (then unreachable))
      (br $l)))
  ;; The same without the probe.
  (func (export "rewrite_plain")
    (loop $l
      (call $w (i32.const 0) (i32.const 1) (i32.const 65536) (i32.const 65536))
      (br $l)))
  ;; Writes 1 KiB under ever new 4-byte keys until something stops it.
  (func (export "distinct_forever")
    (loop $l
      (i32.store (i32.const 16) (i32.add (i32.load (i32.const 16)) (i32.const 1)))
      (call $w (i32.const 16) (i32.const 4) (i32.const 65536) (i32.const 1024))
      (br $l)))
  ;; Stores `len` bytes under "k".
  (func (export "put") (param i32)
    (call $w (i32.const 0) (i32.const 1) (i32.const 65536) (local.get 0)))
  ;; Reads "k" (up to 64 KiB) `n` times.
  (func (export "read_n") (param i32)
    (loop $l
      (if (local.get 0) (then
        (drop (call $r (i32.const 0) (i32.const 1) (i32.const 65536) (i32.const 65536)))
        (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
        (br $l)))))
  ;; Removes the missing key "x" `n` times.
  (func (export "remove_missing_n") (param i32)
    (loop $l
      (if (local.get 0) (then
        (call $d (i32.const 8) (i32.const 1))
        (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
        (br $l)))))
  (data (i32.const 8) "x"))"#;

const VALUE: usize = 64 << 10;

fn config() -> VmConfig {
    VmConfig {
        default_fuel: 20_000_000,
        max_key_bytes: 64,
        max_value_bytes: VALUE,
        max_kv_bytes: 1 << 20,
        ..VmConfig::for_tests()
    }
}

/// A VM whose host adds `probe.undo_len`, with the contract deployed and `put(64 KiB)`
/// committed on top.
fn setup(dir: &std::path::Path, config: VmConfig) -> Result<(Vm, ModuleId, Root)> {
    let vm = Vm::open_with_host(dir, config, |linker: &mut Linker<HostState>| {
        linker.func_wrap("probe", "undo_len", |caller: Caller<'_, HostState>| {
            i32::try_from(caller.data().undo_len()).unwrap_or(i32::MAX)
        })?;
        Ok(())
    })?;
    let (m, _) = vm.deploy(&wat::parse_str(KV_LOOPS)?)?;
    let mut s = vm.session(vm.latest())?;
    s.call(&m, "put", &[Value::I32(VALUE as i32)])?;
    let root = s.commit()?;
    Ok((vm, m, root))
}

/// The call fails as `expect` says, leaves the session's key-value data as it was, and a
/// session with only this failed call commits the base unchanged.
fn fails_without_trace(
    vm: &Vm,
    m: &ModuleId,
    root: Root,
    call: impl Fn(&mut Session) -> Result<Vec<Value>, VmError>,
    expect: impl Fn(&VmError) -> bool,
) -> Result<VmError> {
    let mut s = vm.session(Some(root))?;
    let before = s.kv_get(m, b"k")?;
    let err = call(&mut s).expect_err("a hostile call must fail");
    ensure!(expect(&err), "unexpected error {err:?}");
    ensure!(!err.to_string().contains('\n'), "{err}");
    ensure!(s.kv_get(m, b"k")? == before, "the failed call left a trace");
    ensure!(
        s.kv_get(m, &1u32.to_le_bytes())?.is_none(),
        "a distinct key stayed"
    );
    ensure!(
        s.commit()? == root,
        "the failed call changed what was committed"
    );
    Ok(err)
}

#[test]
fn hostile_rewrite_loop_keeps_one_undo_entry_and_runs_out_of_fuel() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path(), config())?;
    let fuel = 2_000_000;
    fails_without_trace(
        &vm,
        &m,
        root,
        |s| {
            s.set_fuel(fuel);
            let result = s.call(&m, "rewrite_forever", &[]);
            assert_eq!(s.last_call_fuel(), Some(fuel));
            result
        },
        |e| matches!(e, VmError::OutOfFuel(f) if *f == fuel),
    )?;
    // Each pass pays for the 64 KiB it copies, so the loop makes few passes.
    let per_pass = HostCosts::default().fuel(1 + VALUE, 0);
    ensure!(per_pass > VALUE as u64, "a 64 KiB write costs {per_pass}");
    Ok(())
}

#[test]
fn hostile_distinct_keys_end_at_the_quota() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path(), config())?;
    let quota = config().max_kv_bytes;
    let err = fails_without_trace(
        &vm,
        &m,
        root,
        |s| {
            s.set_fuel(4_000_000);
            s.call(&m, "distinct_forever", &[])
        },
        |e| {
            matches!(e, VmError::KvQuotaExceeded { would_be, quota: q }
                if *q == quota && *would_be > quota && *would_be <= quota + 1028)
        },
    )?;
    let text = err.to_string();
    ensure!(
        text.contains("quota") && text.contains(&quota.to_string()),
        "{text}"
    );
    // The genesis initialisation is held to the same quota.
    let over = format!(
        r#"(module (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
             (memory 1)
             (func $s (local i32)
               (loop $l
                 (i32.store (i32.const 0) (local.get 0))
                 (call $w (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 60000))
                 (local.set 0 (i32.add (local.get 0) (i32.const 1)))
                 (br_if $l (i32.lt_u (local.get 0) (i32.const {}))))) (start $s))"#,
        quota / 60000 + 1
    );
    let commits = vm.commits().len();
    let err = vm
        .deploy(&wat::parse_str(&over)?)
        .expect_err("over the quota at genesis");
    ensure!(
        matches!(err, VmError::KvQuotaExceeded { quota: q, .. } if q == quota),
        "{err:?}"
    );
    ensure!(vm.commits().len() == commits);
    Ok(())
}

#[test]
fn hostile_reads_of_a_large_value_pay_per_byte() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path(), config())?;
    let costs = HostCosts::default();
    let per_read = costs.fuel(1, VALUE);
    // A few wasm instructions of loop around each read.
    let loop_fuel = 20;
    let mut s = vm.session(Some(root))?;
    let n = 100u64;
    s.call(&m, "read_n", &[Value::I32(n as i32)])?;
    let used = s.last_call_fuel().unwrap_or(0);
    ensure!(
        used >= n * per_read && used <= n * (per_read + loop_fuel) + loop_fuel,
        "{n} reads of 64 KiB used {used} fuel, expected about {}",
        n * per_read
    );
    // With a fixed budget, the number of reads is the budget over the cost of one.
    let fuel = 1_000_000;
    let max = fuel / per_read;
    s.set_fuel(fuel);
    s.call(
        &m,
        "read_n",
        &[Value::I32(((fuel - 100) / (per_read + loop_fuel)) as i32)],
    )?;
    let err = s
        .call(&m, "read_n", &[Value::I32(max as i32 + 1)])
        .expect_err("more reads than the fuel pays for");
    ensure!(matches!(err, VmError::OutOfFuel(f) if f == fuel), "{err:?}");
    // Removing missing keys costs at least the call each.
    s.call(&m, "remove_missing_n", &[Value::I32(n as i32)])?;
    let used = s.last_call_fuel().unwrap_or(0);
    ensure!(used >= n * costs.fuel(1, 0), "{used}");
    Ok(())
}

#[test]
fn host_call_that_cannot_pay_runs_out_of_fuel_and_leaves_no_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path(), config())?;
    // Enough for the wasm around the call and its flat cost, not for the 64 KiB it copies.
    let fuel = 10_000;
    fails_without_trace(
        &vm,
        &m,
        root,
        |s| {
            s.set_fuel(fuel);
            s.call(&m, "put", &[Value::I32(VALUE as i32)])
        },
        |e| matches!(e, VmError::OutOfFuel(f) if *f == fuel),
    )
    .map(drop)
}

const CHILD: &str = "STRATA_HOSTILE_KV_CHILD";

/// In the child: the issue's loops (one 64 KiB value rewritten with 200,000 fuel, which held
/// 2 GiB before the fix; distinct keys until the quota) with the default costs; prints the
/// growth of the peak RSS.
fn rss_child() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = VmConfig {
        max_kv_bytes: 16 << 20,
        ..config()
    };
    let (vm, m, root) = setup(dir.path(), config)?;
    let base = strata_harness::status_kib("VmRSS:");
    let mut s = vm.session(Some(root))?;
    s.set_fuel(200_000);
    let rewrite = s.call(&m, "rewrite_plain", &[]);
    ensure!(matches!(rewrite, Err(VmError::OutOfFuel(_))), "{rewrite:?}");
    s.set_fuel(100_000_000);
    let distinct = s.call(&m, "distinct_forever", &[]);
    ensure!(
        matches!(distinct, Err(VmError::KvQuotaExceeded { .. })),
        "{distinct:?}"
    );
    println!(
        "hostile_kv: peak RSS grew by {} MiB",
        strata_harness::status_kib("VmHWM:").saturating_sub(base) / 1024
    );
    Ok(())
}

#[test]
fn hostile_kv_loops_keep_resident_memory_bounded() -> Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return rss_child();
    }
    let name = strata_harness::test_name!(hostile_kv_loops_keep_resident_memory_bounded);
    let output = strata_harness::run(&name, &[(CHILD, "1".as_ref())])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "the child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let grown: u64 = stdout
        .lines()
        .find_map(|l| {
            // The test harness prints its own text before the child's on the same line.
            let (_, rest) = l.split_once("hostile_kv: peak RSS grew by ")?;
            rest.strip_suffix(" MiB")
        })
        .ok_or_else(|| anyhow::anyhow!("the child printed no RSS: {stdout}"))?
        .parse()?;
    println!("hostile_kv: peak RSS grew by {grown} MiB");
    // 16 MiB of data, its keys' undo entries, and allocator slack: far below the gigabytes the
    // rewrite loop alone held before the undo rule.
    ensure!(grown < 128, "peak RSS grew by {grown} MiB");
    Ok(())
}
