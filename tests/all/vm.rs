//! End-to-end tests of the VM host through its library: the host ABI, persistence across
//! commits and restarts, atomic calls, deletion, determinism, cache tampering, and threads.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use vm_host::{ModuleId, Root, Value, ValueType, Vm, VmConfig, VmError};

const COUNTER: &str = include_str!("../../crates/vm-host/contracts/counter.wat");
const BANK: &str = include_str!("../../crates/vm-host/contracts/bank.wat");

/// A module that exposes the raw host ABI and its memory.
const ABI: &str = r#"(module
  (import "env" "db_read" (func $r (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $w (param i32 i32 i32 i32)))
  (import "env" "db_remove" (func $d (param i32 i32)))
  (memory 1)
  (func (export "write") (param i32 i32 i32 i32)
    (call $w (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "read") (param i32 i32 i32 i32) (result i32)
    (call $r (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
  (func (export "remove") (param i32 i32)
    (call $d (local.get 0) (local.get 1)))
  (func (export "poke") (param i32 i32)
    (i32.store8 (local.get 0) (local.get 1)))
  (func (export "peek") (param i32) (result i32)
    (i32.load8_u (local.get 0))))"#;

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid wat")
}

fn open(dir: &Path) -> Result<Vm> {
    Ok(Vm::open(dir, VmConfig::for_tests())?)
}

fn call1(vm: &Vm, base: Root, module: &ModuleId, f: &str, args: &[Value]) -> Result<Value> {
    let mut session = vm.session(Some(base))?;
    let results = session.call(module, f, args)?;
    Ok(results[0])
}

fn poke_str(
    session: &mut vm_host::Session,
    module: &ModuleId,
    at: i32,
    bytes: &[u8],
) -> Result<()> {
    for (i, b) in bytes.iter().enumerate() {
        session.call(
            module,
            "poke",
            &[Value::I32(at + i as i32), Value::I32(*b as i32)],
        )?;
    }
    Ok(())
}

#[test]
fn host_abi_reads_writes_and_removes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (abi, root) = vm.deploy(&wasm(ABI))?;
    let mut s = vm.session(Some(root))?;
    poke_str(&mut s, &abi, 0, b"key")?;
    poke_str(&mut s, &abi, 16, b"hello world")?;
    // Absent key.
    assert_eq!(
        s.call(
            &abi,
            "read",
            &[
                Value::I32(0),
                Value::I32(3),
                Value::I32(100),
                Value::I32(64)
            ]
        )?,
        [Value::I32(-1)]
    );
    s.call(
        &abi,
        "write",
        &[Value::I32(0), Value::I32(3), Value::I32(16), Value::I32(11)],
    )?;
    // A short buffer gets a prefix; the full length is returned.
    assert_eq!(
        s.call(
            &abi,
            "read",
            &[Value::I32(0), Value::I32(3), Value::I32(100), Value::I32(5)]
        )?,
        [Value::I32(11)]
    );
    assert_eq!(s.read_memory(&abi, 100, 6)?, b"hello\0");
    assert_eq!(s.kv_get(&abi, b"key")?, Some(b"hello world".to_vec()));
    s.call(&abi, "remove", &[Value::I32(0), Value::I32(3)])?;
    assert_eq!(
        s.call(
            &abi,
            "read",
            &[
                Value::I32(0),
                Value::I32(3),
                Value::I32(100),
                Value::I32(64)
            ]
        )?,
        [Value::I32(-1)]
    );
    // Out-of-bounds and negative pointers fail the call.
    for args in [
        [
            Value::I32(65530),
            Value::I32(10),
            Value::I32(0),
            Value::I32(1),
        ],
        [Value::I32(-1), Value::I32(3), Value::I32(0), Value::I32(1)],
        [Value::I32(0), Value::I32(-3), Value::I32(0), Value::I32(1)],
    ] {
        let err = s.call(&abi, "write", &args).expect_err("out of bounds");
        assert!(matches!(err, VmError::Host(_)), "{err}");
    }
    s.call(
        &abi,
        "write",
        &[Value::I32(0), Value::I32(3), Value::I32(16), Value::I32(11)],
    )?;
    let err = s
        .call(
            &abi,
            "read",
            &[
                Value::I32(0),
                Value::I32(3),
                Value::I32(65535),
                Value::I32(64),
            ],
        )
        .expect_err("value buffer out of bounds");
    assert!(err.to_string().contains("out of bounds"), "{err}");
    Ok(())
}

#[test]
fn state_persists_across_commits_and_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (counter, roots) = {
        let vm = open(dir.path())?;
        let (counter, genesis) = vm.deploy(&wasm(COUNTER))?;
        let mut roots = vec![genesis];
        for _ in 0..3 {
            let mut s = vm.session(vm.latest())?;
            s.call(&counter, "add", &[Value::I64(5)])?;
            roots.push(s.commit()?);
        }
        (counter, roots)
    };
    let vm = open(dir.path())?;
    assert_eq!(vm.latest(), roots.last().copied());
    for (i, root) in roots.iter().enumerate() {
        let expected = Value::I64(5 * i as i64);
        assert_eq!(
            call1(&vm, *root, &counter, "get", &[])?,
            expected,
            "global at {i}"
        );
        assert_eq!(
            call1(&vm, *root, &counter, "memory_count", &[])?,
            expected,
            "memory at {i}"
        );
        let stored = if i == 0 { Value::I64(-1) } else { expected };
        assert_eq!(
            call1(&vm, *root, &counter, "stored_count", &[])?,
            stored,
            "kv at {i}"
        );
        // Genesis ran once, at deploy; its data segment is in the committed memory.
        assert_eq!(
            call1(&vm, *root, &counter, "genesis_runs", &[])?,
            Value::I32(1)
        );
        assert_eq!(
            call1(&vm, *root, &counter, "greeting", &[])?,
            Value::I64(i64::from_le_bytes(*b"strata c"))
        );
    }
    Ok(())
}

#[test]
fn failed_calls_leave_no_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    let mut s = vm.session(Some(root))?;
    s.call(&counter, "add", &[Value::I64(2)])?;
    let err = s
        .call(&counter, "add_then_trap", &[Value::I64(100)])
        .expect_err("traps");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    s.set_fuel(10_000);
    let err = s.call(&counter, "spin", &[]).expect_err("runs out of fuel");
    assert!(matches!(err, VmError::OutOfFuel(10_000)), "{err}");
    assert!(err.to_string().contains("out of fuel"), "{err}");
    s.set_fuel(1_000_000);
    assert_eq!(s.call(&counter, "get", &[])?, [Value::I64(2)]);
    assert_eq!(s.call(&counter, "memory_count", &[])?, [Value::I64(2)]);
    assert_eq!(s.call(&counter, "stored_count", &[])?, [Value::I64(2)]);
    assert_eq!(s.call(&counter, "pages", &[])?, [Value::I32(1)]);
    let after = s.commit()?;

    // The committed state is the state without the failed calls (`stored_count` writes the
    // value it reads into memory, so the twin makes that call too).
    let mut twin = vm.session(Some(root))?;
    twin.call(&counter, "add", &[Value::I64(2)])?;
    twin.call(&counter, "stored_count", &[])?;
    assert_eq!(twin.commit()?, after);

    // A bank transfer that overdraws credits first, then traps: the credit is undone too.
    let (bank, root) = vm.deploy(&wasm(BANK))?;
    let mut s = vm.session(Some(root))?;
    s.call(&bank, "mint", &[Value::I32(1), Value::I64(10)])?;
    let err = s
        .call(
            &bank,
            "transfer",
            &[Value::I32(1), Value::I32(2), Value::I64(11)],
        )
        .expect_err("overdraft");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    assert_eq!(s.call(&bank, "balance", &[Value::I32(2)])?, [Value::I64(0)]);
    assert_eq!(
        s.call(
            &bank,
            "transfer",
            &[Value::I32(1), Value::I32(2), Value::I64(4)]
        )?,
        [Value::I64(6)]
    );
    Ok(())
}

