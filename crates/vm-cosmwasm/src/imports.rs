//! The `env` imports of a CosmWasm contract, as cosmwasm-vm 3.0.10 defines them: the same
//! names and signatures, the same gas charges in the same order, the same limits, return codes
//! and errors.
//!
//! Every import charges `host_call_cost` first, then reads its arguments (each read charged by
//! [`read_region`]), then charges its own cost or the backend's, then does the work and writes
//! its result (each write charged by [`write_region`]). A host error fails the call with a
//! [`CallError`] inside the `wasmtime::Error`; a trap of the contract's `allocate` passes
//! through, as out of gas when the metering marked the counter exhausted.
//!
//! `write_to_contract` calls the contract's `allocate` from inside an import. Like cosmwasm-vm,
//! it counts that as one more level of guest calls and refuses to pass [`MAX_CALL_DEPTH`]; the
//! entry point is level 1 and `Environment::call_depth` counts the levels above it (0 while
//! the entry point runs, 1 inside an import's `allocate`).

use cosmwasm_crypto::{
    CryptoError, ECDSA_PUBKEY_MAX_LEN, ECDSA_SIGNATURE_LEN, EDDSA_PUBKEY_LEN, HashFunction,
    MESSAGE_HASH_MAX_LEN, bls12_381_aggregate_g1, bls12_381_aggregate_g2, bls12_381_hash_to_g1,
    bls12_381_hash_to_g2, bls12_381_pairing_equality, ed25519_batch_verify, ed25519_verify,
    secp256k1_recover_pubkey, secp256k1_verify, secp256r1_recover_pubkey, secp256r1_verify,
};
use cosmwasm_std::Order;
use wasmtime::{Caller, Linker, Val};

use crate::backend::BackendError;
use crate::env::{CallError, DebugInfo, Environment, gas_left, process_gas_info};
use crate::gas::{GasInfo, LinearGasCost};
use crate::memory::{
    Communication, decode_sections, encode_sections, maybe_read_region, read_region,
    read_region_or, write_region,
};

const KI: usize = 1024;
const MI: usize = 1024 * 1024;
/// Longest key of `db_read`, `db_write`, `db_remove` and the bounds of `db_scan`.
pub(crate) const MAX_LENGTH_DB_KEY: usize = 64 * KI;
/// Longest value of `db_write`.
pub(crate) const MAX_LENGTH_DB_VALUE: usize = 128 * KI;
/// Longest canonical address `addr_humanize` reads.
pub(crate) const MAX_LENGTH_CANONICAL_ADDRESS: usize = 64;
/// Longest human address the address imports read.
pub(crate) const MAX_LENGTH_HUMAN_ADDRESS: usize = 256;
/// Longest `query_chain` request.
pub(crate) const MAX_LENGTH_QUERY_CHAIN_REQUEST: usize = 64 * KI;
const MAX_LENGTH_ED25519_SIGNATURE: usize = 64;
const MAX_LENGTH_ED25519_MESSAGE: usize = 128 * KI;
const MAX_COUNT_ED25519_BATCH: usize = 256;
/// Longest `debug` message.
pub(crate) const MAX_LENGTH_DEBUG: usize = 2 * MI;
/// Longest `abort` message.
pub(crate) const MAX_LENGTH_ABORT: usize = 2 * MI;
const BLS12_381_G1_POINT_LEN: usize = 48;
const BLS12_381_G2_POINT_LEN: usize = 96;
const BLS12_381_MAX_AGGREGATE_SIZE: usize = 2 * MI;
const BLS12_381_MAX_MESSAGE_SIZE: usize = 5 * MI;
const BLS12_381_MAX_DST_SIZE: usize = 5 * KI;

/// Deepest nesting of guest calls: the entry point (1) and an `allocate` inside an import (2).
pub(crate) const MAX_CALL_DEPTH: usize = 2;

/// Return codes of the verification and BLS imports (0 also: success).
const CODE_VALID: u32 = 0;
const CODE_INVALID: u32 = 1;

type Ctx<'a> = Caller<'a, Environment>;
/// A key recovery of cosmwasm-crypto: (hash, signature, recovery parameter) to the key.
type RecoverFn = fn(&[u8], &[u8], u8) -> Result<Vec<u8>, CryptoError>;
type VerifyFn = fn(&[u8], &[u8], &[u8]) -> Result<bool, CryptoError>;
type HostResult<T> = Result<T, wasmtime::Error>;

