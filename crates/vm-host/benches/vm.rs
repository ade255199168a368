//! Criterion benchmarks of the VM host: instantiate + call from each cache layer, the call path
//! split into its parts next to plain wasmtime (`call_path`), session open + call + commit over
//! small and large memories, calls per second on one core, the time per unit of fuel of plain
//! wasm loops and host-function loops (`host_costs`), and the compiler tiers (`tiers/*`): Winch
//! against Cranelift compiles of the corpus and of adversarial modules (`tiers/compile_adversarial/*`,
//! with their compile-budget estimates), deploy to first call of hackatom with an empty
//! cache, calls after the tier-up.
//!
//! The corpus (sql.js, hackatom) is read from `$STRATA_CORPUS`, else `../shared/corpus`; its
//! imports are defined as trapping host functions, as an embedder would define its own ABI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use strata_harness::adversarial::Shape;
use vm_host::{
    CompileBudget, CompileCost, HostState, ModuleId, Root, TierPolicy, Value, Vm, VmConfig, VmError,
};
use wasmtime::{FuncType, Instance, Linker, ValType};

const COUNTER: &str = include_str!("../contracts/counter.wat");

fn corpus(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("STRATA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    std::fs::read(dir.join(name)).ok()
}

fn val_type(ty: &wasmparser::ValType) -> ValType {
    match ty {
        wasmparser::ValType::I32 => ValType::I32,
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        _ => ValType::I32,
    }
}

/// Every function import of `wasm`, as (module, name, params, results).
fn imports(wasm: &[u8]) -> Vec<(String, String, Vec<ValType>, Vec<ValType>)> {
    let mut types = Vec::new();
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.expect("corpus module parses") {
            wasmparser::Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.expect("func type");
                    types.push((
                        ty.params().iter().map(val_type).collect::<Vec<_>>(),
                        ty.results().iter().map(val_type).collect::<Vec<_>>(),
                    ));
                }
            }
            wasmparser::Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.expect("import");
                    if let wasmparser::TypeRef::Func(index) = import.ty {
                        let (params, results) = types[index as usize].clone();
                        out.push((
                            import.module.to_owned(),
                            import.name.to_owned(),
                            params,
                            results,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Opens a VM whose host defines `wasm`'s imports as functions that trap.
fn vm_for(dir: &std::path::Path, config: VmConfig, wasm: &[u8]) -> Vm {
    let imports = imports(wasm);
    Vm::open_with_host(dir, config, move |linker: &mut Linker<HostState>| {
        for (module, name, params, results) in &imports {
            if module == "env" && name.starts_with("db_") {
                continue;
            }
            let ty = FuncType::new(linker.engine(), params.clone(), results.clone());
            linker
                .func_new(module, name, ty, |_, _, _| {
                    Err(wasmtime::format_err!(
                        "import not provided by the benchmark host"
                    ))
                })
                .map_err(VmError::from)?;
        }
        Ok(())
    })
    .expect("vm opens")
}

/// Opens a VM whose host defines every import of `wasm`, `db_*` included, as functions that
/// trap: they shadow vm-host's own (CosmWasm's `db_read` has another signature).
fn vm_shadowing(dir: &std::path::Path, config: VmConfig, wasm: &[u8]) -> Vm {
    let imports = imports(wasm);
    Vm::open_with_host(dir, config, move |linker: &mut Linker<HostState>| {
        linker.allow_shadowing(true);
        define_stubs(linker, &imports)
    })
    .expect("vm opens")
}

fn define_stubs<T: 'static>(
    linker: &mut Linker<T>,
    imports: &[(String, String, Vec<ValType>, Vec<ValType>)],
) -> Result<(), VmError> {
    for (module, name, params, results) in imports {
        let ty = FuncType::new(linker.engine(), params.clone(), results.clone());
        linker
            .func_new(module, name, ty, |_, _, _| {
                Err(wasmtime::format_err!(
                    "import not provided by the benchmark host"
                ))
            })
            .map_err(VmError::from)?;
    }
    Ok(())
}

/// Plain wasmtime on the same module: the default on-demand allocator with copy-on-write
/// memory init, fuel on as in the VM, every import a stub; one `InstancePre` made up front.
struct Plain {
    engine: wasmtime::Engine,
    pre: wasmtime::InstancePre<()>,
}

impl Plain {
    fn new(wasm: &[u8]) -> Plain {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let module = wasmtime::Module::new(&engine, wasm).expect("compiles");
        let mut linker = Linker::new(&engine);
        define_stubs(&mut linker, &imports(wasm)).expect("stubs");
        let pre = linker.instantiate_pre(&module).expect("instantiate_pre");
        Plain { engine, pre }
    }

    /// A new store, instantiate, one call of `function` (no parameters), drop.
    fn instantiate_call(&self, function: &str) {
        let mut store = wasmtime::Store::new(&self.engine, ());
        store.set_fuel(1_000_000_000).expect("fuel");
        let instance = self.pre.instantiate(&mut store).expect("instantiates");
        let func = instance.get_func(&mut store, function).expect("export");
        let mut results = vec![wasmtime::Val::I32(0); func.ty(&store).results().len()];
        func.call(&mut store, &[], &mut results).expect("call");
    }
}

/// The path of a transaction split into its parts, for `counter` (`get`) and CosmWasm's
/// hackatom (`interface_version_8`, every import a stub), next to plain wasmtime making the same
/// call (`baseline_wasmtime`). Each `split_*` is a prefix of the path, so the parts are the
/// differences: `1_session` (store session open + drop), `2_restore` (+ the module's host
/// state read and decoded), `3_load` (+ module load from the pinned layer and `InstancePre`),
/// `4_instantiate` (+ memory open, restore, instantiate), then the whole path (`pinned`, `lru`,
/// which add the call). `memory_open` is the store alone (session, memory mapped into a 4 GiB +
/// 32 MiB reservation, drop) and `drop` the end of a live session.
fn call_path(c: &mut Criterion) {
    let mut subjects = vec![(
        "counter",
        wat::parse_str(COUNTER).expect("counter.wat"),
        "get",
    )];
    if let Some(wasm) = corpus("cosmwasm-hackatom.wasm") {
        subjects.push(("hackatom", wasm, "interface_version_8"));
    }
    for (label, wasm, function) in subjects {
        let dir = tempfile::tempdir().expect("temp dir");
        let vm = vm_shadowing(dir.path(), VmConfig::for_tests(), &wasm);
        let (module, root) = vm.deploy(&wasm).expect("deploys");
        let plain = Plain::new(&wasm);
        let run = |vm: &Vm| {
            let mut s = vm.session(Some(root)).expect("session");
            s.call(&module, function, &[]).expect("call");
        };
        let mut group = c.benchmark_group(format!("call_path/{label}"));
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        group.bench_function("baseline_wasmtime", |b| {
            b.iter(|| plain.instantiate_call(function))
        });
        run(&vm);
        group.bench_function("lru", |b| b.iter(|| run(&vm)));
        vm.pin(&module).expect("pin");
        group.bench_function("pinned", |b| b.iter(|| run(&vm)));
        group.bench_function("split_1_session", |b| {
            b.iter(|| vm.session(Some(root)).expect("session"))
        });
        group.bench_function("split_2_restore", |b| {
            b.iter(|| {
                let mut s = vm.session(Some(root)).expect("session");
                s.kv_get(&module, b"-").expect("kv_get");
                s
            })
        });
        group.bench_function("split_3_load", |b| {
            b.iter(|| {
                let mut s = vm.session(Some(root)).expect("session");
                s.signature(&module, function).expect("signature");
                s
            })
        });
        group.bench_function("split_4_instantiate", |b| {
            b.iter(|| {
                let mut s = vm.session(Some(root)).expect("session");
                s.read_memory(&module, 0, 0).expect("instantiate");
                s
            })
        });
        group.bench_function("drop", |b| {
            b.iter_batched(
                || {
                    let mut s = vm.session(Some(root)).expect("session");
                    s.call(&module, function, &[]).expect("call");
                    s
                },
                drop,
                criterion::BatchSize::SmallInput,
            )
        });
        drop(vm);
        let store = store_commit::Store::open(
            &dir.path().join("store"),
            store_commit::StoreConfig::default(),
        )
        .expect("store");
        group.bench_function("memory_open", |b| {
            b.iter(|| {
                let mut s = store.session(Some(root)).expect("session");
                s.memory(&module, (4 << 30) + (32 << 20)).expect("memory");
            })
        });
        group.finish();
    }
}

/// An exported `() -> i32` function of `module` that returns without trapping.
fn harmless_export(vm: &Vm, root: Root, module: &ModuleId, wasm: &[u8]) -> String {
    let engine = wasmtime::Engine::default();
    let parsed = wasmtime::Module::new(&engine, wasm).expect("compiles");
    let mut names: Vec<String> = parsed
        .exports()
        .filter_map(|e| {
            let f = e.ty().func()?.clone();
            (f.params().len() == 0 && f.results().len() == 1).then(|| e.name().to_owned())
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|name| {
            let mut s = vm.session(Some(root)).expect("session");
            s.call(module, name, &[]).is_ok()
        })
        .expect("a harmless export")
}

struct Subject {
    label: &'static str,
    wasm: Vec<u8>,
    function: String,
}

fn layers(c: &mut Criterion) {
    let mut subjects = vec![Subject {
        label: "counter",
        wasm: wat::parse_str(COUNTER).expect("counter.wat"),
        function: "get".to_owned(),
    }];
    if let Some(wasm) = corpus("sqljs-1.16.0.wasm") {
        subjects.push(Subject {
            label: "sqljs",
            wasm,
            function: String::new(),
        });
    }
    for mut subject in subjects {
        let dir = tempfile::tempdir().expect("temp dir");
        let (module, root) = {
            let vm = vm_for(dir.path(), VmConfig::for_tests(), &subject.wasm);
            let (module, root) = vm.deploy(&subject.wasm).expect("deploys");
            if subject.function.is_empty() {
                subject.function = harmless_export(&vm, root, &module, &subject.wasm);
            }
            (module, root)
        };
        let function = subject.function.clone();
        let run = |vm: &Vm| {
            let mut s = vm.session(Some(root)).expect("session");
            s.call(&module, &function, &[]).expect("call");
        };
        let mut group = c.benchmark_group(format!("instantiate_call/{}", subject.label));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(3));
        // Compile: a copy of the store with no caches at all.
        group.bench_function("baseline_compile", |b| {
            b.iter_batched(
                || {
                    let d = tempfile::tempdir().expect("temp dir");
                    copy_store(dir.path(), d.path());
                    let vm = vm_for(d.path(), VmConfig::for_tests(), &subject.wasm);
                    (vm, d)
                },
                |(vm, d)| {
                    run(&vm);
                    (vm, d)
                },
                criterion::BatchSize::PerIteration,
            )
        });
        // File cache: a freshly opened VM (empty memory layers) over the deploy's directory.
        // One store per directory at a time: each VM is dropped before the next opens.
        group.bench_function("fs_verified", |b| {
            b.iter_batched(
                || vm_for(dir.path(), VmConfig::for_tests(), &subject.wasm),
                |vm| {
                    run(&vm);
                    vm
                },
                criterion::BatchSize::PerIteration,
            )
        });
        let vm = vm_for(dir.path(), VmConfig::for_tests(), &subject.wasm);
        run(&vm);
        group.bench_function("lru", |b| b.iter(|| run(&vm)));
        vm.pin(&module).expect("pin");
        group.bench_function("pinned", |b| b.iter(|| run(&vm)));
        group.finish();
    }
}

/// Copies the commit store (not the caches) of a VM directory.
fn copy_store(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("store"))
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(status.success());
}

fn sessions(c: &mut Criterion) {
    let wasm = wat::parse_str(COUNTER).expect("counter.wat");
    let mut group = c.benchmark_group("session_open_call_commit");
    group.sample_size(20);
    for (label, pages) in [("1MiB", 16u32), ("1GiB", 16 * 1024)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let vm = Vm::open(dir.path(), VmConfig::for_tests()).expect("vm");
        let (module, root) = vm.deploy(&wasm).expect("deploy");
        let mut s = vm.session(Some(root)).expect("session");
        s.call(&module, "grow", &[Value::I32(pages as i32 - 1)])
            .expect("grow");
        let base = s.commit().expect("commit");
        let id = if label == "1MiB" {
            "baseline_1MiB"
        } else {
            label
        };
        group.bench_function(BenchmarkId::new(id, "increment"), |b| {
            b.iter(|| {
                let mut s = vm.session(Some(base)).expect("session");
                s.call(&module, "increment", &[]).expect("call");
                s.commit().expect("commit")
            })
        });
    }
    group.finish();
}

/// Writes 1 KiB of key-value data under one of 1024 keys (its argument) per call.
const KV_1KIB: &str = r#"(module
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (memory 1)
  (func (export "put") (param i32)
    (i32.store (i32.const 16) (i32.and (local.get 0) (i32.const 1023)))
    (call $w (i32.const 16) (i32.const 4) (i32.const 1024) (i32.const 1024))))"#;

type PlainKv = wasmtime::Store<BTreeMap<Vec<u8>, Vec<u8>>>;

/// Plain wasmtime's host for the same calls: `db_read` and `db_write` over a `BTreeMap`.
fn plain_kv_instance(wasm: &[u8]) -> (PlainKv, Instance) {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    let engine = wasmtime::Engine::new(&config).expect("engine");
    let module = wasmtime::Module::new(&engine, wasm).expect("compiles");
    let mut linker = Linker::<BTreeMap<Vec<u8>, Vec<u8>>>::new(&engine);
    fn memory(caller: &mut wasmtime::Caller<'_, BTreeMap<Vec<u8>, Vec<u8>>>) -> wasmtime::Memory {
        caller
            .get_export("memory")
            .and_then(|e| e.into_memory())
            .expect("memory export")
    }
    linker
        .func_wrap(
            "env",
            "db_write",
            |mut caller: wasmtime::Caller<'_, BTreeMap<Vec<u8>, Vec<u8>>>,
             k: u32,
             kl: u32,
             v: u32,
             vl: u32| {
                let mem = memory(&mut caller);
                let (data, map) = mem.data_and_store_mut(&mut caller);
                let key = data[k as usize..(k + kl) as usize].to_vec();
                let value = data[v as usize..(v + vl) as usize].to_vec();
                map.insert(key, value);
            },
        )
        .expect("db_write");
    linker
        .func_wrap(
            "env",
            "db_read",
            |mut caller: wasmtime::Caller<'_, BTreeMap<Vec<u8>, Vec<u8>>>,
             k: u32,
             kl: u32,
             v: u32,
             cap: u32|
             -> i32 {
                let mem = memory(&mut caller);
                let (data, map) = mem.data_and_store_mut(&mut caller);
                let key = &data[k as usize..(k + kl) as usize];
                match map.get(key).cloned() {
                    Some(value) if value.len() <= cap as usize => {
                        data[v as usize..v as usize + value.len()].copy_from_slice(&value);
                        value.len() as i32
                    }
                    _ => -1,
                }
            },
        )
        .expect("db_read");
    let mut store = wasmtime::Store::new(&engine, BTreeMap::new());
    store.set_fuel(u64::MAX / 2).expect("fuel");
    let instance = linker
        .instantiate(&mut store, &module)
        .expect("instantiates");
    (store, instance)
}

/// Calls per second in one session on one core: counter's `get` (read-only) and `increment`
/// (writes a memory page, a global and a key), a call writing 1 KiB of key-value data, and plain
/// wasmtime making the same calls in one instance whose host copies values into a `BTreeMap`.
fn throughput(c: &mut Criterion) {
    let counter = wat::parse_str(COUNTER).expect("counter.wat");
    // `memory` exported for the plain host, as counter does.
    let kv = wat::parse_str(KV_1KIB.replace("(memory 1)", "(memory (export \"memory\") 1)"))
        .expect("kv");
    let dir = tempfile::tempdir().expect("temp dir");
    let vm = Vm::open(dir.path(), VmConfig::for_tests()).expect("vm");
    let (module, _) = vm.deploy(&counter).expect("deploy");
    let (kv_module, root) = vm.deploy(&kv).expect("deploy");
    let mut group = c.benchmark_group("calls_in_one_session");
    let mut s = vm.session(Some(root)).expect("session");
    s.call(&module, "get", &[]).expect("warm");
    let (mut plain, instance) = plain_kv_instance(&counter);
    let get = instance
        .get_typed_func::<(), i64>(&mut plain, "get")
        .expect("get");
    let increment = instance
        .get_typed_func::<(), i64>(&mut plain, "increment")
        .expect("increment");
    group.bench_function("baseline_wasmtime_get", |b| {
        b.iter(|| get.call(&mut plain, ()).expect("call"))
    });
    group.bench_function("wasmtime_increment", |b| {
        b.iter(|| increment.call(&mut plain, ()).expect("call"))
    });
    group.bench_function("get", |b| {
        b.iter(|| s.call(&module, "get", &[]).expect("call"))
    });
    group.bench_function("increment", |b| {
        b.iter(|| s.call(&module, "increment", &[]).expect("call"))
    });
    let (mut plain, instance) = plain_kv_instance(&kv);
    let put = instance
        .get_typed_func::<i32, ()>(&mut plain, "put")
        .expect("put");
    let mut n = 0;
    group.bench_function("wasmtime_write_1KiB", |b| {
        b.iter(|| {
            n += 1;
            put.call(&mut plain, n).expect("call")
        })
    });
    group.bench_function("write_1KiB", |b| {
        b.iter(|| {
            n += 1;
            s.call(&kv_module, "put", &[Value::I32(n)]).expect("call")
        })
    });
    group.finish();
}

/// `dirty` writes one byte in every 4 KiB page of its 256 MiB memory; `touch` one byte in page
/// `n` (mod 65536).
const DIRTY_256MIB: &str = r#"(module
  (memory 4096)
  (func (export "dirty") (local i32)
    (loop $l
      (i32.store8 (local.get 0) (i32.const 1))
      (local.set 0 (i32.add (local.get 0) (i32.const 4096)))
      (br_if $l (i32.lt_u (local.get 0) (i32.const 268435456)))))
  (func (export "touch") (param i32)
    (i32.store8 (i32.shl (i32.and (local.get 0) (i32.const 65535)) (i32.const 12))
                (local.get 0))))"#;

