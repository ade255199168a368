//! The on-disk format of one cache file: the artifact, then a fixed-size trailer.
//!
//! ```text
//! file    = artifact || trailer                      (artifact: Module::serialize output)
//! trailer = 224 bytes, little-endian:
//!   0..32    engine fingerprint
//!   32..64   key digest (sha256 of the whole CacheKey's byte encoding)
//!   64..72   artifact length (u64)
//!   72..104  artifact sha256
//!   104..108 flags (u32; bit 0: tags present)
//!   108..112 reserved, zero
//!   112..144 artifact tag: keyed BLAKE3 of the artifact, or zeroes
//!   144..176 trailer tag: keyed BLAKE3 of trailer[0..144], or zeroes
//!   176..208 sha256(trailer[0..176] || trailer[208..224])  (trailer digest)
//!   208..212 format version (u32)
//!   212..216 trailer length (u32, 224)
//!   216..224 magic "STRTCWSM"
//! ```
//!
//! The two tags use two keys derived from the caller's secret with BLAKE3's key derivation
//! (`blake3::derive_key`, one context string each). The trailer tag lets an Authenticated load
//! check the trailer (and so the length it reads) before it reads the artifact; the artifact
//! tag is then checked over the bytes read, in the same pass, without a sha256.
//!
//! The metadata is a trailer rather than a header so that the file, as a whole, is still a
//! loadable wasmtime artifact: wasmtime's ELF reader ignores bytes after the ELF image, so the
//! Trusted mode maps the file with `Module::deserialize_open_file` without copying it.

use sha2::{Digest, Sha256};

use cache_core::{CacheKey, EngineFingerprint};

/// The on-disk format version; also part of the folder name, so other versions are never
/// opened.
pub const FORMAT_VERSION: u32 = 3;
/// The trailer's length in bytes.
pub const TRAILER_LEN: usize = 224;
/// The trailer's magic number (its last 8 bytes).
pub const MAGIC: [u8; 8] = *b"STRTCWSM";
/// BLAKE3 key derivation contexts of the two tags' keys.
const ARTIFACT_TAG_CONTEXT: &str = "strata cache-fs v3 artifact tag";
const TRAILER_TAG_CONTEXT: &str = "strata cache-fs v3 trailer tag";
const FLAG_TAGS: u32 = 1;

/// The keys of the Authenticated mode's tags, derived from the caller's secret.
#[derive(Clone)]
pub struct AuthKey {
    artifact: [u8; 32],
    trailer: [u8; 32],
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl AuthKey {
    /// A keyed BLAKE3 hasher of artifact bytes; its output is the artifact tag.
    pub fn artifact_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.artifact)
    }

    fn trailer_tag(&self, t: &[u8; TRAILER_LEN]) -> blake3::Hash {
        blake3::keyed_hash(&self.trailer, &t[0..144])
    }
}

/// Derives the tag keys from a secret; `None` for an empty secret.
pub fn auth_key(secret: &[u8]) -> Option<AuthKey> {
    if secret.is_empty() {
        return None;
    }
    Some(AuthKey {
        artifact: blake3::derive_key(ARTIFACT_TAG_CONTEXT, secret),
        trailer: blake3::derive_key(TRAILER_TAG_CONTEXT, secret),
    })
}

/// The decoded, self-consistent fields of a trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The engine fingerprint the artifact was compiled for.
    pub engine: [u8; 32],
    /// The digest of the whole key the artifact was saved under ([`CacheKey::digest`]).
    pub key: [u8; 32],
    /// The artifact's length in bytes.
    pub artifact_len: u64,
    /// The sha256 of the artifact.
    pub artifact_sha256: [u8; 32],
    /// Flags; bit 0: the tags are present.
    pub flags: u32,
    /// The keyed BLAKE3 of the artifact, or zeroes.
    pub artifact_tag: [u8; 32],
}

/// Why a file is not a valid entry. Every variant makes the file a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than a trailer, wrong magic, digest or length fields.
    BadTrailer(&'static str),
    /// Another format version.
    Version(u32),
    /// Written by another engine configuration.
    Engine,
    /// The key digest is not the one of the key looked up (e.g. a swapped file).
    WrongKey,
    /// The artifact's length or sha256 does not match the trailer.
    BadArtifact(&'static str),
    /// An authentication tag (of the trailer or of the artifact) missing or wrong.
    Unauthenticated,
    /// Wasmtime refused the (verified or trusted) artifact.
    Wasmtime(Refusal),
    /// Not a regular file.
    NotAFile,
    /// The artifact is larger than the configured limit (`FsCacheConfig::max_artifact_bytes`).
    TooLarge {
        /// The artifact's size, from the file's size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::BadTrailer(why) => write!(f, "bad trailer: {why}"),
            Reject::Version(v) => write!(f, "format version {v}, expected {FORMAT_VERSION}"),
            Reject::Engine => f.write_str("written by another engine configuration"),
            Reject::WrongKey => f.write_str("key digest does not match the file name"),
            Reject::BadArtifact(why) => write!(f, "bad artifact: {why}"),
            Reject::Unauthenticated => f.write_str("authentication tag missing or wrong"),
            Reject::Wasmtime(why) => write!(f, "wasmtime refused the artifact: {why}"),
            Reject::NotAFile => f.write_str("not a regular file"),
            Reject::TooLarge { bytes, max } => write!(
                f,
                "artifact of {bytes} bytes is over the limit of {max} bytes (max_artifact_bytes)"
            ),
        }
    }
}

