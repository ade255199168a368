//! Tests of the Region protocol and every import: results, exact gas, refusals. Each runs a
//! small WAT module with a bump `allocate` and the two gas globals in a plain wasmtime engine.

use std::sync::{Arc, Mutex};

use cosmwasm_std::{Binary, ContractResult, SystemResult};
use wasmtime::{
    Engine, Instance, Linker, Module, Store, StoreLimitsBuilder, Val, WasmParams, WasmResults,
};

use super::*;
use crate::backend::{BackendApi, Querier, Storage};
use crate::backends::{BankConfig, Bech32Api, DefaultQuerier, KvStorage};
use crate::env::Exports;
use crate::gas::{GasConfig, GasState};
use crate::memory::{REGION_SIZE, Region};

const HOST: u64 = 18_000;
const GAS: u64 = 10_000_000_000_000;

fn read_cost(n: usize) -> u64 {
    200_000 + 115 * n as u64
}
fn write_cost(n: usize) -> u64 {
    230_000 + 570 * n as u64
}
fn string_cost(n: usize) -> u64 {
    28_700 + 1_400 * n as u64
}

/// The contract side: a bump allocator (`mode` 1: `allocate` returns 0; 2: it runs out of
/// gas as the metering would: marks the counter exhausted and traps).
const CONTRACT: &str = r#"
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (global $mode (export "mode") (mut i32) (i32.const 0))
  (global (export "cw_gas_left") (mut i64) (i64.const 0))
  (global $exhausted (export "cw_gas_exhausted") (mut i32) (i32.const 0))
  (func (export "allocate") (param $size i32) (result i32)
    (local $region i32)
    (if (i32.eq (global.get $mode) (i32.const 1)) (then (return (i32.const 0))))
    (if (i32.eq (global.get $mode) (i32.const 2))
      (then (global.set $exhausted (i32.const 1)) (unreachable)))
    (local.set $region (global.get $heap))
    (i32.store (local.get $region) (i32.add (local.get $region) (i32.const 12)))
    (i32.store offset=4 (local.get $region) (local.get $size))
    (i32.store offset=8 (local.get $region) (i32.const 0))
    (global.set $heap (i32.add (i32.add (local.get $region) (i32.const 12)) (local.get $size)))
    (local.get $region))
  (func (export "deallocate") (param i32)))
"#;

struct Harness {
    store: Store<Environment>,
    linker: Linker<Environment>,
    instance: Instance,
}

fn environment(
    storage: Box<dyn Storage>,
    querier: Box<dyn Querier>,
    readonly: bool,
) -> Environment {
    Environment {
        gas_config: Arc::new(GasConfig::default()),
        gas: GasState {
            gas_limit: GAS,
            externally_used: 0,
        },
        storage,
        storage_readonly: readonly,
        api: Arc::new(Bech32Api::default()),
        querier,
        exports: None,
        limits: StoreLimitsBuilder::new().build(),
        debug: None,
        // As while an entry point runs.
        call_depth: 0,
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with(environment(
            Box::new(KvStorage::new(kv())),
            Box::new(DefaultQuerier::new(BankConfig::default(), None)),
            false,
        ))
    }

    fn with(env: Environment) -> Harness {
        let engine = Engine::default();
        let module = Module::new(&engine, CONTRACT).unwrap();
        let mut linker = Linker::new(&engine);
        define(&mut linker).unwrap();
        let mut store = Store::new(&engine, env);
        let instance = linker.instantiate(&mut store, &module).unwrap();
        let exports = Exports {
            memory: instance.get_memory(&mut store, "memory").unwrap(),
            allocate: instance.get_typed_func(&mut store, "allocate").unwrap(),
            deallocate: instance.get_typed_func(&mut store, "deallocate").unwrap(),
            gas_left: instance.get_global(&mut store, "cw_gas_left").unwrap(),
            gas_exhausted: instance.get_global(&mut store, "cw_gas_exhausted").unwrap(),
        };
        store.data_mut().exports = Some(exports);
        let mut h = Harness {
            store,
            linker,
            instance,
        };
        h.set_gas(GAS);
        h
    }

    fn set_gas(&mut self, gas: u64) {
        crate::env::set_gas_left(&mut self.store, gas).unwrap();
    }

    fn gas_left(&mut self) -> u64 {
        crate::env::gas_left(&mut self.store).unwrap()
    }

    fn external(&self) -> u64 {
        self.store.data().gas.externally_used
    }

    fn memory(&mut self) -> wasmtime::Memory {
        self.store.data().exports.as_ref().unwrap().memory
    }

    fn set_mode(&mut self, mode: i32) {
        let g = self.instance.get_global(&mut self.store, "mode").unwrap();
        g.set(&mut self.store, Val::I32(mode)).unwrap();
    }

    /// A region of `capacity` bytes, allocated by the contract.
    fn alloc(&mut self, capacity: u32) -> u32 {
        let allocate = self.store.data().exports.as_ref().unwrap().allocate.clone();
        allocate.call(&mut self.store, capacity).unwrap()
    }

    /// A region holding `data`.
    fn region(&mut self, data: &[u8]) -> u32 {
        let ptr = self.alloc(data.len() as u32);
        let r = self.region_at(ptr);
        let mem = self.memory();
        mem.write(&mut self.store, r.offset as usize, data).unwrap();
        mem.write(
            &mut self.store,
            ptr as usize + 8,
            &(data.len() as u32).to_le_bytes(),
        )
        .unwrap();
        ptr
    }

    /// A Region struct with these raw fields (for the refusals).
    fn raw_region(&mut self, offset: u32, capacity: u32, length: u32) -> u32 {
        let ptr = self.alloc(0);
        let r = Region {
            offset,
            capacity,
            length,
        };
        let mem = self.memory();
        mem.write(&mut self.store, ptr as usize, &r.to_bytes())
            .unwrap();
        ptr
    }

    fn region_at(&mut self, ptr: u32) -> Region {
        let mut b = [0u8; REGION_SIZE];
        self.memory()
            .read(&mut self.store, ptr as usize, &mut b)
            .unwrap();
        Region::from_bytes(b)
    }

    /// The bytes a region holds.
    fn read(&mut self, ptr: u32) -> Vec<u8> {
        let r = self.region_at(ptr);
        let mut out = vec![0u8; r.length as usize];
        self.memory()
            .read(&mut self.store, r.offset as usize, &mut out)
            .unwrap();
        out
    }

    /// Calls import `name`; returns its result and the gas it used.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        params: P,
    ) -> (Result<R, wasmtime::Error>, u64) {
        let before = self.gas_left();
        let f = self
            .linker
            .get(&mut self.store, "env", name)
            .unwrap()
            .into_func()
            .unwrap();
        let typed = f.typed::<P, R>(&self.store).unwrap();
        let result = typed.call(&mut self.store, params);
        (result, before - self.gas_left())
    }

    fn ok<P: WasmParams, R: WasmResults>(&mut self, name: &str, params: P) -> (R, u64) {
        let (r, gas) = self.call(name, params);
        (r.unwrap(), gas)
    }

    fn err<P: WasmParams, R: WasmResults + std::fmt::Debug>(
        &mut self,
        name: &str,
        params: P,
    ) -> (CallError, u64) {
        let (r, gas) = self.call::<P, R>(name, params);
        let e = r.unwrap_err();
        let e = e
            .downcast_ref::<CallError>()
            .unwrap_or_else(|| panic!("not a CallError: {e:?}"))
            .clone();
        (e, gas)
    }
}