/// 100 and 1000 calls in one session, each writing one page of a 256 MiB memory the session
/// has already dirtied: with checkpoints in O(pages the call writes), linear in the calls.
fn calls_after_dirtying(c: &mut Criterion) {
    let wasm = wat::parse_str(DIRTY_256MIB).expect("dirty");
    let dir = tempfile::tempdir().expect("temp dir");
    let vm = Vm::open(dir.path(), VmConfig::for_tests()).expect("vm");
    let (module, root) = vm.deploy(&wasm).expect("deploy");
    let mut s = vm.session(Some(root)).expect("session");
    s.call(&module, "dirty", &[]).expect("dirty");
    let mut group = c.benchmark_group("calls_after_dirtying_256MiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut n = 0;
    for (id, calls) in [("baseline_calls", 100), ("calls", 1000)] {
        group.bench_function(BenchmarkId::new(id, calls), |b| {
            b.iter(|| {
                for _ in 0..calls {
                    n += 1;
                    s.call(&module, "touch", &[Value::I32(n)]).expect("touch");
                }
            })
        });
    }
    group.finish();
}

/// Plain loops (`copy`, `fill`, `arith`, `grow`) and host loops (`read`, `write`,
/// `remove_missing`), each `(param i32)` passes (`grow`: until the memory limit). The value
/// area starts at 64 KiB and holds the largest value (`VmConfig::max_value_bytes`, 1 MiB).
const FUEL_LOOPS: &str = r#"(module
  (import "env" "db_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (import "env" "db_remove" (func $d (param i32 i32)))
  (import "env" "db_scan" (func $scan (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "db_next" (func $next (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory 18)
  (data (i32.const 0) "k")
  (data (i32.const 8) "st")
  (func (export "copy") (param i32)
    (loop $l (if (local.get 0) (then
      (memory.copy (i32.const 65536) (i32.const 131072) (i32.const 65536))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l)))))
  (func (export "fill") (param i32)
    (loop $l (if (local.get 0) (then
      (memory.fill (i32.const 65536) (local.get 0) (i32.const 65536))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l)))))
  (func (export "arith") (param i32) (result i64) (local i64)
    (loop $l (if (local.get 0) (then
      (local.set 1 (i64.add (i64.mul (local.get 1) (i64.const 6364136223846793005))
                            (i64.const 1442695040888963407)))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l))))
    (local.get 1))
  (func (export "grow") (result i32)
    (block $done (loop $l
      (br_if $done (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $l)))
    (memory.size))
  (func (export "read") (param i32)
    (loop $l (if (local.get 0) (then
      (drop (call $r (i32.const 0) (i32.const 1) (i32.const 65536) (i32.const 1048576)))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l)))))
  (func (export "write") (param i32)
    (loop $l (if (local.get 0) (then
      (call $w (i32.const 0) (i32.const 1) (i32.const 65536) (i32.const 1048576))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l)))))
  ;; `param` keys "s" ++ i32 with 100-byte values: the entries `scan` walks.
  (func (export "put_small") (param i32)
    (i32.store8 (i32.const 16) (i32.const 0x73))
    (loop $l (if (local.get 0) (then
      (i32.store (i32.const 17) (local.get 0))
      (call $w (i32.const 16) (i32.const 5) (i32.const 65536) (i32.const 100))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l)))))
  ;; `param` forward scans of the keys from "s" to "t", each to its end.
  (func (export "scan") (param i32) (local i32)
    (loop $l (if (local.get 0) (then
      (local.set 1 (call $scan (i32.const 8) (i32.const 1) (i32.const 9) (i32.const 1)
                               (i32.const 0)))
      (block $end (loop $step
        (br_if $end (i32.eqz (call $next (local.get 1) (i32.const 32) (i32.const 64)
                                         (i32.const 131072) (i32.const 1048576)
                                         (i32.const 24))))
        (br $step)))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l)))))
  (func (export "remove_missing") (param i32)
    (loop $l (if (local.get 0) (then
      (i32.store (i32.const 16) (local.get 0))
      (call $d (i32.const 16) (i32.const 4))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $l))))))"#;

