//! Host-owned state blobs: stored whole, or as a qbsdiff patch against the full blob of an earlier
//! commit (cumulative, like memory deltas: a read costs one full blob plus one patch).

use std::io::Cursor;
use std::path::Path;

use store_index::{Digest, ModuleEntry, hash};

use crate::{Store, StoreError, io_err};

/// A patch is kept only if smaller than `1/DIFF_RATIO` of the blob.
pub(crate) const DIFF_RATIO: usize = 4;

fn corrupt(path: &Path, reason: &str) -> StoreError {
    StoreError::Corrupted {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads the full blob file of a module in commit directory `dir`, checking it against `hash`.
pub(crate) fn read_full(
    store: &Store,
    dir: &Path,
    m: &ModuleEntry,
    expect: (u64, Digest),
) -> Result<Vec<u8>, StoreError> {
    let path = dir.join("blob").join(m.id.to_hex());
    let bytes = store
        .inner
        .fs
        .read_file(&path)
        .map_err(io_err("read", &path))?;
    if bytes.len() as u64 != expect.0 || hash::blob(&bytes) != expect.1 {
        return Err(corrupt(&path, "blob does not match its hash"));
    }
    Ok(bytes)
}

/// The module's blob in the commit at `dir`, checked against the index.
pub(crate) fn read(store: &Store, dir: &Path, m: &ModuleEntry) -> Result<Vec<u8>, StoreError> {
    let Some(d) = &m.blob_delta else {
        return read_full(store, dir, m, (m.blob_len, m.blob_hash));
    };
    let base = read_full(store, dir, m, (d.base_len, d.base_hash))?;
    let path = dir.join("blob").join(format!("{}.diff", m.id.to_hex()));
    let patch = store
        .inner
        .fs
        .read_file(&path)
        .map_err(io_err("read", &path))?;
    if patch.len() as u64 != d.file_len || Digest::sha256(&patch) != d.file_hash {
        return Err(corrupt(&path, "blob patch does not match its hash"));
    }
    let blob = apply(&base, &patch, m.blob_len).map_err(|e| corrupt(&path, &e))?;
    if hash::blob(&blob) != m.blob_hash {
        return Err(corrupt(&path, "patched blob does not match its hash"));
    }
    Ok(blob)
}

/// A qbsdiff patch turning `base` into `target`.
pub(crate) fn diff(base: &[u8], target: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(base, target).compare(Cursor::new(&mut patch))?;
    Ok(patch)
}

fn apply(base: &[u8], patch: &[u8], len: u64) -> Result<Vec<u8>, String> {
    let patcher = qbsdiff::Bspatch::new(patch).map_err(|e| e.to_string())?;
    if patcher.hint_target_size() != len {
        return Err("blob patch has the wrong target size".into());
    }
    let mut out = Vec::with_capacity(usize::try_from(len).map_err(|e| e.to_string())?);
    patcher
        .apply(base, Cursor::new(&mut out))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_round_trip() {
        let base: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut target = base.clone();
        target.splice(
            1000..1000,
            b"inserted shifts everything after".iter().copied(),
        );
        target[150_000] ^= 1;
        let patch = diff(&base, &target).unwrap();
        assert!(patch.len() * DIFF_RATIO < target.len(), "{}", patch.len());
        assert_eq!(apply(&base, &patch, target.len() as u64).unwrap(), target);
        assert!(apply(&base, &patch, 5).is_err());
    }
}
