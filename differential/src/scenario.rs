//! The scenarios (every message issue 14 lists, for hackatom and cyberpunk), the gas sweep,
//! and the comparison of two sides step by step.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use cosmwasm_std::coin;
use cosmwasm_vm::testing::MockApi;
use serde_json::json;

use crate::common::{Call, Ctx, Entries, FailKind, Outcome, Side, contract_funds};

/// Gas of an ordinary call (cosmwasm-vm's mock instances use 2e9 for a whole test).
const GAS: u64 = 10_000_000_000;
/// Gas of the loops that must end on gas (cpu_loop, storage_loop): a few ms of work each.
const LOOP_GAS: u64 = 3_000_000_000;
/// Gas of calls that must end on the memory limit, not on gas, and of argon2.
const BIG_GAS: u64 = 100_000_000_000;

/// A named address of the mock API (`cosmwasm1...`).
pub fn addr(name: &str) -> String {
    MockApi::default().addr_make(name)
}

/// One step: who calls what.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub ctx: Ctx,
    pub call: Call,
}

/// A contract's scenario: the codes it stores and its steps.
pub struct Scenario {
    pub name: &'static str,
    pub codes: Vec<Vec<u8>>,
    pub steps: Vec<Step>,
    /// Steps whose out-of-gas threshold the sweep looks for.
    pub sweep: Vec<Step>,
}

fn ctx(sender: &str, gas_limit: u64) -> Ctx {
    Ctx {
        sender: addr(sender),
        funds: vec![],
        gas_limit,
    }
}

fn msg(value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("json")
}

fn step(name: &str, ctx: Ctx, call: Call) -> Step {
    Step {
        name: name.to_owned(),
        ctx,
        call,
    }
}

fn execute(contract: usize, value: serde_json::Value) -> Call {
    Call::Execute {
        contract,
        msg: msg(value),
    }
}

fn query(contract: usize, value: serde_json::Value) -> Call {
    Call::Query {
        contract,
        msg: msg(value),
    }
}