/// A contract whose writing calls rewrite 80 OS pages (320 KiB) at once: past the store's
/// threshold (64 pages), so from the second call checkpoint on the memory is write-tracked.
const FILLER: &str = r#"(module
  (memory 8)
  (global $last (mut i32) (i32.const 0))
  (func $fill (export "fill") (param $byte i32)
    (global.set $last (local.get $byte))
    (memory.fill (i32.const 0) (local.get $byte) (i32.const 327680)))
  (func (export "fill_then_trap") (param $byte i32)
    (call $fill (local.get $byte))
    (drop (memory.grow (i32.const 1)))
    (unreachable))
  (func (export "read") (param $addr i32) (result i32)
    (i32.load8_u (local.get $addr)))
  (func (export "last") (result i32)
    (global.get $last))
  (func (export "pages") (result i32)
    (memory.size)))"#;

/// Read-only calls take no checkpoint; a writing call that fails after one must still return to
/// the state of the last successful call, with an untracked memory (counter: one page written
/// per call) and with a write-tracked one (filler).
#[test]
fn read_only_calls_between_writing_calls_keep_rollbacks_exact() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    let mut s = vm.session(Some(root))?;
    s.call(&counter, "add", &[Value::I64(3)])?;
    assert_eq!(s.call(&counter, "get", &[])?, [Value::I64(3)]);
    assert_eq!(s.call(&counter, "memory_count", &[])?, [Value::I64(3)]);
    let err = s
        .call(&counter, "add_then_trap", &[Value::I64(100)])
        .expect_err("traps");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    assert_eq!(s.call(&counter, "get", &[])?, [Value::I64(3)]);
    assert_eq!(s.call(&counter, "memory_count", &[])?, [Value::I64(3)]);
    assert_eq!(s.call(&counter, "stored_count", &[])?, [Value::I64(3)]);
    assert_eq!(s.call(&counter, "pages", &[])?, [Value::I32(1)]);
    // A failing read-only call (out of bounds, out of fuel) undoes nothing and loses nothing.
    s.call(&counter, "add", &[Value::I64(4)])?;
    let err = s
        .call(&counter, "peek", &[Value::I32(1 << 20)])
        .expect_err("out of bounds");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    s.set_fuel(10_000);
    let err = s.call(&counter, "spin", &[]).expect_err("runs out of fuel");
    assert!(matches!(err, VmError::OutOfFuel(10_000)), "{err}");
    s.set_fuel(1_000_000);
    s.call(&counter, "add_then_trap", &[Value::I64(100)])
        .expect_err("traps");
    assert_eq!(s.call(&counter, "get", &[])?, [Value::I64(7)]);
    assert_eq!(s.call(&counter, "memory_count", &[])?, [Value::I64(7)]);
    let after = s.commit()?;
    // The same without the read-only and the failed calls (`stored_count` writes what it
    // reads into memory, so the twin makes that call too).
    let mut twin = vm.session(Some(root))?;
    twin.call(&counter, "add", &[Value::I64(3)])?;
    twin.call(&counter, "stored_count", &[])?;
    twin.call(&counter, "add", &[Value::I64(4)])?;
    assert_eq!(twin.commit()?, after);

    let (filler, root) = vm.deploy(&wasm(FILLER))?;
    let mut s = vm.session(Some(root))?;
    let at = |s: &mut vm_host::Session, addr: i32| -> Result<Value> {
        Ok(s.call(&filler, "read", &[Value::I32(addr)])?[0])
    };
    for byte in 1..=4 {
        s.call(&filler, "fill", &[Value::I32(byte)])?;
        assert_eq!(at(&mut s, 0)?, Value::I32(byte));
        assert_eq!(at(&mut s, 327_679)?, Value::I32(byte));
        s.call(&filler, "fill_then_trap", &[Value::I32(9)])
            .expect_err("traps");
        for addr in [0, 4096, 200_000, 327_679] {
            assert_eq!(at(&mut s, addr)?, Value::I32(byte), "after fill {byte}");
        }
        assert_eq!(at(&mut s, 327_680)?, Value::I32(0));
        assert_eq!(s.call(&filler, "last", &[])?, [Value::I32(byte)]);
        assert_eq!(s.call(&filler, "pages", &[])?, [Value::I32(8)]);
    }
    let root = s.commit()?;
    let mut s = vm.session(Some(root))?;
    assert_eq!(at(&mut s, 100_000)?, Value::I32(4));
    assert_eq!(s.call(&filler, "last", &[])?, [Value::I32(4)]);
    Ok(())
}

