//! The memory delta: the 4 KiB pages in which a memory differs from its full image, zstd-compressed
//! inside a checksummed [`RecordKind::Delta`] record.
//!
//! Payload before compression: page count `u32 LE`, the sorted page indices (`u32 LE` each), then the
//! pages' bytes in the same order.

use store_index::{IndexError, RecordKind, decode_raw, encode_raw};

use crate::mapping::OS_PAGE;

/// Why a memory delta record was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The index claims more pages than the memory has.
    #[error("delta of {pages} pages exceeds the memory's {max} pages")]
    TooManyPages {
        /// Pages the index claims.
        pages: u32,
        /// Pages of the memory.
        max: u64,
    },
    /// The record envelope (magic, version, checksum) is damaged.
    #[error("delta record: {0}")]
    Record(#[source] IndexError),
    /// The payload is not a zstd frame.
    #[error("delta is not a zstd frame")]
    NotZstd,
    /// The payload's length does not fit the page count.
    #[error("delta length does not match its page count")]
    WrongLength,
    /// The buffer for the pages cannot be allocated.
    #[error("cannot allocate {bytes} bytes for the delta")]
    Allocation {
        /// The size asked for.
        bytes: usize,
    },
    /// zstd refused the frame.
    #[error("cannot decompress the delta: {0}")]
    Decompress(#[source] std::io::Error),
    /// The page indices are unsorted, repeated or past the memory.
    #[error("delta page indices unsorted or out of range")]
    BadIndices,
}

/// Decoded delta pages, sorted by index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeltaPages {
    pub(crate) indices: Vec<u32>,
    pub(crate) data: Vec<u8>,
}

impl DeltaPages {
    pub(crate) fn len(&self) -> usize {
        self.indices.len()
    }

    /// The content of page `index`, when the delta holds it.
    pub(crate) fn get(&self, index: u32) -> Option<&[u8]> {
        let i = self.indices.binary_search(&index).ok()?;
        Some(&self.data[i * OS_PAGE..(i + 1) * OS_PAGE])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.indices
            .iter()
            .copied()
            .zip(self.data.chunks_exact(OS_PAGE))
    }

