//! [`Vm`]: one directory holding the commit store, the file cache and the pins.

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::LayerStats;
use cache_fs::{FsCache, FsCacheConfig, PruneReport, Verification};
use cache_lru::LruCache;
use parking_lot::Mutex;
use store_commit::{CommitInfo, Deletion, Store, StoreConfig};
use store_index::{ModuleId, Root};
use strata_fs::{Fs, RealFs, Zeros};
use wasmtime::{Config, Engine, Linker, StoreLimitsBuilder};

use crate::host::{self, HostState};
use crate::loader::{Loader, Remote, WinchEngine};
use crate::memory::{GUARD, RESERVATION, StoreMemoryCreator};
use crate::session::Session;
use crate::{CacheVerification, TierPolicy, VmConfig, VmError};
use cache_core::Tier;
use cache_redis::{Held, RedisCache, RemoteStats};

/// The VM's cache key file, in the VM directory (beside the `cache` folder, never in it).
const CACHE_KEY: &str = "cache.key";
/// Where a new key is written before its rename to [`CACHE_KEY`].
const CACHE_KEY_TEMP: &str = "cache.key.tmp";
/// The length of a key the VM makes.
const KEY_BYTES: usize = 32;
/// The longest key file read (a key is 32 bytes; anything much longer is not a key file).
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// A contract VM over one directory. Cheap to clone; share it between threads.
#[derive(Clone)]
pub struct Vm {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    /// The file system of the pins file (the store and the cache hold their own handle).
    fs: Arc<dyn Fs>,
    pub(crate) config: VmConfig,
    pub(crate) store: Store,
    pub(crate) loader: Loader,
    pub(crate) genesis_engine: Engine,
    pub(crate) genesis_linker: Linker<HostState>,
    /// The genesis engine and linker of Winch, when the tier policy uses Winch.
    pub(crate) genesis_winch: Option<(Engine, Linker<HostState>)>,
    /// The (module, name) pairs a deployed module may import.
    pub(crate) imports: HashSet<(String, String)>,
    pins: Mutex<Pins>,
    pub(crate) instantiations: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) commits: AtomicU64,
}

/// The pins: the modules listed in the `pins` file, and those entries that did not load.
#[derive(Default)]
struct Pins {
    /// Every module id of the file, loaded or not (a failed one stays until unpinned).
    ids: BTreeSet<ModuleId>,
    /// The entries that did not load when the VM opened.
    failed: Vec<FailedPin>,
}

/// An entry of the `pins` file that did not load when the VM opened: a line that is not a
/// module id, a module no commit holds, stored bytecode that is damaged, a failed compile. It
/// never stops the VM from opening: [`Vm::verify`] and [`Vm::disk_stats`] report it, and
/// [`Vm::unpin`] of its id removes it. A line that is not a module id is dropped when the file
/// is next rewritten, by any [`Vm::pin`] or [`Vm::unpin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPin {
    /// The module, or `None` for a line that is not a module id.
    pub id: Option<ModuleId>,
    /// The line as the file holds it (trimmed; invalid UTF-8 replaced). Quote it when showing
    /// it: it may hold anything.
    pub line: String,
    /// Why it did not load, one line (the [`Display`](std::fmt::Display) form adds the id).
    pub reason: String,
}