fn read(corpus: &Path, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = corpus.join(file);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// hackatom: instantiate, release (wrong and right sender), the failure modes, the queries,
/// migrate and sudo.
pub fn hackatom(corpus: &Path) -> anyhow::Result<Scenario> {
    let wasm = read(corpus, "cosmwasm-hackatom.wasm")?;
    let (verifier, beneficiary) = (addr("verifier"), addr("beneficiary"));
    let init = Call::Instantiate {
        code: 0,
        msg: msg(json!({ "verifier": verifier, "beneficiary": beneficiary })),
        label: "hackatom".to_owned(),
        admin: Some(addr("creator")),
    };
    let mut funded = ctx("creator", GAS);
    funded.funds = vec![coin(1000, "earth")];
    let steps = vec![
        step("instantiate {verifier, beneficiary}", funded, init.clone()),
        step(
            "instantiate with an invalid verifier",
            ctx("creator", GAS),
            Call::Instantiate {
                code: 0,
                msg: msg(json!({ "verifier": "not-an-address", "beneficiary": beneficiary })),
                label: "bad".to_owned(),
                admin: None,
            },
        ),
        step(
            "query verifier",
            ctx("anyone", GAS),
            query(0, json!({ "verifier": {} })),
        ),
        step(
            "execute release (wrong sender)",
            ctx("beneficiary", GAS),
            execute(0, json!({ "release": { "denom": "earth" } })),
        ),
        step(
            "execute release (verifier)",
            ctx("verifier", GAS),
            execute(0, json!({ "release": { "denom": "earth" } })),
        ),
        step(
            "execute panic",
            ctx("anyone", GAS),
            execute(0, json!({ "panic": {} })),
        ),
        step(
            "execute user_errors_in_api_calls",
            ctx("anyone", GAS),
            execute(0, json!({ "user_errors_in_api_calls": {} })),
        ),
        step(
            "execute cpu_loop (out of gas)",
            ctx("anyone", LOOP_GAS),
            execute(0, json!({ "cpu_loop": {} })),
        ),
        step(
            "execute storage_loop (out of gas)",
            ctx("anyone", LOOP_GAS),
            execute(0, json!({ "storage_loop": {} })),
        ),
        step(
            "execute memory_loop",
            ctx("anyone", BIG_GAS),
            execute(0, json!({ "memory_loop": {} })),
        ),
        step(
            "execute message_loop",
            ctx("anyone", GAS),
            execute(0, json!({ "message_loop": {} })),
        ),
        step(
            "execute allocate_large_memory 48 pages",
            ctx("anyone", GAS),
            execute(0, json!({ "allocate_large_memory": { "pages": 48 } })),
        ),
        step(
            "execute allocate_large_memory 1000 pages (over 32 MiB)",
            ctx("anyone", GAS),
            execute(0, json!({ "allocate_large_memory": { "pages": 1000 } })),
        ),
        step(
            "query other_balance (not in this hackatom build)",
            ctx("anyone", GAS),
            query(
                0,
                json!({ "other_balance": { "address": addr("verifier") } }),
            ),
        ),
        step(
            "query recurse {depth 3, work 20}",
            ctx("anyone", GAS),
            query(0, json!({ "recurse": { "depth": 3, "work": 20 } })),
        ),
        step(
            "query get_int",
            ctx("anyone", GAS),
            query(0, json!({ "get_int": {} })),
        ),
        step(
            "migrate (new verifier)",
            ctx("creator", GAS),
            Call::Migrate {
                contract: 0,
                code: 0,
                msg: msg(json!({ "verifier": addr("someone else") })),
            },
        ),
        step(
            "sudo steal_funds",
            ctx("anyone", GAS),
            Call::Sudo {
                contract: 0,
                msg: msg(json!({ "steal_funds": {
                    "recipient": addr("thief"),
                    "amount": [{ "denom": "earth", "amount": "700" }],
                } })),
            },
        ),
        step(
            "query verifier (after migrate)",
            ctx("anyone", GAS),
            query(0, json!({ "verifier": {} })),
        ),
    ];
    let sweep = vec![
        step(
            "execute release (verifier)",
            ctx("verifier", GAS),
            execute(0, json!({ "release": { "denom": "earth" } })),
        ),
        step(
            "execute user_errors_in_api_calls",
            ctx("anyone", GAS),
            execute(0, json!({ "user_errors_in_api_calls": {} })),
        ),
        step(
            "query recurse {depth 1, work 5}",
            ctx("anyone", GAS),
            query(0, json!({ "recurse": { "depth": 1, "work": 5 } })),
        ),
        step(
            "query verifier",
            ctx("anyone", GAS),
            query(0, json!({ "verifier": {} })),
        ),
    ];
    Ok(Scenario {
        name: "hackatom",
        codes: vec![wasm],
        steps,
        sweep,
    })
}

/// cyberpunk: every execute message and query.
pub fn cyberpunk(corpus: &Path) -> anyhow::Result<Scenario> {
    let wasm = read(corpus, "cosmwasm-cyberpunk.wasm")?;
    let x = |name: &str, gas: u64, value: serde_json::Value| {
        step(name, ctx("anyone", gas), execute(0, value))
    };
    let q = |name: &str, value: serde_json::Value| step(name, ctx("anyone", GAS), query(0, value));
    let steps = vec![
        step(
            "instantiate {}",
            ctx("creator", GAS),
            Call::Instantiate {
                code: 0,
                msg: msg(json!({})),
                label: "cyberpunk".to_owned(),
                admin: None,
            },
        ),
        x(
            "execute argon2 {mem 256, time 5}",
            BIG_GAS,
            json!({ "argon2": { "mem_cost": 256, "time_cost": 5 } }),
        ),
        x(
            "execute cpu_loop (out of gas)",
            LOOP_GAS,
            json!({ "cpu_loop": {} }),
        ),
        x(
            "execute storage_loop (out of gas)",
            LOOP_GAS,
            json!({ "storage_loop": {} }),
        ),
        x("execute memory_loop", BIG_GAS, json!({ "memory_loop": {} })),
        x("execute message_loop", GAS, json!({ "message_loop": {} })),
        x(
            "execute allocate_large_memory 48 pages",
            GAS,
            json!({ "allocate_large_memory": { "pages": 48 } }),
        ),
        x(
            "execute allocate_large_memory 1000 pages (over 32 MiB)",
            GAS,
            json!({ "allocate_large_memory": { "pages": 1000 } }),
        ),
        x("execute panic", GAS, json!({ "panic": {} })),
        x("execute unreachable", GAS, json!({ "unreachable": {} })),
        x("execute mirror_env", GAS, json!({ "mirror_env": {} })),
        x("execute debug", BIG_GAS, json!({ "debug": {} })),
        x("execute noop", GAS, json!({ "noop": {} })),
        q("query mirror_env", json!({ "mirror_env": {} })),
        q("query denoms", json!({ "denoms": {} })),
        q(
            "query denom utest3",
            json!({ "denom": { "denom": "utest3" } }),
        ),
        q(
            "query denom (unknown)",
            json!({ "denom": { "denom": "nope" } }),
        ),
    ];
    let sweep = vec![
        x("execute noop", GAS, json!({ "noop": {} })),
        x("execute mirror_env", GAS, json!({ "mirror_env": {} })),
        x(
            "execute argon2 {mem 32, time 1}",
            BIG_GAS,
            json!({ "argon2": { "mem_cost": 32, "time_cost": 1 } }),
        ),
        q("query denoms", json!({ "denoms": {} })),
    ];
    Ok(Scenario {
        name: "cyberpunk",
        codes: vec![wasm],
        steps,
        sweep,
    })
}

/// One row of the table.
pub struct Row {
    pub scenario: &'static str,
    pub step: String,
    pub limit: u64,
    pub outcome: [Outcome; 2],
    pub storage_equal: bool,
    /// What differs, empty when nothing does.
    pub differences: Vec<String>,
}

fn describe(o: &Outcome) -> String {
    match &o.result {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            let mut s: String = text.chars().take(60).collect();
            if text.chars().count() > 60 {
                s.push('…');
            }
            s
        }
        Err(f) => format!("{:?}", f.kind).chars().take(60).collect(),
    }
}