/// What the last call consumed is read from its store when asked: it survives calls of other
/// modules that are refused before they run, and reads of another module's memory.
#[test]
fn last_call_fuel_follows_the_last_call_that_ran() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, _) = vm.deploy(&wasm(COUNTER))?;
    let (abi, root) = vm.deploy(&wasm(ABI))?;
    let mut s = vm.session(Some(root))?;
    assert_eq!(s.last_call_fuel(), None);
    s.call(&counter, "add", &[Value::I64(1)])?;
    let add = s.last_call_fuel().expect("ran");
    s.call(&counter, "get", &[])?;
    let get = s.last_call_fuel().expect("ran");
    assert!(0 < get && get < add, "get {get}, add {add}");
    s.call(&abi, "nothing", &[]).expect_err("unknown function");
    assert_eq!(s.last_call_fuel(), Some(get));
    s.read_memory(&abi, 0, 4)?;
    assert_eq!(s.last_call_fuel(), Some(get));
    s.call(&abi, "peek", &[Value::I32(0)])?;
    let peek = s.last_call_fuel().expect("ran");
    s.call(&counter, "get", &[Value::I32(0)])
        .expect_err("bad arguments");
    assert_eq!(s.last_call_fuel(), Some(peek));
    s.call(&counter, "get", &[])?;
    assert_eq!(s.last_call_fuel(), Some(get));
    Ok(())
}

/// The host's own exports (`__strata_`) are not the module's functions: a read-only marker
/// cannot be called under its own name.
#[test]
fn host_exports_are_not_callable() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    let mut s = vm.session(Some(root))?;
    for name in [
        "__strata_readonly_get",
        "__strata_memory",
        "__strata_global_0",
    ] {
        let err = s.call(&counter, name, &[]).expect_err(name);
        assert!(matches!(err, VmError::UnknownFunction(_)), "{err}");
        let err = s.signature(&counter, name).expect_err(name);
        assert!(matches!(err, VmError::UnknownFunction(_)), "{err}");
    }
    assert_eq!(s.call(&counter, "get", &[])?, [Value::I64(0)]);
    assert_eq!(
        s.signature(&counter, "get")?,
        (vec![], vec![ValueType::I64])
    );
    Ok(())
}