fn kv() -> vm_host::KvHandle {
    vm_host::KvHandle::detached(vm_host::Namespace::of_module(&vm_host::ModuleId::of_wasm(
        b"imports test",
    )))
}

fn comm(msg: &str) -> CallError {
    CallError::Communication(msg.into())
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_import_links_with_cosmwasm_vm_signatures() {
    let wat = r#"(module
      (import "env" "db_read" (func (param i32) (result i32)))
      (import "env" "db_write" (func (param i32 i32)))
      (import "env" "db_remove" (func (param i32)))
      (import "env" "db_scan" (func (param i32 i32 i32) (result i32)))
      (import "env" "db_next" (func (param i32) (result i32)))
      (import "env" "db_next_key" (func (param i32) (result i32)))
      (import "env" "db_next_value" (func (param i32) (result i32)))
      (import "env" "addr_validate" (func (param i32) (result i32)))
      (import "env" "addr_canonicalize" (func (param i32 i32) (result i32)))
      (import "env" "addr_humanize" (func (param i32 i32) (result i32)))
      (import "env" "secp256k1_verify" (func (param i32 i32 i32) (result i32)))
      (import "env" "secp256k1_recover_pubkey" (func (param i32 i32 i32) (result i64)))
      (import "env" "secp256r1_verify" (func (param i32 i32 i32) (result i32)))
      (import "env" "secp256r1_recover_pubkey" (func (param i32 i32 i32) (result i64)))
      (import "env" "ed25519_verify" (func (param i32 i32 i32) (result i32)))
      (import "env" "ed25519_batch_verify" (func (param i32 i32 i32) (result i32)))
      (import "env" "bls12_381_aggregate_g1" (func (param i32 i32) (result i32)))
      (import "env" "bls12_381_aggregate_g2" (func (param i32 i32) (result i32)))
      (import "env" "bls12_381_pairing_equality" (func (param i32 i32 i32 i32) (result i32)))
      (import "env" "bls12_381_hash_to_g1" (func (param i32 i32 i32 i32) (result i32)))
      (import "env" "bls12_381_hash_to_g2" (func (param i32 i32 i32 i32) (result i32)))
      (import "env" "debug" (func (param i32)))
      (import "env" "abort" (func (param i32)))
      (import "env" "query_chain" (func (param i32) (result i32))))"#;
    let mut h = Harness::new();
    let engine = h.store.engine().clone();
    let module = Module::new(&engine, wat).unwrap();
    assert_eq!(module.imports().len(), NAMES.len());
    h.linker.instantiate(&mut h.store, &module).unwrap();
    for name in NAMES {
        assert!(h.linker.get(&mut h.store, "env", name).is_ok(), "{name}");
    }
    // The corpus contracts' imports, where the corpus is present (never committed).
    let dir = std::env::var_os("STRATA_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    for file in ["cosmwasm-hackatom.wasm", "cosmwasm-cyberpunk.wasm"] {
        let Ok(wasm) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let mut types = Vec::new();
        let mut checked = 0;
        for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
            match payload.unwrap() {
                wasmparser::Payload::TypeSection(reader) => {
                    for ty in reader.into_iter_err_on_gc_types() {
                        types.push(ty.unwrap());
                    }
                }
                wasmparser::Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.unwrap();
                        assert_eq!(import.module, "env");
                        let wasmparser::TypeRef::Func(index) = import.ty else {
                            panic!("{file}: {} is not a function", import.name);
                        };
                        // The contract's signature is the one the linker defines.
                        let want = &types[index as usize];
                        let host = h
                            .linker
                            .get(&mut h.store, "env", import.name)
                            .unwrap_or_else(|_| panic!("{file}: {} is not defined", import.name))
                            .into_func()
                            .unwrap()
                            .ty(&h.store);
                        let kinds = |v: Vec<String>| v.join(",");
                        let host_params = kinds(host.params().map(|t| t.to_string()).collect());
                        let host_results = kinds(host.results().map(|t| t.to_string()).collect());
                        let want_params =
                            kinds(want.params().iter().map(|t| t.to_string()).collect());
                        let want_results =
                            kinds(want.results().iter().map(|t| t.to_string()).collect());
                        assert_eq!(
                            (host_params, host_results),
                            (want_params, want_results),
                            "{file}: {}",
                            import.name
                        );
                        checked += 1;
                    }
                }
                _ => {}
            }
        }
        assert!(checked >= 13, "{file}: {checked} imports");
    }
}

