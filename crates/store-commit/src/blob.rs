//! Host-owned state blobs: stored whole, or as a patch against the full blob of an earlier commit
//! (cumulative, like memory deltas: a read costs one full blob plus one patch).
//!
//! The patch is zstd with the full blob as reference prefix (`zstd --patch-from`): it finds shifted
//! data like bsdiff does, at compression speed. Measured on a 1 MiB serialized map with a 4-byte
//! insertion (benches/store.rs, `commit_blob_1MiB`): qbsdiff took 54 ms per commit for a 183-byte
//! patch, zstd patch-from 6.1 ms for a 126-byte patch (storing the blob whole: 2.8 ms, 1 MiB).
//!
//! This module is the codec only: the planner decides when a patch pays, the files layer reads and
//! checks the files.

use std::io::{Read, Write};

/// A patch is kept only if smaller than `1/DIFF_RATIO` of the blob.
pub(crate) const DIFF_RATIO: usize = 4;

/// Why a blob patch could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The blob length the index records is more than the patch can decode to, or does not
    /// fit this platform.
    #[error("blob of {len} bytes cannot come from this patch")]
    TooLarge {
        /// The length.
        len: u64,
    },
    /// zstd refused the patch.
    #[error("cannot decode the blob patch: {0}")]
    Decode(#[source] std::io::Error),
    /// The patch makes a blob of another length.
    #[error("blob patch has the wrong target size")]
    WrongSize,
}

/// The zstd window that lets the patch reach back over the whole prefix.
fn window_log(base: usize, target: usize) -> u32 {
    let span = (base + target).max(1 << 10) as u64;
    (64 - (span - 1).leading_zeros()).clamp(10, 30)
}

/// A patch turning `base` into `target`.
pub(crate) fn diff(base: &[u8], target: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, base)?;
    enc.window_log(window_log(base.len(), target.len()))?;
    enc.long_distance_matching(true)?;
    enc.write_all(target)?;
    enc.finish()
}

/// The most bytes a zstd frame of `patch_len` bytes can decode to: every block yields at most
/// 128 KiB and takes at least 4 bytes (a 3-byte header and an RLE byte).
pub(crate) fn max_patched_len(patch_len: usize) -> u64 {
    (patch_len as u64 / 4).saturating_mul(128 << 10)
}

/// The blob that `patch` makes of `base`, which must be `len` bytes long.
///
/// `len` comes from the index, which the root does not cover (it may be forged or damaged): a
/// length the patch cannot decode to, or that cannot be allocated, is refused before anything
/// is allocated for it.
pub(crate) fn apply(base: &[u8], patch: &[u8], len: u64) -> Result<Vec<u8>, PatchError> {
    if len > max_patched_len(patch.len()) {
        return Err(PatchError::TooLarge { len });
    }
    let too_large = |_| PatchError::TooLarge { len };
    let len = usize::try_from(len).map_err(too_large)?;
    let mut dec =
        zstd::stream::read::Decoder::with_ref_prefix(patch, base).map_err(PatchError::Decode)?;
    dec.window_log_max(window_log(base.len(), len))
        .map_err(PatchError::Decode)?;
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| PatchError::TooLarge { len: len as u64 })?;
    // One byte more than expected reveals a patch for another length.
    dec.take(len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(PatchError::Decode)?;
    if out.len() != len {
        return Err(PatchError::WrongSize);
    }
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
        assert!(matches!(
            apply(&base, &patch, 5),
            Err(PatchError::WrongSize | PatchError::Decode(_))
        ));
        // A length from a forged index is refused before anything is allocated for it.
        for len in [max_patched_len(patch.len()) + 1, 1 << 46, u64::MAX] {
            assert!(
                matches!(apply(&base, &patch, len), Err(PatchError::TooLarge { .. })),
                "{len}"
            );
        }
    }
}
