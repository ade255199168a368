//! Tables and segments (issue 11, item 3): a table costs host memory outside `memory_limit`,
//! and neither table contents nor dropped segments are part of the committed state. So tables
//! are bounded by `VmConfig::table_elements` (wasmtime's `StoreLimits`), and a module whose code
//! mutates a table or drops a segment is refused at deploy, so that no session silently loses
//! state.

use anyhow::{Result, ensure};
use vm_host::{ModuleError, Value, Vm, VmConfig, VmError};

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid wat")
}

/// A module with a table of `elements` entries and one call through it.
fn with_table(elements: u64) -> Vec<u8> {
    wasm(&format!(
        r#"(module
  (table {elements} funcref)
  (type $t (func (result i32)))
  (func $seven (result i32) (i32.const 7))
  (elem (i32.const 0) $seven)
  (func (export "call") (result i32) (call_indirect (type $t) (i32.const 0))))"#
    ))
}

#[test]
fn a_table_past_the_limit_is_refused_at_deploy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
    let limit = vm.config().table_elements;
    // 50 M elements cost about 389 MiB of host memory outside `memory_limit`.
    let err = vm
        .deploy(&with_table(50_000_000))
        .expect_err("a 50 M element table must be refused");
    ensure!(
        matches!(
            &err,
            VmError::InvalidModule(ModuleError::TableTooLarge { elements: 50_000_000, limit: l })
                if *l == limit
        ),
        "{err:?}"
    );
    let message = err.to_string();
    ensure!(
        message.contains("50000000") && !message.contains('\n'),
        "{message}"
    );
    ensure!(vm.latest().is_none(), "nothing is committed");
    // A table within the limit works, and calls through it.
    let (m, root) = vm.deploy(&with_table(limit as u64))?;
    let mut s = vm.session(Some(root))?;
    ensure!(s.call(&m, "call", &[])? == [Value::I32(7)]);
    Ok(())
}

#[test]
fn the_table_limit_is_enforced_by_the_store_limits_at_instantiation() -> Result<()> {
    // Deployed under a larger limit, then run by a VM with a smaller one: wasmtime's
    // `StoreLimits` refuses to instantiate the table.
    let dir = tempfile::tempdir()?;
    let (m, root) = Vm::open(dir.path(), VmConfig::for_tests())?.deploy(&with_table(1000))?;
    let config = VmConfig {
        table_elements: 999,
        ..VmConfig::for_tests()
    };
    let vm = Vm::open(dir.path(), config)?;
    let mut s = vm.session(Some(root))?;
    let err = s
        .call(&m, "call", &[])
        .expect_err("a table over the limit must not be instantiated");
    let message = err.to_string();
    ensure!(
        message.contains("table") && !message.contains('\n'),
        "{message}"
    );
    Ok(())
}

#[test]
fn code_that_mutates_tables_or_drops_segments_is_refused_at_deploy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
    let prelude = r#"
  (memory 1)
  (table $t 2 funcref)
  (func $f)
  (elem $e func $f)
  (data $d "abc")"#;
    let cases = [
        ("table.set", "(table.set $t (i32.const 0) (ref.null func))"),
        (
            "table.grow",
            "(drop (table.grow $t (ref.null func) (i32.const 50000000)))",
        ),
        (
            "table.fill",
            "(table.fill $t (i32.const 0) (ref.null func) (i32.const 2))",
        ),
        (
            "table.copy",
            "(table.copy $t $t (i32.const 0) (i32.const 1) (i32.const 1))",
        ),
        (
            "table.init",
            "(table.init $t $e (i32.const 0) (i32.const 0) (i32.const 1))",
        ),
        ("elem.drop", "(elem.drop $e)"),
        ("data.drop", "(data.drop $d)"),
    ];
    for (name, body) in cases {
        // The instruction is in a function nobody calls, after an import: it is the code that
        // is refused, not its execution.
        let wat = format!(
            r#"(module (import "env" "db_remove" (func (param i32 i32))) {prelude}
  (func (export "never") {body}))"#
        );
        let err = vm
            .deploy(&wasm(&wat))
            .expect_err("a module mutating tables or segments must be refused");
        ensure!(
            matches!(
                &err,
                VmError::InvalidModule(ModuleError::StatefulInstruction { instruction, function: 2 })
                    if *instruction == name
            ),
            "{name}: {err:?}"
        );
        let message = err.to_string();
        ensure!(
            message.contains(&format!("`{name}`")) && !message.contains('\n'),
            "{message}"
        );
    }
    ensure!(vm.latest().is_none(), "nothing is committed");
    // Reading tables and segments is fine: `call_indirect`, `table.get`, `table.size`,
    // `memory.init` from a passive segment, and active segments (which the runtime rewrite
    // turns into empty passive ones without emitting any `data.drop`).
    let (m, root) = vm.deploy(&wasm(&format!(
        r#"(module {prelude}
  (data (i32.const 16) "xyz")
  (func (export "read") (result i32)
    (drop (table.get $t (i32.const 0)))
    (memory.init $d (i32.const 0) (i32.const 0) (i32.const 3))
    (i32.add (table.size $t) (i32.load8_u (i32.const 16)))))"#
    )))?;
    let mut s = vm.session(Some(root))?;
    ensure!(s.call(&m, "read", &[])? == [Value::I32(2 + i32::from(b'x'))]);
    // A second call reads the same: nothing a call can do to a table or segment is lost.
    ensure!(s.call(&m, "read", &[])? == [Value::I32(2 + i32::from(b'x'))]);
    ensure!(s.read_memory(&m, 0, 3)? == b"abc");
    Ok(())
}
