//! Criterion benchmarks of the CosmWasm ABI, for hackatom and cyberpunk from the corpus
//! (`$STRATA_CORPUS`, else `../shared/corpus`) and our WAT counter:
//!
//! - `cosmwasm/<contract>/instantiate`: a fresh instance ready for a call, from the pinned
//!   layer, the LRU layer and the file cache (a VM whose LRU holds nothing), next to plain
//!   wasmtime instantiating the same original module with the same pooled copy-on-write
//!   engine settings (`baseline_wasmtime_pooling`, its imports defined as traps);
//! - `cosmwasm/<contract>/call`: instantiate + execute + commit from pinned (a durable
//!   commit: fsync on), and instantiate + query;
//! - `cosmwasm/<contract>/compile`: store_code in an empty VM (check, meter, compile, commit,
//!   and the VM's drop, which waits for the background write to the file cache) with Cranelift
//!   and with Winch, and a deploy to the end of the first execute on Winch (the VM dropped
//!   outside the timing: its file write is off the deploy's path).
//!
//! cosmwasm-vm's figures for the same steps come from `differential timing`, run by
//! `cargo xtask bench` in the same run.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use vm_cosmwasm::registry::addr_make;
use vm_cosmwasm::{CallContext, CwConfig, CwVm, TierPolicy, VmConfig};

