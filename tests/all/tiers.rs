//! The compiler tiers: Cranelift and Winch agree on every call of the test contracts (results,
//! traps, fuel, memory, globals, key-value data, roots), and the tier-up from Winch to
//! Cranelift replaces modules for later loads and pins without touching running sessions.

use std::time::Duration;

use anyhow::Result;
use vm_host::{ModuleId, Root, TierPolicy, Value, Vm, VmConfig};

const COUNTER: &str = include_str!("../../crates/vm-host/contracts/counter.wat");
const BANK: &str = include_str!("../../crates/vm-host/contracts/bank.wat");

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid wat")
}

fn config(tier: TierPolicy) -> VmConfig {
    VmConfig {
        tier,
        default_fuel: 200_000,
        ..VmConfig::for_tests()
    }
}

/// Float arithmetic over non-canonical NaNs, stored to memory and a global and returned.
const FLOATS: &str = r#"(module
  (memory (export "memory") 1)
  (global $g (mut f64) (f64.const 0))
  (func (export "nan32") (param f32 f32) (result f32)
    (f32.store (i32.const 0) (f32.add (local.get 0) (local.get 1)))
    (f32.div (local.get 0) (local.get 1)))
  (func (export "nan64") (param f64 f64) (result f64)
    (global.set $g (f64.mul (local.get 0) (local.get 1)))
    (f64.store (i32.const 8) (f64.sqrt (local.get 0)))
    (f64.sub (local.get 0) (local.get 1)))
  (func (export "bits") (result i64)
    (i64.add (i64.load (i32.const 0)) (i64.reinterpret_f64 (global.get $g))))
  (func (export "minmax") (param f32 f32) (result f32)
    (f32.min (local.get 0) (f32.max (local.get 0) (local.get 1))))
  (func (export "trunc") (param f64) (result i32)
    (i32.trunc_f64_s (local.get 0))))"#;

/// Recursion `n` deep (`n + 1` frames with the export), returning `n`.
const RECURSE: &str = r#"(module
  (func $r (export "recurse") (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 0))
      (else (i32.add (i32.const 1) (call $r (i32.sub (local.get $n) (i32.const 1))))))))"#;

fn observed(result: Result<Vec<Value>, vm_host::VmError>) -> String {
    match result {
        Ok(values) => values
            .iter()
            .map(|v| match v {
                Value::F32(f) => format!("f32:{:#x}", f.to_bits()),
                Value::F64(f) => format!("f64:{:#x}", f.to_bits()),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(err) => format!("error: {err}"),
    }
}

/// Every call of the test contracts over three commits, with the fuel of each and the roots.
fn contract_transcript(tier: TierPolicy) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), config(tier))?;
    let mut out = Vec::new();
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    out.push(format!("deploy counter {root}"));
    let (bank, root) = vm.deploy(&wasm(BANK))?;
    out.push(format!("deploy bank {root}"));
    let (floats, root) = vm.deploy(&wasm(FLOATS))?;
    out.push(format!("deploy floats {root}"));
    let snan32 = Value::F32(f32::from_bits(0x7fa0_0001));
    let qnan32 = Value::F32(f32::from_bits(0xffc0_1234));
    let snan64 = Value::F64(f64::from_bits(0x7ff4_0000_0000_0001));
    let calls: Vec<(ModuleId, &str, Vec<Value>)> = vec![
        (counter, "increment", vec![]),
        (counter, "add", vec![Value::I64(41)]),
        (counter, "get", vec![]),
        (counter, "memory_count", vec![]),
        (counter, "stored_count", vec![]),
        (counter, "genesis_runs", vec![]),
        (counter, "greeting", vec![]),
        (counter, "add_then_trap", vec![Value::I64(5)]),
        (counter, "spin", vec![]),
        (counter, "grow", vec![Value::I32(2)]),
        (counter, "grow", vec![Value::I32(70_000)]),
        (counter, "pages", vec![]),
        (counter, "poke", vec![Value::I32(70_000), Value::I32(7)]),
        (counter, "poke", vec![Value::I32(3 * 65_536), Value::I32(7)]),
        (counter, "peek", vec![Value::I32(70_000)]),
        (counter, "peek", vec![Value::I32(-1)]),
        (bank, "mint", vec![Value::I32(1), Value::I64(100)]),
        (
            bank,
            "transfer",
            vec![Value::I32(1), Value::I32(2), Value::I64(30)],
        ),
        (
            bank,
            "transfer",
            vec![Value::I32(2), Value::I32(1), Value::I64(31)],
        ),
        (bank, "balance", vec![Value::I32(1)]),
        (bank, "balance", vec![Value::I32(2)]),
        (
            bank,
            "transfer",
            vec![Value::I32(1), Value::I32(2), Value::I64(70)],
        ),
        (floats, "nan32", vec![snan32, Value::F32(1.0)]),
        (floats, "nan32", vec![Value::F32(0.0), Value::F32(0.0)]),
        (floats, "nan32", vec![qnan32, snan32]),
        (floats, "nan64", vec![snan64, Value::F64(2.0)]),
        (
            floats,
            "nan64",
            vec![Value::F64(-1.0), Value::F64(f64::INFINITY)],
        ),
        (floats, "bits", vec![]),
        (floats, "minmax", vec![snan32, Value::F32(-0.0)]),
        (floats, "minmax", vec![Value::F32(0.0), Value::F32(-0.0)]),
        (floats, "trunc", vec![Value::F64(3.9e10)]),
        (floats, "trunc", vec![snan64]),
    ];
    let mut base = Some(root);
    for round in 0..3 {
        let mut session = vm.session(base)?;
        for (module, function, args) in &calls {
            let result = observed(session.call(module, function, args));
            out.push(format!(
                "{round} {function}{args:?}: {result} (fuel {:?})",
                session.last_call_fuel()
            ));
        }
        out.push(format!(
            "kv {:?}",
            session.kv_get(&counter, b"count")?.unwrap_or_default()
        ));
        let root = session.commit()?;
        out.push(format!("root {root}"));
        base = Some(root);
    }
    Ok(out)
}