#[test]
fn regions_are_checked_as_cosmwasm_vm_checks_them() {
    let mut h = Harness::new();
    // Not a Region inside memory: only the host call was charged.
    let (e, gas) = h.err::<u32, u32>("db_read", 2 * 65536 - 4);
    assert_eq!(
        e,
        comm(
            "The Wasm memory address 131068 provided by the contract could not be dereferenced: Could not dereference this pointer to a Region"
        )
    );
    assert_eq!(gas, HOST);
    let p = h.raw_region(0, 10, 5);
    let (e, gas) = h.err::<u32, u32>("db_read", p);
    assert_eq!(
        e,
        comm("Got an invalid region: Got a zero Wasm address in the offset")
    );
    assert_eq!(gas, HOST);
    let p = h.raw_region(100, 10, 11);
    let (e, _) = h.err::<u32, u32>("db_read", p);
    assert_eq!(
        e,
        comm("Got an invalid region: Region length exceeds capacity. Length 11, capacity 10")
    );
    let p = h.raw_region(u32::MAX - 5, 10, 1);
    let (e, _) = h.err::<u32, u32>("db_read", p);
    assert_eq!(
        e,
        comm("Got an invalid region: Region exceeds address space. Offset 4294967290, capacity 10")
    );
    // Over the maximum: refused after the read was charged.
    let p = h.raw_region(100, 65537, 65537);
    let (e, gas) = h.err::<u32, u32>("db_read", p);
    assert_eq!(e, comm("Region length too big. Got 65537, limit 65536"));
    assert_eq!(gas, HOST + read_cost(65537));
    // Every one-region import refuses a region over its maximum, after charging the read.
    for (name, max) in [
        ("db_remove", MAX_LENGTH_DB_KEY),
        ("addr_validate", MAX_LENGTH_HUMAN_ADDRESS),
        ("debug", MAX_LENGTH_DEBUG),
        ("abort", MAX_LENGTH_ABORT),
        ("query_chain", MAX_LENGTH_QUERY_CHAIN_REQUEST),
    ] {
        let len = max as u32 + 1;
        let p = h.raw_region(100, len, len);
        let (r, gas) = match name {
            "addr_validate" | "query_chain" => {
                let (r, gas) = h.call::<u32, u32>(name, p);
                (r.map(|_| ()), gas)
            }
            _ => h.call::<u32, ()>(name, p),
        };
        let e = r.unwrap_err();
        assert_eq!(
            e.downcast_ref::<CallError>(),
            Some(&comm(&format!(
                "Region length too big. Got {len}, limit {max}"
            ))),
            "{name}"
        );
        assert_eq!(gas, HOST + read_cost(len as usize), "{name}");
    }
    // Over 8 MB a read costs the large rate (520 per byte, no base): an ed25519 batch's
    // messages may be that long.
    let len = 9_000_000;
    let (big, small) = (h.raw_region(100, len, len), h.region(b""));
    let (e, gas) = h.err::<(u32, u32, u32), u32>("ed25519_batch_verify", (big, small, small));
    assert!(matches!(e, CallError::Communication(m) if m.starts_with("Tried to access memory")));
    assert_eq!(gas, HOST + 520 * u64::from(len));
    // Valid but outside memory.
    let p = h.raw_region(200_000, 10, 10);
    let (e, gas) = h.err::<u32, u32>("db_read", p);
    assert_eq!(
        e,
        comm(
            "Tried to access memory of region Region { offset: 200000, capacity: 10, length: 10 } in Wasm memory of size 131072 bytes. This typically happens when the given Region pointer does not point to a proper Region struct."
        )
    );
    assert_eq!(gas, HOST + read_cost(10));
    // A destination too small: refused after the write was charged.
    let canonical = h.region(&[7u8; 20]);
    let human = Bech32Api::default().addr_humanize(&[7u8; 20]).0.unwrap();
    let small = h.alloc(5);
    let (e, gas) = h.err::<(u32, u32), u32>("addr_humanize", (canonical, small));
    assert_eq!(
        e,
        comm(&format!(
            "Region too small. Got 5, required {}",
            human.len()
        ))
    );
    assert_eq!(
        gas,
        HOST + read_cost(20) + 560_000 + write_cost(human.len())
    );
    // A destination outside memory.
    let outside = h.raw_region(200_000, 100, 0);
    let (e, _) = h.err::<(u32, u32), u32>("addr_humanize", (canonical, outside));
    assert!(
        matches!(e, CallError::Communication(m) if m.starts_with("Tried to access memory of region Region { offset: 200000, capacity: 100, length: 0 }"))
    );
}