/// Runs `step` on both sides (side 0 picks instantiated addresses) and compares.
fn run_step(
    sides: &mut [Box<dyn Side>; 2],
    contracts: &mut usize,
    scenario: &'static str,
    s: &Step,
) -> anyhow::Result<Row> {
    let (o0, address) = sides[0].call(&s.ctx, &s.call, None)?;
    let (o1, _) = sides[1].call(&s.ctx, &s.call, address.as_deref())?;
    let mut differences = Vec::new();
    match (&o0.result, &o1.result) {
        (Ok(a), Ok(b)) if a != b => differences.push("response bytes".to_owned()),
        (Ok(_), Err(f)) | (Err(f), Ok(_)) => {
            differences.push(format!("one side failed: {}", f.message))
        }
        (Err(a), Err(b)) if a.kind != b.kind => {
            differences.push(format!("error kinds: {:?} / {:?}", a.kind, b.kind))
        }
        _ => {}
    }
    if o0.gas.used() != o1.gas.used() {
        differences.push(format!(
            "gas used differs by {}",
            o0.gas.used() as i128 - o1.gas.used() as i128
        ));
    } else if o0.gas != o1.gas {
        differences.push(format!(
            "gas split: external {} / {}, internal {} / {}",
            o0.gas.used_externally,
            o1.gas.used_externally,
            o0.gas.used_internally,
            o1.gas.used_internally
        ));
    }
    // The contract the step touched: a new one for a successful instantiate.
    let touched = match &s.call {
        Call::Instantiate { .. } => {
            if o0.succeeded() != o1.succeeded() {
                bail!(
                    "{scenario}: `{}` instantiated on one side only; the scenario cannot go on",
                    s.name
                );
            }
            if o0.succeeded() {
                *contracts += 1;
                Some(*contracts - 1)
            } else {
                None
            }
        }
        Call::Execute { contract, .. }
        | Call::Query { contract, .. }
        | Call::Migrate { contract, .. }
        | Call::Sudo { contract, .. } => Some(*contract),
    };
    let storage_equal = match touched {
        Some(c) => {
            let (a, b): (Entries, Entries) = (sides[0].storage(c)?, sides[1].storage(c)?);
            a == b
        }
        None => true,
    };
    if !storage_equal {
        differences.push("storage".to_owned());
    }
    Ok(Row {
        scenario,
        step: s.name.clone(),
        limit: s.ctx.gas_limit,
        outcome: [o0, o1],
        storage_equal,
        differences,
    })
}

/// Runs a scenario's steps, then its sweep, on two fresh sides.
pub fn run(
    scenario: &Scenario,
    sides: &mut [Box<dyn Side>; 2],
    sweep: bool,
) -> anyhow::Result<Vec<Row>> {
    for wasm in &scenario.codes {
        sides[0].store_code(wasm)?;
        sides[1].store_code(wasm)?;
    }
    let mut contracts = 0;
    let mut rows = Vec::new();
    for s in &scenario.steps {
        rows.push(run_step(sides, &mut contracts, scenario.name, s)?);
    }
    if sweep {
        for s in &scenario.sweep {
            rows.extend(sweep_step(sides, &mut contracts, scenario.name, s)?);
        }
    }
    Ok(rows)
}