#[test]
fn memory_grows_persists_and_respects_the_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = VmConfig {
        memory_limit: 4 << 16,
        ..VmConfig::for_tests()
    };
    let vm = Vm::open(dir.path(), config)?;
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    let mut s = vm.session(Some(root))?;
    assert_eq!(s.call(&counter, "grow", &[Value::I32(2)])?, [Value::I32(1)]);
    s.call(
        &counter,
        "poke",
        &[Value::I32((2 << 16) + 5), Value::I32(42)],
    )?;
    // Past the limit, memory.grow fails and returns -1.
    assert_eq!(
        s.call(&counter, "grow", &[Value::I32(2)])?,
        [Value::I32(-1)]
    );
    let root = s.commit()?;
    let mut s = vm.session(Some(root))?;
    assert_eq!(s.call(&counter, "pages", &[])?, [Value::I32(3)]);
    assert_eq!(
        s.call(&counter, "peek", &[Value::I32((2 << 16) + 5)])?,
        [Value::I32(42)]
    );
    assert_eq!(
        s.call(&counter, "peek", &[Value::I32((3 << 16) - 1)])?,
        [Value::I32(0)]
    );
    let err = s
        .call(&counter, "peek", &[Value::I32(3 << 16)])
        .expect_err("out of bounds");
    assert!(matches!(err, VmError::Trap { .. }), "{err}");
    Ok(())
}

#[test]
fn deleted_commits_are_refused_and_children_survive() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, r0) = vm.deploy(&wasm(COUNTER))?;
    let mut s = vm.session(Some(r0))?;
    s.call(&counter, "add", &[Value::I64(1)])?;
    let r1 = s.commit()?;
    let mut s = vm.session(Some(r1))?;
    s.call(&counter, "add", &[Value::I64(1)])?;
    let r2 = s.commit()?;
    vm.delete(&r1)?;
    assert!(matches!(vm.session(Some(r1)), Err(VmError::Store(_))));
    assert_eq!(call1(&vm, r2, &counter, "get", &[])?, Value::I64(2));
    assert_eq!(call1(&vm, r0, &counter, "get", &[])?, Value::I64(0));
    assert!(vm.verify()?.is_ok());
    Ok(())
}

#[test]
fn roots_are_deterministic_across_directories() -> Result<()> {
    let run = |dir: &Path| -> Result<Vec<Root>> {
        let vm = open(dir)?;
        let (counter, r0) = vm.deploy(&wasm(COUNTER))?;
        let (bank, r1) = vm.deploy(&wasm(BANK))?;
        let mut s = vm.session(Some(r1))?;
        s.call(&counter, "add", &[Value::I64(7)])?;
        s.call(&bank, "mint", &[Value::I32(9), Value::I64(70)])?;
        Ok(vec![r0, r1, s.commit()?])
    };
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    assert_eq!(run(a.path())?, run(b.path())?);
    Ok(())
}

