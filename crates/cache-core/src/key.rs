//! Content-addressed cache keys: the module id (sha256 of the original wasm), the form and
//! rewrite version, the host ABI, the compiler tier, and a fingerprint of the engine
//! configuration that compiled the artifact.

use std::fmt;
use std::hash::{Hash, Hasher};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

use crate::CacheError;
use crate::error::HexError;

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
        return Err(CacheError::InvalidHex(HexError::Length {
            found: s.chars().count(),
        }));
    }
    let nibble = |c: u8| -> Result<u8, CacheError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(CacheError::InvalidHex(HexError::Digit {
                found: char::from(c),
            })),
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

/// Which form of a module an artifact was compiled from.
///
/// A rewritten form names the version of the rewrite that produced it: the owner of the
/// rewrite (vm-host's `rewrite.rs`) bumps the version whenever its output changes, so an
/// artifact of an older rewrite is never loaded for a newer one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[non_exhaustive]
pub enum Form {
    /// The wasm exactly as deployed, compiled without any rewrite (a plain embedder's cache).
    Original,
    /// The genesis form: the module as deployed plus host exports, run once at deploy.
    Genesis {
        /// The version of the rewrite that produced it.
        rewrite: u32,
    },
    /// The runtime form: instantiated over restored state, without genesis initialisation.
    Runtime {
        /// The version of the rewrite that produced it.
        rewrite: u32,
    },
}

/// The host ABI a module is compiled for: it decides the engine's memory model and which
/// rewrite applies.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[non_exhaustive]
pub enum Abi {
    /// No Strata host ABI: a module as any wasmtime embedder compiles it.
    Plain,
    /// vm-host's own ABI (`env.db_read`, `env.db_write`, `env.db_remove`).
    Strata,
    /// The CosmWasm ABI (vm-cosmwasm): a fresh instance per call, gas metered by a rewrite.
    CosmWasm,
}

/// The compiler that produced an artifact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[non_exhaustive]
pub enum Tier {
    /// Cranelift, wasmtime's optimizing compiler.
    Cranelift,
    /// Winch, wasmtime's single-pass baseline compiler: compiles in linear time, runs slower.
    Winch,
}

/// The version of the key's encoding (the first byte of [`CacheKey::to_bytes`]).
const KEY_ENCODING_VERSION: u8 = 1;

impl Form {
    fn code(self) -> (u8, u32) {
        match self {
            Form::Original => (0, 0),
            Form::Genesis { rewrite } => (1, rewrite),
            Form::Runtime { rewrite } => (2, rewrite),
        }
    }

    fn from_code(code: u8, rewrite: u32) -> Option<Form> {
        match (code, rewrite) {
            (0, 0) => Some(Form::Original),
            (1, rewrite) => Some(Form::Genesis { rewrite }),
            (2, rewrite) => Some(Form::Runtime { rewrite }),
            _ => None,
        }
    }
}

impl fmt::Display for Form {
    /// `original`, `genesis.<version>` or `runtime.<version>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Form::Original => f.write_str("original"),
            Form::Genesis { rewrite } => write!(f, "genesis.{rewrite}"),
            Form::Runtime { rewrite } => write!(f, "runtime.{rewrite}"),
        }
    }
}

impl Abi {
    const ALL: [(Abi, u8, &'static str); 3] = [
        (Abi::Plain, 0, "plain"),
        (Abi::Strata, 1, "strata"),
        (Abi::CosmWasm, 2, "cosmwasm"),
    ];
}

impl fmt::Display for Abi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Abi::ALL
            .iter()
            .find(|(a, ..)| a == self)
            .map_or("?", |e| e.2);
        f.write_str(name)
    }
}

impl Tier {
    // The codes and names are on disk and in shared caches: never renumber or rename.
    const ALL: [(Tier, u8, &'static str); 2] =
        [(Tier::Cranelift, 0, "cranelift"), (Tier::Winch, 1, "winch")];
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Tier::ALL
            .iter()
            .find(|(t, ..)| t == self)
            .map_or("?", |e| e.2);
        f.write_str(name)
    }
}

/// The key of a compiled module in every cache layer: which module (the sha256 of its original
/// wasm, its module id), in which [`Form`], for which [`Abi`], by which [`Tier`], for which
/// engine configuration.
///
/// Its encodings are stable, for files and for any later layer (a shared cache over the
/// network keys by them unchanged):
/// - [`CacheKey::to_bytes`]: [`CacheKey::LEN`] bytes, `version (1) || module id (32) ||
///   engine fingerprint (32) || form (1) || rewrite version (u32 LE) || abi (1) || tier (1)`;
/// - the text of `Display` (parsed back by [`CacheKey::parse`]):
///   `<module hex>-<form>-<abi>-<tier>-<engine hex>`, e.g.
///   `3a…9f-runtime.1-strata-cranelift-07…c2`; only `[0-9a-z.-]`, so it is a file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CacheKey {
    module: WasmHash,
    form: Form,
    abi: Abi,
    tier: Tier,
    engine: EngineFingerprint,
}