fn out_of_gas(o: &Outcome) -> bool {
    matches!(&o.result, Err(f) if f.kind == FailKind::OutOfGas)
}

/// The smallest limit at which `s` does not run out of gas on `side` (binary search between
/// 0 and the step's own limit, at which it must not run out).
fn threshold(side: &mut dyn Side, s: &Step) -> anyhow::Result<u64> {
    let at = |side: &mut dyn Side, limit: u64| -> anyhow::Result<bool> {
        let mut ctx = s.ctx.clone();
        ctx.gas_limit = limit;
        Ok(out_of_gas(&side.call(&ctx, &s.call, None)?.0))
    };
    let (mut lo, mut hi) = (0u64, s.ctx.gas_limit);
    if at(side, hi)? {
        bail!("`{}` runs out of gas at its own limit {hi}", s.name);
    }
    // Invariant: out of gas at lo (or lo = 0), enough at hi.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if at(side, mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// The gas sweep of one step: the exact limit L at which it stops running out of gas on
/// cosmwasm-vm (side 1), then both sides at L-1, L, L+1 and coarser points around L.
fn sweep_step(
    sides: &mut [Box<dyn Side>; 2],
    contracts: &mut usize,
    scenario: &'static str,
    s: &Step,
) -> anyhow::Result<Vec<Row>> {
    let l = threshold(sides[1].as_mut(), s)?;
    let mut rows = Vec::new();
    for limit in [
        l / 2,
        l - l / 10,
        l - 1000,
        l - 1,
        l,
        l + 1,
        l + 1000,
        l + l / 10,
    ] {
        let mut at = s.clone();
        at.ctx.gas_limit = limit;
        at.name = format!("sweep {}: L{:+}", s.name, limit as i128 - l as i128);
        rows.push(run_step(sides, contracts, scenario, &at)?);
    }
    // Where side 0 disagrees somewhere, its own threshold says by how much.
    if rows.iter().any(|r| !r.differences.is_empty()) {
        let l0 = threshold(sides[0].as_mut(), s)?;
        if let Some(last) = rows.last_mut() {
            last.differences.push(format!(
                "threshold L = {l} on cosmwasm-vm, {l0} on the other side"
            ));
        }
    } else if let Some(last) = rows.last_mut() {
        last.step.push_str(&format!(" (L = {l})"));
    }
    Ok(rows)
}

/// The table: one line per step, then the differences.
pub fn table(rows: &[Row], names: [&str; 2]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | step | limit | result | response equal | gas {} | gas {} | split equal | storage equal |",
        names[1], names[0]
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let [a, b] = &r.outcome;
        let response_equal = match (&a.result, &b.result) {
            (Ok(x), Ok(y)) => x == y,
            (Err(x), Err(y)) => x.kind == y.kind,
            _ => false,
        };
        let yes = |b: bool| if b { "yes" } else { "**NO**" };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.step,
            r.limit,
            describe(b).replace('|', "\\|"),
            yes(response_equal),
            b.gas.used(),
            a.gas.used(),
            yes(a.gas == b.gas),
            yes(r.storage_equal),
        );
    }
    let differing: Vec<&Row> = rows.iter().filter(|r| !r.differences.is_empty()).collect();
    let _ = writeln!(
        out,
        "\n{} steps, {} identical, {} differ",
        rows.len(),
        rows.len() - differing.len(),
        differing.len()
    );
    for r in differing {
        let _ = writeln!(
            out,
            "- {} / {}: {}",
            r.scenario,
            r.step,
            r.differences.join("; ")
        );
        for (name, o) in names.iter().zip(&r.outcome) {
            let shown = match &o.result {
                Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Err(f) => format!("{:?}: {}", f.kind, f.message),
            };
            let _ = writeln!(
                out,
                "    {name}: {} (gas used {}, external {}, internal {})",
                shown.chars().take(300).collect::<String>(),
                o.gas.used(),
                o.gas.used_externally,
                o.gas.used_internally
            );
        }
    }
    out
}

/// The balances of the setup: the contract's own funds under every address the scenario may
/// give it (side 0 names the addresses, learnt by a first run).
pub fn funded(addresses: &[String]) -> Vec<(String, Vec<cosmwasm_std::Coin>)> {
    let mut balances = vec![(addr("verifier"), vec![coin(10, "earth")])];
    for a in addresses {
        balances.push((a.clone(), contract_funds()));
    }
    balances
}
