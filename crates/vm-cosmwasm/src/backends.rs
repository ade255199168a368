//! STUB (lead's local scaffolding, replaced by the cwimports branch).
use crate::backend::*;
use crate::gas::GasInfo;
use cosmwasm_std::{Binary, ContractResult, Order, Record, SystemResult, WasmQuery};
use store_commit::KvHandle;
/// stub
#[derive(Debug, Clone, Default)]
pub struct BankConfig;
/// stub
pub trait WasmQuerier: Send {
    /// stub
    fn query(
        &mut self,
        query: &WasmQuery,
        gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>>;
}
/// stub
pub struct KvStorage(KvHandle);
impl KvStorage {
    /// stub
    pub fn new(h: KvHandle) -> Self {
        KvStorage(h)
    }
}
impl Storage for KvStorage {
    fn get(&self, key: &[u8]) -> BackendResult<Option<Vec<u8>>> {
        (
            self.0
                .get(key)
                .map_err(|e| BackendError::Unknown { msg: e.to_string() }),
            GasInfo::free(),
        )
    }
    fn scan(&mut self, _s: Option<&[u8]>, _e: Option<&[u8]>, _o: Order) -> BackendResult<u32> {
        (Ok(0), GasInfo::free())
    }
    fn next(&mut self, _id: u32) -> BackendResult<Option<Record>> {
        (Ok(None), GasInfo::free())
    }
    fn set(&mut self, k: &[u8], v: &[u8]) -> BackendResult<()> {
        (
            self.0
                .insert(k, v)
                .map_err(|e| BackendError::Unknown { msg: e.to_string() }),
            GasInfo::free(),
        )
    }
    fn remove(&mut self, k: &[u8]) -> BackendResult<()> {
        (
            self.0
                .remove(k)
                .map(|_| ())
                .map_err(|e| BackendError::Unknown { msg: e.to_string() }),
            GasInfo::free(),
        )
    }
}
/// stub
pub struct Bech32Api;
impl Bech32Api {
    /// stub
    pub fn new(_p: String) -> Self {
        Bech32Api
    }
}
impl BackendApi for Bech32Api {
    fn addr_validate(&self, _i: &str) -> BackendResult<()> {
        (Ok(()), GasInfo::free())
    }
    fn addr_canonicalize(&self, _h: &str) -> BackendResult<Vec<u8>> {
        (Ok(vec![]), GasInfo::free())
    }
    fn addr_humanize(&self, _c: &[u8]) -> BackendResult<String> {
        (Ok(String::new()), GasInfo::free())
    }
}
/// stub
pub struct DefaultQuerier;
impl DefaultQuerier {
    /// stub
    pub fn new(_b: BankConfig, _w: Option<Box<dyn WasmQuerier>>) -> Self {
        DefaultQuerier
    }
}
impl Querier for DefaultQuerier {
    fn query_raw(
        &mut self,
        _r: &[u8],
        _g: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>> {
        (
            Ok(SystemResult::Ok(ContractResult::Ok(Binary::default()))),
            GasInfo::free(),
        )
    }
}