/// Defines every `env` import of cosmwasm-vm 3.0.10 in `linker`.
pub(crate) fn define(linker: &mut Linker<Environment>) -> Result<(), wasmtime::Error> {
    linker.func_wrap("env", "db_read", db_read)?;
    linker.func_wrap("env", "db_write", db_write)?;
    linker.func_wrap("env", "db_remove", db_remove)?;
    linker.func_wrap("env", "db_scan", db_scan)?;
    linker.func_wrap("env", "db_next", db_next)?;
    linker.func_wrap("env", "db_next_key", db_next_key)?;
    linker.func_wrap("env", "db_next_value", db_next_value)?;
    linker.func_wrap("env", "addr_validate", addr_validate)?;
    linker.func_wrap("env", "addr_canonicalize", addr_canonicalize)?;
    linker.func_wrap("env", "addr_humanize", addr_humanize)?;
    linker.func_wrap("env", "secp256k1_verify", secp256k1_verify_import)?;
    linker.func_wrap(
        "env",
        "secp256k1_recover_pubkey",
        secp256k1_recover_pubkey_import,
    )?;
    linker.func_wrap("env", "secp256r1_verify", secp256r1_verify_import)?;
    linker.func_wrap(
        "env",
        "secp256r1_recover_pubkey",
        secp256r1_recover_pubkey_import,
    )?;
    linker.func_wrap("env", "ed25519_verify", ed25519_verify_import)?;
    linker.func_wrap("env", "ed25519_batch_verify", ed25519_batch_verify_import)?;
    linker.func_wrap(
        "env",
        "bls12_381_aggregate_g1",
        bls12_381_aggregate_g1_import,
    )?;
    linker.func_wrap(
        "env",
        "bls12_381_aggregate_g2",
        bls12_381_aggregate_g2_import,
    )?;
    linker.func_wrap(
        "env",
        "bls12_381_pairing_equality",
        bls12_381_pairing_equality_import,
    )?;
    linker.func_wrap("env", "bls12_381_hash_to_g1", bls12_381_hash_to_g1_import)?;
    linker.func_wrap("env", "bls12_381_hash_to_g2", bls12_381_hash_to_g2_import)?;
    linker.func_wrap("env", "debug", debug)?;
    linker.func_wrap("env", "abort", abort)?;
    linker.func_wrap("env", "query_chain", query_chain)?;
    Ok(())
}

/// The imports' names, in the order [`define`] defines them.
#[cfg(test)]
pub(crate) const NAMES: [&str; 24] = [
    "db_read",
    "db_write",
    "db_remove",
    "db_scan",
    "db_next",
    "db_next_key",
    "db_next_value",
    "addr_validate",
    "addr_canonicalize",
    "addr_humanize",
    "secp256k1_verify",
    "secp256k1_recover_pubkey",
    "secp256r1_verify",
    "secp256r1_recover_pubkey",
    "ed25519_verify",
    "ed25519_batch_verify",
    "bls12_381_aggregate_g1",
    "bls12_381_aggregate_g2",
    "bls12_381_pairing_equality",
    "bls12_381_hash_to_g1",
    "bls12_381_hash_to_g2",
    "debug",
    "abort",
    "query_chain",
];

fn charge(c: &mut Ctx<'_>, cost: u64) -> Result<(), CallError> {
    process_gas_info(c, GasInfo::with_cost(cost))
}

fn charge_host_call(c: &mut Ctx<'_>) -> Result<(), CallError> {
    let cost = c.data().gas_config.host_call_cost;
    charge(c, cost)
}

/// Charges `cost` for `items` items; an overflowing cost is out of gas, as in cosmwasm-vm.
fn charge_linear(
    c: &mut Ctx<'_>,
    cost: impl Fn(&crate::gas::GasConfig) -> LinearGasCost,
    items: u64,
) -> Result<(), CallError> {
    let total = cost(&c.data().gas_config)
        .total_cost(items)
        .ok_or(CallError::GasDepletion)?;
    charge(c, total)
}

/// A backend error as the call's error (out of gas stays out of gas).
fn backend_error(e: BackendError) -> CallError {
    if crate::gas::is_out_of_gas(&e) {
        CallError::GasDepletion
    } else {
        CallError::Backend(e)
    }
}

/// A crypto error cosmwasm-vm does not expect from this function (it panics; we fail the call).
fn unexpected(e: CryptoError) -> CallError {
    CallError::Generic(format!("unexpected crypto error: {e}"))
}

