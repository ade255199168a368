//! The memory merkle tree ([`MemoryTree`]) over the [`PAGE_SIZE`] pages of one linear memory, its
//! [`RecordKind::Tree`] encoding, and the zero-page shortcuts.

use std::sync::OnceLock;

use crate::record::{RecordKind, decode_raw, encode_raw};
use crate::{Digest, IndexError, hash};

/// Size of one memory page as the merkle tree sees it: the wasm page size, 64 KiB.
///
/// Every memory length in the store is a multiple of it.
pub const PAGE_SIZE: usize = 64 * 1024;

/// The hash of a page of zeroes, the leaf of every untouched page.
pub fn zero_page_hash() -> Digest {
    static ZERO: OnceLock<Digest> = OnceLock::new();
    *ZERO.get_or_init(|| hash::page(&vec![0u8; PAGE_SIZE]))
}

/// `zero_subtree(l)` is the node over 2^l zero pages.
fn zero_subtree(level: usize) -> Digest {
    static ZEROES: OnceLock<Vec<Digest>> = OnceLock::new();
    let all = ZEROES.get_or_init(|| {
        let mut v = vec![zero_page_hash()];
        for l in 1..64 {
            let below = v[l - 1];
            v.push(hash::memory_node(&below, &below));
        }
        v
    });
    all[level]
}

/// The root of an empty memory (length 0).
pub fn empty_memory_root() -> Digest {
    hash::memory_root(0, None)
}

/// The merkle tree over the pages of one linear memory.
///
/// Level 0 holds one [`hash::page`] per [`PAGE_SIZE`] page; each level above pairs neighbours with
/// [`hash::memory_node`], and an odd last node is promoted unchanged. All levels are kept, so a
/// changed page costs one page hash plus one node hash per level ([`set_leaf`](Self::set_leaf), then
/// [`update`](Self::update)); growing by zero pages uses precomputed zero subtrees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryTree {
    levels: Vec<Vec<Digest>>,
    /// Per level, indices whose node must be recomputed (level 0 entries mark changed leaves).
    dirty: Vec<Vec<usize>>,
}

impl Default for MemoryTree {
    fn default() -> Self {
        MemoryTree::from_leaves(Vec::new())
    }
}

impl MemoryTree {
    /// Builds the whole tree from its leaves.
    pub fn from_leaves(leaves: Vec<Digest>) -> MemoryTree {
        let mut levels = vec![leaves];
        while levels.last().map_or(0, Vec::len) > 1 {
            let below = levels.last().map(Vec::as_slice).unwrap_or(&[]);
            let next = below
                .chunks(2)
                .map(|c| {
                    if c.len() == 2 {
                        hash::memory_node(&c[0], &c[1])
                    } else {
                        c[0]
                    }
                })
                .collect();
            levels.push(next);
        }
        let dirty = vec![Vec::new(); levels.len()];
        MemoryTree { levels, dirty }
    }

    /// Builds the tree of a memory image (`memory.len()` must be a multiple of [`PAGE_SIZE`]; a
    /// trailing partial page is hashed as it is).
    pub fn from_memory(memory: &[u8]) -> MemoryTree {
        let zero = zero_page_hash();
        let leaves = memory
            .chunks(PAGE_SIZE)
            .map(|p| {
                if p.len() == PAGE_SIZE && is_zero(p) {
                    zero
                } else {
                    hash::page(p)
                }
            })
            .collect();
        MemoryTree::from_leaves(leaves)
    }

    /// Number of pages.
    pub fn leaf_count(&self) -> usize {
        self.levels[0].len()
    }

    /// The page hashes.
    pub fn leaves(&self) -> &[Digest] {
        &self.levels[0]
    }

    /// Memory length covered, in bytes.
    pub fn memory_len(&self) -> u64 {
        (self.leaf_count() * PAGE_SIZE) as u64
    }

    /// Replaces the hash of page `index` (call [`update`](Self::update) before reading the root).
    ///
    /// Returns `false` (and changes nothing) when `index` is out of range.
    pub fn set_leaf(&mut self, index: usize, leaf: Digest) -> bool {
        match self.levels[0].get_mut(index) {
            Some(slot) => {
                if *slot != leaf {
                    *slot = leaf;
                    self.dirty[0].push(index);
                }
                true
            }
            None => false,
        }
    }

