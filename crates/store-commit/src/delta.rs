//! The memory delta: the 4 KiB pages in which a memory differs from its full image, zstd-compressed
//! inside a checksummed [`RecordKind::Delta`] record.
//!
//! Payload before compression: page count `u32 LE`, the sorted page indices (`u32 LE` each), then the
//! pages' bytes in the same order.

use store_index::{RecordKind, decode_raw, encode_raw};

use crate::mapping::OS_PAGE;

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

    /// Decodes a delta expected to hold `pages` pages, all below `max_page`.
    pub(crate) fn decode(bytes: &[u8], pages: u32, max_page: u64) -> Result<DeltaPages, String> {
        let compressed = decode_raw(RecordKind::Delta, bytes).map_err(|e| e.to_string())?;
        let expect = 4 + pages as usize * (4 + OS_PAGE);
        let raw = zstd::bulk::decompress(compressed, expect).map_err(|e| e.to_string())?;
        if raw.len() != expect || raw[..4] != pages.to_le_bytes() {
            return Err("delta length does not match its page count".into());
        }
        let n = pages as usize;
        let indices: Vec<u32> = raw[4..4 + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if !indices.windows(2).all(|w| w[0] < w[1])
            || indices.last().is_some_and(|&l| u64::from(l) >= max_page)
        {
            return Err("delta page indices unsorted or out of range".into());
        }
        Ok(DeltaPages {
            indices,
            data: raw[4 + 4 * n..].to_vec(),
        })
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
        assert_eq!(DeltaPages::decode(&bytes, 2, 10).unwrap(), d);
        assert!(DeltaPages::decode(&bytes, 3, 10).is_err());
        assert!(DeltaPages::decode(&bytes, 2, 9).is_err());
        assert_eq!(d.get(9).unwrap()[0], 2);
        assert!(d.get(4).is_none());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(DeltaPages::decode(&bad, 2, 10).is_err());
    }
}
