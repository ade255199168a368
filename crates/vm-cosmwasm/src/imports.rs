//! STUB (lead's local scaffolding, replaced by the cwimports branch).
use crate::env::Environment;
use crate::memory::{read_region, write_region};
use wasmtime::{Caller, Linker};
pub(crate) fn define(linker: &mut Linker<Environment>) -> Result<(), wasmtime::Error> {
    linker.func_wrap(
        "env",
        "db_read",
        |mut c: Caller<'_, Environment>, k: u32| -> wasmtime::Result<u32> {
            let key = read_region(&mut c, k, 65536)?;
            let v = c.data().storage.get(&key).0.map_err(wasmtime::Error::new)?;
            match v {
                None => Ok(0),
                Some(v) => {
                    let alloc = c.data().exports.as_ref().unwrap().allocate.clone();
                    let p = alloc.call(&mut c, v.len() as u32)?;
                    write_region(&mut c, p, &v)?;
                    Ok(p)
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "db_write",
        |mut c: Caller<'_, Environment>, k: u32, v: u32| -> wasmtime::Result<()> {
            let key = read_region(&mut c, k, 65536)?;
            let val = read_region(&mut c, v, 131072)?;
            if c.data().storage_readonly {
                return Err(wasmtime::Error::new(
                    crate::env::CallError::WriteAccessDenied,
                ));
            }
            c.data_mut()
                .storage
                .set(&key, &val)
                .0
                .map_err(wasmtime::Error::new)?;
            Ok(())
        },
    )?;
    Ok(())
}