impl CacheKey {
    /// The length of [`CacheKey::to_bytes`].
    pub const LEN: usize = 72;

    /// The key of `wasm` compiled as it is ([`Form::Original`], [`Abi::Plain`],
    /// [`Tier::Cranelift`]) by `engine`: what a plain embedder caches. Hashes the wasm bytes and
    /// fingerprints the engine; callers with many keys can compute both once and use
    /// [`CacheKey::from_parts`].
    pub fn new(engine: &Engine, wasm: &[u8]) -> Self {
        CacheKey::from_parts(
            WasmHash::of(wasm),
            Form::Original,
            Abi::Plain,
            Tier::Cranelift,
            EngineFingerprint::of(engine),
        )
    }

    /// Builds a key from its parts, without reading any bytecode.
    pub fn from_parts(
        module: WasmHash,
        form: Form,
        abi: Abi,
        tier: Tier,
        engine: EngineFingerprint,
    ) -> Self {
        CacheKey {
            module,
            form,
            abi,
            tier,
            engine,
        }
    }

    /// The module id: the sha256 of the original wasm.
    pub fn module(&self) -> WasmHash {
        self.module
    }

    /// The form the artifact was compiled from.
    pub fn form(&self) -> Form {
        self.form
    }

    /// The host ABI.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// The compiler tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The fingerprint of the engine.
    pub fn engine(&self) -> EngineFingerprint {
        self.engine
    }

    /// The same key for another engine.
    pub fn with_engine(self, engine: EngineFingerprint) -> Self {
        CacheKey { engine, ..self }
    }

    /// The stable binary encoding (see the type's docs).
    pub fn to_bytes(&self) -> [u8; CacheKey::LEN] {
        let (form, rewrite) = self.form.code();
        let abi = Abi::ALL
            .iter()
            .find(|e| e.0 == self.abi)
            .map_or(u8::MAX, |e| e.1);
        let tier = Tier::ALL
            .iter()
            .find(|e| e.0 == self.tier)
            .map_or(u8::MAX, |e| e.1);
        let mut out = [0u8; CacheKey::LEN];
        out[0] = KEY_ENCODING_VERSION;
        out[1..33].copy_from_slice(self.module.as_bytes());
        out[33..65].copy_from_slice(self.engine.as_bytes());
        out[65] = form;
        out[66..70].copy_from_slice(&rewrite.to_le_bytes());
        out[70] = abi;
        out[71] = tier;
        out
    }