#[test]
fn storage_imports_charge_as_cosmwasm_vm_with_mock_storage() {
    let mut h = Harness::new();
    let (k, v) = (h.region(b"foo"), h.region(b"barbaz"));
    let (_, gas) = h.ok::<(u32, u32), ()>("db_write", (k, v));
    assert_eq!(gas, HOST + read_cost(3) + read_cost(6) + 9);
    assert_eq!(h.external(), 9);

    let (ptr, gas) = h.ok::<u32, u32>("db_read", k);
    assert_eq!(h.read(ptr), b"barbaz");
    assert_eq!(gas, HOST + read_cost(3) + 3 + write_cost(6));
    let missing = h.region(b"missing");
    let (ptr, gas) = h.ok::<u32, u32>("db_read", missing);
    assert_eq!((ptr, gas), (0, HOST + read_cost(7) + 7));

    let (_, gas) = h.ok::<u32, ()>("db_remove", k);
    assert_eq!(gas, HOST + read_cost(3) + 3);
    assert_eq!(h.ok::<u32, u32>("db_read", k).0, 0);
    assert_eq!(h.external(), 9 + 3 + 7 + 3 + 3);

    // Limits: cosmwasm-vm's generic errors, after the reads were charged.
    let long_key = h.raw_region(100, 65537, 65537);
    let (e, gas) = h.err::<(u32, u32), ()>("db_write", (long_key, v));
    assert_eq!(
        e,
        CallError::Generic(
            "Key too big. Tried to write 65537 bytes to storage, limit is 65536.".into()
        )
    );
    assert_eq!(gas, HOST + read_cost(65537));
    let long_value = h.raw_region(100, 131073, 131073);
    let (e, gas) = h.err::<(u32, u32), ()>("db_write", (k, long_value));
    assert_eq!(
        e,
        CallError::Generic(
            "Value too big. Tried to write 131073 bytes to storage, limit is 131072.".into()
        )
    );
    assert_eq!(gas, HOST + read_cost(3) + read_cost(131073));
}

#[test]
fn read_only_storage_refuses_writes_after_the_host_call_charge() {
    let mut h = Harness::with(environment(
        Box::new(KvStorage::new(kv())),
        Box::new(DefaultQuerier::new(BankConfig::default(), None)),
        true,
    ));
    let (k, v) = (h.region(b"k"), h.region(b"v"));
    let (e, gas) = h.err::<(u32, u32), ()>("db_write", (k, v));
    assert_eq!((e, gas), (CallError::WriteAccessDenied, HOST));
    let (e, gas) = h.err::<u32, ()>("db_remove", k);
    assert_eq!((e, gas), (CallError::WriteAccessDenied, HOST));
    // Reads and scans still work.
    assert_eq!(h.ok::<u32, u32>("db_read", k).0, 0);
    assert_eq!(h.ok::<(u32, u32, i32), u32>("db_scan", (0, 0, 1)).0, 1);
}

#[test]
fn iterators_through_the_imports() {
    let mut h = Harness::new();
    for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b"22"), (b"c", b"333")] {
        let (k, v) = (h.region(k), h.region(v));
        h.ok::<(u32, u32), ()>("db_write", (k, v));
    }
    let external = h.external();
    let (id, gas) = h.ok::<(u32, u32, i32), u32>("db_scan", (0, 0, 1));
    assert_eq!((id, gas), (1, HOST + 11));
    // Written after the scan: not in the iterator (a snapshot, as MockStorage's).
    let (k, v) = (h.region(b"bb"), h.region(b"x"));
    h.ok::<(u32, u32), ()>("db_write", (k, v));
    let (ptr, gas) = h.ok::<u32, u32>("db_next", id);
    assert_eq!(h.read(ptr), b"a\0\0\0\x011\0\0\0\x01");
    assert_eq!(gas, HOST + 2 + write_cost(10));
    let (ptr, gas) = h.ok::<u32, u32>("db_next_key", id);
    assert_eq!(
        (h.read(ptr), gas),
        (b"b".to_vec(), HOST + 3 + write_cost(1))
    );
    let (ptr, gas) = h.ok::<u32, u32>("db_next_value", id);
    assert_eq!(
        (h.read(ptr), gas),
        (b"333".to_vec(), HOST + 4 + write_cost(3))
    );
    // At the end, and again: empty sections, 37 external each time.
    for _ in 0..2 {
        let before = h.external();
        let (ptr, gas) = h.ok::<u32, u32>("db_next", id);
        assert_eq!(h.read(ptr), [0u8; 8]);
        assert_eq!(gas, HOST + 37 + write_cost(8));
        assert_eq!(h.external(), before + 37);
    }
    assert_eq!(h.ok::<u32, u32>("db_next_key", id), (0, HOST + 37));
    assert_eq!(h.ok::<u32, u32>("db_next_value", id), (0, HOST + 37));
    assert!(h.external() > external);

    // Bounds and descending order: start included, end excluded.
    let (start, end) = (h.region(b"b"), h.region(b"c"));
    let (id, gas) = h.ok::<(u32, u32, i32), u32>("db_scan", (start, end, 2));
    assert_eq!((id, gas), (2, HOST + read_cost(1) + read_cost(1) + 11));
    for expected in [&b"bb"[..], b"b"] {
        let ptr = h.ok::<u32, u32>("db_next_key", id).0;
        assert_eq!(h.read(ptr), expected);
    }
    assert_eq!(h.ok::<u32, u32>("db_next_key", id).0, 0);
    // Start past end: empty.
    let (id, _) = h.ok::<(u32, u32, i32), u32>("db_scan", (end, start, 1));
    assert_eq!(h.ok::<u32, u32>("db_next_key", id).0, 0);

    let (e, gas) = h.err::<(u32, u32, i32), u32>("db_scan", (0, 0, 3));
    assert_eq!(e, comm("Got an invalid value for iteration order: 3"));
    assert_eq!(gas, HOST);
    let (e, gas) = h.err::<u32, u32>("db_next", 99);
    assert_eq!(
        e,
        CallError::Backend(BackendError::IteratorDoesNotExist { id: 99 })
    );
    assert_eq!(gas, HOST);
}

