//! Hostile contracts through the VM host's library: infinite loops, deep recursion, memory growth
//! to the limit, huge key-value data, out-of-bounds host pointers, and start functions that never
//! end. Each must end with a typed error, leave the process healthy (the next call works) and
//! leave no trace: the session's memory, globals and key-value data are as before, and nothing
//! is committed.

use std::path::Path;

use anyhow::{Result, ensure};
use vm_host::{ModuleId, Root, Session, Value, Vm, VmConfig, VmError};

/// Small limits so that hitting them is quick in a debug build.
fn config() -> VmConfig {
    VmConfig {
        default_fuel: 20_000_000,
        deploy_fuel: 20_000_000,
        memory_limit: 4 << 20,
        max_key_bytes: 64,
        max_value_bytes: 64 << 10,
        ..VmConfig::for_tests()
    }
}

/// One contract with a well-behaved counter and every hostile behaviour as an export.
/// The counter lives in a global, in memory at offset 0 and in the key-value data under "k".
const HOSTILE: &str = r#"(module
  (import "env" "db_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (import "env" "db_remove" (func $d (param i32 i32)))
  (memory 1)
  (global $n (mut i64) (i64.const 0))
  (data (i32.const 100) "k")
  ;; Mutates all three kinds of state, so a failed call after it has something to undo.
  (func $touch
    (global.set $n (i64.add (global.get $n) (i64.const 1)))
    (i64.store (i32.const 0) (global.get $n))
    (i64.store (i32.const 200) (global.get $n))
    (call $w (i32.const 100) (i32.const 1) (i32.const 200) (i32.const 8)))
  (func (export "bump") (result i64) (call $touch) (global.get $n))
  (func (export "get") (result i64) (global.get $n))
  (func (export "pages") (result i32) (memory.size))
  (func (export "spin") (call $touch) (loop $l (br $l)))
  (func $rec (export "recurse") (param i64) (result i64)
    (i64.add (call $rec (i64.add (local.get 0) (i64.const 1))) (i64.const 1)))
  (func (export "deep") (result i64) (call $touch) (call $rec (i64.const 0)))
  ;; Grows one page at a time until memory.grow refuses (-1); returns the page count.
  (func $grow_all (export "grow_all") (result i32)
    (block $done
      (loop $l
        (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $l)))
    (memory.size))
  (func (export "grow_then_trap")
    (call $touch)
    (drop (call $grow_all))
    ;; Write into the last page, then trap.
    (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1)) (i32.const 9))
    unreachable)
  (func (export "huge_value") (param i32)
    (call $touch)
    (drop (call $grow_all))
    (call $w (i32.const 100) (i32.const 1) (i32.const 0) (local.get 0)))
  (func (export "huge_key") (param i32)
    (call $touch)
    (call $w (i32.const 0) (local.get 0) (i32.const 0) (i32.const 1)))
  (func (export "write_at") (param i32 i32)
    (call $touch)
    (call $w (local.get 0) (local.get 1) (i32.const 0) (i32.const 1)))
  (func (export "write_value_at") (param i32 i32)
    (call $touch)
    (call $w (i32.const 100) (i32.const 1) (local.get 0) (local.get 1)))
  (func (export "read_into") (param i32 i32) (result i32)
    (call $touch)
    (call $r (i32.const 100) (i32.const 1) (local.get 0) (local.get 1)))
  (func (export "remove_at") (param i32 i32)
    (call $touch)
    (call $d (local.get 0) (local.get 1)))
  (func (export "load_at") (param i32) (result i32)
    (call $touch)
    (i32.load (local.get 0))))"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid wat")
}

/// Everything a call could change: memory size, the counter in memory, the global, the KV value.
#[derive(Debug, PartialEq)]
struct Snapshot {
    pages: Vec<Value>,
    memory: Vec<u8>,
    global: Vec<Value>,
    kv: Option<Vec<u8>>,
}

fn snapshot(s: &mut Session, m: &ModuleId) -> Result<Snapshot> {
    Ok(Snapshot {
        pages: s.call(m, "pages", &[])?,
        memory: s.read_memory(m, 0, 16)?,
        global: s.call(m, "get", &[])?,
        kv: s.kv_get(m, b"k")?,
    })
}