/// Times `run` (which returns the fuel it consumed) with one criterion iteration standing for
/// one unit of fuel: the reported time per iteration is nanoseconds per unit of fuel.
fn per_fuel(b: &mut criterion::Bencher<'_>, mut run: impl FnMut() -> u64) {
    b.iter_custom(|units| {
        let start = Instant::now();
        let mut fuel = 0;
        while fuel < units {
            fuel += run().max(1);
        }
        start.elapsed().mul_f64(units as f64 / fuel as f64)
    })
}

/// Nanoseconds per unit of fuel of plain wasm loops and of host-function loops, with the
/// default `HostCosts` and `max_value_bytes`. Target: the slowest host loop within 10x of the
/// slowest plain loop (docs/RELIABILITY.md).
fn host_costs(c: &mut Criterion) {
    let wasm = wat::parse_str(FUEL_LOOPS).expect("fuel loops");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = VmConfig {
        memory_limit: 64 << 20,
        ..VmConfig::for_tests()
    };
    let largest = config.max_value_bytes;
    assert_eq!(largest, 1 << 20, "FUEL_LOOPS writes values of 1 MiB");
    let vm = Vm::open(dir.path(), config).expect("vm");
    let (module, root) = vm.deploy(&wasm).expect("deploy");
    // The base holds the largest value under "k", for `read`.
    let mut s = vm.session(Some(root)).expect("session");
    s.call(&module, "write", &[Value::I32(1)]).expect("write");
    // ... and 1,000 small entries, for `scan`.
    s.call(&module, "put_small", &[Value::I32(1000)])
        .expect("put_small");
    let root = s.commit().expect("commit");

    let mut group = c.benchmark_group("host_costs_ns_per_fuel");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    let mut s = vm.session(Some(root)).expect("session");
    for (label, function, passes) in [
        ("plain/memory_copy_64KiB", "copy", 1_000),
        ("plain/memory_fill_64KiB", "fill", 1_000),
        ("plain/i64_arith", "arith", 1_000_000),
        ("host/db_read_1MiB", "read", 50),
        ("host/db_write_1MiB", "write", 50),
        ("host/db_remove_missing", "remove_missing", 100_000),
        ("host/db_scan_next_1000_entries", "scan", 20),
    ] {
        group.bench_function(label, |b| {
            per_fuel(b, || {
                s.call(&module, function, &[Value::I32(passes)])
                    .expect("call");
                s.last_call_fuel().unwrap_or(0)
            })
        });
    }
    // Each pass starts from the base memory (18 pages) and grows to the limit.
    group.bench_function("plain/memory_grow_1_page_to_limit", |b| {
        per_fuel(b, || {
            let mut s = vm.session(Some(root)).expect("session");
            s.call(&module, "grow", &[]).expect("call");
            s.last_call_fuel().unwrap_or(0)
        })
    });
    group.finish();
}