#[test]
fn tiers_agree_on_every_call_of_the_test_contracts() -> Result<()> {
    let cranelift = contract_transcript(TierPolicy::CraneliftOnly)?;
    let winch = contract_transcript(TierPolicy::WinchOnly)?;
    assert_eq!(cranelift.len(), winch.len());
    // Each line ends in `(fuel ...)`; a trapping call's line is compared without it.
    let without_fuel = |line: &str| {
        line.rsplit_once(" (fuel ")
            .map_or(line, |(l, _)| l)
            .to_owned()
    };
    let mut trap_fuel_differs = 0;
    for (c, w) in cranelift.iter().zip(&winch) {
        if c.contains(" trapped: ") && c != w {
            assert_eq!(without_fuel(c), without_fuel(w), "the tiers disagree");
            trap_fuel_differs += 1;
        } else {
            assert_eq!(c, w, "the tiers disagree");
        }
    }
    // FIXME(issue 16): the fuel a trapping call consumed differs: Cranelift has not flushed
    // its fuel counter at a trap in a function's first block (0), Winch has (1). Results,
    // memory, globals, key-value data and roots agree; out-of-fuel calls agree.
    assert_eq!(trap_fuel_differs, 10);
    // The transcript saw real traps, an out-of-fuel call, NaNs and three distinct roots.
    let text = cranelift.join("\n");
    assert!(text.contains("out of fuel"), "{text}");
    assert!(text.contains("f32:0x7fc00000"), "{text}");
    Ok(())
}

/// The deepest `recurse(n)` that returns on `tier` (binary search between 0 and `high`).
fn deepest_recursion(tier: TierPolicy) -> Result<u32> {
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(
        dir.path(),
        VmConfig {
            default_fuel: u64::MAX / 4,
            ..config(tier)
        },
    )?;
    let (module, root) = vm.deploy(&wasm(RECURSE))?;
    let mut session = vm.session(Some(root))?;
    let (mut low, mut high) = (0u32, 1 << 22);
    while low + 1 < high {
        let mid = low + (high - low) / 2;
        match session.call(&module, "recurse", &[Value::I32(mid as i32)]) {
            Ok(_) => low = mid,
            Err(_) => high = mid,
        }
    }
    Ok(low)
}

#[test]
fn stack_exhaustion_depth_differs_between_the_tiers() -> Result<()> {
    let cranelift = deepest_recursion(TierPolicy::CraneliftOnly)?;
    let winch = deepest_recursion(TierPolicy::WinchOnly)?;
    println!("deepest recursion: cranelift {cranelift}, winch {winch}");
    assert!(cranelift > 1000 && winch > 1000, "{cranelift} {winch}");
    // FIXME(issue 16): the same call returns on one tier and traps on the other between these
    // depths, so WinchThenCranelift is not the default: a call-depth bound in the rewrite would
    // make exhaustion tier-independent.
    assert_ne!(cranelift, winch);
    Ok(())
}

fn counter_calls(vm: &Vm, id: &ModuleId, base: Option<Root>) -> Result<(Vec<Value>, Root)> {
    let mut session = vm.session(base)?;
    let values = session.call(id, "increment", &[])?;
    Ok((values, session.commit()?))
}

