//! [`Vm`]: one directory holding the commit store, the file cache and the pins.

use std::collections::{BTreeSet, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::LayerStats;
use cache_fs::{FsCache, FsCacheConfig};
use cache_lru::LruCache;
use parking_lot::Mutex;
use store_commit::{CommitInfo, Deletion, Store, StoreConfig};
use store_index::{ModuleId, Root};
use wasmtime::{Config, Engine, Linker, StoreLimitsBuilder};

use crate::host::{self, HostState};
use crate::loader::Loader;
use crate::memory::{GUARD, RESERVATION, StoreMemoryCreator};
use crate::session::Session;
use crate::{VmConfig, VmError};

/// A contract VM over one directory. Cheap to clone; share it between threads.
#[derive(Clone)]
pub struct Vm {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    pub(crate) config: VmConfig,
    pub(crate) store: Store,
    pub(crate) loader: Loader,
    pub(crate) genesis_engine: Engine,
    pub(crate) genesis_linker: Linker<HostState>,
    /// The (module, name) pairs a deployed module may import.
    pub(crate) imports: HashSet<(String, String)>,
    pins: Mutex<BTreeSet<ModuleId>>,
    pub(crate) instantiations: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) commits: AtomicU64,
}

/// Counters of a [`Vm`] since it was opened.
#[derive(Debug, Clone, Default)]
pub struct VmStats {
    /// The cache layers, top first: pinned, LRU, file.
    pub layers: Vec<LayerStats>,
    /// Modules compiled because no cache layer had them.
    pub compiles: u64,
    /// Module instantiations.
    pub instantiations: u64,
    /// Successful calls.
    pub calls: u64,
    /// Commits made through sessions of this VM.
    pub commits: u64,
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

/// Settings shared by the runtime and the genesis engine: the compiled code must agree.
fn base_config() -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .cranelift_nan_canonicalization(true)
        .memory_reservation(RESERVATION as u64)
        .memory_guard_size(GUARD as u64)
        .memory_may_move(false);
    config
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file layers a [`Vm`] reads and writes its commit store and its file cache through:
/// the real file system by default. Tests pass layers that inject faults or simulate a power
/// loss ([`store_commit::fs::FaultFs`], [`store_commit::fs::PowerLossFs`],
/// [`cache_fs::FaultFs`], [`cache_fs::PowerLossFs`]; the two power-loss layers can share one
/// operation clock, so that one cut stops both).
#[derive(Debug, Clone)]
pub struct VmFiles {
    /// The commit store's file system (`<dir>/store`).
    pub store: Arc<dyn store_commit::fs::Fs>,
    /// The file cache's file system (`<dir>/cache`).
    pub cache: Arc<dyn cache_fs::CacheFs>,
}

impl Default for VmFiles {
    fn default() -> Self {
        VmFiles {
            store: Arc::new(store_commit::fs::RealFs),
            cache: Arc::new(cache_fs::RealFs),
        }
    }
}

impl Vm {
    /// Opens (or creates) the VM directory `dir` with the built-in host ABI.
    pub fn open(dir: &Path, config: VmConfig) -> Result<Vm, VmError> {
        Vm::open_with(dir, config, VmFiles::default(), |_| Ok(()))
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
    /// and the file layers of the store and the cache. The small `pins` file is always written
    /// through `std::fs`.
    pub fn open_with(
        dir: &Path,
        config: VmConfig,
        files: VmFiles,
        host: impl Fn(&mut Linker<HostState>) -> Result<(), VmError>,
    ) -> Result<Vm, VmError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let store = Store::open_with_fs(
            &dir.join("store"),
            StoreConfig {
                fsync: config.fsync,
                ..StoreConfig::default()
            },
            files.store,
        )?;

        let mut runtime = base_config();
        runtime
            .memory_init_cow(false)
            .with_host_memory(Arc::new(StoreMemoryCreator));
        let engine = Engine::new(&runtime).map_err(VmError::wasmtime)?;
        let genesis_engine = Engine::new(&base_config()).map_err(VmError::wasmtime)?;

        let linker = |engine: &Engine| -> Result<Linker<HostState>, VmError> {
            let mut linker = Linker::new(engine);
            host::define_abi(&mut linker)?;
            host(&mut linker)?;
            Ok(linker)
        };
        let runtime_linker = linker(&engine)?;
        let genesis_linker = linker(&genesis_engine)?;
        let imports = {
            let mut probe = wasmtime::Store::new(&genesis_engine, HostState::for_probe());
            genesis_linker
                .iter(&mut probe)
                .map(|(module, name, _)| (module.to_owned(), name.to_owned()))
                .collect()
        };

        let fs = FsCache::open_with_fs(
            &dir.join("cache"),
            &engine,
            FsCacheConfig {
                mode: config.fs_verification.clone(),
                max_bytes: config.fs_cache_bytes,
                fsync: config.fsync,
            },
            files.cache,
        )?;
        let loader = Loader::new(engine, runtime_linker, LruCache::new(config.lru_bytes), fs);
        let vm = Vm {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                config,
                store,
                loader,
                genesis_engine,
                genesis_linker,
                imports,
                pins: Mutex::new(BTreeSet::new()),
                instantiations: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                commits: AtomicU64::new(0),
            }),
        };
        vm.load_pins()?;
        Ok(vm)
    }

    /// The VM directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
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
        Ok(self.inner.store.delete(root)?)
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

    /// Recomputes every commit's root and checks every cached artifact.
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
        Ok(outcome)
    }

    /// Counters since the VM was opened.
    pub fn stats(&self) -> VmStats {
        let inner = &self.inner;
        VmStats {
            layers: inner.loader.stats(),
            compiles: inner.loader.compiles.load(Ordering::Relaxed),
            instantiations: inner.instantiations.load(Ordering::Relaxed),
            calls: inner.calls.load(Ordering::Relaxed),
            commits: inner.commits.load(Ordering::Relaxed),
        }
    }

    /// Pins a deployed module in memory: it is never evicted, and stays pinned across restarts.
    pub fn pin(&self, id: &ModuleId) -> Result<(), VmError> {
        self.pin_loaded(id)?;
        let mut pins = self.inner.pins.lock();
        pins.insert(*id);
        self.save_pins(&pins)
    }

    /// Unpins a module; returns whether it was pinned.
    pub fn unpin(&self, id: &ModuleId) -> Result<bool, VmError> {
        let mut pins = self.inner.pins.lock();
        let was = pins.remove(id);
        self.inner.loader.unpin(id);
        self.save_pins(&pins)?;
        Ok(was)
    }

    /// The pinned modules.
    pub fn pins(&self) -> Vec<ModuleId> {
        self.inner.pins.lock().iter().copied().collect()
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

    fn load_pins(&self) -> Result<(), VmError> {
        let path = self.pins_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut pins = self.inner.pins.lock();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let id = ModuleId::from_hex(line.trim()).map_err(|e| VmError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            })?;
            // A pinned module whose commits were all deleted stays listed but is not loaded.
            match self.pin_loaded(&id) {
                Ok(()) | Err(VmError::UnknownModule(_)) => {}
                Err(e) => return Err(e),
            }
            pins.insert(id);
        }
        Ok(())
    }

    fn save_pins(&self, pins: &BTreeSet<ModuleId>) -> Result<(), VmError> {
        let path = self.pins_path();
        let tmp = path.with_extension("tmp");
        let mut text = String::new();
        for id in pins {
            text.push_str(&id.to_hex());
            text.push('\n');
        }
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            if self.inner.config.fsync {
                file.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            if self.inner.config.fsync {
                std::fs::File::open(&self.inner.dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(io(&path))
    }

    pub(crate) fn limits(&self) -> wasmtime::StoreLimits {
        StoreLimitsBuilder::new()
            .memory_size(self.inner.config.memory_limit)
            .instances(1)
            .build()
    }
}
