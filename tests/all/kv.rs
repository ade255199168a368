//! Key-value range scans through the host ABI (`db_scan`/`db_next`) with the ledger contract:
//! order and bounds, snapshot semantics while the contract writes, rollback of a failed
//! scanning call, the bound on live iterators, fuel, and state across commits and restarts.

use anyhow::Result;
use vm_host::{ModuleId, Order, Value, Vm, VmConfig, VmError};

const LEDGER: &str = include_str!("../../crates/vm-host/contracts/ledger.wat");

fn sum(from: i32, to: i32, order: i32, bonus: i64, fail: bool) -> Vec<Value> {
    vec![
        Value::I32(from),
        Value::I32(to),
        Value::I32(order),
        Value::I64(bonus),
        Value::I32(fail.into()),
    ]
}

/// A ledger with accounts 1..=5 holding 10, 20, ..., 50, committed.
fn ledger(dir: &std::path::Path, config: VmConfig) -> Result<(Vm, ModuleId, vm_host::Root)> {
    let vm = Vm::open(dir, config)?;
    let (m, _) = vm.deploy(&wat::parse_str(LEDGER)?)?;
    let mut s = vm.session(vm.latest())?;
    for a in 1..=5 {
        s.call(&m, "put", &[Value::I32(a), Value::I64(10 * i64::from(a))])?;
    }
    let root = s.commit()?;
    Ok((vm, m, root))
}

#[test]
fn scans_follow_bounds_and_order() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = ledger(dir.path(), VmConfig::for_tests())?;
    let mut s = vm.session(Some(root))?;
    assert_eq!(
        s.call(&m, "sum", &sum(0, -1, 0, 0, false))?,
        [Value::I64(150)]
    );
    assert_eq!(
        s.call(&m, "sum", &sum(2, 4, 1, 0, false))?,
        [Value::I64(50)]
    );
    assert_eq!(s.call(&m, "sum", &sum(4, 2, 0, 0, false))?, [Value::I64(0)]);
    assert_eq!(
        s.call(&m, "sum", &sum(5, -1, 1, 0, false))?,
        [Value::I64(50)]
    );
    let bad = s
        .call(&m, "sum", &sum(0, -1, 2, 0, false))
        .expect_err("order 2");
    assert!(
        bad.to_string().contains("scan order 2 is not 0 or 1"),
        "{bad}"
    );
    Ok(())
}

#[test]
fn a_scan_sees_its_snapshot_and_a_failed_call_leaves_no_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = ledger(dir.path(), VmConfig::for_tests())?;
    let mut s = vm.session(Some(root))?;
    // The bonus writes inside the range while scanning: the scan sees the data as it was.
    let err = s
        .call(&m, "sum", &sum(0, -1, 0, 1, true))
        .expect_err("fail traps");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    assert_eq!(
        s.call(&m, "sum", &sum(0, -1, 0, 0, false))?,
        [Value::I64(150)]
    );
    assert_eq!(
        s.call(&m, "sum", &sum(0, -1, 0, 1, false))?,
        [Value::I64(150)]
    );
    // Each account got 1 more, and a new key right after it with the same amount.
    assert_eq!(
        s.call(&m, "sum", &sum(0, -1, 1, 0, false))?,
        [Value::I64(310)]
    );
    let root = s.commit()?;
    // The store's own range agrees, after a restart.
    drop(vm);
    let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
    let mut s = vm.session(Some(root))?;
    let kv = s.kv(&m)?;
    let keys: Vec<Vec<u8>> = kv
        .range(None, None, Order::Descending)?
        .map(|e| e.map(|(k, _)| k))
        .collect::<Result<_, _>>()?;
    assert_eq!(keys.len(), 10);
    assert!(keys.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(
        s.call(&m, "sum", &sum(3, 4, 0, 0, false))?,
        [Value::I64(62)]
    );
    Ok(())
}

#[test]
fn live_iterators_are_bounded_per_call() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = VmConfig {
        max_iterators: 4,
        ..VmConfig::for_tests()
    };
    let (vm, m, root) = ledger(dir.path(), config)?;
    let mut s = vm.session(Some(root))?;
    s.call(&m, "open", &[Value::I32(4)])?;
    // Iterators end with their call: the next call may open as many again.
    s.call(&m, "open", &[Value::I32(4)])?;
    let err = s
        .call(&m, "open", &[Value::I32(5)])
        .expect_err("over the bound");
    assert!(
        err.to_string()
            .contains("too many live iterators: the limit is 4"),
        "{err}"
    );
    assert_eq!(s.commit()?, root);
    Ok(())
}

#[test]
fn scans_pay_fuel_per_call_and_per_byte() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = ledger(dir.path(), VmConfig::for_tests())?;
    let mut s = vm.session(Some(root))?;
    s.call(&m, "sum", &sum(0, 1, 0, 0, false))?;
    let empty = s.last_call_fuel().expect("ran");
    s.call(&m, "sum", &sum(0, -1, 0, 0, false))?;
    let five = s.last_call_fuel().expect("ran");
    // Five more db_next calls, each with 8 + 8 + 8 bytes copied out.
    let costs = VmConfig::for_tests().host_costs;
    assert!(
        five - empty >= 5 * costs.fuel(0, 24),
        "{five} - {empty} is less than five entries' host costs"
    );
    // The snapshot of a scan copies the session's uncommitted writes inside its range, and
    // pays for each byte: here five keys of 8 bytes with values of 8.
    s.call(&m, "put", &[Value::I32(1), Value::I64(11)])?;
    for a in 2..=5 {
        s.call(&m, "put", &[Value::I32(a), Value::I64(10 * i64::from(a))])?;
    }
    s.call(&m, "sum", &sum(0, -1, 0, 0, false))?;
    let with_writes = s.last_call_fuel().expect("ran");
    assert_eq!(with_writes - five, 5 * 16 * costs.read_byte);
    // db_scan alone costs a call and the 16 bytes of its bounds.
    s.set_fuel(costs.fuel(16, 0));
    let err = s
        .call(&m, "sum", &sum(0, 1, 0, 0, false))
        .expect_err("cannot pay");
    assert!(matches!(err, VmError::OutOfFuel(_)), "{err}");
    Ok(())
}

#[test]
fn key_count_quota_ends_the_call() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = VmConfig {
        max_kv_keys: 6,
        ..VmConfig::for_tests()
    };
    let (vm, m, root) = ledger(dir.path(), config)?;
    let mut s = vm.session(Some(root))?;
    s.call(&m, "put", &[Value::I32(6), Value::I64(1)])?;
    let err = s
        .call(&m, "put", &[Value::I32(7), Value::I64(1)])
        .expect_err("a seventh key");
    assert!(
        matches!(
            err,
            VmError::KvKeysExceeded {
                would_be: 7,
                quota: 6
            }
        ),
        "{err}"
    );
    // Overwriting an existing key is still allowed.
    s.call(&m, "put", &[Value::I32(6), Value::I64(2)])?;
    Ok(())
}
