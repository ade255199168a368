//! cosmwasm-vm's cache timings (medians of N runs), printed as JSON for `cargo xtask bench`:
//! instantiate from its pinned cache, from its memory cache, from its file-system cache;
//! store_code (static checks, compile, persist); and instantiate + execute + commit from
//! pinned, where commit is what cosmwasm-vm leaves to the chain: taking the storage back from
//! the instance and writing its entries into the contract's state.
//!
//! An instantiation is `Cache::get_instance` (module lookup, wasmer `Instance::new` with the
//! imports) plus dropping the instance, with a fresh mock backend each time.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use cosmwasm_std::{Addr, Checksum, ContractInfo, Env, MessageInfo, Order};
use cosmwasm_vm::testing::{MockApi, MockQuerier, MockStorage};
use cosmwasm_vm::{
    Backend, Cache, CacheOptions, InstanceOptions, Size, Storage as _, call_execute_raw,
    call_instantiate_raw,
};
use serde_json::json;

use crate::common::{
    MEMORY_LIMIT, Setup, block, contract_funds, is_contract_ok, json, transaction,
};
use crate::scenario::addr;

type MockCache = Cache<MockApi, MockStorage, MockQuerier>;

const GAS: u64 = 10_000_000_000;

fn median_ns(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// Median of `runs` timed calls of `f`, after a few untimed ones.
fn measure(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..runs.min(5) {
        f()?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_nanos() as f64);
    }
    Ok(median_ns(samples))
}

fn cache(dir: &Path, memory_cache: Size) -> anyhow::Result<MockCache> {
    let setup = Setup::standard(vec![]);
    let capabilities: HashSet<String> = setup.capabilities.iter().cloned().collect();
    let options = CacheOptions::new(
        dir,
        capabilities,
        memory_cache,
        Size::new(MEMORY_LIMIT as usize),
    );
    // SAFETY: the cache directory is a fresh temporary directory nothing else writes.
    unsafe { MockCache::new(options) }.map_err(|e| anyhow!("cache: {e}"))
}

fn env(address: &str) -> Env {
    Env {
        block: block(),
        transaction: Some(transaction()),
        contract: ContractInfo {
            address: Addr::unchecked(address),
        },
    }
}

struct Contract {
    name: &'static str,
    wasm: Vec<u8>,
    instantiate_msg: Vec<u8>,
    execute_msg: Vec<u8>,
    /// Who sends the execute message.
    executor: String,
}

