//! A verified on-disk cache of serialized wasmtime artifacts, the bottom layer of Strata's
//! module cache.
//!
//! Layout: `<dir>/v<FORMAT_VERSION>-<engine fingerprint hex>/<whole key>.cwasm`, where the whole
//! key is the text of [`CacheKey`] (`<module id>-<form>-<abi>-<tier>-<engine>`), so a
//! file name says which module, form, rewrite version, ABI, tier and engine it holds. A folder
//! per format version and engine fingerprint means an artifact of another wasmtime version or
//! engine configuration is never even opened. One cache serves every engine a build uses (one
//! per ABI memory model and per compiler tier, [`FsCache::open_engines`]); its byte limit
//! covers all their folders, and [`FsCache::prune`] removes the folders of every other engine.
//!
//! Each file is the artifact (`Module::serialize` output) followed by a [`TRAILER_LEN`]-byte
//! trailer, integers little-endian:
//!
//! ```text
//!   0..32    engine fingerprint
//!   32..64   key digest, sha256 of the key's byte encoding (must match the file name)
//!   64..72   artifact length, u64 (must equal file length - 224)
//!   72..104  sha256 of the artifact
//!   104..108 flags, u32 (bit 0: tags present)
//!   108..112 reserved, zero
//!   112..144 artifact tag: keyed BLAKE3 of the artifact, or zeroes
//!   144..176 trailer tag: keyed BLAKE3 of trailer[0..144], or zeroes
//!   176..208 sha256(trailer[0..176] || trailer[208..224])
//!   208..212 format version, u32 (FORMAT_VERSION)
//!   212..216 trailer length, u32 (224)
//!   216..224 magic "STRTCWSM"
//! ```
//!
//! A trailer rather than a header: wasmtime ignores bytes after its ELF image (a unit test
//! checks it), so the whole file is still a mappable artifact and the Trusted mode hands the
//! open file to `Module::deserialize_open_file` without copying. A header would need
//! `Module::deserialize_raw` over memory the `Module` does not own.
//!
//! Loads, by [`Verification`] mode:
//! - `Verified` (default): the file is read once into memory; the trailer and the sha256 of
//!   exactly those bytes are checked, and those same bytes are deserialized. Nothing
//!   unverified reaches wasmtime's `unsafe` deserializer, and there is no window in which the
//!   file can be swapped between check and use. Guards against corruption, truncation and
//!   swapped files: it detects damage, not forgery (anyone who can write the folder can
//!   write a file with a consistent sha256).
//! - `Authenticated { key }`: the trailer's own tag is checked before the artifact is read,
//!   then the artifact's keyed BLAKE3 tag (in place of its sha256: one pass, 2.2-2.6x faster
//!   than sha256 or HMAC-SHA256 here). The tag keys are derived from the caller's secret, which
//!   is never written to the cache directory; it defends against an attacker who can write the
//!   directory but cannot read the key. A file that only its owner, this process's user, can
//!   change (no write bit for group or others; every saved file is created read-only) is
//!   hashed where it lies and the same open file is mapped by wasmtime, with no copy: only
//!   that user or root, who can read the key anyway, could change it between check and use.
//!   Any other file is read into memory and checked there, as in Verified mode.
//! - `Trusted`: the trailer is checked (cheap), then the file is mapped by wasmtime without
//!   hashing. For directories only the node can write; made only by the `unsafe`
//!   [`Verification::trusted`], whose caller asserts that.
//!
//! Any bad file (truncated, corrupt, tampered, swapped, foreign engine, wrong tag) is a miss:
//! it is removed, counted as `rejected`, and the caller recompiles. Writes go to a uniquely
//! named temp file in the same folder, then fsync, rename and fsync of the folder, so several
//! processes can share one directory and a crash never leaves a half-written entry under a
//! final name. An optional byte limit evicts the least recently used files.
//!
//! Every file-system operation goes through the [`strata_fs::Fs`] trait
//! ([`strata_fs::RealFs`] by default), so tests can fail any operation of a save or a load with
//! strata-fs's `FaultFs` through [`FsCache::open_with_fs`]: a failed save returns `Err` and
//! leaves neither a partial entry nor (once the disk works again) a temp file; a failed load is
//! an `Err` (a miss for a chain), never a rejection of a valid file. strata-fs's `PowerLossFs`
//! simulates a power cut at any operation; after it a load is a miss or the saved module.
//!
//! # Example
//!
//! ```
//! use cache_core::{CacheKey, ModuleCache};
//! use cache_fs::{FsCache, FsCacheConfig, Verification};
//! use wasmtime::{Engine, Instance, Module, Store};
//!
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::default();
//! let wat = r#"(module (func (export "answer") (result i32) i32.const 42))"#;
//! let key = CacheKey::new(&engine, wat.as_bytes());
//!
//! let config = FsCacheConfig {
//!     mode: Verification::Verified,
//!     max_bytes: Some(64 << 20),
//!     ..FsCacheConfig::default()
//! };
//! let cache = FsCache::open(dir.path(), &engine, config.clone())?;
//! cache.save(&key, &Module::new(&engine, wat)?)?;
//!
//! // Another process (here: another handle) finds it, verified.
//! let reopened = FsCache::open(dir.path(), &engine, config)?;
//! let module = reopened.load(&key)?.expect("a hit");
//! let mut store = Store::new(&engine, ());
//! let instance = Instance::new(&mut store, &module, &[])?;
//! let answer = instance.get_typed_func::<(), i32>(&mut store, "answer")?;
//! assert_eq!(answer.call(&mut store, ())?, 42);
//! assert_eq!(reopened.verify_all()?.bad.len(), 0);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod format;

