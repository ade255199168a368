//! Unit tests of the file cache: the layout, every corruption case in every mode, the byte
//! limit, prune and verify.

use super::*;

const WAT: &str = r#"(module (func (export "answer") (result i32) i32.const 42))"#;

fn answer(engine: &Engine, module: &Module) -> i32 {
    let mut store = wasmtime::Store::new(engine, ());
    let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
    let f = instance
        .get_typed_func::<(), i32>(&mut store, "answer")
        .unwrap();
    f.call(&mut store, ()).unwrap()
}

#[test]
fn wasmtime_accepts_bytes_after_the_artifact() {
    // The layout relies on this: a file = artifact || trailer still maps as an artifact.
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let module = Module::new(&engine, WAT).unwrap();
    let mut bytes = module.serialize().unwrap();
    bytes.extend_from_slice(&[0xAB; TRAILER_LEN]);
    let path = dir.path().join("x.cwasm");
    fs::write(&path, &bytes).unwrap();
    // SAFETY: the file is a fresh `Module::serialize` output plus padding, written just above.
    let loaded = unsafe { Module::deserialize_file(&engine, &path) }.unwrap();
    assert_eq!(answer(&engine, &loaded), 42);
    // SAFETY: as above.
    let loaded = unsafe { Module::deserialize(&engine, &bytes) }.unwrap();
    assert_eq!(answer(&engine, &loaded), 42);
}