#[test]
fn address_imports_answer_and_charge_as_mock_api() {
    let mut h = Harness::new();
    let api = Bech32Api::default();
    let addr = api.addr_make("creator").unwrap();
    assert_eq!(
        addr,
        "cosmwasm1h34lmpywh4upnjdg90cjf4j70aee6z8qqfspugamjp42e4q28kqs8s7vcp"
    );
    let n = addr.len();
    let p = h.region(addr.as_bytes());
    let (code, gas) = h.ok::<u32, u32>("addr_validate", p);
    assert_eq!(code, 0);
    assert_eq!(
        gas,
        HOST + read_cost(n) + string_cost(n) + 700_000 + 560_000
    );

    // Messages for the contract, written through its allocate.
    let cases: [(&[u8], &str, u64); 5] = [
        (b"", "Input is empty", 0),
        (b"\xff\xfe", "Input is not valid UTF-8", 0),
        (b"foo", "Error decoding bech32", 700_000),
        (
            b"juno1h34lmpywh4upnjdg90cjf4j70aee6z8qqfspugamjp42e4q28kqsksmtyp",
            "Wrong bech32 prefix",
            700_000,
        ),
        (
            b"COSMWASM1H34LMPYWH4UPNJDG90CJF4J70AEE6Z8QQFSPUGAMJP42E4Q28KQS8S7VCP",
            "Invalid input: address not normalized",
            1_260_000,
        ),
    ];
    for (input, message, api_gas) in cases {
        let p = h.region(input);
        let (ptr, gas) = h.ok::<u32, u32>("addr_validate", p);
        assert_ne!(ptr, 0);
        assert_eq!(h.read(ptr), message.as_bytes(), "{message}");
        let string = if input.is_empty() {
            0
        } else {
            string_cost(input.len())
        };
        assert_eq!(
            gas,
            HOST + read_cost(input.len()) + string + api_gas + write_cost(message.len()),
            "{message}"
        );
    }
    // Over 256 bytes: a communication error, not a message.
    let long = h.region(&[b'a'; 257]);
    let (e, _) = h.err::<u32, u32>("addr_validate", long);
    assert_eq!(e, comm("Region length too big. Got 257, limit 256"));

    let dest = h.alloc(64);
    let src = h.region(addr.as_bytes());
    let (code, gas) = h.ok::<(u32, u32), u32>("addr_canonicalize", (src, dest));
    assert_eq!(code, 0);
    let canonical = h.read(dest);
    assert_eq!(canonical.len(), 32);
    assert_eq!(
        gas,
        HOST + read_cost(n) + string_cost(n) + 700_000 + write_cost(32)
    );
    let src = h.region(&canonical);
    let dest = h.alloc(100);
    let (code, gas) = h.ok::<(u32, u32), u32>("addr_humanize", (src, dest));
    assert_eq!((code, h.read(dest)), (0, addr.as_bytes().to_vec()));
    assert_eq!(gas, HOST + read_cost(32) + 560_000 + write_cost(n));
    let empty = h.region(b"");
    let (ptr, gas) = h.ok::<(u32, u32), u32>("addr_humanize", (empty, dest));
    assert_eq!(h.read(ptr), b"Invalid canonical address length");
    assert_eq!(gas, HOST + read_cost(0) + 560_000 + write_cost(32));
    let long = h.region(&[1u8; 65]);
    let (e, _) = h.err::<(u32, u32), u32>("addr_humanize", (long, dest));
    assert_eq!(e, comm("Region length too big. Got 65, limit 64"));
}