impl std::error::Error for Reject {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Reject::Wasmtime(refusal) => Some(refusal.0.as_ref().as_ref()),
            _ => None,
        }
    }
}

/// Wasmtime's error for an artifact it refused, kept as the source of [`Reject::Wasmtime`].
/// Shared, so a `Reject` stays cheap to clone; two refusals are equal only if they are the same
/// error.
#[derive(Debug, Clone)]
pub struct Refusal(std::sync::Arc<wasmtime::Error>);

impl Refusal {
    /// Keeps wasmtime's error.
    pub fn new(error: wasmtime::Error) -> Refusal {
        Refusal(std::sync::Arc::new(error))
    }
}

impl PartialEq for Refusal {
    fn eq(&self, other: &Refusal) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Refusal {}

impl std::fmt::Display for Refusal {
    /// wasmtime's message and its causes, on one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = format!("{:#}", self.0);
        f.write_str(&text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

fn trailer_digest(t: &[u8; TRAILER_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&t[0..176]);
    h.update(&t[208..224]);
    h.finalize().into()
}

/// The sha256 of an artifact.
pub fn artifact_digest(artifact: &[u8]) -> [u8; 32] {
    Sha256::digest(artifact).into()
}

/// Builds the trailer of `artifact` for `key`, with its tags if `auth` is given.
pub fn encode(key: &CacheKey, artifact: &[u8], auth: Option<&AuthKey>) -> [u8; TRAILER_LEN] {
    let tag = auth.map(|k| {
        let mut hasher = k.artifact_hasher();
        hasher.update(artifact);
        (k, *hasher.finalize().as_bytes())
    });
    encode_fields(key, artifact.len() as u64, &artifact_digest(artifact), tag)
}

/// Builds a trailer from its fields: `tag` is the tag key and the artifact's tag.
fn encode_fields(
    key: &CacheKey,
    artifact_len: u64,
    digest: &[u8; 32],
    tag: Option<(&AuthKey, [u8; 32])>,
) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..32].copy_from_slice(key.engine().as_bytes());
    t[32..64].copy_from_slice(&key.digest());
    t[64..72].copy_from_slice(&artifact_len.to_le_bytes());
    t[72..104].copy_from_slice(digest);
    let flags = if tag.is_some() { FLAG_TAGS } else { 0 };
    t[104..108].copy_from_slice(&flags.to_le_bytes());
    t[208..212].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    t[212..216].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
    t[216..224].copy_from_slice(&MAGIC);
    if let Some((k, artifact_tag)) = tag {
        t[112..144].copy_from_slice(&artifact_tag);
        let trailer_tag = k.trailer_tag(&t);
        t[144..176].copy_from_slice(trailer_tag.as_bytes());
    }
    let digest = trailer_digest(&t);
    t[176..208].copy_from_slice(&digest);
    t
}

fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// Decodes and checks a trailer against the file it ends and the key it is looked up under.
/// Checks everything but the artifact's digest or tag: `file_len` is the whole file's length,
/// `auth` is `Some` in Authenticated mode (then the trailer's own tag is checked).
pub fn check_trailer(
    t: &[u8; TRAILER_LEN],
    file_len: u64,
    engine: &EngineFingerprint,
    key: &CacheKey,
    auth: Option<&AuthKey>,
) -> Result<Trailer, Reject> {
    if t[216..224] != MAGIC {
        return Err(Reject::BadTrailer("wrong magic"));
    }
    let version = u32::from_le_bytes(array(&t[208..212]));
    if version != FORMAT_VERSION {
        return Err(Reject::Version(version));
    }
    if u32::from_le_bytes(array(&t[212..216])) as usize != TRAILER_LEN {
        return Err(Reject::BadTrailer("wrong trailer length"));
    }
    if trailer_digest(t) != t[176..208] {
        return Err(Reject::BadTrailer("trailer digest mismatch"));
    }
    let trailer = Trailer {
        engine: array(&t[0..32]),
        key: array(&t[32..64]),
        artifact_len: u64::from_le_bytes(array(&t[64..72])),
        artifact_sha256: array(&t[72..104]),
        flags: u32::from_le_bytes(array(&t[104..108])),
        artifact_tag: array(&t[112..144]),
    };
    if trailer.flags & !FLAG_TAGS != 0 || t[108..112] != [0; 4] {
        return Err(Reject::BadTrailer("unknown flags"));
    }
    if trailer.engine != *engine.as_bytes() {
        return Err(Reject::Engine);
    }
    if trailer.key != key.digest() || key.engine() != *engine {
        return Err(Reject::WrongKey);
    }
    if Some(trailer.artifact_len) != file_len.checked_sub(TRAILER_LEN as u64) {
        return Err(Reject::BadArtifact("length mismatch"));
    }
    if let Some(k) = auth {
        // `blake3::Hash` compares in constant time.
        if trailer.flags & FLAG_TAGS == 0 || k.trailer_tag(t) != array::<32>(&t[144..176]) {
            return Err(Reject::Unauthenticated);
        }
    }
    Ok(trailer)
}

/// Checks the artifact against a checked trailer: its keyed BLAKE3 against the artifact tag
/// in Authenticated mode (`auth`), its sha256 otherwise.
pub fn check_artifact(
    trailer: &Trailer,
    artifact: &[u8],
    auth: Option<&AuthKey>,
) -> Result<(), Reject> {
    match auth {
        Some(k) => {
            let mut hasher = k.artifact_hasher();
            hasher.update(artifact);
            check_artifact_tag(trailer, hasher.finalize())
        }
        None => check_artifact_sha256(trailer, &artifact_digest(artifact)),
    }
}

/// Compares an artifact's keyed BLAKE3 (computed by the caller) with the trailer's tag, in
/// constant time.
pub fn check_artifact_tag(trailer: &Trailer, tag: blake3::Hash) -> Result<(), Reject> {
    if tag != trailer.artifact_tag {
        return Err(Reject::Unauthenticated);
    }
    Ok(())
}

/// Compares an artifact's sha256 (computed by the caller) with the trailer's.
pub fn check_artifact_sha256(trailer: &Trailer, digest: &[u8; 32]) -> Result<(), Reject> {
    if *digest != trailer.artifact_sha256 {
        return Err(Reject::BadArtifact("sha256 mismatch"));
    }
    Ok(())
}

/// Checks a whole file's bytes (artifact and trailer) read into memory; returns the artifact.
pub fn check_bytes<'a>(
    bytes: &'a [u8],
    engine: &EngineFingerprint,
    key: &CacheKey,
    auth: Option<&AuthKey>,
) -> Result<&'a [u8], Reject> {
    let Some(split) = bytes.len().checked_sub(TRAILER_LEN) else {
        return Err(Reject::BadTrailer("file shorter than a trailer"));
    };
    let (artifact, t) = bytes.split_at(split);
    let t: &[u8; TRAILER_LEN] = t
        .try_into()
        .map_err(|_| Reject::BadTrailer("file shorter than a trailer"))?;
    let trailer = check_trailer(t, bytes.len() as u64, engine, key, auth)?;
    check_artifact(&trailer, artifact, auth)?;
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::{Abi, Form, Tier, WasmHash};

    fn key() -> (EngineFingerprint, CacheKey) {
        let engine = EngineFingerprint::from_bytes([7; 32]);
        (
            engine,
            CacheKey::from_parts(
                WasmHash::of(b"wasm"),
                Form::Original,
                Abi::Plain,
                Tier::Cranelift,
                engine,
            ),
        )
    }

    fn file(key: &CacheKey, artifact: &[u8], secret: Option<&[u8]>) -> Vec<u8> {
        let auth = secret.map(|k| auth_key(k).unwrap());
        let t = encode(key, artifact, auth.as_ref());
        [artifact, &t[..]].concat()
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let (engine, key) = key();
        let artifact = b"not really an elf file, but bytes".to_vec();
        for auth in [None, Some(&b"secret"[..])] {
            let bytes = file(&key, &artifact, auth);
            let auth = auth.map(|k| auth_key(k).unwrap());
            let auth = auth.as_ref();
            assert_eq!(check_bytes(&bytes, &engine, &key, auth).unwrap(), artifact);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x01;
                assert!(
                    check_bytes(&bad, &engine, &key, auth).is_err(),
                    "flip at {i} not caught (tags: {})",
                    auth.is_some()
                );
            }
        }
    }

    /// A deterministic byte stream (xorshift64*), so failures reproduce.
    fn garbage(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    /// The fuzzing surface (`crate::fuzzing`) on truncated, padded and garbage inputs of every
    /// length 0..=300: never a panic, and only the one valid file is accepted.
    #[test]
    fn no_input_of_any_length_panics_or_passes() {
        let (engine, key) = key();
        let other_engine = EngineFingerprint::from_bytes([9; 32]);
        let secret = auth_key(b"k").unwrap();
        let artifact = garbage(1, 100);
        for auth in [None, Some(&secret)] {
            let t = encode(&key, &artifact, auth);
            let valid = [&artifact[..], &t[..]].concat();
            assert_eq!(check_bytes(&valid, &engine, &key, auth), Ok(&artifact[..]));
            for len in 0..=300usize {
                let mut inputs = vec![
                    garbage(len as u64 + 7, len),
                    valid[..len.min(valid.len())].to_vec(),
                    valid[valid.len().saturating_sub(len)..].to_vec(),
                    // A valid trailer behind `len` bytes of garbage: a length mismatch.
                    [&garbage(len as u64, len)[..], &t[..]].concat(),
                    // A valid trailer cut to `len` bytes, zero-padded to a full trailer.
                    {
                        let mut cut = t[..len.min(TRAILER_LEN)].to_vec();
                        cut.resize(TRAILER_LEN, 0);
                        cut
                    },
                ];
                // Garbage with a correct magic, version and length, so the parse goes deeper.
                let mut deep = garbage(len as u64 + 99, len.max(TRAILER_LEN));
                let n = deep.len();
                deep[n - 16..n - 12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
                deep[n - 12..n - 8].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
                deep[n - 8..].copy_from_slice(&MAGIC);
                inputs.push(deep);
                for bytes in &inputs {
                    for engine in [&engine, &other_engine] {
                        let got = check_bytes(bytes, engine, &key, auth);
                        let ok = bytes == &valid && engine == &key.engine();
                        assert_eq!(got.is_ok(), ok, "len {len}: {got:?}");
                    }
                    if let Some(tail) = bytes.len().checked_sub(TRAILER_LEN) {
                        let t: &[u8; TRAILER_LEN] = bytes[tail..].try_into().unwrap();
                        for file_len in [0, 1, 223, 224, len as u64, u64::MAX] {
                            let got = check_trailer(t, file_len, &engine, &key, auth);
                            if got.is_ok() {
                                assert_eq!(t, &valid[valid.len() - TRAILER_LEN..]);
                                assert_eq!(file_len, valid.len() as u64);
                            }
                        }
                    }
                }
            }
            // Extreme lengths in an otherwise valid trailer.
            for artifact_len in [0, 1, u64::MAX - 191, u64::MAX] {
                let t = encode_fields(&key, artifact_len, &[0; 32], auth.map(|k| (k, [0; 32])));
                for file_len in [0, 224, u64::MAX] {
                    let _ = check_trailer(&t, file_len, &engine, &key, auth);
                }
            }
        }
    }

    #[test]
    fn wrong_key_engine_version_and_tag() {
        let (engine, key) = key();
        let bytes = file(&key, b"artifact", Some(b"k1"));
        let other = CacheKey::from_parts(
            WasmHash::of(b"other"),
            Form::Original,
            Abi::Plain,
            Tier::Cranelift,
            engine,
        );
        assert_eq!(
            check_bytes(&bytes, &engine, &other, None),
            Err(Reject::WrongKey)
        );
        let engine2 = EngineFingerprint::from_bytes([8; 32]);
        assert_eq!(
            check_bytes(&bytes, &engine2, &key, None),
            Err(Reject::Engine)
        );
        assert_eq!(
            check_bytes(&bytes, &engine, &key, auth_key(b"k2").as_ref()),
            Err(Reject::Unauthenticated)
        );
        // A file without a tag is refused in Authenticated mode.
        let plain = file(&key, b"artifact", None);
        assert_eq!(
            check_bytes(&plain, &engine, &key, auth_key(b"k1").as_ref()),
            Err(Reject::Unauthenticated)
        );
        // Truncated.
        assert!(matches!(
            check_bytes(&bytes[1..], &engine, &key, None),
            Err(Reject::BadArtifact(_))
        ));
        assert!(matches!(
            check_bytes(&bytes[..100], &engine, &key, None),
            Err(Reject::BadTrailer(_))
        ));
        // Another version, with a valid digest.
        let mut t: [u8; TRAILER_LEN] = bytes[bytes.len() - TRAILER_LEN..].try_into().unwrap();
        t[208..212].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let d = trailer_digest(&t);
        t[176..208].copy_from_slice(&d);
        let len = bytes.len() as u64;
        assert_eq!(
            check_trailer(&t, len, &engine, &key, None),
            Err(Reject::Version(FORMAT_VERSION + 1))
        );
    }
}
