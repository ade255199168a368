//! `vmhost demo`: a tour of the VM in a temporary directory, printing what happened.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vm_host::{Deletion, LayerStats, ModuleId, Value, Vm, VmConfig, VmError};

const COUNTER: &str = include_str!("../contracts/counter.wat");
const BANK: &str = include_str!("../contracts/bank.wat");

/// One timed step of the demo.
struct Step {
    what: String,
    took: Duration,
}

struct Demo {
    steps: Vec<Step>,
}

impl Demo {
    fn timed<T>(&mut self, what: impl Into<String>, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let value = f()?;
        self.steps.push(Step {
            what: what.into(),
            took: start.elapsed(),
        });
        Ok(value)
    }
}

fn short(hex: impl ToString) -> String {
    let hex = hex.to_string();
    format!("{}…", &hex[..12])
}

fn call(
    vm: &Vm,
    base: vm_host::Root,
    module: &ModuleId,
    function: &str,
    args: &[Value],
) -> Result<Vec<Value>> {
    let mut session = vm.session(Some(base))?;
    Ok(session.call(module, function, args)?)
}

fn print_layers(layers: &[LayerStats]) {
    println!(
        "{:<8} {:>6} {:>7} {:>8} {:>10} {:>8} {:>12} {:>9}",
        "layer", "hits", "misses", "inserts", "evictions", "entries", "bytes", "rejected"
    );
    for l in layers {
        println!(
            "{:<8} {:>6} {:>7} {:>8} {:>10} {:>8} {:>12} {:>9}",
            l.name, l.hits, l.misses, l.inserts, l.evictions, l.entries, l.bytes, l.rejected
        );
    }
}

