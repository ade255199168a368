//! The error type of every cache layer.

use std::path::PathBuf;

/// Why a cache operation failed. A chain ([`crate::FallbackCache`]) never returns one: it
/// counts it and carries on; single layers return it so a caller can log it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// An I/O operation on a cache file or folder failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or folder the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A cache entry failed verification (bad header, digest or tag). The entry is removed
    /// and the module must be recompiled.
    #[error("corrupted cache entry: {0}")]
    Corrupted(String),
    /// The entry or key belongs to another engine configuration, wasmtime version or format
    /// version.
    #[error("incompatible cache entry: {0}")]
    Incompatible(String),
    /// Wasmtime failed to serialize or deserialize a module.
    #[error("wasmtime error: {0}")]
    Wasmtime(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A hex string is not 64 hex digits.
    #[error("invalid hex: {0}")]
    InvalidHex(String),
    /// A cache was configured with unusable settings (for example an empty HMAC key).
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

impl CacheError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CacheError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<wasmtime::Error> for CacheError {
    fn from(e: wasmtime::Error) -> Self {
        CacheError::Wasmtime(e.into_boxed_dyn_error())
    }
}
