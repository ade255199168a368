//! Content-addressed cache keys: the sha256 of the wasm bytes plus a fingerprint of the engine
//! configuration that compiled them.

use std::fmt;
use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use crate::CacheError;

/// The wasmtime version this crate is built against (the workspace pins `=48.0.8`).
///
/// Wasmtime also folds its own version into `precompile_compatibility_hash` (wasmtime 48 has
/// no public version constant); naming it here too makes the fingerprint change even if that
/// ever stopped. A unit test checks that this string is the version actually linked.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Tag of the fingerprint format: changing how the fingerprint is computed must change it.
const FINGERPRINT_TAG: &[u8] = b"strata-engine-fingerprint-v1\0";

fn parse_hex32(s: &str) -> Result<[u8; 32], CacheError> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return Err(CacheError::InvalidHex(format!(
            "expected 64 hex digits, got {} characters",
            s.len()
        )));
    }
    let nibble = |c: u8| -> Result<u8, CacheError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(CacheError::InvalidHex(format!(
                "not a hex digit: {:?}",
                char::from(c)
            ))),
        }
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn write_hex(bytes: &[u8; 32], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// The sha256 of a module's original wasm bytes: what a module is named by.
///
/// Can only be made by hashing wasm bytes or by parsing 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WasmHash([u8; 32]);

impl WasmHash {
    /// Hashes wasm bytes.
    pub fn of(wasm: &[u8]) -> Self {
        WasmHash(Sha256::digest(wasm).into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, CacheError> {
        parse_hex32(s).map(WasmHash)
    }

    /// Wraps a digest that is already known to be the sha256 of some wasm bytes (for example
    /// one read back from a verified cache header).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        WasmHash(bytes)
    }

    /// The 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for WasmHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

impl fmt::Debug for WasmHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WasmHash({self})")
    }
}

/// A `Hasher` that feeds everything it is given into sha256, so that an `impl Hash` can name
/// things on disk. (`DefaultHasher` may change between Rust releases.)
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// A fingerprint of everything in an engine's configuration that affects compiled artifacts
/// (target, compiler flags, tunables, wasm features, wasmtime version).
///
/// Two engines with equal fingerprints can load each other's artifacts. It is stable across
/// processes and Rust releases of the same build target, so it can name folders on disk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EngineFingerprint([u8; 32]);

impl EngineFingerprint {
    /// Computes the fingerprint of `engine`: sha256 over a format tag, [`WASMTIME_VERSION`] and
    /// `engine.precompile_compatibility_hash()`.
    pub fn of(engine: &Engine) -> Self {
        let mut hasher = Sha256Hasher(Sha256::new());
        hasher.write(FINGERPRINT_TAG);
        hasher.write(WASMTIME_VERSION.as_bytes());
        hasher.write(&[0]);
        engine.precompile_compatibility_hash().hash(&mut hasher);
        EngineFingerprint(hasher.0.finalize().into())
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, CacheError> {
        parse_hex32(s).map(EngineFingerprint)
    }

    /// Wraps raw fingerprint bytes (for example read back from a cache header).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EngineFingerprint(bytes)
    }

    /// The 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The raw fingerprint.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for EngineFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

impl fmt::Debug for EngineFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EngineFingerprint({self})")
    }
}

/// The key of a compiled module in every cache layer: which wasm, compiled by which engine
/// configuration.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CacheKey {
    wasm: WasmHash,
    engine: EngineFingerprint,
}

impl CacheKey {
    /// The key of `wasm` compiled by `engine`. Hashes the wasm bytes and fingerprints the
    /// engine; callers with many keys can compute the fingerprint once and use
    /// [`CacheKey::from_parts`].
    pub fn new(engine: &Engine, wasm: &[u8]) -> Self {
        CacheKey {
            wasm: WasmHash::of(wasm),
            engine: EngineFingerprint::of(engine),
        }
    }

    /// Builds a key from its parts.
    pub fn from_parts(wasm: WasmHash, engine: EngineFingerprint) -> Self {
        CacheKey { wasm, engine }
    }

    /// The hash of the wasm bytes.
    pub fn wasm(&self) -> WasmHash {
        self.wasm
    }

    /// The fingerprint of the engine.
    pub fn engine(&self) -> EngineFingerprint {
        self.engine
    }

    /// The name of this key's file inside a per-engine folder: the wasm hash in hex (the folder
    /// already names the engine fingerprint).
    pub fn file_stem(&self) -> String {
        self.wasm.to_hex()
    }

    /// The whole key as text: `<wasm hex>-<engine hex>`.
    pub fn to_hex(&self) -> String {
        format!("{}-{}", self.wasm, self.engine)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.wasm, self.engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_hash_hex_round_trip() {
        let h = WasmHash::of(b"hello");
        assert_eq!(
            h.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(WasmHash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(WasmHash::from_hex(&h.to_hex().to_uppercase()).unwrap(), h);
    }

    #[test]
    fn bad_hex_is_an_error() {
        assert!(matches!(
            WasmHash::from_hex("abc"),
            Err(CacheError::InvalidHex(_))
        ));
        let bad = "g".repeat(64);
        assert!(matches!(
            EngineFingerprint::from_hex(&bad),
            Err(CacheError::InvalidHex(_))
        ));
        // Multi-byte characters must not panic on slicing.
        let odd = "é".repeat(32);
        assert!(matches!(
            WasmHash::from_hex(&odd),
            Err(CacheError::InvalidHex(_))
        ));
    }

    #[test]
    fn fingerprint_is_stable_and_config_sensitive() {
        let a = EngineFingerprint::of(&Engine::default());
        let b = EngineFingerprint::of(&Engine::default());
        assert_eq!(a, b);
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let c = EngineFingerprint::of(&Engine::new(&config).unwrap());
        assert_ne!(a, c);
        assert_eq!(EngineFingerprint::from_hex(&a.to_hex()).unwrap(), a);
    }

    #[test]
    fn wasmtime_version_is_the_linked_one() {
        // Wasmtime hashes its Cargo version (the `WasmtimeVersion` strategy) exactly like a
        // custom version string, so the two engines agree iff the constant is the version
        // actually linked. If the pinned wasmtime moves, this fails until the constant does.
        let mut config = wasmtime::Config::new();
        config
            .module_version(wasmtime::ModuleVersionStrategy::Custom(
                WASMTIME_VERSION.to_string(),
            ))
            .unwrap();
        let custom = EngineFingerprint::of(&Engine::new(&config).unwrap());
        assert_eq!(custom, EngineFingerprint::of(&Engine::default()));

        config
            .module_version(wasmtime::ModuleVersionStrategy::Custom("48.0.7".into()))
            .unwrap();
        let other = EngineFingerprint::of(&Engine::new(&config).unwrap());
        assert_ne!(other, EngineFingerprint::of(&Engine::default()));
    }

    #[test]
    fn key_names() {
        let engine = Engine::default();
        let key = CacheKey::new(&engine, b"\0asm\x01\0\0\0");
        assert_eq!(key.file_stem(), key.wasm().to_hex());
        assert_eq!(key.to_hex().len(), 129);
        assert_eq!(key.to_string(), key.to_hex());
        assert_eq!(CacheKey::from_parts(key.wasm(), key.engine()), key);
    }
}