#[test]
fn bad_modules_get_clear_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let err = vm.deploy(b"not wasm at all").expect_err("garbage");
    assert!(matches!(err, VmError::InvalidModule(_)), "{err}");
    let err = vm
        .deploy(&wasm(r#"(module (import "env" "exec" (func)))"#))
        .expect_err("unknown import");
    assert!(matches!(err, VmError::UnsupportedImport { .. }), "{err}");
    assert!(err.to_string().contains(r#""env"::"exec""#), "{err}");
    // Names come from the module: shown escaped, so the message stays one line.
    let err = vm
        .deploy(&wasm(r#"(module (import "env\0a" "x\0ay" (func)))"#))
        .expect_err("unknown import with a line break");
    assert_eq!(
        err.to_string(),
        r#"module imports "env\n"::"x\ny", which the host does not offer"#
    );
    let err = vm
        .deploy(&wasm(
            r#"(module (import "env" "db_read" (func (param i32))))"#,
        ))
        .expect_err("wrong signature");
    assert!(matches!(err, VmError::InvalidModule(_)), "{err}");
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    let err = vm.deploy(&wasm(COUNTER)).expect_err("twice");
    assert!(matches!(err, VmError::AlreadyDeployed(_)), "{err}");
    let mut s = vm.session(Some(root))?;
    let err = s.call(&counter, "nope", &[]).expect_err("no such export");
    assert!(matches!(err, VmError::UnknownFunction(_)), "{err}");
    let err = s
        .call(&counter, "add", &[Value::I32(1)])
        .expect_err("wrong type");
    assert!(matches!(err, VmError::BadArguments(_)), "{err}");
    let stranger = ModuleId::of_wasm(b"nothing deployed");
    let err = s.call(&stranger, "get", &[]).expect_err("unknown module");
    assert!(matches!(err, VmError::UnknownModule(_)), "{err}");
    // A start function that never ends runs out of deploy fuel.
    let config = VmConfig {
        deploy_fuel: 10_000,
        ..VmConfig::for_tests()
    };
    let other = tempfile::tempdir()?;
    let vm = Vm::open(other.path(), config)?;
    let err = vm
        .deploy(&wasm("(module (func $s (loop (br 0))) (start $s))"))
        .expect_err("endless start");
    assert!(matches!(err, VmError::OutOfFuel(_)), "{err}");
    assert!(vm.latest().is_none(), "nothing was committed");
    Ok(())
}

#[test]
fn tampered_cache_files_are_never_executed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (counter, root) = {
        let vm = open(dir.path())?;
        vm.deploy(&wasm(COUNTER))?
    };
    // Flip bytes in every cached artifact.
    let mut tampered = 0;
    for folder in std::fs::read_dir(dir.path().join("cache"))? {
        for file in std::fs::read_dir(folder?.path())? {
            let path = file?.path();
            let mut bytes = std::fs::read(&path)?;
            let at = bytes.len() / 3;
            bytes[at] ^= 0xff;
            bytes[at + 1] ^= 0x55;
            // Saved files are read-only: replace, as a writer of the folder can.
            std::fs::remove_file(&path)?;
            std::fs::write(&path, bytes)?;
            tampered += 1;
        }
    }
    assert!(tampered >= 1, "the deploy cached the module");
    let vm = open(dir.path())?;
    assert!(
        !vm.verify()?.is_ok(),
        "verify reports the tampered artifact"
    );
    assert_eq!(
        call1(&vm, root, &counter, "genesis_runs", &[])?,
        Value::I32(1)
    );
    let stats = vm.stats();
    assert_eq!(stats.compiles, 1, "the tampered artifact was recompiled");
    let fs = stats.layers.last().expect("file layer");
    assert_eq!(fs.rejected, 1, "{:?}", stats.layers);
    assert!(vm.verify()?.is_ok(), "the recompiled artifact replaced it");
    Ok(())
}

/// Replaces the cache file of `victim` with the artifact of `donor`, under a trailer for the
/// victim's key whose sha256 and digest are consistent: what anyone who can write the cache
/// folder (and not read the key) can do, with the crate's own format functions. No tag.
fn forge_cache_file(dir: &Path, victim: &ModuleId, donor: &ModuleId) -> Result<()> {
    use cache_fs::fuzzing::encode;
    let mut forged = 0;
    for folder in std::fs::read_dir(dir.join("cache"))? {
        let folder = folder?.path();
        for file in std::fs::read_dir(&folder)? {
            let name = file?.file_name().into_string().expect("utf-8 name");
            let Some(rest) = name.strip_prefix(&victim.to_hex()) else {
                continue;
            };
            let donor_file = folder.join(format!("{}{rest}", donor.to_hex()));
            let bytes = std::fs::read(&donor_file)?;
            let artifact = &bytes[..bytes.len() - cache_fs::TRAILER_LEN];
            let stem = name.trim_end_matches(".cwasm");
            let key = cache_core::CacheKey::parse(stem)?;
            let trailer = encode(&key, artifact, None);
            let victim = folder.join(&name);
            std::fs::remove_file(&victim)?;
            std::fs::write(&victim, [artifact, &trailer[..]].concat())?;
            forged += 1;
        }
    }
    assert_eq!(forged, 1, "one cache file of the victim");
    Ok(())
}

/// A cache file forged with a consistent sha256 (another module's code under this module's
/// key) is executed in Verified mode, which detects damage, not forgery, and refused in the
/// default Authenticated mode: a miss, counted as rejected, and a recompile.
#[test]
fn a_forged_cache_file_runs_in_verified_mode_and_is_refused_by_default() -> Result<()> {
    let answer = |n: i32| {
        wasm(&format!(
            r#"(module (func (export "answer") (result i32) i32.const {n}))"#
        ))
    };
    let verified = VmConfig {
        fs_verification: vm_host::Verification::Verified.into(),
        ..VmConfig::for_tests()
    };
    for (config, forged_runs) in [(verified, true), (VmConfig::for_tests(), false)] {
        let what = format!("{:?}", config.fs_verification);
        let dir = tempfile::tempdir()?;
        let (victim, donor) = {
            let vm = Vm::open(dir.path(), config.clone())?;
            (vm.deploy(&answer(1))?.0, vm.deploy(&answer(2))?.0)
        };
        forge_cache_file(dir.path(), &victim, &donor)?;

        let vm = Vm::open(dir.path(), config)?;
        let got = call1(&vm, vm.latest().expect("a commit"), &victim, "answer", &[])?;
        let stats = vm.stats();
        let fs = stats.layers.last().expect("file layer");
        if forged_runs {
            assert_eq!(got, Value::I32(2), "{what}: the forged code ran");
            assert_eq!((stats.compiles, fs.rejected), (0, 0), "{what}");
        } else {
            assert_eq!(got, Value::I32(1), "{what}: the forgery was refused");
            assert_eq!((stats.compiles, fs.rejected), (1, 1), "{what}");
            assert_eq!(fs.misses, 1, "{what}");
        }
    }
    Ok(())
}

#[test]
fn restart_loads_from_the_file_cache_and_keeps_pins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (counter, root) = {
        let vm = open(dir.path())?;
        let deployed = vm.deploy(&wasm(COUNTER))?;
        vm.pin(&deployed.0)?;
        assert!(vm.is_pinned(&deployed.0));
        deployed
    };
    let vm = open(dir.path())?;
    assert_eq!(vm.pins(), vec![counter]);
    assert!(vm.is_pinned(&counter));
    call1(&vm, root, &counter, "get", &[])?;
    let stats = vm.stats();
    assert_eq!(stats.compiles, 0, "{stats:?}");
    assert!(stats.layers[0].hits >= 1, "pinned hit: {:?}", stats.layers);
    assert_eq!(stats.layers[2].misses, 0, "{:?}", stats.layers);
    assert!(vm.unpin(&counter)?);
    // One VM (store) per directory at a time: close before reopening.
    drop(vm);
    let vm = open(dir.path())?;
    assert!(vm.pins().is_empty());
    Ok(())
}

#[test]
fn concurrent_sessions_and_single_flight_compiles() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    drop(vm);
    // A fresh VM with an empty file cache: every thread asks for the uncached module at once.
    std::fs::remove_dir_all(dir.path().join("cache"))?;
    let vm = Arc::new(open(dir.path())?);
    let roots: Vec<Root> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let vm = vm.clone();
                scope.spawn(move || -> Result<Root> {
                    let mut s = vm.session(Some(root))?;
                    s.call(&counter, "add", &[Value::I64(i)])?;
                    Ok(s.commit()?)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Result<_>>()
    })?;
    let stats = vm.stats();
    assert_eq!(stats.compiles, 1, "one compile for eight threads");
    // One miss per thread and layer at most: the single flight does not look twice.
    for layer in &stats.layers {
        assert!(layer.misses <= 8, "{layer:?}");
    }
    assert_eq!(stats.layers[1].inserts, 1, "{:?}", stats.layers);
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(call1(&vm, *r, &counter, "get", &[])?, Value::I64(i as i64));
    }
    assert!(vm.verify()?.is_ok());
    Ok(())
}

#[test]
fn a_compile_counts_one_miss_per_layer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, root) = vm.deploy(&wasm(COUNTER))?;
    call1(&vm, root, &counter, "get", &[])?;
    let stats = vm.stats();
    assert_eq!(stats.compiles, 1, "{stats:?}");
    // The deploy's load missed every layer once; the call's load missed the pinned layer and
    // found the module in the LRU layer.
    let misses: Vec<u64> = stats.layers.iter().map(|l| l.misses).collect();
    assert_eq!(misses, [2, 1, 1], "{:?}", stats.layers);
    assert_eq!(stats.layers[1].hits, 1, "{:?}", stats.layers);
    Ok(())
}