/// The trailer codec, exposed only for fuzz targets (`fuzz/`, `strata-tests`): not a stable
/// API and not meant for other callers. Every function here returns a [`Reject`](fuzzing::Reject)
/// for bad input and never panics, whatever the bytes.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::format::{
        AuthKey, Refusal, Reject, Trailer, artifact_digest, auth_key, check_artifact, check_bytes,
        check_trailer, encode,
    };
}

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub use cache_core::{CacheError, ConfigError};
use cache_core::{CacheKey, EngineFingerprint, LayerStats, ModuleCache, StatCounters};
use format::{AuthKey, Refusal, Reject};
pub use format::{FORMAT_VERSION, MAGIC, TRAILER_LEN};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use strata_fs::{File, Fs, Metadata, RealFs};
use wasmtime::{Engine, Module};

/// The extension of cache entries.
const EXTENSION: &str = "cwasm";
/// The prefix of temp files; they never end in `.cwasm`.
const TEMP_PREFIX: &str = ".tmp-";
/// Verified reads hash the file in chunks of this size, each while it is still in cache.
/// (Small in unit tests, so that their small artifacts span several chunks.)
const READ_CHUNK: usize = if cfg!(test) { 4096 } else { 1 << 20 };
/// The permission bits of cache files: read-only for everyone. Saves write through the
/// descriptor that created the file and replace files by rename, so no one ever needs to write a
/// saved file; and whatever the umask, a saved file qualifies for Authenticated loads in place.
const CACHE_FILE_MODE: u32 = 0o444;
/// Temp files older than this are leftovers of a crashed writer and are removed at open (as are
/// those whose writing process has exited, see `writer_is_gone`).
const STALE_TEMP_AGE: Duration = Duration::from_secs(15 * 60);

/// How much a load checks before handing a file to wasmtime's `unsafe` deserializer.
///
/// What each mode defends against:
/// - [`Verified`](Verification::Verified) detects damage (corruption, truncation, swapped or
///   foreign files), not forgery: anyone who can write the cache folder can write a file with
///   a consistent sha256, and it is then deserialized as native code.
/// - [`Authenticated`](Verification::Authenticated) also detects forgery by anyone without the
///   key.
/// - [`Trusted`](Verification::Trusted) detects trailer damage only; it can only be had
///   through the `unsafe` [`Verification::trusted`].
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Verification {
    /// Check the trailer only (magic, version, engine, key, length), then map the file without
    /// hashing it. Made only by the `unsafe` [`Verification::trusted`]: the field is a token no
    /// one outside this crate can build.
    Trusted(TrustAsserted),
    /// Read the file once, check the trailer and the sha256 of the artifact bytes, and
    /// deserialize exactly the bytes that were checked. Detects damage, not forgery: a writer
    /// of the cache folder can recompute a sha256.
    #[default]
    Verified,
    /// As `Verified`, plus a tag with a secret `key` kept outside the cache directory. Files
    /// without a valid tag for this key are rejected, so a writer of the cache folder who does
    /// not have the key cannot forge one. A file only its owner (this process's user) can
    /// write is checked where it lies and then mapped, without a copy; see the crate docs.
    Authenticated {
        /// The secret the tag keys are derived from (`blake3::derive_key`). Must not be empty;
        /// 32 random bytes are enough.
        key: Vec<u8>,
    },
}

/// The proof, carried by [`Verification::Trusted`], that someone called the `unsafe`
/// [`Verification::trusted`]. It cannot be built outside this crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustAsserted(());

impl Verification {
    /// The Trusted mode: a load checks the trailer (magic, version, engine, key, length) and
    /// maps the file with `Module::deserialize_open_file`, without hashing a byte of the
    /// artifact.
    ///
    /// # Safety
    ///
    /// The caller asserts that every file in the cache directory that a load may open was
    /// written by an [`FsCache::save`] of this build (or is damaged only in ways the trailer
    /// check catches), that no one else can write the directory or its files, and that no file
    /// is modified in place while a module loaded from it lives. Wasmtime then runs the mapped
    /// bytes as native code: a forged or bit-flipped artifact is undefined behaviour, not a
    /// miss.
    pub unsafe fn trusted() -> Verification {
        Verification::Trusted(TrustAsserted(()))
    }
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verification::Trusted(_) => f.write_str("Trusted"),
            Verification::Verified => f.write_str("Verified"),
            // Never print the secret.
            Verification::Authenticated { .. } => f.write_str("Authenticated { key: <redacted> }"),
        }
    }
}

/// Settings of an [`FsCache`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsCacheConfig {
    /// What a load checks. Default: [`Verification::Verified`].
    pub mode: Verification,
    /// Upper bound on the bytes of the folders of all the cache's engines; least recently used
    /// files are evicted after each save. Default: no limit.
    pub max_bytes: Option<u64>,
    /// fsync each file before its rename and the folder after it. Default: `true`. Turning it
    /// off trades durability across power loss (not atomicity) for write speed.
    pub fsync: bool,
    /// The largest artifact a load reads or a save writes, in bytes (the file is this plus the
    /// trailer). A larger file is rejected from its size alone, before anything is read or
    /// allocated, so a planted (possibly sparse) huge file cannot exhaust memory; a larger
    /// module is not saved (counted as `rejected`). Default 512 MiB: the largest real artifact
    /// seen (esbuild's 14 MB module) is 31 MB.
    pub max_artifact_bytes: u64,
}

/// The default of [`FsCacheConfig::max_artifact_bytes`].
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 512 << 20;

impl Default for FsCacheConfig {
    fn default() -> Self {
        FsCacheConfig {
            mode: Verification::Verified,
            max_bytes: None,
            fsync: true,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
        }
    }
}