impl std::fmt::Display for FailedPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id {
            Some(id) => write!(f, "pinned module {id} did not load: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Counters of a [`Vm`] since it was opened.
#[derive(Debug, Clone, Default)]
pub struct VmStats {
    /// The cache layers, top first: pinned, LRU, file, and the remote layer if there is one.
    pub layers: Vec<LayerStats>,
    /// Runtime forms compiled: misses of every layer (by either tier) and tier-ups.
    pub compiles: u64,
    /// The compiler tiers.
    pub tiers: TierStats,
    /// The remote layer's own counters (uploads, failures, breaker, leases), if there is one.
    pub remote: Option<RemoteStats>,
    /// Loads that waited for another node of the fleet compiling the module (lease held).
    pub lease_waits: u64,
    /// Of those, the loads that got the other node's artifact instead of compiling.
    pub lease_wait_hits: u64,
    /// Module instantiations.
    pub instantiations: u64,
    /// Successful calls.
    pub calls: u64,
    /// Commits made through sessions of this VM.
    pub commits: u64,
}

/// The compiler tiers of a [`Vm`] since it was opened ([`crate::TierPolicy`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Modules whose latest load was a Cranelift artifact.
    pub cranelift_modules: u64,
    /// Modules whose latest load was a Winch artifact.
    pub winch_modules: u64,
    /// Of [`VmStats::compiles`], the Winch compiles.
    pub winch_compiles: u64,
    /// Modules the tier-up thread compiled with Cranelift (or got from the fleet).
    pub tier_ups: u64,
    /// Cranelift compiles queued or running now.
    pub queue_depth: u64,
    /// Tier-ups dropped because the queue was full (a later load queues them again).
    pub dropped: u64,
    /// Tier-ups whose Cranelift compile failed (the module stays on Winch).
    pub failed: u64,
    /// Modules found over [`VmConfig::cranelift_budget`](crate::VmConfig::cranelift_budget):
    /// kept on Winch and never queued for a tier-up (or, under
    /// [`TierPolicy::CraneliftOnly`](crate::TierPolicy::CraneliftOnly), refused).
    pub over_budget: u64,
}

/// What [`Vm::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyOutcome {
    /// Commits whose root was recomputed.
    pub commits: usize,
    /// Cached artifacts checked.
    pub artifacts: usize,
    /// Everything that did not check out; empty when the directory is sound.
    pub problems: Vec<String>,
}

impl VerifyOutcome {
    /// Whether everything checked out.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a VM directory holds on disk, read by [`Vm::disk_stats`]: true of the directory
/// whoever wrote it, unlike the counters of [`VmStats`], which start at zero in each process.
#[derive(Debug, Clone, Default)]
pub struct DiskStats {
    /// Bytes the commit store (`store/`) occupies on disk: allocated blocks, each file counted
    /// once however many commits hard-link it.
    pub store_bytes: u64,
    /// The store's bytes by file length (memory images are sparse: this can be far larger
    /// than `store_bytes`).
    pub store_apparent_bytes: u64,
    /// Files of the store, each counted once.
    pub store_files: u64,
    /// Commits in the store.
    pub commits: usize,
    /// The folders of the file cache (`cache/`), one per engine, by name.
    pub cache: Vec<CacheFolderStats>,
    /// The pinned modules (the module ids of the `pins` file, loaded or not).
    pub pins: Vec<ModuleId>,
    /// The entries of the `pins` file that did not load when the VM opened.
    pub failed_pins: Vec<FailedPin>,
}

/// One folder of the file cache, as [`DiskStats`] reports it.
#[derive(Debug, Clone, Default)]
pub struct CacheFolderStats {
    /// The folder's name (format version and engine fingerprint).
    pub name: String,
    /// Whether this build's engine uses it; [`Vm::prune`] removes the others.
    pub in_use: bool,
    /// The compiler tier of a folder in use (one folder per tier the policy uses).
    pub tier: Option<Tier>,
    /// Files in the folder: the cache entries, plus any temp file not yet renamed.
    pub entries: u64,
    /// Bytes of those files.
    pub bytes: u64,
}

/// Settings shared by the runtime and the genesis engine of both tiers: the compiled code must
/// agree. (Winch honours fuel and the NaN canonicalisation flag: checked in wasmtime 48's
/// winch-codegen and by the differential test.)
fn base_config(tier: Tier) -> Config {
    let mut config = Config::new();
    if tier == Tier::Winch {
        config.strategy(wasmtime::Strategy::Winch);
    }
    config
        .consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .memory_reservation(RESERVATION as u64)
        .memory_guard_size(GUARD as u64)
        .memory_may_move(false);
    config
}

/// Whether opening a VM may create its directory and folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folders {
    /// `Vm::open`: create what is missing.
    Create,
    /// `Vm::open_existing`: create nothing.
    Existing,
}