#[test]
fn open_existing_refuses_a_missing_vm_and_creates_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("typo");
    for path in [missing.as_path(), dir.path()] {
        match Vm::open_existing(path, VmConfig::for_tests()) {
            Err(VmError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
            }
            other => panic!("expected NotFound, got {:?}", other.map(|_| ())),
        }
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
    let (counter, _) = open(dir.path())?.deploy(&wasm(COUNTER))?;
    let vm = Vm::open_existing(dir.path(), VmConfig::for_tests())?;
    assert_eq!(vm.commits().len(), 1);
    assert_eq!(vm.commits()[0].modules, vec![counter]);
    drop(vm);
    // A store that lost its format marker is reported, not made a new store over its commits.
    let marker = dir.path().join("store").join("FORMAT");
    std::fs::remove_file(&marker)?;
    match Vm::open_existing(dir.path(), VmConfig::for_tests()) {
        Err(VmError::Store(store_commit::StoreError::Corrupted { path, source })) => {
            assert_eq!(path, marker);
            assert!(matches!(source, store_commit::Corruption::NoFormatMarker));
        }
        other => panic!("expected NoFormatMarker, got {:?}", other.map(|_| ())),
    }
    assert!(!marker.exists(), "a diagnosing open wrote a format marker");
    Ok(())
}

