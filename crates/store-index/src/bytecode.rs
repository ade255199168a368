//! [`Bytecode`]: a module's wasm bytes paired with their id, made only by hashing them.

use std::fmt;
use std::sync::Arc;

use crate::ModuleId;

/// A module's original wasm bytes together with their [`ModuleId`].
///
/// The only constructor, [`Bytecode::hash`], computes the id from the bytes, and the fields are
/// private, so an id that is not the sha256 of its bytes cannot be paired with them. Whoever
/// receives a `Bytecode` (the commit store's deploy) trusts the pair and never hashes again:
/// a deploy hashes its wasm once in total. Cloning shares the bytes (`Arc`).
///
/// A pair cannot be made by hand:
///
/// ```compile_fail,E0451
/// let forged = store_index::Bytecode { id: store_index::ModuleId::of_wasm(b"a"), bytes: b"b".as_slice().into() };
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Bytecode {
    id: ModuleId,
    bytes: Arc<[u8]>,
}

impl Bytecode {
    /// Hashes `bytes` (sha256, [`ModuleId::of_wasm`]) and pairs them with their id. An
    /// `Arc<[u8]>` is taken as is; a slice or a `Vec<u8>` is copied once into a new `Arc`.
    pub fn hash(bytes: impl Into<Arc<[u8]>>) -> Bytecode {
        let bytes = bytes.into();
        Bytecode {
            id: ModuleId::of_wasm(&bytes),
            bytes,
        }
    }

    /// The module id: the sha256 of [`bytes`](Self::bytes).
    pub fn id(&self) -> ModuleId {
        self.id
    }

    /// The wasm bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl fmt::Debug for Bytecode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bytecode")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_hash_of_the_bytes() {
        let code = Bytecode::hash(b"\0asm\x01\0\0\0".as_slice());
        assert_eq!(code.id(), ModuleId::of_wasm(b"\0asm\x01\0\0\0"));
        assert_eq!(code.bytes(), b"\0asm\x01\0\0\0");
        assert_eq!(code.len(), 8);
        let shared: Arc<[u8]> = Arc::from(b"abc".as_slice());
        let code = Bytecode::hash(shared.clone());
        assert!(
            std::ptr::eq(code.bytes(), &*shared),
            "an Arc is taken as is"
        );
        assert!(format!("{code:?}").contains("len: 3"));
    }
}