fn corpus(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("STRATA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    std::fs::read(dir.join(name)).ok()
}

struct Contract {
    name: &'static str,
    wasm: Vec<u8>,
    instantiate: String,
    execute: &'static [u8],
    query: &'static [u8],
}

fn contracts() -> Vec<Contract> {
    let mut out = vec![Contract {
        name: "counter",
        wasm: vm_cosmwasm::counter_wasm(),
        instantiate: r#"{"count":1}"#.into(),
        execute: br#"{"increment":{}}"#,
        query: br#"{"get_count":{}}"#,
    }];
    let verifier = addr_make("cosmwasm", "verifier").expect("prefix");
    let beneficiary = addr_make("cosmwasm", "beneficiary").expect("prefix");
    if let Some(wasm) = corpus("cosmwasm-hackatom.wasm") {
        out.push(Contract {
            name: "hackatom",
            wasm,
            instantiate: format!(r#"{{"verifier":"{verifier}","beneficiary":"{beneficiary}"}}"#),
            execute: br#"{"release":{"denom":"earth"}}"#,
            query: br#"{"verifier":{}}"#,
        });
    }
    if let Some(wasm) = corpus("cosmwasm-cyberpunk.wasm") {
        out.push(Contract {
            name: "cyberpunk",
            wasm,
            instantiate: "{}".into(),
            execute: br#"{"noop":{}}"#,
            query: br#"{"mirror_env":{}}"#,
        });
    }
    out
}

const GAS: u64 = 500_000_000_000;

/// A VM in `dir` with `contract` instantiated and committed; returns it, the address and the
/// checksum.
fn setup(dir: &std::path::Path, config: CwConfig, c: &Contract) -> (CwVm, String, [u8; 32]) {
    let vm = CwVm::open(dir, config).expect("open");
    let mut s = vm.session(vm.latest()).expect("session");
    let (code, checksum) = s.store_code(&c.wasm).expect("store_code");
    let ctx = CallContext::new(addr_make("cosmwasm", "verifier").unwrap(), GAS);
    let (address, out) = s
        .instantiate(&ctx, code, c.instantiate.as_bytes(), c.name, None)
        .expect("instantiate");
    assert!(out.is_ok(), "{}: {}", c.name, out.text());
    s.commit().expect("commit");
    (vm, address, checksum)
}

fn config(fsync: bool, lru_bytes: u64) -> CwConfig {
    let vm = VmConfig {
        fsync,
        ..VmConfig::default()
    };
    let mut config = CwConfig::with_vm(vm);
    config.lru_bytes = lru_bytes;
    config
}

/// Plain wasmtime: the same pooled copy-on-write engine settings, the original module, its
/// imports as traps: Store::new + InstancePre::instantiate + drop.
fn baseline(wasm: &[u8]) -> impl FnMut() {
    let mut config = wasmtime::Config::new();
    config.memory_init_cow(true);
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_core_instances(16)
        .total_memories(16)
        .total_tables(16)
        .max_memory_size(32 << 20);
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    let engine = wasmtime::Engine::new(&config).expect("engine");
    let module = wasmtime::Module::new(&engine, wasm).expect("compile");
    let mut linker = wasmtime::Linker::<()>::new(&engine);
    linker
        .define_unknown_imports_as_traps(&module)
        .expect("imports");
    let pre = linker.instantiate_pre(&module).expect("pre");
    move || {
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = pre.instantiate(&mut store).expect("instantiate");
        std::hint::black_box(instance);
    }
}

fn instantiate(c: &mut Criterion) {
    for contract in contracts() {
        let mut group = c.benchmark_group(format!("cosmwasm/{}/instantiate", contract.name));
        let mut base = baseline(&contract.wasm);
        group.bench_function("baseline_wasmtime_pooling", |b| b.iter(&mut base));

        let dir = tempfile::tempdir().expect("dir");
        let (vm, address, checksum) = setup(dir.path(), config(true, 256 << 20), &contract);
        let ctx = CallContext::new("", GAS);
        let mut s = vm.session(vm.latest()).expect("session");
        s.prepare_instance(&ctx, &address).expect("warm");
        group.bench_function("lru", |b| {
            b.iter(|| s.prepare_instance(&ctx, &address).expect("instance"))
        });
        vm.pin(vm.latest(), &checksum).expect("pin");
        group.bench_function("pinned", |b| {
            b.iter(|| s.prepare_instance(&ctx, &address).expect("instance"))
        });
        drop(s);
        drop(vm);
        // Reopened with no LRU capacity: every load is a file cache hit (Authenticated).
        let vm = CwVm::open(dir.path(), config(true, 0)).expect("reopen");
        let mut s = vm.session(vm.latest()).expect("session");
        group.bench_function("fs", |b| {
            b.iter(|| s.prepare_instance(&ctx, &address).expect("instance"))
        });
        group.finish();
    }
}

fn call(c: &mut Criterion) {
    for contract in contracts() {
        let mut group = c.benchmark_group(format!("cosmwasm/{}/call", contract.name));
        let dir = tempfile::tempdir().expect("dir");
        let (vm, address, checksum) = setup(dir.path(), config(true, 256 << 20), &contract);
        vm.pin(vm.latest(), &checksum).expect("pin");
        let ctx = CallContext::new(addr_make("cosmwasm", "verifier").unwrap(), GAS);
        group.bench_function("query", |b| {
            let mut s = vm.session(vm.latest()).expect("session");
            b.iter(|| {
                assert!(
                    s.query(&ctx, &address, contract.query)
                        .expect("query")
                        .is_ok()
                )
            })
        });
        group.bench_function("instantiate_execute_commit", |b| {
            b.iter(|| {
                let mut s = vm.session(vm.latest()).expect("session");
                let out = s
                    .execute(&ctx, &address, contract.execute)
                    .expect("execute");
                assert!(out.is_ok(), "{}", out.text());
                s.commit().expect("commit")
            })
        });
        group.finish();
    }
}

fn compile(c: &mut Criterion) {
    for contract in contracts() {
        let mut group = c.benchmark_group(format!("cosmwasm/{}/compile", contract.name));
        group.sample_size(10);
        for (name, tier) in [
            ("store_code", TierPolicy::CraneliftOnly),
            ("store_code_winch", TierPolicy::WinchOnly),
        ] {
            group.bench_function(name, |b| {
                b.iter_with_setup(
                    || tempfile::tempdir().expect("dir"),
                    |dir| {
                        let mut config = config(true, 256 << 20);
                        config.tier = tier;
                        let vm = CwVm::open(dir.path(), config).expect("open");
                        let mut s = vm.session(None).expect("session");
                        s.store_code(&contract.wasm).expect("store_code");
                        s.commit().expect("commit");
                        dir
                    },
                )
            });
        }
        // Issue 16: a deploy with an empty cache to the end of the first call, on Winch (the
        // Cranelift tier-up runs later, off this path): store_code, instantiate and execute in
        // one session of an open VM (its directory made outside the timing, as cosmwasm-vm's
        // cache exists before its store_code); the block's commit is not part of it.
        group.bench_function("deploy_to_first_call_winch", |b| {
            let ctx = CallContext::new(addr_make("cosmwasm", "verifier").unwrap(), GAS);
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir().expect("dir");
                    let mut config = config(true, 256 << 20);
                    config.tier = TierPolicy::WinchOnly;
                    let vm = CwVm::open(dir.path(), config).expect("open");
                    (dir, vm)
                },
                |(dir, vm)| {
                    let mut s = vm.session(vm.latest()).expect("session");
                    let (code, _) = s.store_code(&contract.wasm).expect("store_code");
                    let (address, out) = s
                        .instantiate(&ctx, code, contract.instantiate.as_bytes(), "c", None)
                        .expect("instantiate");
                    assert!(out.is_ok(), "{}", out.text());
                    let out = s
                        .execute(&ctx, &address, contract.execute)
                        .expect("execute");
                    assert!(out.is_ok(), "{}", out.text());
                    (dir, vm)
                },
                criterion::BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, instantiate, call, compile);
criterion_main!(benches);