/// What [`FsCache::prune`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Folders of engines this cache does not serve, or of other format versions, that were
    /// removed.
    pub removed_folders: Vec<PathBuf>,
    /// Files removed (in those folders, plus stale temp files in the folders of its engines).
    pub removed_files: u64,
    /// Bytes of the removed files.
    pub removed_bytes: u64,
}

/// One file that failed [`FsCache::verify_all`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEntry {
    /// The file.
    pub path: PathBuf,
    /// Why it is bad.
    pub reason: String,
}

/// What [`FsCache::verify_all`] found in the folders of the cache's engines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked.
    pub checked: u64,
    /// Entries that passed.
    pub valid: u64,
    /// Bytes of the entries that passed.
    pub valid_bytes: u64,
    /// Entries that failed, with the reason. They are not removed by `verify_all`; a load
    /// removes them.
    pub bad: Vec<BadEntry>,
}

/// What the cache knows of one file of its folder.
#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    bytes: u64,
    last_used: SystemTime,
}

/// One engine a cache serves, with its folder.
struct EngineDir {
    fingerprint: EngineFingerprint,
    engine: Engine,
    dir: PathBuf,
}

/// An on-disk module cache for the engine configurations of one build. See the crate docs.
pub struct FsCache {
    dir: PathBuf,
    /// The engines served, the first being the one given to `open`; fingerprints distinct.
    engines: Vec<EngineDir>,
    config: FsCacheConfig,
    /// The tag keys of Authenticated mode.
    auth: Option<AuthKey>,
    counters: StatCounters,
    /// Authenticated loads checked in place and mapped (see [`FsCache::loads_in_place`]).
    in_place: AtomicU64,
    /// File path -> size and last use, over the folders of all engines, for stats and the
    /// byte limit. Rebuilt from the folders at open and before each eviction, since other
    /// processes share them.
    index: Mutex<HashMap<PathBuf, IndexEntry>>,
    /// Why the last rejected file was rejected, for diagnostics.
    last_rejection: Mutex<Option<String>>,
    /// Every file-system operation goes through this.
    fs: Arc<dyn Fs>,
    /// Our own temp files whose removal failed (a failing disk): removed at the next save,
    /// prune or drop.
    orphans: Mutex<Vec<PathBuf>>,
    /// When the folders are made: at open, or only by a save ([`FsCache::open_without_creating`]).
    folders: Folders,
}

/// When a cache makes its folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folders {
    /// At open (missing ones created, durably with fsync).
    AtOpen,
    /// Never at open: a missing folder is an empty cache, and a save creates it.
    AtSave,
}

impl std::fmt::Debug for FsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsCache")
            .field(
                "engine_dirs",
                &self.engines.iter().map(|e| &e.dir).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A process-unique counter for temp file names.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per thread and perturbed per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Whether the process that named a temp file `.tmp-<pid>-...` (`rest` is what follows the
/// prefix) has exited, so the file can never be renamed into place. A process of this pid that
/// is alive (ours included, or another user's) keeps the file, as does a name without a pid.
/// If the pid is not visible here (a writer in another pid namespace sharing the folder), its
/// file is removed mid-write: that writer's rename then fails and its save is a counted error,
/// which costs at most a recompile; the folder never holds a half-written entry.
fn writer_is_gone(rest: &str) -> bool {
    let Some(pid) = rest
        .split('-')
        .next()
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|pid| pid.parse::<i32>().ok())
        .filter(|&pid| pid > 0)
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    if pid.as_raw_nonzero().get() as u32 == std::process::id() {
        return false;
    }
    rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH)
}

/// Creates `folder` and any missing parent; with `fsync`, each new folder's entry is made
/// durable in its parent.
fn create_folder(fs: &dyn Fs, folder: &Path, fsync: bool) -> Result<(), CacheError> {
    if fsync {
        fs.create_dir_all_durable(folder)
    } else {
        fs.create_dir_all(folder)
    }
    .map_err(|e| CacheError::io(folder, e))
}

/// Whether only the file's owner, this process's effective user, may change the file: it grants
/// no write permission to group or others. With POSIX ACLs the group bits are the ACL mask, so
/// no named entry grants a write either. (Privileged processes bypass this; they can read the
/// key too.)
fn only_owner_can_write(meta: &Metadata) -> bool {
    meta.uid() == rustix::process::geteuid().as_raw() && meta.mode() & 0o022 == 0
}

fn is_not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// The name of `engine`'s folder.
fn folder_name(engine: &EngineFingerprint) -> String {
    format!("v{FORMAT_VERSION}-{engine}")
}

/// The name of `key`'s file: the whole key.
fn file_name(key: &CacheKey) -> String {
    format!("{key}.{EXTENSION}")
}

/// Whether `name` is a cache folder name `v<digits>-<64 hex digits>`.
fn is_cache_folder_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('v') else {
        return false;
    };
    let Some((version, fingerprint)) = rest.split_once('-') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && EngineFingerprint::from_hex(fingerprint).is_ok()
}

impl FsCache {
    /// Opens (creating if needed) the cache in `dir` for `engine`, scanning this engine's
    /// folder for stats and the byte limit and removing stale temp files.
    pub fn open(dir: &Path, engine: &Engine, config: FsCacheConfig) -> Result<FsCache, CacheError> {
        FsCache::open_with_fs(dir, engine, config, Arc::new(RealFs))
    }

