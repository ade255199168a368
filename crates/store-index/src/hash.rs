//! The domain-separated hash functions of the store.
//!
//! Each function prefixes its input with its own tag, so a page can never be confused with a node,
//! a memory root with a state root, and so on. Changing any of them changes every root: bump
//! [`FORMAT_VERSION`](crate::FORMAT_VERSION).

use sha2::{Digest as _, Sha256};

use crate::{Digest, ModuleId, Namespace, Root};

const PAGE: &[u8] = b"strata/v1/page\0";
const MEMORY_NODE: &[u8] = b"strata/v1/memory-node\0";
const MEMORY_ROOT: &[u8] = b"strata/v1/memory-root\0";
const BLOB: &[u8] = b"strata/v1/blob\0";
const MODULE_LEAF: &[u8] = b"strata/v1/module\0";
const STATE_NODE: &[u8] = b"strata/v1/state-node\0";
const STATE_ROOT: &[u8] = b"strata/v1/state-root\0";
const KV_ROOT: &[u8] = b"strata/v1/kv-root\0";

fn tagged(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The leaf hash of one memory page (normally [`PAGE_SIZE`](crate::PAGE_SIZE) bytes).
pub fn page(bytes: &[u8]) -> Digest {
    Digest::from_bytes(tagged(PAGE, &[bytes]))
}

/// An inner node of a memory tree.
pub fn memory_node(left: &Digest, right: &Digest) -> Digest {
    Digest::from_bytes(tagged(MEMORY_NODE, &[left.as_bytes(), right.as_bytes()]))
}

/// The memory root: binds the byte length to the top of the page tree (`None` when empty).
pub fn memory_root(len: u64, top: Option<&Digest>) -> Digest {
    let top = top.map_or([0; 32], |d| *d.as_bytes());
    Digest::from_bytes(tagged(MEMORY_ROOT, &[&len.to_le_bytes(), &top]))
}

/// The hash of a module's host-owned state blob.
pub fn blob(bytes: &[u8]) -> Digest {
    Digest::from_bytes(tagged(BLOB, &[&(bytes.len() as u64).to_le_bytes(), bytes]))
}

/// The leaf of one module in the state tree.
pub fn module_leaf(
    id: &ModuleId,
    bytecode: &Digest,
    memory_root: &Digest,
    blob: &Digest,
) -> Digest {
    Digest::from_bytes(tagged(
        MODULE_LEAF,
        &[
            id.as_bytes(),
            bytecode.as_bytes(),
            memory_root.as_bytes(),
            blob.as_bytes(),
        ],
    ))
}

/// The root of one key-value space, its leaf in the state tree: binds the namespace, the key
/// count, the bytes of keys and values and the checksum of the set hash
/// ([`KvHash`](crate::KvHash)).
pub fn kv_root(namespace: &Namespace, keys: u64, bytes: u64, set: &Digest) -> Digest {
    Digest::from_bytes(tagged(
        KV_ROOT,
        &[
            namespace.as_bytes(),
            &keys.to_le_bytes(),
            &bytes.to_le_bytes(),
            set.as_bytes(),
        ],
    ))
}

/// An inner node of the state tree.
pub fn state_node(left: &Digest, right: &Digest) -> Digest {
    Digest::from_bytes(tagged(STATE_NODE, &[left.as_bytes(), right.as_bytes()]))
}

/// The state root: binds the module count to the top of the state tree (`None` when empty).
pub fn state_root(count: u64, top: Option<&Digest>) -> Root {
    let top = top.map_or([0; 32], |d| *d.as_bytes());
    Root::from_bytes(tagged(STATE_ROOT, &[&count.to_le_bytes(), &top]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryTree, PAGE_SIZE, empty_memory_root, empty_state_root};

    #[test]
    fn domain_separation() {
        let z = Digest::from_bytes([0; 32]);
        assert_ne!(memory_node(&z, &z), state_node(&z, &z));
        assert_ne!(
            empty_memory_root().as_bytes(),
            empty_state_root().as_bytes()
        );
        assert_ne!(page(b""), blob(b""));
        // Length is bound into the memory root.
        assert_ne!(
            MemoryTree::from_memory(&vec![0; PAGE_SIZE]).root(),
            MemoryTree::from_memory(&vec![0; 2 * PAGE_SIZE]).root()
        );
        assert_eq!(MemoryTree::default().root(), empty_memory_root());
        assert_eq!(crate::state_root(std::iter::empty()), empty_state_root());
    }
}