/// Copies `data` into a new region of the contract (through its `allocate`) and returns the
/// region's address.
fn write_to_contract(c: &mut Ctx<'_>, data: &[u8]) -> HostResult<u32> {
    let size = u32::try_from(data.len()).map_err(|_| {
        CallError::Generic(format!(
            "Couldn't convert from usize to u32. Input: {}",
            data.len()
        ))
    })?;
    let exports = c
        .data()
        .exports
        .clone()
        .ok_or_else(|| CallError::Communication("instance exports are not set".into()))?;
    // The entry point's level, those of imports' guest calls in progress, and this one.
    if 1 + c.data().call_depth + 1 > MAX_CALL_DEPTH {
        return Err(CallError::Generic("Maximum call depth exceeded.".into()).into());
    }
    c.data_mut().call_depth += 1;
    let result = exports.allocate.call(&mut *c, size);
    c.data_mut().call_depth -= 1;
    let ptr = match result {
        Ok(ptr) => ptr,
        Err(e) => {
            let exhausted = matches!(exports.gas_exhausted.get(&mut *c), Val::I32(v) if v != 0);
            return Err(if exhausted && !e.is::<CallError>() {
                CallError::GasDepletion.into()
            } else {
                e
            });
        }
    };
    if ptr == 0 {
        return Err(CallError::from(Communication::ZeroAddress).into());
    }
    write_region(c, ptr, data)?;
    Ok(ptr)
}

fn db_read(mut c: Ctx<'_>, key_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let key = read_region(&mut c, key_ptr, MAX_LENGTH_DB_KEY)?;
    let (result, gas) = c.data().storage.get(&key);
    process_gas_info(&mut c, gas)?;
    match result.map_err(backend_error)? {
        Some(value) => write_to_contract(&mut c, &value),
        None => Ok(0),
    }
}

/// cosmwasm-vm reports an over-long key or value of `db_write` as a generic error.
fn too_big(kind: &'static str) -> impl FnOnce(usize, usize) -> CallError {
    move |length, max_length| {
        CallError::Generic(format!(
            "{kind} too big. Tried to write {length} bytes to storage, limit is {max_length}."
        ))
    }
}

fn db_write(mut c: Ctx<'_>, key_ptr: u32, value_ptr: u32) -> HostResult<()> {
    charge_host_call(&mut c)?;
    if c.data().storage_readonly {
        return Err(CallError::WriteAccessDenied.into());
    }
    let key = read_region_or(&mut c, key_ptr, MAX_LENGTH_DB_KEY, too_big("Key"))?;
    let value = read_region_or(&mut c, value_ptr, MAX_LENGTH_DB_VALUE, too_big("Value"))?;
    let (result, gas) = c.data_mut().storage.set(&key, &value);
    process_gas_info(&mut c, gas)?;
    result.map_err(backend_error)?;
    Ok(())
}

fn db_remove(mut c: Ctx<'_>, key_ptr: u32) -> HostResult<()> {
    charge_host_call(&mut c)?;
    if c.data().storage_readonly {
        return Err(CallError::WriteAccessDenied.into());
    }
    let key = read_region(&mut c, key_ptr, MAX_LENGTH_DB_KEY)?;
    let (result, gas) = c.data_mut().storage.remove(&key);
    process_gas_info(&mut c, gas)?;
    result.map_err(backend_error)?;
    Ok(())
}

fn db_scan(mut c: Ctx<'_>, start_ptr: u32, end_ptr: u32, order: i32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let start = maybe_read_region(&mut c, start_ptr, MAX_LENGTH_DB_KEY)?;
    let end = maybe_read_region(&mut c, end_ptr, MAX_LENGTH_DB_KEY)?;
    let order =
        Order::try_from(order).map_err(|_| CallError::from(Communication::InvalidOrder(order)))?;
    let (result, gas) = c
        .data_mut()
        .storage
        .scan(start.as_deref(), end.as_deref(), order);
    process_gas_info(&mut c, gas)?;
    Ok(result.map_err(backend_error)?)
}

fn db_next(mut c: Ctx<'_>, iterator_id: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let (result, gas) = c.data_mut().storage.next(iterator_id);
    process_gas_info(&mut c, gas)?;
    // An empty key tells the contract the iterator is at its end.
    let (key, value) = result.map_err(backend_error)?.unwrap_or_default();
    let out = encode_sections(&[&key, &value])?;
    write_to_contract(&mut c, &out)
}