/// The engine settings of vm-host's runtime engines (fuel, NaN canonicalisation) for `tier`.
fn tier_engine(winch: bool) -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config
        .consume_fuel(true)
        .cranelift_nan_canonicalization(true);
    if winch {
        config.strategy(wasmtime::Strategy::Winch);
    }
    wasmtime::Engine::new(&config).expect("engine")
}

/// Compile time of corpus modules by each tier, in one group whose parameter is the module's
/// size (so `cargo xtask bench` plots time against size for both tiers); Cranelift of the same
/// module is the baseline.
fn tier_compile(c: &mut Criterion) {
    let cranelift = tier_engine(false);
    let winch = tier_engine(true);
    let mut group = c.benchmark_group("tiers/compile");
    group.sample_size(10);
    for file in [
        "web-tree-sitter-0.27.1.wasm",
        "cosmwasm-hackatom.wasm",
        "sqljs-1.16.0.wasm",
    ] {
        let Some(wasm) = corpus(file) else {
            continue;
        };
        let size = format!("{}KiB", wasm.len() / 1024);
        group.bench_function(BenchmarkId::new("baseline_cranelift", &size), |b| {
            b.iter(|| wasmtime::Module::new(&cranelift, &wasm).expect("compiles"))
        });
        group.bench_function(BenchmarkId::new("winch", &size), |b| {
            b.iter(|| wasmtime::Module::new(&winch, &wasm).expect("compiles"))
        });
    }
    group.finish();
}