/// Opens a VM, deploys the hostile contract and commits one successful bump on top.
fn setup(dir: &Path) -> Result<(Vm, ModuleId, Root)> {
    let vm = Vm::open(dir, config())?;
    let (m, _) = vm.deploy(&wasm(HOSTILE))?;
    let mut s = vm.session(vm.latest())?;
    s.call(&m, "bump", &[])?;
    let root = s.commit()?;
    Ok((vm, m, root))
}

/// Runs `hostile` in a session on `root` between two good calls and checks that it failed as
/// `expect` says, left no trace, the next call works, and that committing yields exactly the
/// root of a twin session that made only the good calls.
fn check_hostile(
    vm: &Vm,
    m: &ModuleId,
    root: Root,
    function: &str,
    args: &[Value],
    expect: impl Fn(&VmError) -> bool,
) -> Result<()> {
    let commits_before = vm.commits().len();
    let mut s = vm.session(Some(root))?;
    s.call(m, "bump", &[])?;
    let before = snapshot(&mut s, m)?;
    let err = s
        .call(m, function, args)
        .expect_err("a hostile call must fail");
    ensure!(expect(&err), "{function}: unexpected error {err:?}");
    // The message is one clear line.
    let text = err.to_string();
    ensure!(!text.is_empty(), "{function}: empty message");
    ensure!(!text.contains('\n'), "{function}: {text:?}");
    ensure!(
        snapshot(&mut s, m)? == before,
        "{function} left a trace in the session"
    );
    // Healthy: the next call works and sees the state from before the failed call.
    ensure!(
        s.call(m, "bump", &[])? == [Value::I64(3)],
        "{function}: next call"
    );
    let committed = s.commit()?;

    let mut twin = vm.session(Some(root))?;
    twin.call(m, "bump", &[])?;
    twin.call(m, "bump", &[])?;
    ensure!(
        twin.commit()? == committed,
        "{function}: the failed call changed what was committed"
    );
    // At most that one state was added (it may exist already from an earlier check).
    ensure!(vm.commits().len() <= commits_before + 1, "{function}");
    Ok(())
}

#[test]
fn hostile_infinite_loop_runs_out_of_fuel() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    check_hostile(&vm, &m, root, "spin", &[], |e| {
        matches!(e, VmError::OutOfFuel(20_000_000)) && e.to_string().contains("out of fuel")
    })?;
    // A fuel limit chosen per session is the one reported.
    let mut s = vm.session(Some(root))?;
    s.set_fuel(1000);
    ensure!(matches!(
        s.call(&m, "spin", &[]),
        Err(VmError::OutOfFuel(1000))
    ));
    Ok(())
}

#[test]
fn hostile_deep_recursion_traps_with_stack_overflow() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    check_hostile(
        &vm,
        &m,
        root,
        "deep",
        &[],
        |e| matches!(e, VmError::Trap { .. } if e.to_string().contains("call stack exhausted")),
    )?;
    // Overflowing again and again does not wear the process down.
    let mut s = vm.session(Some(root))?;
    for _ in 0..20 {
        ensure!(matches!(s.call(&m, "deep", &[]), Err(VmError::Trap { .. })));
    }
    ensure!(s.call(&m, "bump", &[])? == [Value::I64(2)]);
    Ok(())
}

#[test]
fn hostile_memory_growth_stops_at_the_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    let limit_pages = (config().memory_limit / 65536) as i32;
    // memory.grow returns -1 at the limit, and the contract goes on.
    let mut s = vm.session(Some(root))?;
    ensure!(s.call(&m, "grow_all", &[])? == [Value::I32(limit_pages)]);
    ensure!(s.call(&m, "pages", &[])? == [Value::I32(limit_pages)]);
    drop(s);
    // Growing to the limit and then trapping rolls back the growth as well.
    check_hostile(
        &vm,
        &m,
        root,
        "grow_then_trap",
        &[],
        |e| matches!(e, VmError::Trap { .. } if e.to_string().contains("unreachable")),
    )?;
    let mut s = vm.session(Some(root))?;
    let _ = s.call(&m, "grow_then_trap", &[]);
    ensure!(s.call(&m, "pages", &[])? == [Value::I32(1)]);
    ensure!(s.read_memory(&m, 65536, 1).is_err(), "memory still grown");
    Ok(())
}