    pub(crate) fn encode(&self, level: i32) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity(4 + 4 * self.len() + self.data.len());
        raw.extend_from_slice(&(self.len() as u32).to_le_bytes());
        for i in &self.indices {
            raw.extend_from_slice(&i.to_le_bytes());
        }
        raw.extend_from_slice(&self.data);
        let compressed = zstd::bulk::compress(&raw, level)?;
        Ok(encode_raw(RecordKind::Delta, &compressed))
    }

    /// Decodes a delta expected to hold `pages` pages of a memory of `memory_len` bytes.
    ///
    /// `pages` comes from the index, which may be forged or damaged: a count above the memory's OS
    /// page count is refused before anything is allocated, so the decompression buffer (the only
    /// large allocation) is never bigger than the memory plus its page index (0.1%), whatever the
    /// record holds.
    pub(crate) fn decode(
        bytes: &[u8],
        pages: u32,
        memory_len: u64,
    ) -> Result<DeltaPages, DeltaError> {
        let max_page = memory_len / OS_PAGE as u64;
        if u64::from(pages) > max_page {
            return Err(DeltaError::TooManyPages {
                pages,
                max: max_page,
            });
        }
        let n = usize::try_from(pages).map_err(|_| DeltaError::WrongLength)?;
        let head = n
            .checked_mul(4)
            .and_then(|i| i.checked_add(4))
            .ok_or(DeltaError::WrongLength)?;
        let expect = n
            .checked_mul(OS_PAGE)
            .and_then(|d| d.checked_add(head))
            .ok_or(DeltaError::WrongLength)?;
        let compressed = decode_raw(RecordKind::Delta, bytes).map_err(DeltaError::Record)?;
        // Frames written by `encode` declare their size: a mismatch is refused before allocating.
        match zstd::zstd_safe::get_frame_content_size(compressed) {
            Ok(Some(size)) if size != expect as u64 => {
                return Err(DeltaError::WrongLength);
            }
            Ok(_) => {}
            Err(_) => return Err(DeltaError::NotZstd),
        }
        let mut raw: Vec<u8> = Vec::new();
        raw.try_reserve_exact(expect)
            .map_err(|_| DeltaError::Allocation { bytes: expect })?;
        zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(compressed, &mut raw))
            .map_err(DeltaError::Decompress)?;
        if raw.len() != expect || raw[..4] != pages.to_le_bytes() {
            return Err(DeltaError::WrongLength);
        }
        let indices: Vec<u32> = raw[4..head]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if !indices.windows(2).all(|w| w[0] < w[1])
            || indices.last().is_some_and(|&l| u64::from(l) >= max_page)
        {
            return Err(DeltaError::BadIndices);
        }
        // Drop the header in place: no second copy of the pages.
        raw.drain(..head);
        Ok(DeltaPages { indices, data: raw })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let mut d = DeltaPages::default();
        for (i, b) in [(3u32, 1u8), (9, 2)] {
            d.indices.push(i);
            d.data.extend(std::iter::repeat_n(b, OS_PAGE));
        }
        let bytes = d.encode(1).unwrap();
        let len = 10 * OS_PAGE as u64;
        assert_eq!(DeltaPages::decode(&bytes, 2, len).unwrap(), d);
        assert!(DeltaPages::decode(&bytes, 3, len).is_err());
        assert!(DeltaPages::decode(&bytes, 2, len - OS_PAGE as u64).is_err());
        assert_eq!(d.get(9).unwrap()[0], 2);
        assert!(d.get(4).is_none());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(DeltaPages::decode(&bad, 2, len).is_err());
    }

    /// A forged index page count is refused before the decompression buffer is allocated: without
    /// the check, `u32::MAX` pages asked for a 17.6 TB buffer and aborted the process.
    #[test]
    fn forged_page_count_is_refused_without_allocating() {
        let mut d = DeltaPages::default();
        d.indices.push(1);
        d.data.extend(std::iter::repeat_n(7u8, OS_PAGE));
        let bytes = d.encode(1).unwrap();
        let len = 4 * OS_PAGE as u64;
        for pages in [5, 1 << 20, u32::MAX] {
            let err = DeltaPages::decode(&bytes, pages, len)
                .unwrap_err()
                .to_string();
            assert!(err.contains("exceeds the memory"), "{pages}: {err}");
        }
        // Within the memory's page count but not what the frame holds: refused from the frame
        // header, before allocating.
        let err = DeltaPages::decode(&bytes, 4, len).unwrap_err().to_string();
        assert!(err.contains("does not match its page count"), "{err}");
        // A huge memory length does not make a forged count allocate either.
        let err = DeltaPages::decode(&bytes, u32::MAX, u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match its page count"), "{err}");
        assert_eq!(DeltaPages::decode(&bytes, 1, len).unwrap(), d);
        // Garbage inside a valid envelope is an error, not a panic.
        for payload in [&b""[..], b"\x28\xb5\x2f\xfd", b"not zstd at all"] {
            let rec = encode_raw(RecordKind::Delta, payload);
            assert!(DeltaPages::decode(&rec, 1, len).is_err());
            assert!(DeltaPages::decode(&rec, 0, 0).is_err());
        }
    }

    proptest::proptest! {
        /// What the fuzz hook promises, on random and on damaged records: an error, no panic.
        #[test]
        fn decode_never_panics(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            flip in proptest::num::usize::ANY,
            pages in proptest::num::u32::ANY,
            memory_pages in 0u64..1 << 20,
        ) {
            let memory_len = memory_pages * OS_PAGE as u64;
            let _ = DeltaPages::decode(&encode_raw(RecordKind::Delta, &payload), pages, memory_len);
            let mut d = DeltaPages::default();
            d.indices.extend([0, 2]);
            d.data.extend(std::iter::repeat_n(9u8, 2 * OS_PAGE));
            let mut compressed = zstd::bulk::compress(&[&[2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0][..], &d.data].concat(), 1).unwrap();
            let i = flip % compressed.len();
            compressed[i] ^= (flip >> 56) as u8 | 1;
            let rec = encode_raw(RecordKind::Delta, &compressed);
            let _ = DeltaPages::decode(&rec, pages % 4, memory_len);
            let _ = crate::fuzzing::decode_delta(&rec, pages, memory_len);
        }
    }
}
