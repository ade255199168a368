//! STUB (lead's local scaffolding, replaced by the cwgas branch).
use std::collections::BTreeSet;
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error("{0}")]
    Invalid(String),
}
pub(crate) struct CodeInfo;
pub(crate) fn check_wasm(wasm: &[u8], _c: &BTreeSet<String>) -> Result<CodeInfo, CheckError> {
    wasmparser::validate(wasm).map_err(|e| CheckError::Invalid(e.to_string()))?;
    Ok(CodeInfo)
}
pub(crate) fn configure_engine(_config: &mut wasmtime::Config) {}
