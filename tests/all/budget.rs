//! The Cranelift compile budget (`VmConfig::cranelift_budget`): a module whose structural
//! estimate is over it runs on Winch only, never tiered up, under a policy with Winch, and is
//! refused under Cranelift only; the corpus and the test contracts are under the default.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use strata_harness::adversarial::Shape;
use vm_host::{CompileBudget, CompileCost, TierPolicy, Value, Vm, VmConfig, VmError};

/// A budget small enough that an adversarial module of a few kilobytes is over it (cheap to
/// compile in a debug build) while the counter contract is under it.
const SMALL: CompileBudget = CompileBudget {
    function_us: 5_000,
    module_us: 50_000,
};

const COUNTER: &str = include_str!("../../crates/vm-host/contracts/counter.wat");

fn config(tier: TierPolicy, budget: Option<CompileBudget>) -> VmConfig {
    VmConfig {
        tier,
        cranelift_budget: budget,
        ..VmConfig::for_tests()
    }
}

/// 256 `i64` locals updated in a loop: estimated at about 16 ms, over [`SMALL`].
fn over_small_budget() -> Vec<u8> {
    let wasm = Shape::ManyLocals.module(256);
    let cost = CompileCost::of(&wasm).expect("parses");
    assert!(SMALL.check(&cost).is_err(), "{cost:?}");
    wasm
}

/// `run(3)` of `wasm` on Cranelift, without a budget: what Winch must return too.
fn cranelift_result(wasm: &[u8]) -> Result<Vec<Value>> {
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), config(TierPolicy::CraneliftOnly, None))?;
    let (id, root) = vm.deploy(wasm)?;
    assert_eq!(vm.stats().tiers.over_budget, 0);
    Ok(vm.session(Some(root))?.call(&id, "run", &[Value::I32(3)])?)
}

#[test]
fn a_module_over_the_budget_runs_on_winch_and_is_never_tiered_up() -> Result<()> {
    let wasm = over_small_budget();
    let expected = cranelift_result(&wasm)?;
    let dir = tempfile::tempdir()?;
    {
        let vm = Vm::open(
            dir.path(),
            config(TierPolicy::WinchThenCranelift, Some(SMALL)),
        )?;
        let (id, root) = vm.deploy(&wasm)?;
        let (counter, root) = {
            let mut session = vm.session(Some(root))?;
            assert_eq!(session.call(&id, "run", &[Value::I32(3)])?, expected);
            let counter = session.deploy(&wat::parse_str(COUNTER)?)?;
            (counter, session.commit()?)
        };
        assert!(vm.wait_tier_up(Duration::from_secs(120)));
        // Loads after the tier-up: the counter (under the budget) moved to Cranelift, the
        // adversarial module stays on Winch and is not queued again.
        let mut session = vm.session(Some(root))?;
        assert_eq!(session.call(&id, "run", &[Value::I32(3)])?, expected);
        session.call(&counter, "increment", &[])?;
        assert!(vm.wait_tier_up(Duration::from_secs(120)));
        let tiers = vm.stats().tiers;
        assert_eq!(tiers.over_budget, 1, "{tiers:?}");
        assert_eq!(tiers.tier_ups, 1, "only the counter: {tiers:?}");
        assert_eq!(
            (tiers.cranelift_modules, tiers.winch_modules),
            (1, 1),
            "{tiers:?}"
        );
        assert_eq!(tiers.failed, 0, "{tiers:?}");
    }
    // Reopened: the Winch artifact comes from the file cache, and the load that finds it
    // checks the stored bytecode against the budget instead of queueing a tier-up.
    let vm = Vm::open(
        dir.path(),
        config(TierPolicy::WinchThenCranelift, Some(SMALL)),
    )?;
    let id = vm_host::ModuleId::of_wasm(&wasm);
    let mut session = vm.session(vm.latest())?;
    assert_eq!(session.call(&id, "run", &[Value::I32(3)])?, expected);
    assert_eq!(session.call(&id, "run", &[Value::I32(3)])?, expected);
    assert!(vm.wait_tier_up(Duration::from_secs(120)));
    let tiers = vm.stats().tiers;
    assert_eq!(
        (tiers.over_budget, tiers.tier_ups, tiers.winch_modules),
        (1, 0, 1),
        "{tiers:?}"
    );
    assert_eq!(vm.stats().compiles, 0, "a file-cache hit compiles nothing");
    Ok(())
}

#[test]
fn a_module_over_the_budget_is_refused_under_cranelift_only() -> Result<()> {
    let wasm = over_small_budget();
    let dir = tempfile::tempdir()?;
    let vm = Vm::open(dir.path(), config(TierPolicy::CraneliftOnly, Some(SMALL)))?;
    let err = vm.deploy(&wasm).expect_err("over the budget");
    let VmError::OverCompileBudget(over) = &err else {
        panic!("expected OverCompileBudget, got {err:?}");
    };
    assert_eq!(over.function, Some(0));
    assert_eq!(over.budget_us, SMALL.function_us);
    assert!(over.estimate_us > over.budget_us, "{over:?}");
    let message = err.to_string();
    assert!(
        message
            .starts_with("module refused: the estimated Cranelift compile time of function 0 is ")
            && message.ends_with(" ms, over the budget of 5.0 ms per function")
            && !message.contains('\n'),
        "{message}"
    );
    assert_eq!(vm.latest(), None, "nothing was committed");
    assert_eq!(vm.stats().compiles, 0, "nothing was compiled");
    // Precompiling is refused alike.
    assert!(matches!(
        vm.precompile(&wasm),
        Err(VmError::OverCompileBudget(_))
    ));
    assert_eq!(vm.stats().tiers.over_budget, 1);
    // The counter is under the same budget.
    vm.deploy(&wat::parse_str(COUNTER)?)?;
    Ok(())
}

#[test]
fn corpus_modules_and_test_contracts_are_under_the_default_budget() -> Result<()> {
    let budget = CompileBudget::default();
    let dir = std::env::var_os("STRATA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    let mut checked = Vec::new();
    for name in [
        "cosmwasm-hackatom.wasm",
        "cosmwasm-cyberpunk.wasm",
        "web-tree-sitter-0.27.1.wasm",
        "sqljs-1.16.0.wasm",
        "esbuild-wasm-0.28.2.wasm",
    ] {
        let Ok(wasm) = std::fs::read(dir.join(name)) else {
            eprintln!("corpus file {name} is absent from {}", dir.display());
            continue;
        };
        let cost = CompileCost::of(&wasm)?;
        assert_eq!(budget.check(&cost), Ok(()), "{name}: {cost:?}");
        checked.push(name);
    }
    eprintln!("corpus modules under the default budget: {checked:?}");
    for wat in [
        COUNTER,
        include_str!("../../crates/vm-host/contracts/bank.wat"),
        include_str!("../../crates/vm-host/contracts/ledger.wat"),
        include_str!("../../crates/vm-cosmwasm/contracts/counter.wat"),
    ] {
        let cost = CompileCost::of(&wat::parse_str(wat)?)?;
        assert_eq!(budget.check(&cost), Ok(()), "{cost:?}");
        assert_eq!(SMALL.check(&cost), Ok(()), "{cost:?}");
    }
    Ok(())
}