pub(crate) fn run() -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let config = VmConfig::default();
    let mut demo = Demo { steps: Vec::new() };
    println!("Strata VM demo in {}\n", dir.path().display());

    let vm = Vm::open(dir.path(), config.clone())?;
    let counter_wasm = wat::parse_str(COUNTER).context("counter.wat")?;
    let bank_wasm = wat::parse_str(BANK).context("bank.wat")?;

    // 1. Deploy: genesis runs once, the runtime form is compiled into the caches.
    let (counter, r1) = demo.timed("deploy counter (genesis + compile)", || {
        Ok(vm.deploy(&counter_wasm)?)
    })?;
    let (bank, r2) = demo.timed("deploy bank (genesis + compile)", || {
        Ok(vm.deploy(&bank_wasm)?)
    })?;
    println!(
        "deployed counter {} -> commit {}",
        short(counter),
        short(r1)
    );
    println!("deployed bank    {} -> commit {}", short(bank), short(r2));

    // 2. Transactions over several commits.
    let mut roots = vec![r1, r2];
    let accounts: [(i32, i64); 3] = [(1, 100), (2, 50), (3, 0)];
    let mut session = vm.session(Some(r2))?;
    for (account, amount) in accounts {
        demo.timed(format!("mint {amount} to account {account}"), || {
            Ok(session.call(&bank, "mint", &[Value::I32(account), Value::I64(amount)])?)
        })?;
    }
    session.call(&counter, "increment", &[])?;
    let r3 = demo.timed("commit (mints + increment)", || Ok(session.commit()?))?;
    roots.push(r3);
    println!("commit {}: minted 100, 50, 0; counter = 1", short(r3));

    let mut session = vm.session(Some(r3))?;
    demo.timed("transfer 30 from 1 to 3", || {
        Ok(session.call(
            &bank,
            "transfer",
            &[Value::I32(1), Value::I32(3), Value::I64(30)],
        )?)
    })?;
    session.call(&counter, "add", &[Value::I64(10)])?;
    // A transfer the payer cannot afford traps; the host rolls the call back.
    let refused = session.call(
        &bank,
        "transfer",
        &[Value::I32(2), Value::I32(3), Value::I64(500)],
    );
    ensure!(
        matches!(refused, Err(VmError::Trap { .. })),
        "overdraft must trap"
    );
    println!(
        "transfer of 500 from account 2 refused: {}",
        refused.err().map(|e| e.to_string()).unwrap_or_default()
    );
    ensure!(
        session.call(&bank, "balance", &[Value::I32(3)])? == [Value::I64(30)],
        "rolled back"
    );
    // An endless loop ends when its fuel runs out, and leaves no trace either.
    session.set_fuel(1_000_000);
    let spun = session.call(&counter, "spin", &[]);
    ensure!(
        matches!(spun, Err(VmError::OutOfFuel(_))),
        "spin must run out of fuel"
    );
    println!(
        "endless loop stopped: {}",
        spun.err().map(|e| e.to_string()).unwrap_or_default()
    );
    let r4 = demo.timed("commit (transfer + add)", || Ok(session.commit()?))?;
    roots.push(r4);
    println!("commit {}: account 1 -> 3: 30; counter = 11", short(r4));

    let mut session = vm.session(Some(r4))?;
    session.call(
        &bank,
        "transfer",
        &[Value::I32(2), Value::I32(1), Value::I64(50)],
    )?;
    session.call(&counter, "increment", &[])?;
    let r5 = session.commit()?;
    roots.push(r5);
    println!("commit {}: account 2 -> 1: 50; counter = 12", short(r5));

    // 3. Restore an old commit: its state is exactly as committed.
    let old = demo.timed("restore commit 3 and read", || {
        call(&vm, r3, &bank, "balance", &[Value::I32(1)])
    })?;
    let new = call(&vm, r5, &bank, "balance", &[Value::I32(1)])?;
    println!(
        "balance of account 1: {} at commit {}, {} at commit {}",
        old[0],
        short(r3),
        new[0],
        short(r5)
    );
    let genesis_runs = call(&vm, r5, &counter, "genesis_runs", &[])?;
    let count = call(&vm, r5, &counter, "get", &[])?;
    let in_memory = call(&vm, r5, &counter, "memory_count", &[])?;
    let stored = call(&vm, r5, &counter, "stored_count", &[])?;
    println!(
        "counter at the newest commit: global {}, memory {}, key-value {}; genesis ran {} time(s)",
        count[0], in_memory[0], stored[0], genesis_runs[0]
    );

    // 4. Delete an intermediate commit: its children are untouched.
    match vm.delete(&r4)? {
        Deletion::Deferred { sessions } => {
            println!("deletion of {} deferred ({sessions} sessions)", short(r4))
        }
        Deletion::Deleted => println!("deleted commit {}", short(r4)),
    }
    let after = call(&vm, r5, &bank, "balance", &[Value::I32(1)])?;
    ensure!(after == new, "a child changed when its parent was deleted");
    let refused = vm
        .session(Some(r4))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("a session on the deleted commit is refused: {refused}");

    vm.pin(&counter)?;
    let before_restart = vm.stats();
    println!(
        "\ncache layers before the restart ({} compiles):",
        before_restart.compiles
    );
    print_layers(&before_restart.layers);
    drop(vm);

    // 5. Restart: commits, pins and compiled modules are still there.
    let vm = demo.timed("restart the VM (reopen the directory)", || {
        Ok(Vm::open(dir.path(), config)?)
    })?;
    demo.timed("first bank call after restart (file cache)", || {
        call(&vm, r5, &bank, "balance", &[Value::I32(1)])
    })?;
    demo.timed("second bank call (LRU)", || {
        call(&vm, r5, &bank, "balance", &[Value::I32(2)])
    })?;
    demo.timed("counter call (pinned)", || {
        call(&vm, r5, &counter, "get", &[])
    })?;
    let verified = demo.timed("verify every commit and artifact", || Ok(vm.verify()?))?;
    ensure!(
        verified.is_ok(),
        "verify found problems: {:?}",
        verified.problems
    );
    println!(
        "\nafter the restart: {} commits, {} verified, {} artifacts verified, pinned: {}",
        vm.commits().len(),
        verified.commits,
        verified.artifacts,
        vm.pins().iter().map(short).collect::<Vec<_>>().join(", ")
    );
    let stats = vm.stats();
    println!(
        "cache layers after the restart ({} compiles):",
        stats.compiles
    );
    print_layers(&stats.layers);

    drop(vm);
    cosmwasm(&mut demo, &dir.path().join("cosmwasm"))?;

    println!("\n{:<48} {:>12}", "step", "time");
    for step in &demo.steps {
        println!(
            "{:<48} {:>9.3} ms",
            step.what,
            step.took.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Where the corpus of third-party contracts is, if this machine has it.
fn corpus() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("STRATA_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "../shared/corpus".into());
    dir.join("cosmwasm-hackatom.wasm").is_file().then_some(dir)
}

/// Part 6, CosmWasm: our counter contract (and CosmWasm's hackatom when the corpus is here):
/// store, instantiate, execute, query, with the gas and the cache layers.
fn cosmwasm(demo: &mut Demo, dir: &std::path::Path) -> Result<()> {
    use vm_cosmwasm::{CallContext, CwConfig, CwVm};
    println!("\n== CosmWasm ==");
    let vm = CwVm::open(dir, CwConfig::default())?;
    let mut session = vm.session(None)?;
    let wasm = vm_cosmwasm::counter_wasm();
    let (code, _) = demo.timed("cw: store_code (check, meter, compile) counter", || {
        Ok(session.store_code(&wasm)?)
    })?;
    let ctx = CallContext::new("cosmwasm1demo", 500_000_000_000);
    let (counter, out) = demo.timed("cw: instantiate counter", || {
        Ok(session.instantiate(&ctx, code, br#"{"count":41}"#, "counter", None)?)
    })?;
    ensure!(out.is_ok(), "instantiate failed: {}", out.text());
    println!(
        "instantiated counter at {counter}: {} (gas {})",
        out.text(),
        out.gas.used()
    );
    let out = demo.timed("cw: execute increment", || {
        Ok(session.execute(&ctx, &counter, br#"{"increment":{}}"#)?)
    })?;
    ensure!(out.is_ok(), "execute failed: {}", out.text());
    println!("execute increment: gas {}", out.gas.used());
    let root = session.commit()?;
    let mut session = vm.session(Some(root))?;
    let out = demo.timed("cw: query get_count", || {
        Ok(session.query(&ctx, &counter, br#"{"get_count":{}}"#)?)
    })?;
    println!(
        "query get_count: {} (gas {}), root {}",
        out.text(),
        out.gas.used(),
        short(root)
    );
    ensure!(
        out.text() == r#"{"ok":"eyJjb3VudCI6NDJ9"}"#,
        "unexpected count: {}",
        out.text()
    );

    if let Some(corpus) = corpus() {
        let hackatom = std::fs::read(corpus.join("cosmwasm-hackatom.wasm"))?;
        let (code, _) = demo.timed("cw: store_code hackatom (0.3 MB)", || {
            Ok(session.store_code(&hackatom)?)
        })?;
        let verifier = vm_cosmwasm::registry::addr_make("cosmwasm", "verifier")?;
        let beneficiary = vm_cosmwasm::registry::addr_make("cosmwasm", "beneficiary")?;
        let msg = format!(r#"{{"verifier":"{verifier}","beneficiary":"{beneficiary}"}}"#);
        let msg = msg.as_bytes();
        let (addr, out) = demo.timed("cw: instantiate hackatom", || {
            Ok(session.instantiate(&ctx, code, msg, "hackatom", None)?)
        })?;
        ensure!(out.is_ok(), "hackatom instantiate failed: {}", out.text());
        println!("hackatom at {}: gas {}", short(&addr), out.gas.used());
        let out = demo.timed("cw: query hackatom verifier", || {
            Ok(session.query(&ctx, &addr, br#"{"verifier":{}}"#)?)
        })?;
        println!("hackatom verifier: {} (gas {})", out.text(), out.gas.used());
        session.commit()?;
    } else {
        println!("(the corpus is absent: hackatom is skipped; set STRATA_CORPUS to run it)");
    }
    println!("cosmwasm cache layers ({} compiles):", vm.compiles());
    print_layers(&vm.cache_stats());
    Ok(())
}