fn db_next_key(mut c: Ctx<'_>, iterator_id: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let (result, gas) = c.data_mut().storage.next_key(iterator_id);
    process_gas_info(&mut c, gas)?;
    match result.map_err(backend_error)? {
        Some(key) => write_to_contract(&mut c, &key),
        None => Ok(0),
    }
}

fn db_next_value(mut c: Ctx<'_>, iterator_id: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let (result, gas) = c.data_mut().storage.next_value(iterator_id);
    process_gas_info(&mut c, gas)?;
    match result.map_err(backend_error)? {
        Some(value) => write_to_contract(&mut c, &value),
        None => Ok(0),
    }
}

/// Reads a human address for the address imports. `Err(Ok(ptr))`: the contract already got an
/// error message at `ptr` (empty input or not UTF-8), as cosmwasm-vm answers those.
fn read_human(c: &mut Ctx<'_>, ptr: u32) -> HostResult<Result<String, u32>> {
    let bytes = read_region(c, ptr, MAX_LENGTH_HUMAN_ADDRESS)?;
    if bytes.is_empty() {
        return write_to_contract(c, b"Input is empty").map(Err);
    }
    charge_linear(c, |g| g.string_from_bytes_cost, bytes.len() as u64)?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(Ok(s)),
        Err(_) => write_to_contract(c, b"Input is not valid UTF-8").map(Err),
    }
}

fn addr_validate(mut c: Ctx<'_>, source_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let human = match read_human(&mut c, source_ptr)? {
        Ok(h) => h,
        Err(message) => return Ok(message),
    };
    let (result, gas) = c.data().api.addr_validate(&human);
    process_gas_info(&mut c, gas)?;
    match result {
        Ok(()) => Ok(0),
        Err(BackendError::UserErr { msg }) => write_to_contract(&mut c, msg.as_bytes()),
        Err(e) => Err(backend_error(e).into()),
    }
}

fn addr_canonicalize(mut c: Ctx<'_>, source_ptr: u32, destination_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let human = match read_human(&mut c, source_ptr)? {
        Ok(h) => h,
        Err(message) => return Ok(message),
    };
    let (result, gas) = c.data().api.addr_canonicalize(&human);
    process_gas_info(&mut c, gas)?;
    match result {
        Ok(canonical) => {
            write_region(&mut c, destination_ptr, &canonical)?;
            Ok(0)
        }
        Err(BackendError::UserErr { msg }) => write_to_contract(&mut c, msg.as_bytes()),
        Err(e) => Err(backend_error(e).into()),
    }
}

fn addr_humanize(mut c: Ctx<'_>, source_ptr: u32, destination_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let canonical = read_region(&mut c, source_ptr, MAX_LENGTH_CANONICAL_ADDRESS)?;
    let (result, gas) = c.data().api.addr_humanize(&canonical);
    process_gas_info(&mut c, gas)?;
    match result {
        Ok(human) => {
            write_region(&mut c, destination_ptr, human.as_bytes())?;
            Ok(0)
        }
        Err(BackendError::UserErr { msg }) => write_to_contract(&mut c, msg.as_bytes()),
        Err(e) => Err(backend_error(e).into()),
    }
}

/// The code of a verification: 0 valid, 1 invalid, or the crypto error's code when `expected`
/// accepts the error.
fn verify_code(
    result: Result<bool, CryptoError>,
    expected: fn(&CryptoError) -> bool,
) -> Result<u32, CallError> {
    match result {
        Ok(true) => Ok(CODE_VALID),
        Ok(false) => Ok(CODE_INVALID),
        Err(e) if expected(&e) => Ok(e.code()),
        Err(e) => Err(unexpected(e)),
    }
}

fn ecdsa_verify_errors(e: &CryptoError) -> bool {
    matches!(
        e,
        CryptoError::InvalidHashFormat { .. }
            | CryptoError::InvalidPubkeyFormat { .. }
            | CryptoError::InvalidSignatureFormat { .. }
            | CryptoError::GenericErr { .. }
    )
}

fn ecdsa_recover_errors(e: &CryptoError) -> bool {
    matches!(
        e,
        CryptoError::InvalidHashFormat { .. }
            | CryptoError::InvalidSignatureFormat { .. }
            | CryptoError::InvalidRecoveryParam { .. }
            | CryptoError::GenericErr { .. }
    )
}