#[test]
fn signature_imports_return_cosmwasm_vm_codes_and_charge_its_costs() {
    let mut h = Harness::new();
    let msg = h.region(b"");
    let sig = hex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    );
    let key = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    let (s, k) = (h.region(&sig), h.region(&key));
    let (code, gas) = h.ok::<(u32, u32, u32), u32>("ed25519_verify", (msg, s, k));
    assert_eq!(code, 0);
    assert_eq!(
        gas,
        HOST + read_cost(0) + read_cost(64) + read_cost(32) + 35_000_000
    );
    let other = h.region(b"x");
    assert_eq!(
        h.ok::<(u32, u32, u32), u32>("ed25519_verify", (other, s, k))
            .0,
        1
    );
    let short_key = h.region(&key[..31]);
    assert_eq!(
        h.ok::<(u32, u32, u32), u32>("ed25519_verify", (msg, s, short_key))
            .0,
        5
    );

    // Batch of two with one key: the one-key cost, per signature.
    let sections = |items: &[&[u8]]| encode_sections(items).unwrap();
    let (ms, ss, ks) = (
        h.region(&sections(&[b"", b""])),
        h.region(&sections(&[&sig, &sig])),
        h.region(&sections(&[&key])),
    );
    let (code, gas) = h.ok::<(u32, u32, u32), u32>("ed25519_batch_verify", (ms, ss, ks));
    assert_eq!(code, 0);
    assert_eq!(
        gas,
        HOST + read_cost(8) + read_cost(136) + read_cost(36) + 36_000_000 + 2 * 10_000_000
    );
    let bad = h.region(b"\x01\x02");
    let (e, _) = h.err::<(u32, u32, u32), u32>("ed25519_batch_verify", (bad, ss, ks));
    assert_eq!(
        e,
        comm("Got an invalid section: extra data outside of any section")
    );

    let hash = hex("5ae8317d34d1e595e3fa7247db80c0af4320cce1116de187f8f7e2e099c0d8d0");
    let sig = hex(
        "207082eb2c3dfa0b454e0906051270ba4074ac93760ba9e7110cd9471475111151eb0dbbc9920e72146fb564f99d039802bf6ef2561446eb126ef364d21ee9c4",
    );
    let key = hex(
        "04051c1ee2190ecfb174bfe4f90763f2b4ff7517b70a2aec1876ebcfd644c4633fb03f3cfbd94b1f376e34592d9d41ccaf640bb751b00a1fadeb0c01157769eb73",
    );
    let (hp, sp, kp) = (h.region(&hash), h.region(&sig), h.region(&key));
    let (code, gas) = h.ok::<(u32, u32, u32), u32>("secp256k1_verify", (hp, sp, kp));
    assert_eq!(code, 0);
    assert_eq!(
        gas,
        HOST + read_cost(32) + read_cost(64) + read_cost(65) + 96_000_000
    );
    let short = h.region(&hash[..31]);
    assert_eq!(
        h.ok::<(u32, u32, u32), u32>("secp256k1_verify", (short, sp, kp))
            .0,
        3
    );

    let sig = hex(
        "45c0b7f8c09a9e1f1cea0c25785594427b6bf8f9f878a8af0b1abbb48e16d0920d8becd0c220f67c51217eecfd7184ef0732481c843857e6bc7fc095c4f6b788",
    );
    let expected = hex(
        "044a071e8a6e10aada2b8cf39fa3b5fb3400b04e99ea8ae64ceea1a977dbeaf5d5f8c8fbd10b71ab14cd561f7df8eb6da50f8a8d81ba564342244d26d1d4211595",
    );
    let sp = h.region(&sig);
    let (packed, gas) = h.ok::<(u32, u32, u32), u64>("secp256k1_recover_pubkey", (hp, sp, 1));
    assert_eq!(packed >> 32, 0);
    assert_eq!(h.read(packed as u32), expected);
    assert_eq!(
        gas,
        HOST + read_cost(32) + read_cost(64) + 194_000_000 + write_cost(65)
    );
    // A recovery parameter over u8: code 6 in the high half, before the recovery's charge.
    let (packed, gas) = h.ok::<(u32, u32, u32), u64>("secp256k1_recover_pubkey", (hp, sp, 256));
    assert_eq!(
        (packed, gas),
        (6 << 32, HOST + read_cost(32) + read_cost(64))
    );
    let (packed, _) = h.ok::<(u32, u32, u32), u64>("secp256k1_recover_pubkey", (hp, sp, 7));
    assert_eq!(packed, 6 << 32);

    let hash = hex("b804cf88af0c2eff8bbbfb3660ebb3294138e9d3ebd458884e19818061dacff0");
    let sig = hex(
        "35fb60f5ca0f3ca08542fb3cc641c8263a2cab7a90ee6a5e1583fac2bb6f6bd1ee59d81bc9db1055cc0ed97b159d8784af04e98511d0a9a407b99bb292572e96",
    );
    let key = hex(
        "0474ccd8a62fba0e667c50929a53f78c21b8ff0c3c737b0b40b1750b2302b0bde829074e21f3a0ef88b9efdf10d06aa4c295cc1671f758ca0e4cd108803d0f2614",
    );
    let (hp, sp, kp) = (h.region(&hash), h.region(&sig), h.region(&key));
    let (code, gas) = h.ok::<(u32, u32, u32), u32>("secp256r1_verify", (hp, sp, kp));
    assert_eq!(code, 0);
    assert_eq!(
        gas,
        HOST + read_cost(32) + read_cost(64) + read_cost(65) + 279_000_000
    );
    let (packed, gas) = h.ok::<(u32, u32, u32), u64>("secp256r1_recover_pubkey", (hp, sp, 9));
    assert_eq!(packed, 6 << 32);
    assert_eq!(gas, HOST + read_cost(32) + read_cost(64) + 592_000_000);
}