fn contracts(corpus: &Path) -> anyhow::Result<Vec<Contract>> {
    let read = |file: &str| {
        let path = corpus.join(file);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(vec![
        Contract {
            name: "hackatom",
            wasm: read("cosmwasm-hackatom.wasm")?,
            instantiate_msg: serde_json::to_vec(
                &json!({ "verifier": addr("verifier"), "beneficiary": addr("beneficiary") }),
            )?,
            execute_msg: serde_json::to_vec(&json!({ "release": { "denom": "earth" } }))?,
            executor: addr("verifier"),
        },
        Contract {
            name: "cyberpunk",
            wasm: read("cosmwasm-cyberpunk.wasm")?,
            instantiate_msg: b"{}".to_vec(),
            execute_msg: serde_json::to_vec(&json!({ "noop": {} }))?,
            executor: addr("anyone"),
        },
    ])
}

fn backend(
    contract: &str,
    state: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Backend<MockApi, MockStorage, MockQuerier> {
    let mut storage = MockStorage::new();
    for (k, v) in state {
        let _ = storage.set(k, v);
    }
    let funds = contract_funds();
    Backend {
        api: MockApi::default(),
        storage,
        querier: MockQuerier::new(&[(contract, funds.as_slice())]),
    }
}

/// The timings of one contract: (measure, median ns).
fn time_contract(c: &Contract, runs: usize) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let address = MockApi::default().addr_make("timed contract");
    let options = InstanceOptions { gas_limit: GAS };
    let empty = BTreeMap::new();
    let mut out = Vec::new();

    // store_code: checks, compile, persist (the wasm file and the module in the file cache).
    let dir = tempfile::tempdir()?;
    let compiling = cache(dir.path(), Size::mebi(64))?;
    let compile_runs = runs.clamp(3, 15);
    let ns = measure(compile_runs, || {
        compiling
            .store_code(&c.wasm, true, true)
            .map(|_| ())
            .map_err(|e| anyhow!("store_code: {e}"))
    })?;
    out.push(("store_code", ns));
    drop(compiling);

    // Each layer in its own cache, so that only that layer can answer; the stats prove it.
    let instantiate = |cache: &MockCache, checksum: &Checksum| -> anyhow::Result<()> {
        let instance = cache
            .get_instance(checksum, backend(&address, &empty), options)
            .map_err(|e| anyhow!("get_instance: {e}"))?;
        drop(instance);
        Ok(())
    };

    let dir = tempfile::tempdir()?;
    let pinned = cache(dir.path(), Size::mebi(64))?;
    let checksum = pinned
        .store_code(&c.wasm, true, true)
        .map_err(|e| anyhow!("store_code: {e}"))?;
    pinned.pin(&checksum).map_err(|e| anyhow!("pin: {e}"))?;
    out.push((
        "instantiate_pinned",
        measure(runs, || instantiate(&pinned, &checksum))?,
    ));
    if pinned.stats().hits_pinned_memory_cache == 0 || pinned.stats().hits_memory_cache != 0 {
        bail!("the pinned timing was not served by the pinned cache");
    }

    // instantiate + execute + commit, from pinned.
    let mut state = BTreeMap::new();
    {
        let mut instance = pinned
            .get_instance(&checksum, backend(&address, &state), options)
            .map_err(|e| anyhow!("get_instance: {e}"))?;
        let info = json(&MessageInfo {
            sender: Addr::unchecked(addr("creator")),
            funds: vec![],
        })?;
        let result = call_instantiate_raw(
            &mut instance,
            &json(&env(&address))?,
            &info,
            &c.instantiate_msg,
        )
        .map_err(|e| anyhow!("instantiate: {e}"))?;
        if !is_contract_ok(&result) {
            bail!(
                "{} instantiate failed: {}",
                c.name,
                String::from_utf8_lossy(&result)
            );
        }
        let mut b = instance.recycle().context("no backend back")?;
        let (id, _) = b.storage.scan(None, None, Order::Ascending);
        let (all, _) = b.storage.all(id.map_err(|e| anyhow!("{e}"))?);
        state.extend(all.map_err(|e| anyhow!("{e}"))?);
    }
    let env_bytes = json(&env(&address))?;
    let info = json(&MessageInfo {
        sender: Addr::unchecked(&c.executor),
        funds: vec![],
    })?;
    let ns = measure(runs, || {
        let mut instance = pinned
            .get_instance(&checksum, backend(&address, &state), options)
            .map_err(|e| anyhow!("get_instance: {e}"))?;
        let result = call_execute_raw(&mut instance, &env_bytes, &info, &c.execute_msg)
            .map_err(|e| anyhow!("execute: {e}"))?;
        if !is_contract_ok(&result) {
            bail!(
                "{} execute failed: {}",
                c.name,
                String::from_utf8_lossy(&result)
            );
        }
        let mut b = instance.recycle().context("no backend back")?;
        let (id, _) = b.storage.scan(None, None, Order::Ascending);
        let (all, _) = b.storage.all(id.map_err(|e| anyhow!("{e}"))?);
        for (k, v) in all.map_err(|e| anyhow!("{e}"))? {
            state.insert(k, v);
        }
        Ok(())
    })?;
    out.push(("instantiate_execute_commit_pinned", ns));
    drop(pinned);

    let dir = tempfile::tempdir()?;
    let memory = cache(dir.path(), Size::mebi(64))?;
    let checksum = memory
        .store_code(&c.wasm, true, true)
        .map_err(|e| anyhow!("store_code: {e}"))?;
    instantiate(&memory, &checksum)?; // file system -> memory
    out.push((
        "instantiate_memory",
        measure(runs, || instantiate(&memory, &checksum))?,
    ));
    if memory.stats().hits_memory_cache == 0 || memory.stats().hits_fs_cache != 1 {
        bail!("the memory timing was not served by the memory cache");
    }
    drop(memory);

    // No memory cache: every instantiation loads the module from the file system.
    let dir = tempfile::tempdir()?;
    let fs = cache(dir.path(), Size::new(0))?;
    let checksum = fs
        .store_code(&c.wasm, true, true)
        .map_err(|e| anyhow!("store_code: {e}"))?;
    out.push((
        "instantiate_fs",
        measure(runs, || instantiate(&fs, &checksum))?,
    ));
    if fs.stats().hits_fs_cache == 0 || fs.stats().hits_memory_cache != 0 {
        bail!("the file-system timing was not served by the file-system cache");
    }
    Ok(out)
}

/// Prints the timings as JSON, one result a line.
pub fn run(corpus: &Path, runs: usize) -> anyhow::Result<()> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut lines = Vec::new();
    for c in contracts(corpus)? {
        for (measure, ns) in time_contract(&c, runs)? {
            eprintln!("{} {measure}: {:.1} µs", c.name, ns / 1e3);
            lines.push(
                json!({ "contract": c.name, "measure": measure, "median_ns": ns }).to_string(),
            );
        }
    }
    println!(
        "{{\"implementation\":\"cosmwasm-vm 3.0.10\",\"runs\":{runs},\"results\":[\n{}\n]}}",
        lines.join(",\n")
    );
    Ok(())
}