/// One signature check as cosmwasm-vm runs it: the host-call charge, the three regions (message
/// or hash, signature, key) read within `limits`, the check's own cost, then the result code.
fn verify(
    c: &mut Ctx<'_>,
    ptrs: [u32; 3],
    limits: [usize; 3],
    cost: fn(&crate::gas::GasConfig) -> u64,
    check: VerifyFn,
    expected: fn(&CryptoError) -> bool,
) -> HostResult<u32> {
    charge_host_call(c)?;
    let message = read_region(c, ptrs[0], limits[0])?;
    let signature = read_region(c, ptrs[1], limits[1])?;
    let pubkey = read_region(c, ptrs[2], limits[2])?;
    let cost = cost(&c.data().gas_config);
    charge(c, cost)?;
    Ok(verify_code(check(&message, &signature, &pubkey), expected)?)
}

const ECDSA_LIMITS: [usize; 3] = [
    MESSAGE_HASH_MAX_LEN,
    ECDSA_SIGNATURE_LEN,
    ECDSA_PUBKEY_MAX_LEN,
];

fn secp256k1_verify_import(
    mut c: Ctx<'_>,
    hash_ptr: u32,
    signature_ptr: u32,
    pubkey_ptr: u32,
) -> HostResult<u32> {
    verify(
        &mut c,
        [hash_ptr, signature_ptr, pubkey_ptr],
        ECDSA_LIMITS,
        |g| g.secp256k1_verify_cost,
        secp256k1_verify,
        ecdsa_verify_errors,
    )
}

fn secp256r1_verify_import(
    mut c: Ctx<'_>,
    hash_ptr: u32,
    signature_ptr: u32,
    pubkey_ptr: u32,
) -> HostResult<u32> {
    verify(
        &mut c,
        [hash_ptr, signature_ptr, pubkey_ptr],
        ECDSA_LIMITS,
        |g| g.secp256r1_verify_cost,
        secp256r1_verify,
        ecdsa_verify_errors,
    )
}

/// The result of a key recovery as cosmwasm-vm packs it: the key's region address in the low
/// half, or an error code in the high half.
fn recover(
    c: &mut Ctx<'_>,
    hash_ptr: u32,
    signature_ptr: u32,
    recover_param: u32,
    cost: fn(&crate::gas::GasConfig) -> u64,
    recover: RecoverFn,
) -> HostResult<u64> {
    charge_host_call(c)?;
    let hash = read_region(c, hash_ptr, MESSAGE_HASH_MAX_LEN)?;
    let signature = read_region(c, signature_ptr, ECDSA_SIGNATURE_LEN)?;
    let Ok(recover_param) = u8::try_from(recover_param) else {
        return Ok(u64::from(CryptoError::invalid_recovery_param().code()) << 32);
    };
    let cost = cost(&c.data().gas_config);
    charge(c, cost)?;
    match recover(&hash, &signature, recover_param) {
        Ok(pubkey) => Ok(u64::from(write_to_contract(c, &pubkey)?)),
        Err(e) if ecdsa_recover_errors(&e) => Ok(u64::from(e.code()) << 32),
        Err(e) => Err(unexpected(e).into()),
    }
}

fn secp256k1_recover_pubkey_import(
    mut c: Ctx<'_>,
    hash_ptr: u32,
    signature_ptr: u32,
    recover_param: u32,
) -> HostResult<u64> {
    recover(
        &mut c,
        hash_ptr,
        signature_ptr,
        recover_param,
        |g| g.secp256k1_recover_pubkey_cost,
        secp256k1_recover_pubkey,
    )
}

fn secp256r1_recover_pubkey_import(
    mut c: Ctx<'_>,
    hash_ptr: u32,
    signature_ptr: u32,
    recover_param: u32,
) -> HostResult<u64> {
    recover(
        &mut c,
        hash_ptr,
        signature_ptr,
        recover_param,
        |g| g.secp256r1_recover_pubkey_cost,
        secp256r1_recover_pubkey,
    )
}

fn ed25519_errors(e: &CryptoError) -> bool {
    matches!(
        e,
        CryptoError::InvalidPubkeyFormat { .. }
            | CryptoError::InvalidSignatureFormat { .. }
            | CryptoError::GenericErr { .. }
    )
}