/// The VM's cache key: made with the directory (32 bytes, mode 0600, beside the cache folder),
/// reused by every later open, never made by `open_existing`, which refuses a VM without one
/// unless it is told another mode.
#[test]
fn the_cache_key_is_made_with_the_directory_and_only_there() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let key_path = dir.path().join("cache.key");
    let counter = {
        let vm = open(dir.path())?;
        let (counter, root) = vm.deploy(&wasm(COUNTER))?;
        call1(&vm, root, &counter, "get", &[])?;
        counter
    };
    let meta = std::fs::metadata(&key_path)?;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let key = std::fs::read(&key_path)?;
    assert_ne!(key, vec![0u8; 32]);

    // A second open reuses the key: the artifacts the first one signed are hits.
    let vm = open(dir.path())?;
    assert_eq!(std::fs::read(&key_path)?, key);
    call1(&vm, vm.latest().expect("a commit"), &counter, "get", &[])?;
    let stats = vm.stats();
    assert_eq!(stats.compiles, 0, "{:?}", stats.layers);
    assert_eq!(stats.layers.last().expect("file layer").rejected, 0);
    assert!(vm.verify()?.is_ok());
    drop(vm);

    // `open_existing` reads the key and makes none.
    let vm = Vm::open_existing(dir.path(), VmConfig::for_tests())?;
    assert!(vm.verify()?.is_ok());
    drop(vm);
    std::fs::remove_file(&key_path)?;
    let before = tree(dir.path())?;
    match Vm::open_existing(dir.path(), VmConfig::for_tests()) {
        Err(VmError::CacheKey { path, reason }) => {
            assert_eq!(path, key_path);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected a missing key, got {:?}", other.map(|_| ())),
    }
    let verified = VmConfig {
        fs_verification: vm_host::Verification::Verified.into(),
        ..VmConfig::for_tests()
    };
    assert!(Vm::open_existing(dir.path(), verified)?.verify()?.is_ok());
    assert_eq!(tree(dir.path())?, before, "open_existing created something");

    // A short key file is refused, not used.
    std::fs::write(&key_path, b"short")?;
    assert!(matches!(
        Vm::open(dir.path(), VmConfig::for_tests()),
        Err(VmError::CacheKey { .. })
    ));
    // `Vm::open` makes a new key for a directory without one; the old artifacts are misses.
    std::fs::remove_file(&key_path)?;
    let vm = open(dir.path())?;
    assert_ne!(std::fs::read(&key_path)?, key);
    call1(&vm, vm.latest().expect("a commit"), &counter, "get", &[])?;
    assert_eq!(vm.stats().compiles, 1);
    Ok(())
}

/// Every path under `dir`, recursively, sorted.
fn tree(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn reading_commands_on_an_existing_vm_create_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (counter, root) = open(dir.path())?.deploy(&wasm(COUNTER))?;
    let cache = dir.path().join("cache");
    std::fs::remove_dir_all(&cache)?;
    let before = tree(dir.path())?;
    let vm = Vm::open_existing(dir.path(), VmConfig::for_tests())?;
    let outcome = vm.verify()?;
    let stats = vm.disk_stats()?;
    assert_eq!(vm.commits().len(), 1);
    assert!(stats.cache.is_empty(), "{:?}", stats.cache);
    assert_eq!(stats.commits, 1);
    assert!(outcome.is_ok(), "{:?}", outcome.problems);
    assert!(
        !cache.exists(),
        "open_existing, verify or disk_stats created the cache folder"
    );
    assert_eq!(
        tree(dir.path())?,
        before,
        "a reading command created something"
    );
    // The first compile creates the folder it saves into, and later loads hit it.
    let mut s = vm.session(Some(root))?;
    s.call(&counter, "get", &[])?;
    assert!(
        vm.disk_stats()?
            .cache
            .iter()
            .any(|f| f.in_use && f.entries == 1)
    );
    Ok(())
}

#[test]
fn disk_stats_read_the_directory_and_prune_frees_other_engines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (counter, _) = vm.deploy(&wasm(COUNTER))?;
    vm.pin(&counter)?;
    let other = dir
        .path()
        .join("cache")
        .join(format!("v1-{}", "ab".repeat(32)));
    std::fs::create_dir(&other)?;
    std::fs::write(other.join("x.cwasm"), [0u8; 300])?;
    drop(vm);

    // A fresh process sees the same disk, whatever its own counters say.
    let vm = open(dir.path())?;
    assert_eq!(vm.stats().compiles, 0);
    let stats = vm.disk_stats()?;
    assert_eq!(stats.commits, 1);
    assert_eq!(stats.pins, vec![counter]);
    assert!(stats.store_files > 0 && stats.store_bytes > 0 && stats.store_apparent_bytes > 0);
    assert_eq!(stats.cache.len(), 2, "{:?}", stats.cache);
    let (mine, theirs): (Vec<_>, Vec<_>) = stats.cache.iter().partition(|f| f.in_use);
    assert_eq!((mine.len(), mine[0].entries), (1, 1));
    assert!(mine[0].bytes > 0);
    assert_eq!((theirs[0].entries, theirs[0].bytes), (1, 300));

    let report = vm.prune()?;
    assert_eq!(report.removed_folders, vec![other.clone()]);
    assert_eq!((report.removed_files, report.removed_bytes), (1, 300));
    assert!(!other.exists());
    let after = vm.disk_stats()?;
    assert_eq!(after.cache.len(), 1);
    assert!(after.cache[0].in_use);
    Ok(())
}

/// Store-layer operations on a file of the `bytecode/` folder in `log`, and all operations.
fn bytecode_ops(log: &[(strata_fs::Op, std::path::PathBuf)]) -> usize {
    log.iter()
        .filter(|(_, path)| path.components().any(|c| c.as_os_str() == "bytecode"))
        .count()
}