/// The VM's own cache key: read from `<dir>/cache.key`, or, when `Vm::open` finds none, made
/// (32 bytes from the OS's random source) and written durably with mode 0600: a temp file,
/// fsync, rename, fsync of the directory. Called with the store's lock held, so two processes
/// never race to make it. `open_existing` never makes one.
fn cache_key(fs: &dyn Fs, dir: &Path, folders: Folders) -> Result<Vec<u8>, VmError> {
    let path = dir.join(CACHE_KEY);
    let bad = |reason| VmError::CacheKey {
        path: path.clone(),
        reason,
    };
    match fs.open_read(&path) {
        Ok(file) => {
            let meta = fs.file_metadata(&file).map_err(io(&path))?;
            if !meta.is_file() {
                return Err(bad("not a regular file"));
            }
            if meta.len() > MAX_KEY_FILE_BYTES {
                return Err(bad("too long for a key file"));
            }
            let limit = MAX_KEY_FILE_BYTES as usize;
            let mut key = Vec::new();
            // Reads to the end of the file or one byte past the limit.
            fs.read(&file, &mut key, limit + 1).map_err(io(&path))?;
            if key.len() > limit {
                return Err(bad("too long for a key file"));
            }
            if key.len() < KEY_BYTES {
                return Err(bad("shorter than 32 bytes"));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && folders == Folders::Create => {
            let mut key = vec![0u8; KEY_BYTES];
            getrandom::fill(&mut key).map_err(|e| {
                io(&path)(std::io::Error::other(format!(
                    "no random bytes for a key: {e}"
                )))
            })?;
            let temp = dir.join(CACHE_KEY_TEMP);
            // A leftover of an interrupted open is replaced.
            fs.remove_all(&temp).map_err(io(&temp))?;
            let file = fs.create_new(&temp, 0o600).map_err(io(&temp))?;
            fs.write(&file, &key).map_err(io(&temp))?;
            // Always durable, whatever `fsync` says: a key made once per VM must not be lost
            // while the cache files it signed survive.
            fs.sync_data(&file).map_err(io(&temp))?;
            drop(file);
            fs.rename(&temp, &path).map_err(io(&path))?;
            fs.sync_dir(dir).map_err(io(dir))?;
            tracing::info!(path = %path.display(), "made the cache key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(bad(
            "missing from this existing VM directory (opening it to write, e.g. vmhost deploy, makes one)",
        )),
        Err(e) => Err(io(&path)(e)),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file system a [`Vm`] reads and writes its whole directory through (the VM directory,
/// the commit store, the file cache and the pins file): the real file system by default. Tests
/// pass a strata-fs layer that injects faults or simulates a power loss (`FaultFs`,
/// `PowerLossFs`), so one cut covers the store, the cache and the pins together.
#[derive(Debug, Clone)]
pub struct VmFiles {
    /// Every file-system operation of the VM goes through it.
    pub fs: Arc<dyn Fs>,
}

impl Default for VmFiles {
    fn default() -> Self {
        VmFiles {
            fs: Arc::new(RealFs),
        }
    }
}

impl Vm {
    /// Opens (or creates) the VM directory `dir` with the built-in host ABI.
    pub fn open(dir: &Path, config: VmConfig) -> Result<Vm, VmError> {
        Vm::open_with(dir, config, VmFiles::default(), |_| Ok(()))
    }

    /// Opens the VM directory `dir` as [`open`](Self::open) does, but only if it exists and
    /// holds a commit store: otherwise a `NotFound` [`VmError::Io`], and nothing is created.
    /// For tools that must not make a VM out of a mistyped path. Opening creates nothing at all:
    /// a missing cache folder is an empty file cache, created by the first compile that saves
    /// into it (`FsCache::open_without_creating`), so reading commands (`verify`,
    /// `disk_stats`, `commits`) leave the directory as they found it.
    pub fn open_existing(dir: &Path, config: VmConfig) -> Result<Vm, VmError> {
        let files = VmFiles::default();
        let store = dir.join("store");
        if !files.fs.exists(&store).map_err(io(&store))? {
            return Err(io(dir)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a VM directory (no commit store in it)",
            )));
        }
        Vm::open_inner(dir, config, files, |_| Ok(()), Folders::Existing)
    }

    /// Opens the VM with extra host functions: `host` is called on each engine's linker
    /// (runtime and genesis) after the built-in ABI is defined, and may define more imports.
    pub fn open_with_host(
        dir: &Path,
        config: VmConfig,
        host: impl Fn(&mut Linker<HostState>) -> Result<(), VmError>,
    ) -> Result<Vm, VmError> {
        Vm::open_with(dir, config, VmFiles::default(), host)
    }

    /// The most general open: extra host functions (as [`open_with_host`](Self::open_with_host))
    /// and the file system of the whole VM directory ([`VmFiles`]). With `fsync`, a new VM
    /// directory (and its cache folder) is made durable in its parent before anything is
    /// written in it.
    pub fn open_with(
        dir: &Path,
        config: VmConfig,
        files: VmFiles,
        host: impl Fn(&mut Linker<HostState>) -> Result<(), VmError>,
    ) -> Result<Vm, VmError> {
        Vm::open_inner(dir, config, files, host, Folders::Create)
    }

    fn open_inner(
        dir: &Path,
        config: VmConfig,
        files: VmFiles,
        host: impl Fn(&mut Linker<HostState>) -> Result<(), VmError>,
        folders: Folders,
    ) -> Result<Vm, VmError> {
        let disk = files.fs;
        if folders == Folders::Create {
            if config.fsync {
                disk.create_dir_all_durable(dir).map_err(io(dir))?;
            } else {
                disk.create_dir_all(dir).map_err(io(dir))?;
            }
        }
        let store_config = StoreConfig {
            fsync: config.fsync,
            ..StoreConfig::default()
        };
        // A diagnosing open leaves a damaged store as it finds it (no new format marker).
        let store = if folders == Folders::Existing {
            Store::open_existing_with_fs(&dir.join("store"), store_config, disk.clone())?
        } else {
            Store::open_with_fs(&dir.join("store"), store_config, disk.clone())?
        };

        let runtime_engine = |tier| {
            let mut runtime = base_config(tier);
            runtime
                .memory_init_cow(false)
                .with_host_memory(Arc::new(StoreMemoryCreator));
            Engine::new(&runtime).map_err(VmError::wasmtime)
        };
        let engine = runtime_engine(Tier::Cranelift)?;
        let genesis_engine =
            Engine::new(&base_config(Tier::Cranelift)).map_err(VmError::wasmtime)?;
        let winch = config.tier != TierPolicy::CraneliftOnly;
        let winch_engines = if winch {
            Some((
                runtime_engine(Tier::Winch)?,
                Engine::new(&base_config(Tier::Winch)).map_err(VmError::wasmtime)?,
            ))
        } else {
            None
        };

        let linker = |engine: &Engine| -> Result<Linker<HostState>, VmError> {
            let mut linker = Linker::new(engine);
            host::define_abi(&mut linker)?;
            host(&mut linker)?;
            Ok(linker)
        };
        let runtime_linker = linker(&engine)?;
        let genesis_linker = linker(&genesis_engine)?;
        let (winch_runtime, genesis_winch) = match winch_engines {
            Some((runtime, genesis)) => (
                Some(WinchEngine {
                    linker: linker(&runtime)?,
                    engine: runtime,
                }),
                Some((genesis.clone(), linker(&genesis)?)),
            ),
            None => (None, None),
        };
        let imports = {
            let mut probe = wasmtime::Store::new(&genesis_engine, HostState::for_probe());
            genesis_linker
                .iter(&mut probe)
                .map(|(module, name, _)| (module.to_owned(), name.to_owned()))
                .collect()
        };

        let mode = match &config.fs_verification {
            CacheVerification::Mode(mode) => mode.clone(),
            CacheVerification::VmKey => Verification::Authenticated {
                key: cache_key(disk.as_ref(), dir, folders)?,
            },
        };
        let cache_config = FsCacheConfig {
            mode,
            max_bytes: config.fs_cache_bytes,
            fsync: config.fsync,
            ..FsCacheConfig::default()
        };
        let cache_dir = dir.join("cache");
        let mut engines = vec![engine.clone()];
        engines.extend(winch_runtime.as_ref().map(|w| w.engine.clone()));
        let engines = &engines[..];
        let fs = match folders {
            Folders::Create => {
                FsCache::open_engines(&cache_dir, engines, cache_config, disk.clone())
            }
            Folders::Existing => {
                FsCache::open_without_creating(&cache_dir, engines, cache_config, disk.clone())
            }
        }?;
        let remote = match &config.remote {
            Some(remote) => Some(Remote {
                cache: Arc::new(
                    RedisCache::open(&remote.url, &engine, remote.config.clone())
                        .map_err(VmError::RemoteCache)?,
                ),
                max_lease_wait: remote.max_lease_wait,
            }),
            None => None,
        };
        let loader = Loader::new(
            engine,
            runtime_linker,
            winch_runtime,
            config.tier,
            config.tier_up_queue,
            config.cranelift_budget,
            LruCache::new(config.lru_bytes),
            fs,
            remote,
        );
        let vm = Vm {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                fs: disk,
                config,
                store,
                loader,
                genesis_engine,
                genesis_linker,
                genesis_winch,
                imports,
                pins: Mutex::new(Pins::default()),
                instantiations: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                commits: AtomicU64::new(0),
            }),
        };
        vm.load_pins();
        tracing::info!(
            dir = %dir.display(),
            commits = vm.commits().len(),
            pins = vm.pins().len(),
            failed_pins = vm.failed_pins().len(),
            "opened"
        );
        Ok(vm)
    }

    /// The VM directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How the VM's file cache checks artifacts (with [`CacheVerification::VmKey`], the VM's
    /// own key): an ABI built on the host opens its own file cache with the same mode, so a
    /// writer of the VM directory can forge none of its artifacts either.
    ///
    /// [`CacheVerification::VmKey`]: crate::CacheVerification::VmKey
    pub fn file_cache_verification(&self) -> Verification {
        self.inner.loader.fs().config().mode.clone()
    }

    /// The settings the VM was opened with.
    pub fn config(&self) -> &VmConfig {
        &self.inner.config
    }

    /// The newest commit, if any.
    pub fn latest(&self) -> Option<Root> {
        self.inner.store.latest()
    }

    /// Every commit, oldest first.
    pub fn commits(&self) -> Vec<CommitInfo> {
        self.inner.store.commits()
    }

    /// Starts a session on `base` (`None`: the empty state).
    pub fn session(&self, base: Option<Root>) -> Result<Session, VmError> {
        Session::new(self.clone(), base)
    }

    /// Deploys `wasm` on top of the newest commit and commits: returns its id and the new root.
    pub fn deploy(&self, wasm: &[u8]) -> Result<(ModuleId, Root), VmError> {
        let mut session = self.session(self.latest())?;
        let id = session.deploy(wasm)?;
        Ok((id, session.commit()?))
    }

    /// Deletes a commit; deferred while sessions are based on it.
    pub fn delete(&self, root: &Root) -> Result<Deletion, VmError> {
        let deletion = self.inner.store.delete(root)?;
        tracing::info!(%root, ?deletion, "deleted");
        Ok(deletion)
    }

    /// Removes the file cache's folders of engines this build does not use (left by another
    /// wasmtime version or engine configuration) and stale temp files, and reports what it
    /// freed.
    pub fn prune(&self) -> Result<PruneReport, VmError> {
        let report = self.inner.loader.fs().prune()?;
        tracing::info!(
            folders = report.removed_folders.len(),
            files = report.removed_files,
            bytes = report.removed_bytes,
            "pruned"
        );
        Ok(report)
    }

    /// What the directory holds on disk now: the store's size and commits, the cache folders
    /// of every engine, and the pins.
    pub fn disk_stats(&self) -> Result<DiskStats, VmError> {
        let fs = &*self.inner.fs;
        let mut stats = DiskStats {
            commits: self.commits().len(),
            pins: self.pins(),
            failed_pins: self.failed_pins(),
            ..DiskStats::default()
        };
        let mut seen = HashSet::new();
        let mut dirs = vec![self.inner.store.dir().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for name in fs.read_dir(&dir).map_err(io(&dir))? {
                let path = dir.join(name);
                let meta = match fs.metadata(&path) {
                    Ok(meta) => meta,
                    // Removed meanwhile (a temp directory of a commit).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path)(e)),
                };
                if meta.is_dir() {
                    dirs.push(path);
                } else if seen.insert((meta.dev(), meta.ino())) {
                    stats.store_files += 1;
                    stats.store_bytes += meta.blocks() * 512;
                    stats.store_apparent_bytes += meta.len();
                }
            }
        }
        let cache = self.inner.loader.fs();
        let mut folders = match fs.read_dir(cache.dir()) {
            Ok(folders) => folders,
            // Opened by `open_existing` after the cache folder was removed: no cache yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(cache.dir())(e)),
        };
        folders.sort();
        for name in folders {
            let path = cache.dir().join(&name);
            if !fs.metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            // The first engine is Cranelift's, the second (if any) Winch's.
            let engine = cache
                .engine_dirs()
                .position(|d| d.file_name() == Some(name.as_os_str()));
            let mut folder = CacheFolderStats {
                name: name.to_string_lossy().into_owned(),
                in_use: engine.is_some(),
                tier: engine.map(|i| [Tier::Cranelift, Tier::Winch][i.min(1)]),
                ..CacheFolderStats::default()
            };
            for file in fs.read_dir(&path).map_err(io(&path))? {
                if let Ok(meta) = fs.metadata(&path.join(file))
                    && meta.is_file()
                {
                    folder.entries += 1;
                    folder.bytes += meta.len();
                }
            }
            stats.cache.push(folder);
        }
        Ok(stats)
    }

    /// Compiles `wasm` into the caches (file cache included) without deploying it.
    pub fn precompile(&self, wasm: &[u8]) -> Result<ModuleId, VmError> {
        let shape = crate::rewrite::shape(wasm)?;
        self.check_imports(&shape)?;
        let id = ModuleId::of_wasm(wasm);
        let source = crate::loader::Source::Checked {
            wasm,
            shape: &shape,
        };
        self.inner.loader.load(&id, source)?;
        Ok(id)
    }

    /// [`Vm::precompile`], then uploads the artifact to the remote layer unless it has it:
    /// warms the fleet even with modules this node had cached. Returns the id and whether an
    /// upload was queued (see [`Vm::flush_remote`]). Without a remote layer, only precompiles.
    pub fn precompile_for_fleet(&self, wasm: &[u8]) -> Result<(ModuleId, bool), VmError> {
        let shape = crate::rewrite::shape(wasm)?;
        self.check_imports(&shape)?;
        let id = ModuleId::of_wasm(wasm);
        let source = crate::loader::Source::Checked {
            wasm,
            shape: &shape,
        };
        let loaded = self.inner.loader.load(&id, source)?;
        Ok((id, self.inner.loader.publish(&loaded)))
    }

    /// Waits up to `timeout` for the remote layer's queued uploads; whether they are done
    /// (true without a remote layer).
    pub fn flush_remote(&self, timeout: std::time::Duration) -> bool {
        self.inner
            .loader
            .remote()
            .is_none_or(|remote| remote.flush(timeout))
    }

    /// What the remote layer's server holds for this VM's engine (scanning at most `max_keys`
    /// keys); `None` without a remote layer.
    pub fn remote_held(&self, max_keys: u64) -> Option<Result<Held, VmError>> {
        let remote = self.inner.loader.remote()?;
        Some(remote.held(max_keys).map_err(VmError::RemoteCache))
    }

    pub(crate) fn check_imports(&self, shape: &crate::rewrite::Shape) -> Result<(), VmError> {
        match shape
            .imports
            .iter()
            .find(|import| !self.inner.imports.contains(*import))
        {
            Some((module, name)) => Err(VmError::UnsupportedImport {
                module: module.clone(),
                name: name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Recomputes every commit's root and checks every cached artifact; reports the pins that
    /// did not load when the VM opened.
    pub fn verify(&self) -> Result<VerifyOutcome, VmError> {
        let store = self.inner.store.verify()?;
        let cache = self.inner.loader.fs().verify_all()?;
        let mut outcome = VerifyOutcome {
            commits: store.checked,
            artifacts: cache.checked as usize,
            problems: store
                .problems
                .iter()
                .map(|p| format!("store: {p}"))
                .collect(),
        };
        outcome.problems.extend(
            cache
                .bad
                .iter()
                .map(|b| format!("cache: {}: {}", b.path.display(), b.reason)),
        );
        outcome.problems.extend(
            self.failed_pins()
                .iter()
                .map(|failed| format!("pins: {failed}")),
        );
        Ok(outcome)
    }

    /// Waits up to `timeout` until the tier-up thread has no Cranelift compile queued or
    /// running; whether it has none (true when the policy has no tier-up).
    pub fn wait_tier_up(&self, timeout: std::time::Duration) -> bool {
        self.inner.loader.wait_tier_up(timeout)
    }

    /// Counters since the VM was opened.
    pub fn stats(&self) -> VmStats {
        let inner = &self.inner;
        VmStats {
            layers: inner.loader.stats(),
            compiles: inner.loader.compiles.load(Ordering::Relaxed),
            tiers: {
                let (cranelift_modules, winch_modules) = inner.loader.modules_per_tier();
                let (tier_ups, queue_depth, dropped, failed) = inner.loader.tier_up_stats();
                TierStats {
                    cranelift_modules,
                    winch_modules,
                    winch_compiles: inner.loader.winch_compiles.load(Ordering::Relaxed),
                    tier_ups,
                    queue_depth,
                    dropped,
                    failed,
                    over_budget: inner.loader.over_budget(),
                }
            },
            remote: inner.loader.remote().map(RedisCache::remote_stats),
            lease_waits: inner.loader.lease_waits.load(Ordering::Relaxed),
            lease_wait_hits: inner.loader.lease_wait_hits.load(Ordering::Relaxed),
            instantiations: inner.instantiations.load(Ordering::Relaxed),
            calls: inner.calls.load(Ordering::Relaxed),
            commits: inner.commits.load(Ordering::Relaxed),
        }
    }

    /// Pins a deployed module in memory: it is never evicted, and stays pinned across restarts.
    /// Rewrites the `pins` file, without the lines that are not module ids.
    pub fn pin(&self, id: &ModuleId) -> Result<(), VmError> {
        self.pin_loaded(id)?;
        let mut pins = self.inner.pins.lock();
        pins.ids.insert(*id);
        pins.failed.retain(|failed| failed.id != Some(*id));
        self.save_pins(&mut pins)
    }

    /// Unpins a module (also one that failed to load); returns whether it was pinned. Rewrites
    /// the `pins` file, without the lines that are not module ids: unpinning any id, pinned or
    /// not, repairs a damaged file.
    pub fn unpin(&self, id: &ModuleId) -> Result<bool, VmError> {
        let mut pins = self.inner.pins.lock();
        let was = pins.ids.remove(id);
        self.inner.loader.unpin(id);
        self.save_pins(&mut pins)?;
        Ok(was)
    }

    /// The pinned modules: the module ids of the `pins` file, whether they loaded or not.
    pub fn pins(&self) -> Vec<ModuleId> {
        self.inner.pins.lock().ids.iter().copied().collect()
    }

    /// The entries of the `pins` file that did not load when the VM opened (and have not been
    /// unpinned or pinned again since).
    pub fn failed_pins(&self) -> Vec<FailedPin> {
        self.inner.pins.lock().failed.clone()
    }

    /// Whether the module is pinned in memory now.
    pub fn is_pinned(&self, id: &ModuleId) -> bool {
        self.inner.loader.is_pinned(id)
    }

    /// The bytecode of `id` from the newest commit that has it.
    pub(crate) fn find_bytecode(&self, id: &ModuleId) -> Result<Vec<u8>, VmError> {
        let commit = self
            .commits()
            .into_iter()
            .rev()
            .find(|c| c.modules.contains(id))
            .ok_or(VmError::UnknownModule(*id))?;
        let session = self.inner.store.session(Some(commit.root))?;
        Ok(session.bytecode(id)?)
    }

    /// Loads a deployed module into the pinned layer. A cache hit reads no bytecode: the key
    /// comes from the id, which the commit index lists.
    fn pin_loaded(&self, id: &ModuleId) -> Result<(), VmError> {
        if !self.commits().iter().any(|c| c.modules.contains(id)) {
            return Err(VmError::UnknownModule(*id));
        }
        let read = || self.find_bytecode(id);
        let loaded = self
            .inner
            .loader
            .load(id, crate::loader::Source::Stored(&read))?;
        self.inner.loader.pin(&loaded);
        Ok(())
    }

    fn pins_path(&self) -> PathBuf {
        self.inner.dir.join("pins")
    }

    /// Reads the `pins` file and loads its modules. Nothing here fails the open: a pin that does
    /// not load is kept as a [`FailedPin`] and logged.
    fn load_pins(&self) {
        let path = self.pins_path();
        let mut pins = self.inner.pins.lock();
        let bytes = match self.inner.fs.read_file(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the pins file");
                pins.failed.push(FailedPin {
                    id: None,
                    line: String::new(),
                    reason: format!("cannot read {}: {e}", path.display()),
                });
                return;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (id, reason) = match ModuleId::from_hex(line) {
                Err(_) => (
                    None,
                    format!(
                        "line {line:?} of the pins file is not a module id \
                         (the next pin or unpin rewrites the file without it)"
                    ),
                ),
                Ok(id) => {
                    pins.ids.insert(id);
                    match self.pin_loaded(&id) {
                        Ok(()) => continue,
                        Err(e) => (Some(id), e.to_string()),
                    }
                }
            };
            tracing::warn!(line = ?line, %reason, "a pin did not load");
            pins.failed.push(FailedPin {
                id,
                line: line.to_owned(),
                reason,
            });
        }
    }

    /// Writes the pinned ids; lines that were not module ids are gone from the file after it.
    fn save_pins(&self, pins: &mut Pins) -> Result<(), VmError> {
        let ids = &pins.ids;
        pins.failed
            .retain(|failed| failed.id.is_some_and(|id| ids.contains(&id)));
        let path = self.pins_path();
        let tmp = path.with_extension("tmp");
        let mut text = String::new();
        for id in &pins.ids {
            text.push_str(&id.to_hex());
            text.push('\n');
        }
        let fs = &self.inner.fs;
        let write = || -> std::io::Result<()> {
            // A leftover of an interrupted save is replaced.
            fs.remove_all(&tmp)?;
            fs.write_file(&tmp, text.as_bytes(), Zeros::Write, 0o644)?;
            if self.inner.config.fsync {
                fs.sync_file(&tmp)?;
            }
            fs.rename(&tmp, &path)?;
            if self.inner.config.fsync {
                fs.sync_dir(&self.inner.dir)?;
            }
            Ok(())
        };
        write().map_err(io(&path))
    }

    pub(crate) fn limits(&self) -> wasmtime::StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.inner.config.memory_limit)
            .table_elements(self.inner.config.table_elements)
            .instances(1)
            .build()
    }
}