fn ed25519_verify_import(
    mut c: Ctx<'_>,
    message_ptr: u32,
    signature_ptr: u32,
    pubkey_ptr: u32,
) -> HostResult<u32> {
    verify(
        &mut c,
        [message_ptr, signature_ptr, pubkey_ptr],
        [
            MAX_LENGTH_ED25519_MESSAGE,
            MAX_LENGTH_ED25519_SIGNATURE,
            EDDSA_PUBKEY_LEN,
        ],
        |g| g.ed25519_verify_cost,
        ed25519_verify,
        ed25519_errors,
    )
}

fn ed25519_batch_verify_import(
    mut c: Ctx<'_>,
    messages_ptr: u32,
    signatures_ptr: u32,
    public_keys_ptr: u32,
) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let messages = read_region(
        &mut c,
        messages_ptr,
        (MAX_LENGTH_ED25519_MESSAGE + 4) * MAX_COUNT_ED25519_BATCH,
    )?;
    let signatures = read_region(
        &mut c,
        signatures_ptr,
        (MAX_LENGTH_ED25519_SIGNATURE + 4) * MAX_COUNT_ED25519_BATCH,
    )?;
    let public_keys = read_region(
        &mut c,
        public_keys_ptr,
        (EDDSA_PUBKEY_LEN + 4) * MAX_COUNT_ED25519_BATCH,
    )?;
    let messages = decode_sections(&messages).map_err(CallError::from)?;
    let signatures = decode_sections(&signatures).map_err(CallError::from)?;
    let public_keys = decode_sections(&public_keys).map_err(CallError::from)?;
    let count = signatures.len() as u64;
    if public_keys.len() == 1 {
        charge_linear(&mut c, |g| g.ed25519_batch_verify_one_pubkey_cost, count)?;
    } else {
        charge_linear(&mut c, |g| g.ed25519_batch_verify_cost, count)?;
    }
    let result = ed25519_batch_verify(&mut rand_core::OsRng, &messages, &signatures, &public_keys);
    Ok(verify_code(result, |e| {
        matches!(e, CryptoError::BatchErr { .. }) || ed25519_errors(e)
    })?)
}

fn bls_aggregate_errors(e: &CryptoError) -> bool {
    matches!(
        e,
        CryptoError::InvalidPoint { .. } | CryptoError::Aggregation { .. }
    )
}

fn bls12_381_aggregate_g1_import(mut c: Ctx<'_>, g1s_ptr: u32, out_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let g1s = read_region(&mut c, g1s_ptr, BLS12_381_MAX_AGGREGATE_SIZE)?;
    let points = (g1s.len() / BLS12_381_G1_POINT_LEN) as u64;
    charge_linear(&mut c, |g| g.bls12_381_aggregate_g1_cost, points)?;
    match bls12_381_aggregate_g1(&g1s) {
        Ok(point) => {
            write_region(&mut c, out_ptr, &point)?;
            Ok(CODE_VALID)
        }
        Err(e) if bls_aggregate_errors(&e) => Ok(e.code()),
        Err(e) => Err(unexpected(e).into()),
    }
}

fn bls12_381_aggregate_g2_import(mut c: Ctx<'_>, g2s_ptr: u32, out_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let g2s = read_region(&mut c, g2s_ptr, BLS12_381_MAX_AGGREGATE_SIZE)?;
    let points = (g2s.len() / BLS12_381_G2_POINT_LEN) as u64;
    charge_linear(&mut c, |g| g.bls12_381_aggregate_g2_cost, points)?;
    match bls12_381_aggregate_g2(&g2s) {
        Ok(point) => {
            write_region(&mut c, out_ptr, &point)?;
            Ok(CODE_VALID)
        }
        Err(e) if bls_aggregate_errors(&e) => Ok(e.code()),
        Err(e) => Err(unexpected(e).into()),
    }
}

fn bls12_381_pairing_equality_import(
    mut c: Ctx<'_>,
    ps_ptr: u32,
    qs_ptr: u32,
    r_ptr: u32,
    s_ptr: u32,
) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let ps = read_region(&mut c, ps_ptr, BLS12_381_MAX_AGGREGATE_SIZE)?;
    let qs = read_region(&mut c, qs_ptr, BLS12_381_MAX_AGGREGATE_SIZE)?;
    let r = read_region(&mut c, r_ptr, BLS12_381_G1_POINT_LEN)?;
    let s = read_region(&mut c, s_ptr, BLS12_381_G2_POINT_LEN)?;
    // n pairs on the left plus (r, s): estimated from ps alone, as cosmwasm-vm does.
    let pairings = (ps.len() / BLS12_381_G1_POINT_LEN) as u64 + 1;
    charge_linear(&mut c, |g| g.bls12_381_pairing_equality_cost, pairings)?;
    Ok(verify_code(
        bls12_381_pairing_equality(&ps, &qs, &r, &s),
        |e| {
            matches!(
                e,
                CryptoError::PairingEquality { .. } | CryptoError::InvalidPoint { .. }
            )
        },
    )?)
}