/// The sizes of each adversarial shape: the largest Cranelift compile of each about a second
/// (the group of a shape runs in about half a minute with ten samples), and, for the
/// super-linear shapes, past the point where the growth shows.
const ADVERSARIAL_SIZES: [(Shape, [u32; 4]); 4] = [
    (Shape::DeepNesting, [512, 1024, 2048, 4096]),
    (Shape::HugeFunction, [2048, 8192, 32768, 65536]),
    (Shape::ManyLocals, [512, 1024, 2048, 4096]),
    // wasmtime refuses a `br_table` of more than 65,520 targets.
    (Shape::HugeBrTable, [1024, 4096, 16384, 32768]),
];

/// Compile time of the adversarial modules (strata-harness's `adversarial`) by each tier, one
/// group per shape whose parameter is the module's size in KiB (so `cargo xtask bench` plots
/// time against size for both tiers); Cranelift is the baseline. Leaves each module's
/// structural estimate ([`CompileCost`]) against the default budget in
/// `strata-bench/compile-budget.txt`.
fn tier_compile_adversarial(c: &mut Criterion) {
    let cranelift = tier_engine(false);
    let winch = tier_engine(true);
    let budget = CompileBudget::default();
    let mut estimates = String::from(
        "Structural estimate of each adversarial module's Cranelift compile (vm_host::CompileCost) \
         against the default budget (3 s per function, 60 s per module):\n\n\
         | shape | size | module | estimate | default budget |\n|---|---|---|---|---|\n",
    );
    for (shape, sizes) in ADVERSARIAL_SIZES {
        let mut group = c.benchmark_group(format!("tiers/compile_adversarial/{}", shape.name()));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
        for size in sizes {
            let wasm = shape.module(size);
            let kib = format!("{:.1}KiB", wasm.len() as f64 / 1024.0);
            estimates.push_str(&estimate_row(
                &budget,
                shape.name(),
                &size.to_string(),
                &wasm,
            ));
            group.bench_function(BenchmarkId::new("baseline_cranelift", &kib), |b| {
                b.iter(|| wasmtime::Module::new(&cranelift, &wasm).expect("compiles"))
            });
            group.bench_function(BenchmarkId::new("winch", &kib), |b| {
                b.iter(|| wasmtime::Module::new(&winch, &wasm).expect("compiles"))
            });
        }
        group.finish();
        // Larger sizes, estimated only (their compiles would take the group past a minute).
        for size in [sizes[3] * 2, sizes[3] * 4] {
            let label = format!("{size} (not compiled)");
            estimates.push_str(&estimate_row(
                &budget,
                shape.name(),
                &label,
                &shape.module(size),
            ));
        }
    }
    extra_report("compile-budget.txt", &estimates);
}

