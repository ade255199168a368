//! The per-commit index of the Strata commit store: typed hashes, merkle roots and record encoding.
//!
//! This crate is the pure, I/O-free half of the store. It defines
//!
//! - the identifiers [`ModuleId`] (sha256 of a module's original wasm bytes), [`Root`] (the merkle root
//!   naming a commit) and [`Digest`] (any other sha256 hash), made only by hashing, by parsing 64
//!   hex digits, or by decoding a record that stored them; [`Bytecode`] pairs wasm bytes with
//!   their id and is made only by hashing them;
//! - the hash functions, each domain-separated by its own tag ([`hash`]): page leaves, memory tree
//!   nodes, memory roots, blobs, module leaves, state tree nodes and state roots;
//! - the memory merkle tree ([`MemoryTree`]) over fixed-size pages of [`PAGE_SIZE`] bytes, updated
//!   incrementally from dirty pages, and the state root over modules sorted by id ([`state_root`]);
//! - key-value spaces ([`Namespace`], [`KvEntry`]): per namespace its key count, bytes, table
//!   files and a history-independent set hash ([`KvHash`], LtHash from `solana-lattice-hash`)
//!   whose root is a leaf of the state tree;
//! - the per-commit index ([`CommitIndex`]: module -> bytecode hash, memory root and length, image and
//!   delta identities, changed page hashes, blob hash; plus the parent root and a sequence number),
//!   which doubles as the commit record (commit -> module -> files, see [`ModuleEntry::files`]).
//!   Its fields are private and its constructors check what [`CommitIndex::decode`] checks;
//! - the envelope of every record on disk ([`encode_record`], [`decode_record`]): a magic number, a
//!   format version, a length and a sha256 checksum. A record of another format version is refused
//!   with [`IndexError::Incompatible`] ("upgrade required"), never misread.
//!
//! The on-disk layout that uses these records is described in `docs/STORE-FORMAT.md`.
//!
//! # Example
//!
//! ```
//! use store_index::{CommitIndex, MemoryTree, ModuleEntry, ModuleId, PAGE_SIZE, RecordKind, hash};
//!
//! // A module is named by the sha256 of its wasm.
//! let wasm = b"\0asm\x01\0\0\0";
//! let id = ModuleId::of_wasm(wasm);
//! assert_eq!(ModuleId::from_hex(&id.to_hex())?, id);
//!
//! // The memory root covers every 64 KiB page; one dirty page costs one page hash and a path update.
//! let mut memory = vec![0u8; 4 * PAGE_SIZE];
//! let mut tree = MemoryTree::from_memory(&memory);
//! memory[PAGE_SIZE + 7] = 42;
//! tree.set_leaf(1, hash::page(&memory[PAGE_SIZE..2 * PAGE_SIZE]));
//! tree.update();
//! assert_eq!(tree.root(), MemoryTree::from_memory(&memory).root());
//!
//! // A commit's index names its state root and round-trips through its checksummed encoding.
//! let entry = ModuleEntry::new(id, wasm.len() as u64, &tree, hash::blob(b"globals"), 7);
//! let index = CommitIndex::new(1, None, vec![entry.clone()])?;
//! let bytes = index.encode()?;
//! let back = CommitIndex::decode(&bytes)?;
//! assert_eq!(back.state_root(), index.state_root());
//! assert_ne!(index.state_root(), store_index::empty_state_root());
//!
//! // Its constructor enforces what decoding checks: modules sorted by id and unique.
//! assert!(CommitIndex::new(2, Some(index.state_root()), vec![entry.clone(), entry]).is_err());
//! # let _ = RecordKind::Index;
//! # Ok::<(), store_index::IndexError>(())
//! ```

#![deny(missing_docs)]

mod bytecode;
mod error;
pub mod hash;
mod ids;
mod index;
mod kv;
mod record;
mod tree;

pub use crate::bytecode::Bytecode;
pub use crate::error::IndexError;
pub use crate::ids::{Digest, ModuleId, Namespace, Root};
pub use crate::index::{
    BlobDelta, CommitIndex, DeltaRef, ImageRef, MemoryEntry, ModuleEntry, commit_root,
    empty_state_root, state_root,
};
pub use crate::kv::{KV_MAX_LEVELS, KvEntry, KvHash, TableRef};
pub use crate::record::{
    FORMAT_VERSION, RecordKind, StoreMarker, decode_raw, decode_record, encode_raw, encode_record,
};
pub use crate::tree::{MemoryTree, PAGE_SIZE, empty_memory_root, is_zero, zero_page_hash};