#[test]
fn bls_imports_return_cosmwasm_vm_codes_and_charge_its_costs() {
    let mut h = Harness::new();
    let (msg, dst) = (h.region(b"abc"), h.region(b"dst"));
    let out = h.alloc(48);
    let (code, gas) = h.ok::<(u32, u32, u32, u32), u32>("bls12_381_hash_to_g1", (0, msg, dst, out));
    assert_eq!(code, 0);
    let point = h.read(out);
    assert_eq!(
        point,
        bls12_381_hash_to_g1(HashFunction::Sha256, b"abc", b"dst")
    );
    assert_eq!(
        gas,
        HOST + read_cost(3) + read_cost(3) + 563_000_000 + write_cost(48)
    );
    // An unknown hash function: its code, after the charge.
    let (code, gas) = h.ok::<(u32, u32, u32, u32), u32>("bls12_381_hash_to_g1", (1, msg, dst, out));
    assert_eq!(
        (code, gas),
        (9, HOST + read_cost(3) + read_cost(3) + 563_000_000)
    );
    let out2 = h.alloc(96);
    let (code, gas) =
        h.ok::<(u32, u32, u32, u32), u32>("bls12_381_hash_to_g2", (0, msg, dst, out2));
    assert_eq!((code, h.read(out2).len()), (0, 96));
    assert_eq!(
        gas,
        HOST + read_cost(3) + read_cost(3) + 871_000_000 + write_cost(96)
    );

    // Aggregating two copies of the point: gas per estimated point.
    let two = h.region(&[point.clone(), point.clone()].concat());
    let agg = h.alloc(48);
    let (code, gas) = h.ok::<(u32, u32), u32>("bls12_381_aggregate_g1", (two, agg));
    assert_eq!(code, 0);
    assert_eq!(
        h.read(agg),
        bls12_381_aggregate_g1(&[point.clone(), point.clone()].concat()).unwrap()
    );
    assert_eq!(
        gas,
        HOST + read_cost(96) + 68_000_000 + 2 * 12_000_000 + write_cost(48)
    );
    let junk = h.region(&[0xffu8; 48]);
    let expected = bls12_381_aggregate_g1(&[0xffu8; 48]).unwrap_err().code();
    assert_eq!(
        h.ok::<(u32, u32), u32>("bls12_381_aggregate_g1", (junk, agg))
            .0,
        expected
    );
    let empty = h.region(b"");
    let expected = bls12_381_aggregate_g2(b"").unwrap_err().code();
    let (code, gas) = h.ok::<(u32, u32), u32>("bls12_381_aggregate_g2", (empty, agg));
    assert_eq!((code, gas), (expected, HOST + read_cost(0) + 103_500_000));

    // Pairing with mismatched sizes: the crypto's code; gas from ps alone (n + 1 pairings).
    let (ps, qs) = (h.region(&point), h.region(b""));
    let (r, s) = (h.region(&point), h.region(&[0u8; 96]));
    let expected = bls12_381_pairing_equality(&point, b"", &point, &[0u8; 96])
        .unwrap_err()
        .code();
    let (code, gas) =
        h.ok::<(u32, u32, u32, u32), u32>("bls12_381_pairing_equality", (ps, qs, r, s));
    assert_eq!(code, expected);
    assert_eq!(
        gas,
        HOST + read_cost(48)
            + read_cost(0)
            + read_cost(48)
            + read_cost(96)
            + 2_112_000_000
            + 2 * 163_000_000
    );
}

#[test]
fn debug_abort_and_the_call_depth() {
    let mut h = Harness::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    h.store.data_mut().debug = Some(Box::new(move |msg: &str, info: DebugInfo| {
        sink.lock()
            .unwrap()
            .push((msg.to_string(), info.gas_remaining));
    }));
    let m = h.region(b"hello \xff");
    let (_, gas) = h.ok::<u32, ()>("debug", m);
    assert_eq!(gas, HOST + read_cost(7));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [("hello \u{fffd}".to_string(), GAS - gas)]
    );

    let (e, gas) = h.err::<u32, ()>("abort", m);
    assert_eq!(e, CallError::Aborted("hello \u{fffd}".into()));
    assert_eq!(gas, HOST + read_cost(7) + string_cost(7));

    // allocate from an import is level 2 of 2: one level deeper is refused.
    let (k, v) = (h.region(b"k"), h.region(b"v"));
    h.ok::<(u32, u32), ()>("db_write", (k, v));
    // (An import called from inside allocate, itself called from an import.)
    h.store.data_mut().call_depth = 1;
    let (e, _) = h.err::<u32, u32>("db_read", k);
    assert_eq!(e, CallError::Generic("Maximum call depth exceeded.".into()));
    h.store.data_mut().call_depth = 0;
    assert_ne!(h.ok::<u32, u32>("db_read", k).0, 0);
    assert_eq!(h.store.data().call_depth, 0);

    // allocate returning 0; allocate running out of gas.
    h.set_mode(1);
    let (e, _) = h.err::<u32, u32>("db_read", k);
    assert_eq!(e, comm("Got a zero Wasm address"));
    h.set_mode(2);
    let (e, _) = h.err::<u32, u32>("db_read", k);
    assert_eq!(e, CallError::GasDepletion);
    // Marked exhausted: nothing is left, whatever the counter holds.
    assert_eq!(h.gas_left(), 0);
    assert_eq!(h.store.data().call_depth, 0);
}