/// One row of the compile-budget table: the module's size, its estimate and the verdict.
fn estimate_row(budget: &CompileBudget, shape: &str, size: &str, wasm: &[u8]) -> String {
    let cost = CompileCost::of(wasm).expect("parses");
    let verdict = if budget.check(&cost).is_ok() {
        "under"
    } else {
        "over"
    };
    format!(
        "| {shape} | {size} | {:.1}KiB | {:.1} ms | {verdict} |\n",
        wasm.len() as f64 / 1024.0,
        cost.total_us() as f64 / 1000.0
    )
}

/// Leaves `text` where `cargo xtask bench` collects extra measurements:
/// `$CARGO_TARGET_DIR/strata-bench/<name>` (else the workspace's `target/`).
fn extra_report(name: &str, text: &str) {
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("strata-bench");
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(out.join(name), text);
    }
}

/// Deploy of hackatom into an empty VM (no cache at all) and its first call (`allocate(16)`),
/// by tier policy. Its imports are stubbed (`Vm::open_with_host`). Each iteration waits,
/// untimed, for the previous VM's background Cranelift compile.
fn tier_deploy(c: &mut Criterion) {
    let Some(wasm) = corpus("cosmwasm-hackatom.wasm") else {
        return;
    };
    let mut group = c.benchmark_group("tiers/deploy_to_first_call/hackatom");
    group.sample_size(10);
    for (name, tier) in [
        ("baseline_cranelift_only", TierPolicy::CraneliftOnly),
        ("winch_then_cranelift", TierPolicy::WinchThenCranelift),
    ] {
        let previous = std::cell::RefCell::new(None::<(Vm, tempfile::TempDir)>);
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    if let Some((vm, _)) = previous.borrow_mut().take() {
                        vm.wait_tier_up(Duration::from_secs(600));
                    }
                    let dir = tempfile::tempdir().expect("temp dir");
                    let config = VmConfig {
                        tier,
                        ..VmConfig::for_tests()
                    };
                    (vm_shadowing(dir.path(), config, &wasm), dir)
                },
                |(vm, dir)| {
                    let (module, root) = vm.deploy(&wasm).expect("deploys");
                    let mut session = vm.session(Some(root)).expect("session");
                    session
                        .call(&module, "allocate", &[Value::I32(16)])
                        .expect("allocate");
                    drop(session);
                    *previous.borrow_mut() = Some((vm, dir));
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Calls of a compute loop (`arith(1000)`) in one session: Cranelift only, after the tier-up
/// (Winch first, then Cranelift from the background), and Winch only.
fn tier_calls(c: &mut Criterion) {
    let wasm = wat::parse_str(FUEL_LOOPS).expect("loops");
    let mut group = c.benchmark_group("tiers/calls_after_tier_up");
    for (name, tier) in [
        ("baseline_cranelift_only", TierPolicy::CraneliftOnly),
        ("after_tier_up", TierPolicy::WinchThenCranelift),
        ("winch_only", TierPolicy::WinchOnly),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = VmConfig {
            tier,
            ..VmConfig::for_tests()
        };
        let vm = Vm::open(dir.path(), config).expect("vm");
        let (module, root) = vm.deploy(&wasm).expect("deploy");
        assert!(vm.wait_tier_up(Duration::from_secs(600)));
        let mut s = vm.session(Some(root)).expect("session");
        let args = [Value::I32(1000)];
        s.call(&module, "arith", &args).expect("warm");
        group.bench_function(name, |b| {
            b.iter(|| s.call(&module, "arith", &args).expect("call"))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    layers,
    call_path,
    sessions,
    throughput,
    calls_after_dirtying,
    host_costs,
    tier_compile,
    tier_compile_adversarial,
    tier_deploy,
    tier_calls
);
criterion_main!(benches);
