//! Codes and contracts, kept in one key-value space of the commit store (so the root covers
//! them): code ids, the wasm of each checksum, and each contract's code id, creator, admin and
//! label. Contract addresses follow wasmd's classic derivation.
//!
//! Keys of the registry space: `n` the next code id, `i` the next instance id (both u64 BE),
//! `c` + code id (u64 BE) -> [`CodeRecord`], `w` + checksum -> the wasm, `a` + address ->
//! [`ContractRecord`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store_commit::KvHandle;
use store_index::Namespace;

use crate::CwError;

/// The registry's own key-value space.
pub(crate) fn namespace() -> Namespace {
    Namespace::named(b"cosmwasm/registry")
}

/// The key-value space of the contract at `address`: named by the address alone, so a
/// migration to another code keeps it.
pub(crate) fn contract_namespace(address: &str) -> Namespace {
    let mut name = b"cosmwasm/contract/".to_vec();
    name.extend_from_slice(address.as_bytes());
    Namespace::named(&name)
}

/// A stored code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// sha256 of the wasm.
    pub checksum: [u8; 32],
}

/// A contract instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractRecord {
    /// The code it runs now (a migration changes it).
    pub code_id: u64,
    /// Who instantiated it.
    pub creator: String,
    /// Who may migrate it.
    pub admin: Option<String>,
    /// Its label.
    pub label: String,
}

fn corrupt(what: &str) -> CwError {
    CwError::Corrupt(format!("registry entry {what} does not decode"))
}

fn next(reg: &KvHandle, key: &[u8]) -> Result<u64, CwError> {
    let current = match reg.get(key)? {
        Some(v) => u64::from_be_bytes(v.try_into().map_err(|_| corrupt("counter"))?),
        None => 1,
    };
    reg.insert(key, &(current + 1).to_be_bytes())?;
    Ok(current)
}

/// Stores `wasm` (once per checksum) under a new code id.
pub(crate) fn store_code(reg: &KvHandle, checksum: [u8; 32], wasm: &[u8]) -> Result<u64, CwError> {
    let code_id = next(reg, b"n")?;
    let mut wkey = b"w".to_vec();
    wkey.extend_from_slice(&checksum);
    // Stored once per checksum, whatever the number of code ids.
    if reg.get_with(&wkey, |_| ())?.is_none() {
        reg.insert(&wkey, wasm)?;
    }
    put(reg, &code_key(code_id), &CodeRecord { checksum })?;
    Ok(code_id)
}

fn code_key(code_id: u64) -> Vec<u8> {
    let mut k = b"c".to_vec();
    k.extend_from_slice(&code_id.to_be_bytes());
    k
}

fn contract_key(address: &str) -> Vec<u8> {
    let mut k = b"a".to_vec();
    k.extend_from_slice(address.as_bytes());
    k
}

fn put<T: Serialize>(reg: &KvHandle, key: &[u8], value: &T) -> Result<(), CwError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| CwError::Corrupt(e.to_string()))?;
    reg.insert(key, &bytes)?;
    Ok(())
}

fn get<T: for<'de> Deserialize<'de>>(
    reg: &KvHandle,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, CwError> {
    match reg.get(key)? {
        Some(v) => Ok(Some(postcard::from_bytes(&v).map_err(|_| corrupt(what))?)),
        None => Ok(None),
    }
}

/// The code `code_id`.
pub(crate) fn code(reg: &KvHandle, code_id: u64) -> Result<CodeRecord, CwError> {
    get(reg, &code_key(code_id), "code")?.ok_or(CwError::NoSuchCode(code_id))
}

/// The wasm of `checksum`.
pub(crate) fn wasm(reg: &KvHandle, checksum: &[u8; 32]) -> Result<Vec<u8>, CwError> {
    let mut wkey = b"w".to_vec();
    wkey.extend_from_slice(checksum);
    reg.get(&wkey)?.ok_or_else(|| corrupt("wasm"))
}

/// The contract at `address`.
pub(crate) fn contract(reg: &KvHandle, address: &str) -> Result<ContractRecord, CwError> {
    get(reg, &contract_key(address), "contract")?
        .ok_or_else(|| CwError::NoSuchContract(address.to_owned()))
}

/// Writes the record of the contract at `address`.
pub(crate) fn set_contract(
    reg: &KvHandle,
    address: &str,
    record: &ContractRecord,
) -> Result<(), CwError> {
    put(reg, &contract_key(address), record)
}

/// Whether a contract lives at `address`.
pub(crate) fn has_contract(reg: &KvHandle, address: &str) -> Result<bool, CwError> {
    Ok(reg.get_with(&contract_key(address), |_| ())?.is_some())
}

/// Every contract, by address.
pub(crate) fn contracts(reg: &KvHandle) -> Result<Vec<(String, ContractRecord)>, CwError> {
    let mut out = Vec::new();
    for entry in reg.range(Some(b"a"), Some(b"b"), store_commit::Order::Ascending)? {
        let (k, v) = entry?;
        let address = String::from_utf8(k[1..].to_vec()).map_err(|_| corrupt("address"))?;
        out.push((
            address,
            postcard::from_bytes(&v).map_err(|_| corrupt("contract"))?,
        ));
    }
    Ok(out)
}

/// The next instance id (wasmd's global instance sequence).
pub(crate) fn next_instance(reg: &KvHandle) -> Result<u64, CwError> {
    next(reg, b"i")
}

/// wasmd's classic contract address: `sha256(sha256("module") || "wasm" || 0 || code_id BE ||
/// instance_id BE)` (the Cosmos SDK's `address.Module("wasm", key)`), 32 bytes, bech32 with
/// `prefix`.
pub fn classic_address(prefix: &str, code_id: u64, instance_id: u64) -> Result<String, CwError> {
    let typ = Sha256::digest(b"module");
    let mut h = Sha256::new();
    h.update(typ);
    h.update(b"wasm\0");
    h.update(code_id.to_be_bytes());
    h.update(instance_id.to_be_bytes());
    let hash = h.finalize();
    let hrp =
        bech32::Hrp::parse(prefix).map_err(|e| CwError::BadInput(format!("bech32 prefix: {e}")))?;
    bech32::encode::<bech32::Bech32>(hrp, &hash)
        .map_err(|e| CwError::BadInput(format!("bech32: {e}")))
}

/// A valid address made from a name, as cosmwasm-std's `MockApi::addr_make` makes one: bech32
/// with `prefix` of the sha256 of `name`. For tests, demos and tools.
pub fn addr_make(prefix: &str, name: &str) -> Result<String, CwError> {
    let hash = Sha256::digest(name.as_bytes());
    let hrp =
        bech32::Hrp::parse(prefix).map_err(|e| CwError::BadInput(format!("bech32 prefix: {e}")))?;
    bech32::encode::<bech32::Bech32>(hrp, &hash)
        .map_err(|e| CwError::BadInput(format!("bech32: {e}")))
}