#[test]
fn out_of_gas_inside_a_host_call_empties_the_counter() {
    let mut h = Harness::new();
    let (k, v) = (h.region(b"foo"), h.region(b"bar"));
    // Enough for the host call and the reads, not for the storage's 6.
    let needed = HOST + read_cost(3) + read_cost(3) + 6;
    h.set_gas(needed - 1);
    let (e, _) = h.err::<(u32, u32), ()>("db_write", (k, v));
    assert_eq!(e, CallError::GasDepletion);
    assert_eq!(h.gas_left(), 0);
    // The backend's external use is counted even so (as process_gas_info does).
    assert_eq!(h.external(), 6);
    h.set_gas(needed);
    h.ok::<(u32, u32), ()>("db_write", (k, v));
    assert_eq!(h.gas_left(), 0);
    // Less than the host call itself.
    h.set_gas(HOST - 1);
    let (e, _) = h.err::<u32, u32>("db_read", k);
    assert_eq!(e, CallError::GasDepletion);
    assert_eq!(h.gas_left(), 0);
    // A crypto charge.
    h.set_gas(HOST + 3 * read_cost(0) + 35_000_000 - 1);
    let z = h.region(b"");
    let (e, _) = h.err::<(u32, u32, u32), u32>("ed25519_verify", (z, z, z));
    assert_eq!(e, CallError::GasDepletion);
}

/// A querier answering every request with `answer`, charging `gas` and recording the limit.
struct FixedQuerier {
    answer: SystemResult<ContractResult<Binary>>,
    gas: GasInfo,
    limits: Arc<Mutex<Vec<u64>>>,
    fail: Option<BackendError>,
}

impl Querier for FixedQuerier {
    fn query_raw(
        &mut self,
        _request: &[u8],
        gas_limit: u64,
    ) -> crate::backend::BackendResult<SystemResult<ContractResult<Binary>>> {
        self.limits.lock().unwrap().push(gas_limit);
        match &self.fail {
            Some(e) => (Err(e.clone()), self.gas),
            None => (Ok(self.answer.clone()), self.gas),
        }
    }
}

#[test]
fn query_chain_passes_the_gas_left_and_writes_the_serialized_result() {
    let limits = Arc::new(Mutex::new(Vec::new()));
    let answer = SystemResult::Ok(ContractResult::Ok(Binary::from(b"{}".as_slice())));
    let querier = FixedQuerier {
        answer,
        gas: GasInfo::with_externally_used(1_000),
        limits: Arc::clone(&limits),
        fail: None,
    };
    let mut h = Harness::with(environment(
        Box::new(KvStorage::new(kv())),
        Box::new(querier),
        true,
    ));
    let req = h.region(br#"{"bank":{}}"#);
    let (ptr, gas) = h.ok::<u32, u32>("query_chain", req);
    let written = br#"{"ok":{"ok":"e30="}}"#;
    assert_eq!(h.read(ptr), written);
    assert_eq!(
        gas,
        HOST + read_cost(11) + 1_000 + write_cost(written.len())
    );
    assert_eq!(
        limits.lock().unwrap().as_slice(),
        [GAS - HOST - read_cost(11)]
    );

    // The querier's out of gas is the call's, after its gas was charged.
    let mut h = Harness::with(environment(
        Box::new(KvStorage::new(kv())),
        Box::new(FixedQuerier {
            answer: SystemResult::Ok(ContractResult::Ok(Binary::default())),
            gas: GasInfo::with_externally_used(500),
            limits,
            fail: Some(BackendError::OutOfGas),
        }),
        false,
    ));
    let req = h.region(b"{}");
    let (e, gas) = h.err::<u32, u32>("query_chain", req);
    assert_eq!(e, CallError::GasDepletion);
    assert_eq!(gas, HOST + read_cost(2) + 500);
}

#[test]
fn query_chain_with_the_default_querier_answers_bank_queries() {
    let config = BankConfig::default().with_balance(
        "cosmwasm1abc",
        vec![cosmwasm_std::Coin::new(123u128, "ucosm")],
    );
    let mut h = Harness::with(environment(
        Box::new(KvStorage::new(kv())),
        Box::new(DefaultQuerier::new(config, None)),
        false,
    ));
    let request = br#"{"bank":{"balance":{"address":"cosmwasm1abc","denom":"ucosm"}}}"#;
    let req = h.region(request);
    let (ptr, gas) = h.ok::<u32, u32>("query_chain", req);
    let answer = h.read(ptr);
    // {"amount":{"denom":"ucosm","amount":"123"}} as base64 inside ok/ok.
    let inner = br#"{"amount":{"denom":"ucosm","amount":"123"}}"#;
    let expected = serde_json::to_vec(&SystemResult::Ok(ContractResult::Ok(Binary::from(
        inner.as_slice(),
    ))))
    .unwrap();
    assert_eq!(answer, expected);
    let querier_gas = 100_000 + 100 * expected.len() as u64;
    assert_eq!(
        gas,
        HOST + read_cost(request.len()) + querier_gas + write_cost(expected.len())
    );
    assert_eq!(h.external(), querier_gas);
}