/// `hash_to_g1` / `hash_to_g2`: the point is written to `out_ptr`; an unknown hash function is
/// its error code (after the charge, as in cosmwasm-vm).
fn hash_to_curve<const N: usize>(
    c: &mut Ctx<'_>,
    hash_function: u32,
    msg_ptr: u32,
    dst_ptr: u32,
    out_ptr: u32,
    cost: fn(&crate::gas::GasConfig) -> u64,
    hash: fn(HashFunction, &[u8], &[u8]) -> [u8; N],
) -> HostResult<u32> {
    charge_host_call(c)?;
    let msg = read_region(c, msg_ptr, BLS12_381_MAX_MESSAGE_SIZE)?;
    let dst = read_region(c, dst_ptr, BLS12_381_MAX_DST_SIZE)?;
    let cost = cost(&c.data().gas_config);
    charge(c, cost)?;
    let function = match HashFunction::from_u32(hash_function) {
        Ok(f) => f,
        Err(e) => return Ok(e.code()),
    };
    let point = hash(function, &msg, &dst);
    write_region(c, out_ptr, &point)?;
    Ok(CODE_VALID)
}

fn bls12_381_hash_to_g1_import(
    mut c: Ctx<'_>,
    hash_function: u32,
    msg_ptr: u32,
    dst_ptr: u32,
    out_ptr: u32,
) -> HostResult<u32> {
    hash_to_curve(
        &mut c,
        hash_function,
        msg_ptr,
        dst_ptr,
        out_ptr,
        |g| g.bls12_381_hash_to_g1_cost,
        bls12_381_hash_to_g1,
    )
}

fn bls12_381_hash_to_g2_import(
    mut c: Ctx<'_>,
    hash_function: u32,
    msg_ptr: u32,
    dst_ptr: u32,
    out_ptr: u32,
) -> HostResult<u32> {
    hash_to_curve(
        &mut c,
        hash_function,
        msg_ptr,
        dst_ptr,
        out_ptr,
        |g| g.bls12_381_hash_to_g2_cost,
        bls12_381_hash_to_g2,
    )
}

fn debug(mut c: Ctx<'_>, message_ptr: u32) -> HostResult<()> {
    charge_host_call(&mut c)?;
    let message = read_region(&mut c, message_ptr, MAX_LENGTH_DEBUG)?;
    let message = String::from_utf8_lossy(&message);
    if c.data().debug.is_some() {
        let gas_remaining = gas_left(&mut c)?;
        if let Some(handler) = c.data_mut().debug.as_mut() {
            handler(&message, DebugInfo { gas_remaining });
        }
    } else {
        tracing::debug!(target: "vm_cosmwasm::contract", "{message}");
    }
    Ok(())
}

fn abort(mut c: Ctx<'_>, message_ptr: u32) -> HostResult<()> {
    charge_host_call(&mut c)?;
    let message = read_region(&mut c, message_ptr, MAX_LENGTH_ABORT)?;
    charge_linear(&mut c, |g| g.string_from_bytes_cost, message.len() as u64)?;
    Err(CallError::Aborted(String::from_utf8_lossy(&message).into_owned()).into())
}

fn query_chain(mut c: Ctx<'_>, request_ptr: u32) -> HostResult<u32> {
    charge_host_call(&mut c)?;
    let request = read_region(&mut c, request_ptr, MAX_LENGTH_QUERY_CHAIN_REQUEST)?;
    let gas_remaining = gas_left(&mut c)?;
    let (result, gas) = c.data_mut().querier.query_raw(&request, gas_remaining);
    process_gas_info(&mut c, gas)?;
    let result = result.map_err(backend_error)?;
    let serialized = serde_json::to_vec(&result)
        .map_err(|e| CallError::Generic(format!("serializing the query result: {e}")))?;
    write_to_contract(&mut c, &serialized)
}

#[cfg(test)]
mod tests;
