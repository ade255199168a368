//! Criterion benchmarks of the VM host: instantiate + call from each cache layer, session open +
//! call + commit over small and large memories, calls per second on one core, and the time per
//! unit of fuel of plain wasm loops and host-function loops (`host_costs`), and the compiler
//! tiers (`tiers/*`): Winch against Cranelift compiles of the corpus, deploy to first call of
//! hackatom with an empty cache, calls after the tier-up.
//!
//! The corpus (sql.js) is read from `$STRATA_CORPUS`, else `../shared/corpus`; its imports are
//! defined as trapping host functions, as an embedder would define its own ABI.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vm_host::{HostState, ModuleId, Root, TierPolicy, Value, Vm, VmConfig, VmError};
use wasmtime::{FuncType, Linker, ValType};

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

/// Opens a VM whose host defines every import of `wasm` as a function that traps, shadowing
/// the built-in ABI where a name clashes (CosmWasm's `env.db_read` has another signature).
fn vm_shadowing(dir: &std::path::Path, config: VmConfig, wasm: &[u8]) -> Vm {
    let imports = imports(wasm);
    Vm::open_with_host(dir, config, move |linker: &mut Linker<HostState>| {
        linker.allow_shadowing(true);
        for (module, name, params, results) in &imports {
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

fn throughput(c: &mut Criterion) {
    let wasm = wat::parse_str(COUNTER).expect("counter.wat");
    let dir = tempfile::tempdir().expect("temp dir");
    let vm = Vm::open(dir.path(), VmConfig::for_tests()).expect("vm");
    let (module, root) = vm.deploy(&wasm).expect("deploy");
    let mut group = c.benchmark_group("calls_in_one_session");
    let mut s = vm.session(Some(root)).expect("session");
    s.call(&module, "get", &[]).expect("warm");
    group.bench_function("baseline_get", |b| {
        b.iter(|| s.call(&module, "get", &[]).expect("call"))
    });
    group.bench_function("increment", |b| {
        b.iter(|| s.call(&module, "increment", &[]).expect("call"))
    });
    group.finish();
}

/// Plain loops (`copy`, `fill`, `arith`, `grow`) and host loops (`read`, `write`,
/// `remove_missing`), each `(param i32)` passes (`grow`: until the memory limit). The value
/// area starts at 64 KiB and holds the largest value (`VmConfig::max_value_bytes`, 1 MiB).
const FUEL_LOOPS: &str = r#"(module
  (import "env" "db_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (import "env" "db_remove" (func $d (param i32 i32)))
  (memory 18)
  (data (i32.const 0) "k")
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
    sessions,
    throughput,
    host_costs,
    tier_compile,
    tier_deploy,
    tier_calls
);
criterion_main!(benches);