    /// As [`FsCache::open`], with every file-system operation (of the open and of every later
    /// call) going through `fs`: for tests, strata-fs's `FaultFs` that fails chosen operations.
    pub fn open_with_fs(
        dir: &Path,
        engine: &Engine,
        config: FsCacheConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<FsCache, CacheError> {
        FsCache::open_engines(dir, std::slice::from_ref(engine), config, fs)
    }

    /// As [`FsCache::open_with_fs`], serving several engines (of distinct configurations; a
    /// repeated fingerprint is served once): a load or save goes to the folder of the key's
    /// engine, the byte limit covers all their folders, and [`FsCache::prune`] keeps exactly
    /// theirs. `engines` must not be empty; the first is the one [`FsCache::fingerprint`] names.
    pub fn open_engines(
        dir: &Path,
        engines: &[Engine],
        config: FsCacheConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<FsCache, CacheError> {
        FsCache::open_inner(dir, engines, config, fs, Folders::AtOpen)
    }

    /// As [`FsCache::open_engines`], but creates nothing: a missing cache directory or engine
    /// folder is an empty cache (loads miss, [`verify_all`](Self::verify_all) and
    /// [`prune`](Self::prune) find nothing), and the first [`save`](ModuleCache::save) creates the
    /// folder it writes to (durably with fsync). For tools that open a directory to read it.
    pub fn open_without_creating(
        dir: &Path,
        engines: &[Engine],
        config: FsCacheConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<FsCache, CacheError> {
        FsCache::open_inner(dir, engines, config, fs, Folders::AtSave)
    }

    fn open_inner(
        dir: &Path,
        engines: &[Engine],
        config: FsCacheConfig,
        fs: Arc<dyn Fs>,
        folders: Folders,
    ) -> Result<FsCache, CacheError> {
        if engines.is_empty() {
            return Err(CacheError::Config(ConfigError::NoEngine));
        }
        let auth = match &config.mode {
            // `auth_key` refuses only an empty secret.
            Verification::Authenticated { key } => {
                Some(format::auth_key(key).ok_or(CacheError::Config(ConfigError::EmptyHmacKey))?)
            }
            _ => None,
        };
        let mut served: Vec<EngineDir> = Vec::new();
        for engine in engines {
            let fingerprint = EngineFingerprint::of(engine);
            if served.iter().any(|e| e.fingerprint == fingerprint) {
                continue;
            }
            let engine_dir = dir.join(folder_name(&fingerprint));
            if folders == Folders::AtOpen {
                create_folder(fs.as_ref(), &engine_dir, config.fsync)?;
            }
            served.push(EngineDir {
                fingerprint,
                engine: engine.clone(),
                dir: engine_dir,
            });
        }
        let cache = FsCache {
            dir: dir.to_path_buf(),
            engines: served,
            config,
            auth,
            counters: StatCounters::default(),
            in_place: AtomicU64::new(0),
            index: Mutex::new(HashMap::new()),
            last_rejection: Mutex::new(None),
            fs,
            orphans: Mutex::new(Vec::new()),
            folders,
        };
        cache.rescan(true)?;
        Ok(cache)
    }

    /// The cache directory given to [`FsCache::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of the (first) engine given to `open`, inside [`FsCache::dir`].
    pub fn engine_dir(&self) -> &Path {
        &self.engines[0].dir
    }

    /// The folders of every engine this cache serves, the first one first: the folders
    /// [`FsCache::prune`] keeps.
    pub fn engine_dirs(&self) -> impl Iterator<Item = &Path> {
        self.engines.iter().map(|e| e.dir.as_path())
    }

    /// The fingerprints of every engine this cache serves, the first one first.
    pub fn fingerprints(&self) -> Vec<EngineFingerprint> {
        self.engines.iter().map(|e| e.fingerprint).collect()
    }

    /// The settings this cache was opened with.
    pub fn config(&self) -> &FsCacheConfig {
        &self.config
    }

    /// The fingerprint of the (first) engine given to `open`.
    pub fn fingerprint(&self) -> EngineFingerprint {
        self.engines[0].fingerprint
    }

    /// How many Authenticated loads checked their file where it lies and mapped it, rather than
    /// reading it into memory first: those whose file belonged to this process's user and
    /// granted no write permission to group or others (see the crate docs).
    pub fn loads_in_place(&self) -> u64 {
        self.in_place.load(Ordering::Relaxed)
    }

    /// Why the most recently rejected file was rejected (path and reason), if any was.
    pub fn last_rejection(&self) -> Option<String> {
        self.last_rejection.lock().clone()
    }

    /// The path of `key`'s file (whether or not it exists, or its engine is served):
    /// `<dir>/<engine folder>/<whole key>.cwasm`.
    pub fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.dir
            .join(folder_name(&key.engine()))
            .join(file_name(key))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), CacheError> {
        self.fs.sync_dir(dir).map_err(|e| CacheError::io(dir, e))
    }

    /// Removes a file; `Ok(false)` if it was already gone.
    fn remove_file(&self, path: &Path) -> std::io::Result<bool> {
        match self.fs.remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Retries removing our temp files that a failing disk left behind.
    fn remove_orphans(&self) {
        let mut orphans = self.orphans.lock();
        orphans.retain(|path| self.remove_file(path).is_err());
    }

    /// The served engine of `key`.
    fn engine_of(&self, key: &CacheKey) -> Result<&Engine, CacheError> {
        self.engines
            .iter()
            .find(|e| e.fingerprint == key.engine())
            .map(|e| &e.engine)
            .ok_or(CacheError::Incompatible {
                engine: key.engine(),
            })
    }

    /// Rebuilds the index from the folder. With `clean_temps`, also removes stale temp files
    /// and returns how many files and bytes that freed.
    fn rescan(&self, clean_temps: bool) -> Result<(u64, u64), CacheError> {
        let now = SystemTime::now();
        let mut index = HashMap::new();
        let (mut files, mut bytes) = (0, 0);
        for engine in &self.engines {
            let (f, b) = self.rescan_folder(&engine.dir, clean_temps, now, &mut index)?;
            files += f;
            bytes += b;
        }
        *self.index.lock() = index;
        Ok((files, bytes))
    }

    /// Indexes one engine folder (see `rescan`).
    fn rescan_folder(
        &self,
        folder: &Path,
        clean_temps: bool,
        now: SystemTime,
        index: &mut HashMap<PathBuf, IndexEntry>,
    ) -> Result<(u64, u64), CacheError> {
        let names = match self.fs.read_dir(folder) {
            Ok(names) => names,
            Err(e) if self.folders == Folders::AtSave && is_not_found(&e) => return Ok((0, 0)),
            Err(e) => return Err(CacheError::io(folder, e)),
        };
        let (mut files, mut bytes) = (0, 0);
        for name in names {
            let Ok(name) = name.into_string() else {
                continue;
            };
            let path = folder.join(&name);
            // Removed by another process since the listing: skip it.
            let Ok(meta) = self.fs.metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().unwrap_or(now);
            if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
                let stale = now
                    .duration_since(modified)
                    .is_ok_and(|age| age > STALE_TEMP_AGE)
                    || writer_is_gone(rest);
                if clean_temps && stale && self.remove_file(&path).is_ok_and(|removed| removed) {
                    files += 1;
                    bytes += meta.len();
                }
                continue;
            }
            if name.ends_with(&format!(".{EXTENSION}")) {
                index.insert(
                    path,
                    IndexEntry {
                        bytes: meta.len(),
                        last_used: modified,
                    },
                );
            }
        }
        Ok((files, bytes))
    }

    /// Counts a rejected file as a miss and removes it, unless another process has already
    /// replaced it (the path no longer names the file that was read).
    fn reject(&self, path: &Path, file: &File, why: Reject) -> Result<Option<Module>, CacheError> {
        self.counters.rejected.incr();
        tracing::warn!(path = %path.display(), reason = %why, "cache file rejected");
        *self.last_rejection.lock() = Some(format!("{}: {why}", path.display()));
        self.counters.misses.incr();
        let same_file = match (self.fs.file_metadata(file), self.fs.metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if same_file && self.remove_file(path).is_err() {
            self.counters.errors.incr();
        }
        self.index.lock().remove(path);
        Ok(None)
    }

    /// Checks a file's size against [`FsCacheConfig::max_artifact_bytes`] and reads its
    /// trailer (`pread`), before anything else is read or allocated.
    fn read_trailer(
        &self,
        path: &Path,
        file: &File,
        len: u64,
    ) -> Result<Result<[u8; TRAILER_LEN], Reject>, CacheError> {
        let Some(artifact_len) = len.checked_sub(TRAILER_LEN as u64) else {
            return Ok(Err(Reject::BadTrailer("file shorter than a trailer")));
        };
        if artifact_len > self.config.max_artifact_bytes {
            return Ok(Err(Reject::TooLarge {
                bytes: artifact_len,
                max: self.config.max_artifact_bytes,
            }));
        }
        let mut t = [0u8; TRAILER_LEN];
        match self.fs.read_at(file, &mut t, artifact_len) {
            Ok(()) => Ok(Ok(t)),
            // Shrunk since the fstat: truncated.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Ok(Err(Reject::BadArtifact("file shrank while read")))
            }
            Err(e) => Err(CacheError::io(path, e)),
        }
    }

    /// Reads and fully verifies one file: first its size and trailer (with the trailer tag in
    /// Authenticated mode), then the artifact it announces, hashed while read (sha256, or the
    /// keyed BLAKE3 artifact tag in Authenticated mode).
    fn read_verified(
        &self,
        path: &Path,
        file: &File,
        len: u64,
        key: &CacheKey,
    ) -> Result<Result<Vec<u8>, Reject>, CacheError> {
        let t = match self.read_trailer(path, file, len)? {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let trailer = match format::check_trailer(&t, len, &key.engine(), key, self.auth.as_ref()) {
            Ok(trailer) => trailer,
            Err(why) => return Ok(Err(why)),
        };
        // At most `max_artifact_bytes`: checked by `read_trailer`, and the trailer's length
        // equals the file's.
        let Ok(capacity) = usize::try_from(trailer.artifact_len) else {
            return Ok(Err(Reject::BadArtifact(
                "file larger than the address space",
            )));
        };
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(capacity).is_err() {
            return Ok(Err(Reject::BadArtifact(
                "file too large to read into memory",
            )));
        }
        // One pass over the artifact: read a chunk into `bytes`, then hash that chunk of
        // `bytes` while it is still in the CPU cache. The digest (or tag) covers exactly the
        // bytes kept. Authenticated: the keyed BLAKE3 tag only, no sha256.
        enum Hasher {
            Sha256(Sha256),
            Keyed(Box<blake3::Hasher>),
        }
        let mut hasher = match &self.auth {
            Some(k) => Hasher::Keyed(Box::new(k.artifact_hasher())),
            None => Hasher::Sha256(Sha256::new()),
        };
        loop {
            let max = (capacity - bytes.len()).min(READ_CHUNK);
            let start = bytes.len();
            let read = self
                .fs
                .read(file, &mut bytes, max)
                .map_err(|e| CacheError::io(path, e))?;
            match &mut hasher {
                Hasher::Sha256(h) => h.update(&bytes[start..]),
                Hasher::Keyed(h) => {
                    h.update(&bytes[start..]);
                }
            }
            if read == 0 || bytes.len() == capacity {
                break;
            }
        }
        if bytes.len() != capacity {
            return Ok(Err(Reject::BadArtifact("file shrank while read")));
        }
        let checked = match hasher {
            Hasher::Sha256(h) => format::check_artifact_sha256(&trailer, &h.finalize().into()),
            Hasher::Keyed(h) => format::check_artifact_tag(&trailer, h.finalize()),
        };
        if let Err(why) = checked {
            return Ok(Err(why));
        }
        Ok(Ok(bytes))
    }

    /// Authenticates one file where it lies: its size and trailer tag, then the keyed BLAKE3 tag
    /// of its artifact, hashed through a read-only mapping of the open file. On success returns
    /// the file to hand to wasmtime: a duplicate descriptor of the same inode.
    ///
    /// Only for a file that [`only_owner_can_write`]: a mapping of a file that shrinks under it
    /// raises `SIGBUS`, and only this user (who never truncates a cache file) or root could
    /// shrink it.
    fn authenticate_in_place(
        &self,
        auth: &AuthKey,
        path: &Path,
        file: &File,
        len: u64,
        key: &CacheKey,
    ) -> Result<Result<File, Reject>, CacheError> {
        let t = match self.read_trailer(path, file, len)? {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let trailer = match format::check_trailer(&t, len, &key.engine(), key, Some(auth)) {
            Ok(trailer) => trailer,
            Err(why) => return Ok(Err(why)),
        };
        let mapped = self
            .fs
            .open_for_mapping(file)
            .map_err(|e| CacheError::io(path, e))?;
        let mut hasher = auth.artifact_hasher();
        if trailer.artifact_len > 0 {
            // At most `max_artifact_bytes`, checked by `read_trailer`.
            let Ok(artifact_len) = usize::try_from(trailer.artifact_len) else {
                return Ok(Err(Reject::BadArtifact(
                    "file larger than the address space",
                )));
            };
            // SAFETY: memmap2's contract is that the mapped range is not truncated or modified
            // while mapped. The caller checked `only_owner_can_write`: only this user or root
            // can change the inode, and this user's code never truncates or writes a saved
            // cache file (saves replace files by rename). The length was checked against the
            // file's size by `check_trailer`. The mapping is read-only and dropped below.
            let map = unsafe { memmap2::MmapOptions::new().len(artifact_len).map(&mapped) }
                .map_err(|e| CacheError::io(path, e))?;
            hasher.update(&map);
        }
        Ok(format::check_artifact_tag(&trailer, hasher.finalize()).map(|()| mapped))
    }

    /// Bumps a file's last use (its mtime, so other processes and the next open see it too).
    fn touch(&self, path: &Path, file: &File) {
        if self.config.max_bytes.is_none() {
            return;
        }
        let now = SystemTime::now();
        if self.fs.set_mtime(file, now).is_err() {
            self.counters.errors.incr();
        }
        if let Some(entry) = self.index.lock().get_mut(path) {
            entry.last_used = now;
        }
    }

    fn load_inner(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        let engine = self.engine_of(key)?;
        let path = self.path_of(key);
        let file = match self.fs.open_read(&path) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => {
                self.counters.misses.incr();
                return Ok(None);
            }
            // ELOOP: a symlink planted in the folder.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                self.counters.rejected.incr();
                self.counters.misses.incr();
                tracing::warn!(path = %path.display(), reason = "a symlink", "cache file rejected");
                *self.last_rejection.lock() = Some(format!("{}: a symlink", path.display()));
                if self.remove_file(&path).is_err() {
                    self.counters.errors.incr();
                }
                return Ok(None);
            }
            Err(e) => return Err(CacheError::io(&path, e)),
        };
        let meta = self
            .fs
            .file_metadata(&file)
            .map_err(|e| CacheError::io(&path, e))?;
        if !meta.is_file() {
            return self.reject(&path, &file, Reject::NotAFile);
        }
        let len = meta.len();
        // Authenticated mode checks a file that only its owner, this user, can change where it
        // lies, then maps it; any other file is read into memory first.
        let in_place = self.auth.as_ref().filter(|_| only_owner_can_write(&meta));
        let module = match &self.config.mode {
            Verification::Trusted(_) => {
                let t = match self.read_trailer(&path, &file, len)? {
                    Ok(t) => t,
                    Err(why) => return self.reject(&path, &file, why),
                };
                if let Err(why) = format::check_trailer(&t, len, &key.engine(), key, None) {
                    return self.reject(&path, &file, why);
                }
                let mapped = self
                    .fs
                    .open_for_mapping(&file)
                    .map_err(|e| CacheError::io(&path, e))?;
                // SAFETY: Trusted mode is made only by the `unsafe` `Verification::trusted`,
                // whose caller asserted that only this node writes the cache folder, so the
                // file is an unmodified output of `Module::serialize` followed by our trailer
                // (wasmtime ignores bytes after its ELF image). The trailer check above rules
                // out truncated files, files of other keys and of other engines. Files are
                // only ever replaced by rename, never modified in place, so the mapping stays
                // valid for the module's lifetime.
                unsafe { Module::deserialize_open_file(engine, mapped) }
            }
            Verification::Verified | Verification::Authenticated { .. } => match in_place {
                Some(auth) => {
                    let mapped = match self.authenticate_in_place(auth, &path, &file, len, key)? {
                        Ok(mapped) => mapped,
                        Err(why) => return self.reject(&path, &file, why),
                    };
                    self.in_place.fetch_add(1, Ordering::Relaxed);
                    // SAFETY: the trailer and artifact tags of this inode (`mapped` duplicates
                    // the descriptor) were just checked under the caller's secret, so it holds
                    // what a `FsCache::save` of this engine wrote, bit for bit. Only its owner,
                    // this user, or root can change it (`only_owner_can_write`); both can read
                    // the key, and our saves only ever rename, so the checked bytes stay the
                    // mapped bytes for the module's lifetime.
                    unsafe { Module::deserialize_open_file(engine, mapped) }
                }
                None => {
                    let artifact = match self.read_verified(&path, &file, len, key)? {
                        Ok(artifact) => artifact,
                        Err(why) => return self.reject(&path, &file, why),
                    };
                    // SAFETY: `artifact` is exactly the bytes whose sha256 (Verified) or keyed
                    // BLAKE3 tag (Authenticated) matches a trailer naming this key and this engine
                    // fingerprint, so they are what a `FsCache::save` of this engine configuration
                    // wrote from `Module::serialize`, bit for bit. In Authenticated mode both tags
                    // are keyed by the caller's secret, so no one without it can forge them;
                    // Verified mode assumes nobody writes sha256-consistent forgeries into the
                    // folder (it guards against corruption, truncation and swaps). The bytes are in our own memory,
                    // so they cannot change between the check and this call.
                    unsafe { Module::deserialize(engine, &artifact) }
                }
            },
        };
        match module {
            Ok(module) => {
                self.counters.hits.incr();
                self.touch(&path, &file);
                Ok(Some(module))
            }
            Err(e) => self.reject(&path, &file, Reject::Wasmtime(Refusal::new(e))),
        }
    }

    /// Writes `bytes` to `key`'s file atomically: temp file, fsync, rename, fsync folder.
    fn write_atomically(
        &self,
        final_path: &Path,
        artifact: &[u8],
        trailer: &[u8],
    ) -> Result<(), CacheError> {
        let temp_name = format!(
            "{TEMP_PREFIX}{}-{}-{:016x}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u64()
        );
        let folder = final_path.parent().unwrap_or(&self.dir);
        if self.folders == Folders::AtSave {
            create_folder(self.fs.as_ref(), folder, self.config.fsync)?;
        }
        let temp_path = folder.join(temp_name);
        // What exists: cleanup removes only a temp file we created and did not rename.
        let (mut created, mut renamed) = (false, false);
        let result = (|| {
            let file = self
                .fs
                .create_new(&temp_path, CACHE_FILE_MODE)
                .map_err(|e| CacheError::io(&temp_path, e))?;
            created = true;
            self.fs
                .write(&file, artifact)
                .and_then(|()| self.fs.write(&file, trailer))
                .map_err(|e| CacheError::io(&temp_path, e))?;
            if self.config.fsync {
                self.fs
                    .sync_data(&file)
                    .map_err(|e| CacheError::io(&temp_path, e))?;
            }
            drop(file);
            self.fs
                .rename(&temp_path, final_path)
                .map_err(|e| CacheError::io(final_path, e))?;
            renamed = true;
            if self.config.fsync {
                self.sync_dir(folder)?;
            }
            Ok(())
        })();
        // A temp file that cannot be removed now (the disk is failing) is retried later.
        if result.is_err() && created && !renamed && self.remove_file(&temp_path).is_err() {
            self.orphans.lock().push(temp_path);
        }
        result
    }

    fn save_inner(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        self.engine_of(key)?;
        if !self.orphans.lock().is_empty() {
            self.remove_orphans();
        }
        let module_engine = EngineFingerprint::of(module.engine());
        if module_engine != key.engine() {
            return Err(CacheError::EngineMismatch {
                module: module_engine,
                key: key.engine(),
            });
        }
        let artifact = module.serialize()?;
        let file_len = artifact.len() as u64 + TRAILER_LEN as u64;
        if self.config.max_bytes.is_some_and(|max| file_len > max)
            || artifact.len() as u64 > self.config.max_artifact_bytes
        {
            self.counters.rejected.incr();
            tracing::debug!(
                bytes = file_len,
                "artifact larger than the cache limit not saved"
            );
            return Ok(());
        }
        let trailer = format::encode(key, &artifact, self.auth.as_ref());
        let path = self.path_of(key);
        self.write_atomically(&path, &artifact, &trailer)?;
        self.counters.inserts.incr();
        self.index.lock().insert(
            path.clone(),
            IndexEntry {
                bytes: file_len,
                last_used: SystemTime::now(),
            },
        );
        // Always rescan when there is a limit: other processes fill the same folder, so our
        // own total is not enough to know. A listing is cheap next to the compile that
        // precedes a save. The entry is written: a failure here is counted, not returned.
        if self.config.max_bytes.is_some() && self.enforce_limit(&path).is_err() {
            self.counters.errors.incr();
        }
        Ok(())
    }

    /// Evicts least recently used files until the folders of all engines fit `max_bytes`.
    /// Rescans first: other processes write to the same folders.
    fn enforce_limit(&self, just_written: &Path) -> Result<(), CacheError> {
        let Some(max) = self.config.max_bytes else {
            return Ok(());
        };
        let mut previous = self.index.lock().clone();
        self.rescan(false)?;
        let mut index = self.index.lock();
        // Our in-memory last use may be newer than an mtime we failed to bump.
        for (name, entry) in index.iter_mut() {
            if let Some(old) = previous.remove(name) {
                entry.last_used = entry.last_used.max(old.last_used);
            }
        }
        let mut total: u64 = index.values().map(|e| e.bytes).sum();
        if total <= max {
            return Ok(());
        }
        let mut by_age: Vec<(SystemTime, PathBuf, u64)> = index
            .iter()
            .map(|(name, e)| (e.last_used, name.clone(), e.bytes))
            .collect();
        by_age.sort();
        // The file just written goes last: it is the most recently used by definition.
        by_age.sort_by_key(|(_, path, _)| path == just_written);
        for (_, path, bytes) in by_age {
            if total <= max {
                break;
            }
            match self.remove_file(&path) {
                Ok(true) => {
                    self.counters.evictions.incr();
                    tracing::debug!(file = %path.display(), bytes, "cache file evicted");
                }
                Ok(false) => {}
                Err(_) => {
                    self.counters.errors.incr();
                    continue;
                }
            }
            index.remove(&path);
            total -= bytes;
        }
        Ok(())
    }

    /// Removes the folders of engines this cache does not serve (the set it was opened with,
    /// [`FsCache::fingerprints`]: the engines this build uses) and of other format versions
    /// under [`FsCache::dir`] (for example after a wasmtime upgrade), and stale temp files in
    /// the folders it keeps. Only entries named like cache folders are touched.
    pub fn prune(&self) -> Result<PruneReport, CacheError> {
        self.remove_orphans();
        let mut report = PruneReport::default();
        let own: Vec<String> = self
            .engines
            .iter()
            .map(|e| folder_name(&e.fingerprint))
            .collect();
        let names = match self.fs.read_dir(&self.dir) {
            Ok(names) => names,
            Err(e) if self.folders == Folders::AtSave && is_not_found(&e) => return Ok(report),
            Err(e) => return Err(CacheError::io(&self.dir, e)),
        };
        for name in names {
            let Some(name) = name.to_str() else { continue };
            if own.iter().any(|o| o == name) || !is_cache_folder_name(name) {
                continue;
            }
            let path = self.dir.join(name);
            let is_dir = self.fs.metadata(&path).is_ok_and(|m| m.is_dir());
            if !is_dir {
                continue;
            }
            if let Ok(files) = self.fs.read_dir(&path) {
                for file in files {
                    if let Ok(meta) = self.fs.metadata(&path.join(file)) {
                        report.removed_files += 1;
                        report.removed_bytes += meta.len();
                    }
                }
            }
            match self.fs.remove_all(&path) {
                Ok(()) => report.removed_folders.push(path),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(CacheError::io(&path, e)),
            }
        }
        let (files, bytes) = self.rescan(true)?;
        report.removed_files += files;
        report.removed_bytes += bytes;
        if self.config.fsync {
            self.sync_dir(&self.dir)?;
        }
        Ok(report)
    }

    /// Fully verifies every entry of the folders of the engines this cache serves, whatever the
    /// mode: the trailer and the artifact's sha256, or in Authenticated mode the trailer's and
    /// the artifact's tags. Reports bad entries without removing
    /// them; it does not deserialize anything.
    pub fn verify_all(&self) -> Result<VerifyReport, CacheError> {
        let mut report = VerifyReport::default();
        for engine in &self.engines {
            self.verify_folder(engine, &mut report)?;
        }
        Ok(report)
    }

    /// Verifies the entries of one engine's folder into `report` (see `verify_all`).
    fn verify_folder(
        &self,
        engine: &EngineDir,
        report: &mut VerifyReport,
    ) -> Result<(), CacheError> {
        let listed = match self.fs.read_dir(&engine.dir) {
            Ok(listed) => listed,
            Err(e) if self.folders == Folders::AtSave && is_not_found(&e) => return Ok(()),
            Err(e) => return Err(CacheError::io(&engine.dir, e)),
        };
        let mut names: Vec<String> = Vec::new();
        for name in listed {
            if let Ok(name) = name.into_string()
                && name.ends_with(&format!(".{EXTENSION}"))
                && !name.starts_with(TEMP_PREFIX)
            {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = engine.dir.join(&name);
            report.checked += 1;
            let stem = name.trim_end_matches(&format!(".{EXTENSION}"));
            let bad = |reason: String| BadEntry {
                path: path.clone(),
                reason,
            };
            let key = match CacheKey::parse(stem) {
                Ok(key) if key.engine() == engine.fingerprint => key,
                Ok(_) => {
                    report
                        .bad
                        .push(bad("file name names another engine".into()));
                    continue;
                }
                Err(e) => {
                    report
                        .bad
                        .push(bad(format!("file name is not a cache key: {e}")));
                    continue;
                }
            };
            let file = match self.fs.open_read(&path) {
                Ok(f) => f,
                Err(e) if is_not_found(&e) => {
                    report.checked -= 1;
                    continue;
                }
                Err(e) => {
                    report.bad.push(bad(format!("cannot open: {e}")));
                    continue;
                }
            };
            let meta = self
                .fs
                .file_metadata(&file)
                .map_err(|e| CacheError::io(&path, e))?;
            if !meta.is_file() {
                report.bad.push(bad(Reject::NotAFile.to_string()));
                continue;
            }
            match self.read_verified(&path, &file, meta.len(), &key)? {
                Ok(_) => {
                    report.valid += 1;
                    report.valid_bytes += meta.len();
                }
                Err(why) => report.bad.push(bad(why.to_string())),
            }
        }
        Ok(())
    }
}

impl ModuleCache for FsCache {
    fn name(&self) -> &str {
        "fs"
    }

    /// A hit is a verified (or, in Trusted mode, header-checked) module; a missing or bad file
    /// is `Ok(None)`, a bad file being removed and counted as `rejected`. `Err` only for a key
    /// of another engine or an I/O error other than "not found".
    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        self.load_inner(key)
    }

    /// Serializes `module` and writes it atomically. A module bigger than `max_bytes` is not
    /// written (counted as `rejected`). Errors: a key or module of another engine, I/O.
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        self.save_inner(key, module)
    }

    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        self.engine_of(key)?;
        let path = self.path_of(key);
        let removed = self
            .remove_file(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        self.index.lock().remove(&path);
        Ok(removed)
    }

    fn stats(&self) -> Vec<LayerStats> {
        let index = self.index.lock();
        let bytes = index.values().map(|e| e.bytes).sum();
        vec![
            self.counters
                .snapshot(self.name(), index.len() as u64, bytes),
        ]
    }
}

impl Drop for FsCache {
    fn drop(&mut self) {
        self.remove_orphans();
    }
}

#[cfg(test)]
mod tests;