    /// Decodes [`CacheKey::to_bytes`]; an unknown version, form, ABI or tier is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CacheError> {
        let bad = |reason| CacheError::InvalidKey { reason };
        let bytes: &[u8; CacheKey::LEN] = bytes.try_into().map_err(|_| bad("wrong length"))?;
        if bytes[0] != KEY_ENCODING_VERSION {
            return Err(bad("unknown key encoding version"));
        }
        let array = |range: std::ops::Range<usize>| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes[range]);
            out
        };
        let rewrite = u32::from_le_bytes([bytes[66], bytes[67], bytes[68], bytes[69]]);
        let form = Form::from_code(bytes[65], rewrite).ok_or(bad("unknown form"))?;
        let abi = Abi::ALL
            .iter()
            .find(|e| e.1 == bytes[70])
            .ok_or(bad("unknown abi"))?
            .0;
        let tier = Tier::ALL
            .iter()
            .find(|e| e.1 == bytes[71])
            .ok_or(bad("unknown tier"))?
            .0;
        Ok(CacheKey::from_parts(
            WasmHash(array(1..33)),
            form,
            abi,
            tier,
            EngineFingerprint(array(33..65)),
        ))
    }

    /// The sha256 of [`CacheKey::to_bytes`]: the whole key in 32 bytes (e.g. for a trailer).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// Parses the text of `Display`.
    pub fn parse(text: &str) -> Result<Self, CacheError> {
        let bad = |reason| CacheError::InvalidKey { reason };
        let mut parts = text.split('-');
        let (Some(module), Some(form), Some(abi), Some(tier), Some(engine), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("not five parts separated by '-'"));
        };
        let version = |v: &str| {
            // Canonical decimal only, so that a key has exactly one text.
            v.parse::<u32>()
                .ok()
                .filter(|n| n.to_string() == v)
                .ok_or(bad("bad rewrite version"))
        };
        let form = match form.split_once('.') {
            None if form == "original" => Form::Original,
            Some(("genesis", v)) => Form::Genesis {
                rewrite: version(v)?,
            },
            Some(("runtime", v)) => Form::Runtime {
                rewrite: version(v)?,
            },
            _ => return Err(bad("unknown form")),
        };
        let abi = Abi::ALL
            .iter()
            .find(|e| e.2 == abi)
            .ok_or(bad("unknown abi"))?
            .0;
        let tier = Tier::ALL
            .iter()
            .find(|e| e.2 == tier)
            .ok_or(bad("unknown tier"))?
            .0;
        let lower = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
        if !lower(module) || !lower(engine) {
            return Err(bad("upper-case hex"));
        }
        Ok(CacheKey::from_parts(
            WasmHash::from_hex(module)?,
            form,
            abi,
            tier,
            EngineFingerprint::from_hex(engine)?,
        ))
    }

    /// The text of `Display`: `<module hex>-<form>-<abi>-<tier>-<engine hex>`.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}-{}",
            self.module, self.form, self.abi, self.tier, self.engine
        )
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
    fn key_encodings_round_trip() {
        let engine = Engine::default();
        let plain = CacheKey::new(&engine, b"\0asm\x01\0\0\0");
        let runtime = CacheKey::from_parts(
            plain.module(),
            Form::Runtime { rewrite: 7 },
            Abi::Strata,
            Tier::Cranelift,
            plain.engine(),
        );
        let genesis = CacheKey::from_parts(
            plain.module(),
            Form::Genesis { rewrite: 7 },
            Abi::Strata,
            Tier::Cranelift,
            plain.engine(),
        );
        let winch = CacheKey::from_parts(
            plain.module(),
            Form::Runtime { rewrite: 7 },
            Abi::Strata,
            Tier::Winch,
            plain.engine(),
        );
        let keys = [plain, runtime, genesis, winch];
        for key in keys {
            assert_eq!(CacheKey::from_bytes(&key.to_bytes()).unwrap(), key);
            assert_eq!(CacheKey::parse(&key.to_string()).unwrap(), key);
            assert_eq!(key.to_hex(), key.to_string());
            assert!(
                key.to_string().bytes().all(|b| b.is_ascii_digit()
                    || b.is_ascii_lowercase()
                    || b == b'.'
                    || b == b'-')
            );
        }
        // Every part is in every encoding: no two of these keys share one.
        let texts: std::collections::HashSet<_> = keys.iter().map(CacheKey::to_string).collect();
        let digests: std::collections::HashSet<_> = keys.iter().map(CacheKey::digest).collect();
        assert_eq!((texts.len(), digests.len()), (4, 4));
        assert!(winch.to_string().contains("-runtime.7-strata-winch-"));
        let other = runtime.with_engine(EngineFingerprint::from_bytes([9; 32]));
        assert_ne!(other.digest(), runtime.digest());
        assert!(runtime.to_string().contains("-runtime.7-strata-cranelift-"));
    }

    #[test]
    fn key_encoding_is_stable() {
        // The encodings name files on disk and keys of shared caches: a change here must come
        // with a new KEY_ENCODING_VERSION (and a cache-fs FORMAT_VERSION).
        let key = CacheKey::from_parts(
            WasmHash::from_bytes([0xab; 32]),
            Form::Runtime {
                rewrite: 0x0102_0304,
            },
            Abi::Strata,
            Tier::Cranelift,
            EngineFingerprint::from_bytes([0xcd; 32]),
        );
        let bytes = key.to_bytes();
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[65..], &[2, 4, 3, 2, 1, 1, 0]);
        let winch = CacheKey::from_parts(
            key.module(),
            key.form(),
            key.abi(),
            Tier::Winch,
            key.engine(),
        );
        assert_eq!(winch.to_bytes()[71], 1);
        assert!(
            winch
                .to_string()
                .contains("-runtime.16909060-strata-winch-")
        );
        assert_eq!(
            key.to_string(),
            format!(
                "{}-runtime.16909060-strata-cranelift-{}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
    }

    #[test]
    fn bad_keys_are_errors() {
        let key = CacheKey::new(&Engine::default(), b"x").to_string();
        let bad = [
            String::new(),
            key.replace("original", "runtime"),
            key.replace("original", "runtime.01"),
            key.replace("original", "runtime.x"),
            key.replace("plain", "evm"),
            key.replace("cranelift", "singlepass"),
            key.to_uppercase(),
            format!("{key}-x"),
            key.replacen('-', "", 1),
        ];
        for text in bad {
            assert!(CacheKey::parse(&text).is_err(), "{text}");
        }
        let mut bytes = CacheKey::new(&Engine::default(), b"x").to_bytes();
        assert!(CacheKey::from_bytes(&bytes[1..]).is_err());
        bytes[65] = 0;
        bytes[66] = 1; // an original form with a rewrite version
        assert!(matches!(
            CacheKey::from_bytes(&bytes),
            Err(CacheError::InvalidKey { .. })
        ));
    }
}