    /// Changes the number of pages. New pages are zero pages; their subtrees come precomputed, so
    /// growing costs O(new pages) copies plus O(log n) hashes. Shrinking rebuilds the tree.
    pub fn resize(&mut self, leaves: usize) {
        let old = self.leaf_count();
        if leaves == old {
            return;
        }
        if leaves < old {
            self.update();
            let mut l = std::mem::take(&mut self.levels[0]);
            l.truncate(leaves);
            *self = MemoryTree::from_leaves(l);
            return;
        }
        self.levels[0].resize(leaves, zero_page_hash());
        if old > 0 {
            self.dirty[0].push(old - 1);
        }
        self.dirty[0].extend(old..leaves);
        let mut level = 0;
        while self.levels[level].len() > 1 {
            let size = self.levels[level].len().div_ceil(2);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
                self.dirty.push(Vec::new());
            }
            let above = level + 1;
            let old_size = self.levels[above].len();
            // Nodes over a full run of new zero pages are known; the rest is recomputed.
            let span = 1usize << above;
            for j in old_size..size {
                let (lo, hi) = (j * span, (j + 1) * span);
                let node = if lo >= old && hi <= leaves {
                    zero_subtree(above)
                } else {
                    self.dirty[above].push(j);
                    Digest::from_bytes([0; 32])
                };
                self.levels[above].push(node);
            }
            if old_size > 0 {
                self.dirty[above].push(old_size - 1);
            }
            level = above;
        }
        // Zero-subtree nodes of level 0 are already right; the dirty marks above keep the edges exact.
        self.dirty[0].retain(|&i| i < old);
    }

    /// Recomputes every node above the changed leaves.
    pub fn update(&mut self) {
        for level in 0..self.levels.len() {
            let mut d = std::mem::take(&mut self.dirty[level]);
            if d.is_empty() {
                continue;
            }
            d.sort_unstable();
            d.dedup();
            if level > 0 {
                for &j in &d {
                    let below = &self.levels[level - 1];
                    let node = match (below.get(2 * j), below.get(2 * j + 1)) {
                        (Some(l), Some(r)) => hash::memory_node(l, r),
                        (Some(l), None) => *l,
                        _ => continue,
                    };
                    self.levels[level][j] = node;
                }
            }
            if level + 1 < self.levels.len() {
                let parents = d.iter().map(|i| i / 2);
                self.dirty[level + 1].extend(parents);
            }
        }
    }

    /// Whether [`update`](Self::update) has work to do.
    pub fn is_dirty(&self) -> bool {
        self.dirty.iter().any(|d| !d.is_empty())
    }

    /// The top node, `None` for an empty memory. Call [`update`](Self::update) first.
    pub fn top(&self) -> Option<Digest> {
        self.levels.last().and_then(|l| l.first()).copied()
    }

    /// The memory root (binds length and top). Call [`update`](Self::update) first.
    pub fn root(&self) -> Digest {
        hash::memory_root(self.memory_len(), self.top().as_ref())
    }

    /// Encodes all levels as a [`RecordKind::Tree`] record.
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        let mut payload = Vec::with_capacity(8 + 64 * self.leaf_count());
        payload.extend_from_slice(&(self.leaf_count() as u64).to_le_bytes());
        for level in &self.levels {
            for d in level {
                payload.extend_from_slice(d.as_bytes());
            }
        }
        Ok(encode_raw(RecordKind::Tree, &payload))
    }

    /// Decodes a [`RecordKind::Tree`] record, checking its checksum and shape.
    pub fn decode(bytes: &[u8]) -> Result<MemoryTree, IndexError> {
        let payload = decode_raw(RecordKind::Tree, bytes)?;
        let corrupt = |reason: &str| IndexError::Corrupted {
            kind: RecordKind::Tree,
            reason: reason.to_string(),
        };
        let count_bytes: [u8; 8] = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("missing leaf count"))?;
        let count = usize::try_from(u64::from_le_bytes(count_bytes))
            .map_err(|_| corrupt("leaf count out of range"))?;
        let body = &payload[8..];
        // A tree holds at least its leaves: refuse a count the body cannot hold before doing
        // arithmetic on it (a forged count near usize::MAX overflowed the sum below).
        if count > body.len() / 32 {
            return Err(corrupt("leaf count exceeds the record"));
        }
        let mut sizes = vec![count];
        while sizes.last().copied().unwrap_or(0) > 1 {
            let s = sizes.last().copied().unwrap_or(0).div_ceil(2);
            sizes.push(s);
        }
        let total = sizes
            .iter()
            .try_fold(0usize, |sum, &s| sum.checked_add(s))
            .ok_or_else(|| corrupt("leaf count out of range"))?;
        if Some(body.len()) != total.checked_mul(32) {
            return Err(corrupt("length does not match leaf count"));
        }
        let mut hashes = body.chunks_exact(32).map(|c| {
            let mut a = [0u8; 32];
            a.copy_from_slice(c);
            Digest::from_bytes(a)
        });
        let levels: Vec<Vec<Digest>> = sizes
            .iter()
            .map(|&s| hashes.by_ref().take(s).collect())
            .collect();
        let dirty = vec![Vec::new(); levels.len()];
        Ok(MemoryTree { levels, dirty })
    }

    /// Checks every node against its children (the leaves are taken as given).
    pub fn is_consistent(&self) -> bool {
        MemoryTree::from_leaves(self.levels[0].clone()).levels == self.levels
    }
}

/// Whether all bytes are zero (fast path for zero pages).
pub fn is_zero(bytes: &[u8]) -> bool {
    let (prefix, words, suffix) = {
        // SAFETY: reinterpreting initialised bytes as u64 words is valid for any bit pattern; align_to
        // returns correctly aligned middle slice.
        unsafe { bytes.align_to::<u64>() }
    };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn page_of(seed: u8) -> Digest {
        if seed == 0 {
            zero_page_hash()
        } else {
            hash::page(&[seed; 16])
        }
    }

    proptest! {
        #[test]
        fn incremental_tree_matches_full_build(
            start in 0usize..40,
            ops in proptest::collection::vec((0usize..80, 0u8..4, any::<bool>()), 0..30),
        ) {
            let mut leaves: Vec<Digest> = (0..start).map(|i| page_of((i % 3) as u8)).collect();
            let mut tree = MemoryTree::from_leaves(leaves.clone());
            for (i, seed, grow) in ops {
                if grow {
                    let n = leaves.len() + i % 17;
                    leaves.resize(n, zero_page_hash());
                    tree.resize(n);
                } else if !leaves.is_empty() {
                    let i = i % leaves.len();
                    leaves[i] = page_of(seed);
                    prop_assert!(tree.set_leaf(i, page_of(seed)));
                }
                if seed == 3 {
                    tree.update();
                    prop_assert_eq!(tree.root(), MemoryTree::from_leaves(leaves.clone()).root());
                }
            }
            tree.update();
            let full = MemoryTree::from_leaves(leaves.clone());
            prop_assert_eq!(&tree, &full);
            prop_assert!(tree.is_consistent());
            let back = MemoryTree::decode(&tree.encode().unwrap()).unwrap();
            prop_assert_eq!(back, full);
        }
    }
}