#[test]
fn hostile_huge_kv_data_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    let over = config().max_value_bytes as i32 + 1;
    check_hostile(
        &vm,
        &m,
        root,
        "huge_value",
        &[Value::I32(over)],
        |e| matches!(e, VmError::Host(t) if t.to_string().contains("over the limit")),
    )?;
    // Exactly at the limit is fine.
    let mut s = vm.session(Some(root))?;
    s.call(
        &m,
        "huge_value",
        &[Value::I32(config().max_value_bytes as i32)],
    )?;
    ensure!(s.kv_get(&m, b"k")?.map(|v| v.len()) == Some(config().max_value_bytes));
    let over_key = config().max_key_bytes as i32 + 1;
    check_hostile(
        &vm,
        &m,
        root,
        "huge_key",
        &[Value::I32(over_key)],
        |e| matches!(e, VmError::Host(t) if t.to_string().contains("over the limit")),
    )?;
    Ok(())
}

#[test]
fn hostile_out_of_bounds_host_pointers_trap_the_call() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    let host = |e: &VmError| matches!(e, VmError::Host(t) if t.to_string().contains("out of bounds") || t.to_string().contains("negative"));
    let i = Value::I32;
    for (f, args) in [
        ("write_at", vec![i(65530), i(10)]),
        ("write_at", vec![i(i32::MAX), i(1)]),
        ("write_at", vec![i(-1), i(1)]),
        ("write_at", vec![i(0), i(-1)]),
        ("write_value_at", vec![i(65535), i(2)]),
        ("write_value_at", vec![i(-65536), i(1)]),
        ("read_into", vec![i(65535), i(100)]),
        ("read_into", vec![i(-4), i(8)]),
        ("read_into", vec![i(0), i(-1)]),
        ("remove_at", vec![i(65536), i(1)]),
        ("remove_at", vec![i(i32::MIN), i(i32::MAX)]),
    ] {
        check_hostile(&vm, &m, root, f, &args, host)?;
    }
    // Wasm's own out-of-bounds access is a trap.
    check_hostile(
        &vm,
        &m,
        root,
        "load_at",
        &[i(65533)],
        |e| matches!(e, VmError::Trap { .. } if e.to_string().contains("out of bounds")),
    )?;
    // Wrong arguments are refused before running anything.
    check_hostile(&vm, &m, root, "write_at", &[i(1)], |e| {
        matches!(e, VmError::BadArguments(_))
    })?;
    check_hostile(&vm, &m, root, "no_such_function", &[], |e| {
        matches!(e, VmError::UnknownFunction(_))
    })?;
    Ok(())
}

/// Which error a case expects.
type Expect = fn(&VmError) -> bool;

#[test]
fn hostile_start_functions_fail_the_deploy_and_commit_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    let cases: [(&str, Expect); 4] = [
        ("(module (func $s (loop $l (br $l))) (start $s))", |e| {
            matches!(e, VmError::OutOfFuel(20_000_000))
        }),
        (
            "(module (func $s (call $s)) (start $s))",
            |e| matches!(e, VmError::Trap { .. } if e.to_string().contains("genesis") && e.to_string().contains("call stack exhausted")),
        ),
        (
            "(module (memory 1) (func $s (i32.store (i32.const 70000) (i32.const 1))) (start $s))",
            |e| matches!(e, VmError::Trap { .. } if e.to_string().contains("out of bounds")),
        ),
        ("(module (memory 1000))", |e| {
            matches!(
                e,
                VmError::Trap { .. }
                    | VmError::InvalidModule(_)
                    | VmError::Host(_)
                    | VmError::Wasmtime(_)
            )
        }),
    ];
    for (wat, expect) in cases {
        let commits = vm.commits().len();
        let err = vm
            .deploy(&wasm(wat))
            .expect_err("a hostile start function must fail the deploy");
        ensure!(expect(&err), "{wat}: unexpected {err:?}");
        ensure!(vm.latest() == Some(root), "{wat}: something was committed");
        ensure!(vm.commits().len() == commits, "{wat}");
        // Also inside a session that did good work before: that work survives.
        let mut s = vm.session(Some(root))?;
        s.call(&m, "bump", &[])?;
        ensure!(s.deploy(&wasm(wat)).is_err());
        ensure!(
            s.modules() == [m],
            "{wat}: the failed deploy is in the session"
        );
        ensure!(s.call(&m, "bump", &[])? == [Value::I64(3)]);
    }
    // The process is healthy: a good deploy and call still work, and everything verifies.
    let (good, _) = vm.deploy(&wasm(
        "(module (func (export \"one\") (result i32) (i32.const 1)))",
    ))?;
    let mut s = vm.session(vm.latest())?;
    ensure!(s.call(&good, "one", &[])? == [Value::I32(1)]);
    let outcome = vm.verify()?;
    ensure!(outcome.is_ok(), "{:?}", outcome.problems);
    Ok(())
}