#[test]
fn cold_start_with_a_warm_file_cache_reads_no_bytecode() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = VmConfig::for_tests;
    let (pinned, called, root) = {
        let vm = Vm::open(dir.path(), config())?;
        // Two modules whose code differs (so that their artifacts differ too).
        let (pinned, _) = vm.deploy(&crate::crash_vm::counter(1))?;
        let (called, root) = vm.deploy(&crate::crash_vm::counter(2))?;
        vm.pin(&pinned)?;
        (pinned, called, root)
    };
    assert_ne!(pinned, called);

    // A fresh process: the pinned module loads at open, the other at its first call.
    let fs = Arc::new(strata_fs::FaultFs::real());
    let files = vm_host::VmFiles { fs: fs.clone() };
    let vm = Vm::open_with(dir.path(), config(), files.clone(), |_| Ok(()))?;
    assert!(vm.is_pinned(&pinned));
    let mut session = vm.session(Some(root))?;
    assert_eq!(
        session.call(&called, "add", &[Value::I64(2)])?,
        vec![Value::I64(2)]
    );
    assert_eq!(
        session.call(&pinned, "add", &[Value::I64(3)])?,
        vec![Value::I64(3)]
    );
    drop(session);
    let log = fs.take_log();
    let in_cache = |(_, path): &&(strata_fs::Op, std::path::PathBuf)| {
        path.starts_with(dir.path().join("cache"))
    };
    let cache_ops = log.iter().filter(in_cache).count();
    eprintln!(
        "warm start: {} store ops ({} on bytecode), {cache_ops} cache ops",
        log.len() - cache_ops,
        bytecode_ops(&log)
    );
    assert_eq!(bytecode_ops(&log), 0, "{log:?}");
    assert!(!log.is_empty() && cache_ops > 0);
    let stats = vm.stats();
    assert_eq!((stats.compiles, stats.layers[2].hits), (0, 2));
    drop(vm);

    // A cold file cache: only now is bytecode read (and checked against its id), once per
    // module, and compiled.
    std::fs::remove_dir_all(dir.path().join("cache"))?;
    let vm = Vm::open_with(dir.path(), config(), files, |_| Ok(()))?;
    let mut session = vm.session(Some(root))?;
    session.call(&called, "add", &[Value::I64(2)])?;
    let log = fs.take_log();
    assert_eq!(bytecode_ops(&log), 2, "one per module: {log:?}");
    assert_eq!(vm.stats().compiles, 2);
    Ok(())
}

#[test]
fn a_corrupt_committed_host_blob_is_a_corruption_not_a_host_failure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (module, root) = vm.deploy(&wasm(COUNTER))?;
    let blob = dir
        .path()
        .join("store")
        .join(root.to_hex())
        .join("blob")
        .join(module.to_hex());
    let mut bytes = std::fs::read(&blob)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    crate::overwrite(&blob, &bytes)?;
    let err = call1(&vm, root, &module, "get", &[]).expect_err("a corrupt blob");
    let err = err.downcast::<VmError>()?;
    assert!(
        matches!(
            err,
            VmError::Store(store_commit::StoreError::Corrupted { .. })
                | VmError::CorruptState { .. }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("corrupt") && !text.contains('\n'), "{text}");
    assert!(std::error::Error::source(&err).is_some());
    Ok(())
}

/// A module-provided name is escaped in every error that echoes it: a function name with a
/// line break or a terminal escape still gives a one-line message without control characters.
#[test]
fn errors_quote_module_provided_names() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = open(dir.path())?;
    let (id, root) = vm.deploy(&wasm(
        r#"(module (func (export "line\nbreak\1b[31m") (param i32)))"#,
    ))?;
    let name = "line\nbreak\x1b[31m";
    let one_line = |err: &VmError| {
        let text = err.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains(r#""line\nbreak\u{1b}[31m""#), "{text:?}");
    };
    let mut s = vm.session(Some(root))?;
    let err = s.call(&id, name, &[]).expect_err("missing argument");
    assert!(matches!(err, VmError::BadArguments(_)), "{err}");
    one_line(&err);
    let err = s.call(&id, name, &[Value::I64(1)]).expect_err("wrong type");
    one_line(&err);
    let err = s.call(&id, "no\nsuch\x1b", &[]).expect_err("unknown");
    assert!(matches!(err, VmError::UnknownFunction(_)), "{err}");
    assert!(!err.to_string().chars().any(char::is_control), "{err}");
    let err = vm
        .deploy(&wasm(r#"(module (func (export "__strata_\n\1b[2J")))"#))
        .expect_err("reserved prefix");
    assert!(matches!(err, VmError::InvalidModule(_)), "{err}");
    let text = err.to_string();
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.contains(r#""__strata_\n\u{1b}[2J""#), "{text:?}");
    // wasmparser's and wasmtime's own messages quote names as they are: escaped here.
    let err = vm
        .deploy(&wasm(
            r#"(module (func (export "\1b[2J")) (func (export "\1b[2J")))"#,
        ))
        .expect_err("duplicate export");
    assert!(matches!(err, VmError::InvalidModule(_)), "{err}");
    let text = err.to_string();
    assert!(!text.chars().any(char::is_control), "{text:?}");
    Ok(())
}
