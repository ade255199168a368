//! STUB (lead's local scaffolding, replaced by the cwimports branch).
use crate::env::{CallError, Environment};
use wasmtime::{AsContext, AsContextMut};
fn mem(store: &mut impl AsContextMut<Data = Environment>) -> wasmtime::Memory {
    store.as_context().data().exports.as_ref().unwrap().memory
}
pub(crate) fn read_region(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
    max: usize,
) -> Result<Vec<u8>, CallError> {
    let m = mem(store);
    let mut r = [0u8; 12];
    m.read(&store, ptr as usize, &mut r)
        .map_err(|e| CallError::Communication(e.to_string()))?;
    let off = u32::from_le_bytes(r[0..4].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(r[8..12].try_into().unwrap()) as usize;
    if len > max {
        return Err(CallError::Communication("too long".into()));
    }
    let mut out = vec![0; len];
    m.read(&store, off, &mut out)
        .map_err(|e| CallError::Communication(e.to_string()))?;
    Ok(out)
}
pub(crate) fn write_region(
    store: &mut impl AsContextMut<Data = Environment>,
    ptr: u32,
    data: &[u8],
) -> Result<(), CallError> {
    let m = mem(store);
    let mut r = [0u8; 12];
    m.read(&store, ptr as usize, &mut r)
        .map_err(|e| CallError::Communication(e.to_string()))?;
    let off = u32::from_le_bytes(r[0..4].try_into().unwrap()) as usize;
    m.write(&mut *store, off, data)
        .map_err(|e| CallError::Communication(e.to_string()))?;
    m.write(
        &mut *store,
        ptr as usize + 8,
        &(data.len() as u32).to_le_bytes(),
    )
    .map_err(|e| CallError::Communication(e.to_string()))?;
    Ok(())
}