#[test]
fn hostile_calls_leave_a_reopened_vm_unchanged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (vm, m, root) = setup(dir.path())?;
    let mut s = vm.session(Some(root))?;
    for (f, args) in [
        ("spin", vec![]),
        ("deep", vec![]),
        ("grow_then_trap", vec![]),
        ("huge_value", vec![Value::I32(1 << 20)]),
        ("write_at", vec![Value::I32(-1), Value::I32(1)]),
    ] {
        ensure!(s.call(&m, f, &args).is_err(), "{f}");
    }
    ensure!(
        s.commit()? == root,
        "failed calls only: the state must be the base"
    );
    drop(vm);
    let vm = Vm::open(dir.path(), config())?;
    ensure!(vm.latest() == Some(root));
    let mut s = vm.session(Some(root))?;
    ensure!(s.call(&m, "get", &[])? == [Value::I64(1)]);
    ensure!(vm.verify()?.is_ok());
    Ok(())
}

/// Dirties its whole 16 MiB memory, then makes small writes; `read_then_trap` has the host
/// write into guest memory (`db_read`, outside wasm) and then traps.
const DIRTY_THEN_SMALL: &str = r#"(module
  (import "env" "db_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (memory (export "memory") 256)
  (data (i32.const 0) "k")
  (func (export "dirty") (local i32)
    (loop $l
      (i32.store8 (i32.add (local.get 0) (i32.const 8)) (i32.const 1))
      (local.set 0 (i32.add (local.get 0) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get 0) (i32.const 16777216)))))
  ;; Writes `i` at page i*7919 mod 4096, and stores bytes 8..16 of page 0 under "k".
  (func (export "put") (param i32)
    (i32.store8
      (i32.add (i32.shl (i32.rem_u (i32.mul (local.get 0) (i32.const 7919)) (i32.const 4096))
                        (i32.const 12))
               (i32.const 16))
      (local.get 0))
    (i64.store (i32.const 8) (i64.extend_i32_u (local.get 0)))
    (call $w (i32.const 0) (i32.const 1) (i32.const 8) (i32.const 8)))
  ;; The host writes "k"'s value into page i*31 mod 4096; wasm writes another page; then a trap.
  (func (export "read_then_trap") (param i32)
    (drop (call $r (i32.const 0) (i32.const 1)
      (i32.add (i32.shl (i32.rem_u (i32.mul (local.get 0) (i32.const 31)) (i32.const 4096))
                        (i32.const 12))
               (i32.const 100))
      (i32.const 8)))
    (i32.store8 (i32.const 4000) (i32.const 0xee))
    unreachable))"#;

/// A long session over a large dirty memory: failed calls (the host wrote into guest memory
/// before the trap) leave no trace, and the state committed is the model's, with write
/// tracking making each checkpoint cost only what the previous call wrote.
#[test]
fn failed_calls_after_dirtying_a_large_memory_leave_no_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let large = VmConfig {
        memory_limit: 32 << 20,
        ..config()
    };
    let vm = Vm::open(dir.path(), large.clone())?;
    let (module, root) = vm.deploy(&wasm(DIRTY_THEN_SMALL))?;
    let mut s = vm.session(Some(root))?;
    s.call(&module, "dirty", &[])?;
    let mut model = s.read_memory(&module, 0, 16 << 20)?;
    for i in 1..40i32 {
        s.call(&module, "put", &[Value::I32(i)])?;
        let page = (i as usize * 7919) % 4096;
        model[page * 4096 + 16] = i as u8;
        model[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        let err = s
            .call(&module, "read_then_trap", &[Value::I32(i)])
            .expect_err("traps");
        ensure!(matches!(err, VmError::Trap { .. }), "{err}");
        if i % 8 == 0 {
            ensure!(
                s.read_memory(&module, 0, 16 << 20)? == model,
                "diverged at {i}"
            );
        }
    }
    let root = s.commit()?;
    drop(vm);
    let vm = Vm::open(dir.path(), large)?;
    let mut s = vm.session(Some(root))?;
    ensure!(s.read_memory(&module, 0, 16 << 20)? == model);
    ensure!(s.kv_get(&module, b"k")? == Some(39u64.to_le_bytes().to_vec()));
    Ok(())
}