#[test]
fn winch_runs_at_once_and_cranelift_replaces_it_for_later_loads_and_pins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), config(TierPolicy::WinchThenCranelift))?;
    let (id, root) = vm.deploy(&wasm(COUNTER))?;
    let stats = vm.stats();
    assert_eq!(stats.tiers.winch_compiles, 1);
    assert_eq!(stats.tiers.winch_modules, 1);
    vm.pin(&id)?;
    // A session that loaded the Winch module before the tier-up keeps it.
    let mut running = vm.session(Some(root))?;
    assert_eq!(running.call(&id, "increment", &[])?, [Value::I64(1)]);

    assert!(vm.wait_tier_up(Duration::from_secs(60)));
    let stats = vm.stats();
    assert_eq!((stats.tiers.tier_ups, stats.tiers.queue_depth), (1, 0));
    assert_eq!(stats.compiles, 2);
    assert!(vm.is_pinned(&id));
    assert_eq!(running.call(&id, "increment", &[])?, [Value::I64(2)]);
    let running_root = running.commit()?;

    // A new session loads Cranelift (from the re-pinned layer): no compile.
    let pinned_hits = vm.stats().layers[0].hits;
    let (values, new_root) = counter_calls(&vm, &id, Some(root))?;
    assert_eq!(values, [Value::I64(1)]);
    let stats = vm.stats();
    assert_eq!(
        (stats.tiers.cranelift_modules, stats.tiers.winch_modules),
        (1, 0)
    );
    assert_eq!(stats.layers[0].hits, pinned_hits + 1, "{:?}", stats.layers);
    assert_eq!(stats.compiles, 2);

    // Both tiers' artifacts are on disk, in one folder per engine.
    let disk = vm.disk_stats()?;
    let entries: Vec<u64> = disk.cache.iter().map(|f| f.entries).collect();
    assert_eq!(entries, [1, 1], "{:?}", disk.cache);
    drop(vm);

    // After a restart the pin and every load find Cranelift: nothing compiles, nothing queues.
    let vm = Vm::open(dir.path(), config(TierPolicy::WinchThenCranelift))?;
    assert!(vm.is_pinned(&id));
    let (values, again) = counter_calls(&vm, &id, Some(root))?;
    assert_eq!((values, again), (vec![Value::I64(1)], new_root));
    let stats = vm.stats();
    assert_eq!((stats.compiles, stats.tiers.queue_depth), (0, 0));
    assert_eq!(stats.tiers.cranelift_modules, 1);
    // The session that ran on Winch committed what Cranelift computes.
    let mut session = vm.session(Some(running_root))?;
    assert_eq!(session.call(&id, "get", &[])?, [Value::I64(2)]);
    Ok(())
}

#[test]
fn a_winch_artifact_without_cranelift_queues_the_tier_up_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (id, root) = {
        let vm = Vm::open(dir.path(), config(TierPolicy::WinchOnly))?;
        vm.deploy(&wasm(COUNTER))?
    };
    let vm = Vm::open(dir.path(), config(TierPolicy::WinchThenCranelift))?;
    let (values, _) = counter_calls(&vm, &id, Some(root))?;
    assert_eq!(values, [Value::I64(1)]);
    // The tier-up may already have compiled Cranelift in the background (it counts in
    // `compiles`), so the first load is checked by its Winch compiles alone.
    assert_eq!(
        vm.stats().tiers.winch_compiles,
        0,
        "the Winch artifact came from the file cache"
    );
    assert!(vm.wait_tier_up(Duration::from_secs(60)));
    let stats = vm.stats();
    assert_eq!((stats.compiles, stats.tiers.tier_ups), (1, 1));
    counter_calls(&vm, &id, Some(root))?;
    assert_eq!(vm.stats().tiers.cranelift_modules, 1);
    Ok(())
}

#[test]
fn a_module_winch_cannot_compile_runs_on_cranelift() -> Result<()> {
    // Winch in wasmtime 48 refuses tail calls (`Config::compiler_panicking_wasm_features`);
    // such a module falls back to Cranelift instead of failing the deploy.
    let tail = r#"(module
      (func $count (param $n i32) (param $acc i32) (result i32)
        (if (result i32) (i32.eqz (local.get $n))
          (then (local.get $acc))
          (else (return_call $count (i32.sub (local.get $n) (i32.const 1))
                                    (i32.add (local.get $acc) (i32.const 2))))))
      (func (export "lanes") (result i32)
        (call $count (i32.const 16) (i32.const 0))))"#;
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), config(TierPolicy::WinchOnly))?;
    let (id, root) = vm.deploy(&wasm(tail))?;
    let mut session = vm.session(Some(root))?;
    assert_eq!(session.call(&id, "lanes", &[])?, [Value::I32(32)]);
    let stats = vm.stats();
    assert_eq!((stats.compiles, stats.tiers.winch_compiles), (1, 0));
    assert_eq!(stats.tiers.cranelift_modules, 1);
    Ok(())
}
