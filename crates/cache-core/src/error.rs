//! The error type of every cache layer.

use std::path::PathBuf;

use crate::EngineFingerprint;

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
    /// A cache entry failed verification (bad trailer, digest or tag). The entry is removed
    /// and the module must be recompiled.
    #[error("corrupted cache entry {}: {source}", path.display())]
    Corrupted {
        /// The entry.
        path: PathBuf,
        /// What was wrong with it (the layer's own typed reason).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The key names an engine configuration this cache does not serve (another wasmtime
    /// version or engine settings).
    #[error("engine {engine} is not served by this cache")]
    Incompatible {
        /// The key's engine fingerprint.
        engine: EngineFingerprint,
    },
    /// A module compiled by one engine was offered under the key of another.
    #[error("module compiled by engine {module}, key of engine {key}")]
    EngineMismatch {
        /// The fingerprint of the engine that compiled the module.
        module: EngineFingerprint,
        /// The fingerprint the key names.
        key: EngineFingerprint,
    },
    /// Wasmtime failed to serialize or deserialize a module.
    #[error("wasmtime error: {0}")]
    Wasmtime(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A hex string is not 64 hex digits.
    #[error("invalid hex: {0}")]
    InvalidHex(#[source] HexError),
    /// A key's encoding could not be decoded.
    #[error("invalid cache key: {reason}")]
    InvalidKey {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A cache was configured with unusable settings (for example an empty authentication key).
    #[error("invalid cache configuration: {0}")]
    Config(#[source] ConfigError),
}

/// Why a string is not a 64-digit hex hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexError {
    /// Not exactly 64 characters.
    #[error("expected 64 hex digits, got {found} characters")]
    Length {
        /// The number of characters found.
        found: usize,
    },
    /// A character that is not a hex digit (either case).
    #[error("not a hex digit: {found:?}")]
    Digit {
        /// The character.
        found: char,
    },
}

/// Why a cache's settings are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A cache was opened for no engine at all.
    #[error("a cache needs at least one engine")]
    NoEngine,
    /// Authenticated mode with an empty secret (the key its BLAKE3 tag keys are derived from).
    #[error("empty hmac key")]
    EmptyHmacKey,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WasmHash;

    #[test]
    fn errors_keep_their_sources_on_one_line() {
        let err = CacheError::Corrupted {
            path: "/cache/v2-x/entry.cwasm".into(),
            source: "bad trailer: wrong magic".into(),
        };
        assert_eq!(
            err.to_string(),
            "corrupted cache entry /cache/v2-x/entry.cwasm: bad trailer: wrong magic"
        );
        assert!(std::error::Error::source(&err).is_some());
        let engine = EngineFingerprint::from_bytes([1; 32]);
        let err = CacheError::EngineMismatch {
            module: engine,
            key: EngineFingerprint::from_bytes([2; 32]),
        };
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn hex_and_config_errors_are_typed() {
        let err = WasmHash::from_hex("ab").unwrap_err();
        assert!(
            matches!(err, CacheError::InvalidHex(HexError::Length { found: 2 })),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "invalid hex: expected 64 hex digits, got 2 characters"
        );
        let err = WasmHash::from_hex(&"g".repeat(64)).unwrap_err();
        assert!(
            matches!(err, CacheError::InvalidHex(HexError::Digit { found: 'g' })),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let err = CacheError::Config(ConfigError::EmptyHmacKey);
        assert_eq!(
            err.to_string(),
            "invalid cache configuration: empty hmac key"
        );
    }
}
