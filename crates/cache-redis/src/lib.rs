//! A Redis module cache layer: compiled artifacts shared by a fleet of nodes, so that a module
//! is compiled once per fleet instead of once per node, and a fleet-wide compile lease.
//!
//! [`RedisCache`] implements [`ModuleCache`] over one Redis server with the `redis` crate's
//! synchronous client (no async runtime); a load reads the value on connections of its own,
//! straight into a warm buffer, hashing it as it arrives, and wasmtime maps the checked
//! artifact from a memfd whose pages later hits reuse once no module maps it
//! ([`RedisConfig::memfd_pool_bytes`]). It sits below the file cache:
//! `pinned -> LRU -> fs -> redis -> compile`.
//!
//! - Key: `strata:v1:` followed by the whole [`CacheKey`] text (module id, form, ABI, tier,
//!   engine fingerprint).
//! - Value: an envelope (magic, format version, key, lengths, artifact, tag); the tag is keyed
//!   BLAKE3 under a **mandatory** MAC key ([`RedisConfig::mac_key`]), checked in constant time
//!   before anything is decompressed or deserialized: whoever can write to Redis but does not
//!   hold the key cannot make a node run native code. A bad entry is a miss: it is deleted (best
//!   effort) and counted as `rejected`. A value over [`RedisConfig::max_artifact_bytes`] is
//!   refused from its length alone, before it is downloaded.
//! - Failure is a miss, never an error: every call has a connect and an I/O timeout, and after
//!   [`RedisConfig::breaker_failures`] consecutive failures a circuit breaker skips Redis for
//!   [`RedisConfig::breaker_cooldown`]. Uploads run on a background thread behind a bounded
//!   queue ([`RedisConfig::upload_queue`]); when it is full the upload is dropped and counted.
//! - [`CompileLease`]: `SET lease NX PX ttl`; the holder renews it while it compiles and
//!   releases it by compare-and-delete in one Lua script, after its upload.
//!
//! # Example
//!
//! ```
//! use cache_core::{CacheKey, ModuleCache};
//! use cache_redis::{RedisCache, RedisConfig};
//! use wasmtime::{Engine, Module};
//!
//! # fn main() -> anyhow::Result<()> {
//! let engine = Engine::default();
//! let config = RedisConfig::new(b"the fleet's secret, at least 32 bytes".to_vec());
//! // Opening connects to nothing: an unreachable server is a miss at every load.
//! let redis = RedisCache::open("redis://127.0.0.1:1/", &engine, config)?;
//! let wat = r#"(module (func (export "f") (result i32) i32.const 1))"#;
//! let key = CacheKey::new(&engine, wat.as_bytes());
//! assert!(redis.load(&key)?.is_none());
//! redis.save(&key, &Module::new(&engine, wat)?)?; // queued, and here dropped by the worker
//! assert!(redis.remote_stats().failures >= 1);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod envelope;
mod fetch;
mod memfd;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use cache_core::CacheError;
use cache_core::{
    CacheKey, CompileLease, Counter, EngineFingerprint, LayerStats, Lease, LeaseAttempt,
    ModuleCache, StatCounters,
};
pub use envelope::BadEntry;
use parking_lot::Mutex;
use wasmtime::{Engine, Module};

/// The key prefix of every entry: the format generation of this crate's keys and envelopes.
pub const DEFAULT_PREFIX: &str = "strata:v1:";

/// The settings of a [`RedisCache`].
#[derive(Clone)]
pub struct RedisConfig {
    /// The secret the envelope tags are keyed with (mandatory, at least 16 bytes; every node of
    /// the fleet holds the same one). Never stored in Redis.
    pub mac_key: Vec<u8>,
    /// Prefix of every key (default [`DEFAULT_PREFIX`]); lets several fleets share a server.
    pub prefix: String,
    /// Timeout of a TCP connect and of the connection's set-up. Default 250 ms.
    pub connect_timeout: Duration,
    /// Timeout of every read and write on a connection. Default 1 s: a paused or overloaded
    /// server costs a call at most this (plus `connect_timeout` for a new connection).
    pub io_timeout: Duration,
    /// The largest artifact stored or loaded. A stored value longer than this plus the envelope
    /// header is refused from its length, before it is downloaded. Default 64 MiB (twice the
    /// largest real artifact measured, esbuild's 31 MB).
    pub max_artifact_bytes: u64,
    /// How artifacts are stored. Default [`Compression::None`]: on a fast link zstd costs more
    /// than it saves (measured in docs/SCALE-OUT.md).
    pub compression: Compression,
    /// Consecutive failed calls after which the circuit opens. Default 3.
    pub breaker_failures: u32,
    /// How long an open circuit skips Redis before one call tries again. Default 5 s.
    pub breaker_cooldown: Duration,
    /// Uploads waiting for the background thread; more are dropped (and counted). Default 16.
    pub upload_queue: usize,
    /// Time to live of a compile lease; the holder renews it every third of it while it
    /// compiles, so a crashed holder's lease ends within this. Default 10 s.
    pub lease_ttl: Duration,
    /// Bytes of memory kept in the files hits are loaded from, so that a later hit, once the
    /// modules loaded before are dropped, writes into pages already allocated instead of fresh
    /// ones (a fresh page costs 2-3 µs on a small VM: half of a hackatom hit). Default 64 MiB;
    /// 0 keeps none. The memory is held while the cache is open, whether used or not.
    pub memfd_pool_bytes: u64,
}

impl RedisConfig {
    /// The defaults, with the fleet's MAC key.
    pub fn new(mac_key: Vec<u8>) -> Self {
        RedisConfig {
            mac_key,
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_millis(250),
            io_timeout: Duration::from_secs(1),
            max_artifact_bytes: 64 << 20,
            compression: Compression::None,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(5),
            upload_queue: 16,
            lease_ttl: Duration::from_secs(10),
            memfd_pool_bytes: 64 << 20,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The MAC key is a secret: never in logs.
        f.debug_struct("RedisConfig")
            .field("mac_key", &format_args!("<{} bytes>", self.mac_key.len()))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("max_artifact_bytes", &self.max_artifact_bytes)
            .field("compression", &self.compression)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("upload_queue", &self.upload_queue)
            .field("lease_ttl", &self.lease_ttl)
            .field("memfd_pool_bytes", &self.memfd_pool_bytes)
            .finish()
    }
}

/// How artifacts are stored in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// As wasmtime serialized them: fastest on a fast network.
    None,
    /// zstd at this level: about a third of the bytes on the wire and in Redis memory, for a
    /// decompression at every hit; pays on a slow link.
    Zstd {
        /// The zstd level (1-19).
        level: i32,
    },
}

/// Why a [`RedisCache`] could not be opened (nothing at run time is an error: it is a miss).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisCacheError {
    /// The URL is not a Redis URL.
    #[error("invalid redis url: {0}")]
    Url(#[source] redis::RedisError),
    /// The MAC key is shorter than [`MIN_MAC_KEY_BYTES`].
    #[error("the redis mac key must have at least {MIN_MAC_KEY_BYTES} bytes, got {0}")]
    ShortMacKey(usize),
    /// A setting out of its range.
    #[error("invalid redis cache setting: {0}")]
    Setting(&'static str),
    /// A command failed (only [`RedisCache::held`] reports one).
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
}

/// The shortest MAC key accepted.
pub const MIN_MAC_KEY_BYTES: usize = 16;

/// The counters of the remote layer beyond [`LayerStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// Artifacts uploaded.
    pub uploads: u64,
    /// Bytes uploaded (envelopes).
    pub upload_bytes: u64,
    /// Uploads dropped because the queue was full.
    pub uploads_dropped: u64,
    /// Calls that failed (connect, timeout, i/o, an error reply).
    pub failures: u64,
    /// Times the circuit opened.
    pub breaker_trips: u64,
    /// Calls skipped because the circuit was open.
    pub breaker_skips: u64,
    /// Whether the circuit is open now.
    pub breaker_open: bool,
    /// Leases this process took.
    pub leases_won: u64,
    /// Lease attempts that found another holder (each is followed by a wait).
    pub leases_busy: u64,
    /// Lease renewals.
    pub lease_renewals: u64,
}

/// Jobs of the background thread, in order: a lease is released after the upload queued
/// before it, so a waiting node that sees the lease gone finds the artifact.
enum Job {
    Upload(CacheKey, Module),
    Release { lease: String, token: String },
    Flush(SyncSender<()>),
}

#[derive(Default)]
struct Remote {
    uploads: Counter,
    upload_bytes: Counter,
    uploads_dropped: Counter,
    failures: Counter,
    leases_won: Counter,
    leases_busy: Counter,
    lease_renewals: Counter,
}

/// Opens after `threshold` consecutive failures, for `cooldown`; then lets calls through again
/// (one more failure opens it again at once).
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<(u32, Option<Instant>)>,
    trips: Counter,
    skips: Counter,
}

impl Breaker {
    fn allow(&self) -> bool {
        let state = self.state.lock();
        match state.1 {
            Some(until) if Instant::now() < until => {
                self.skips.incr();
                false
            }
            _ => true,
        }
    }

    fn is_open(&self) -> bool {
        self.state
            .lock()
            .1
            .is_some_and(|until| Instant::now() < until)
    }

    fn success(&self) {
        let mut state = self.state.lock();
        *state = (0, None);
    }

    fn failure(&self) {
        let mut state = self.state.lock();
        state.0 = state.0.saturating_add(1);
        if state.0 >= self.threshold {
            let now = Instant::now();
            if state.1.is_none_or(|until| now >= until) {
                self.trips.incr();
                tracing::warn!(
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "redis circuit open"
                );
            }
            state.1 = Some(now + self.cooldown);
        }
    }
}

struct Shared {
    client: redis::Client,
    engine: Engine,
    fingerprint: EngineFingerprint,
    tag_key: [u8; 32],
    prefix: String,
    connect_timeout: Duration,
    io_timeout: Duration,
    max_artifact_bytes: u64,
    compression: Compression,
    lease_ttl: Duration,
    /// Idle connections (a load takes one, or connects).
    pool: Mutex<Vec<redis::Connection>>,
    /// Idle connections of the read path ([`fetch::Reader`]), each with its warm buffer.
    readers: Mutex<Vec<fetch::Reader>>,
    /// The memfds hits are mapped from, reused once no module maps them.
    memfds: memfd::MemfdPool,
    breaker: Breaker,
    counters: StatCounters,
    remote: Remote,
}

/// Compare-and-delete: only the holder's token releases a lease.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// Compare-and-extend: only the holder's token renews a lease.
const RENEW: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// How a call failed.
enum Failed {
    /// Circuit open: not tried.
    Skipped,
    /// Tried and failed: counted in `failures`, and fed to the breaker unless the server
    /// answered (an error reply).
    Tried,
}

/// What a load found.
enum Got {
    /// No value (0), or one over the limit: nothing downloaded.
    Len(u64),
    /// A value within the limit, checked: the module, or why it is a bad entry.
    Opened(Result<Module, BadEntry>),
}

impl Shared {
    fn entry_key(&self, key: &CacheKey) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lease_key(&self, key: &CacheKey) -> String {
        format!("{}lease:{key}", self.prefix)
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        con.set_read_timeout(Some(self.io_timeout))?;
        con.set_write_timeout(Some(self.io_timeout))?;
        Ok(con)
    }

    /// Runs `f` on a pooled connection, through the breaker. A connection that failed is
    /// dropped; one that answered (even with an error reply) goes back to the pool. A pooled
    /// connection the server has closed (it restarted) is replaced by a new one, once, without
    /// counting a failure.
    fn call<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failed> {
        if !self.breaker.allow() {
            return Err(Failed::Skipped);
        }
        let mut pooled = self.pool.lock().pop();
        loop {
            let was_pooled = pooled.is_some();
            let mut con = match pooled.take().map_or_else(|| self.connect(), Ok) {
                Ok(con) => con,
                Err(e) => return Err(self.failed(e)),
            };
            match f(&mut con) {
                Ok(value) => {
                    self.breaker.success();
                    self.pool.lock().push(con);
                    return Ok(value);
                }
                Err(e) if was_pooled && e.is_connection_dropped() && !e.is_timeout() => {
                    tracing::debug!(error = %e, "pooled redis connection closed; reconnecting");
                }
                Err(e) => {
                    // An error reply leaves the connection usable and the server reachable.
                    if e.code().is_some() {
                        self.breaker.success();
                        self.pool.lock().push(con);
                        self.remote.failures.incr();
                        return Err(Failed::Tried);
                    }
                    return Err(self.failed(e));
                }
            }
        }
    }

    fn failed(&self, e: redis::RedisError) -> Failed {
        self.count_failure(&e);
        Failed::Tried
    }

    fn count_failure(&self, e: &dyn std::fmt::Display) {
        self.remote.failures.incr();
        self.breaker.failure();
        tracing::debug!(error = %e, "redis call failed");
    }

    /// Runs `f` on a pooled read-path connection, through the breaker, as [`Shared::call`]
    /// does. `Ok(Err(reply))` is an error reply (the connection stays pooled).
    fn read_call<T>(
        &self,
        mut f: impl FnMut(&mut fetch::Reader) -> Result<T, fetch::FetchError>,
    ) -> Result<Result<T, String>, Failed> {
        if !self.breaker.allow() {
            return Err(Failed::Skipped);
        }
        let mut pooled = self.readers.lock().pop();
        loop {
            let was_pooled = pooled.is_some();
            let mut reader = match pooled.take() {
                Some(reader) => reader,
                None => {
                    let info = self.client.get_connection_info();
                    match fetch::Reader::connect(info, self.connect_timeout, self.io_timeout) {
                        Ok(reader) => reader,
                        Err(e) => {
                            self.count_failure(&e);
                            return Err(Failed::Tried);
                        }
                    }
                }
            };
            let result = f(&mut reader);
            reader.trim();
            match result {
                Ok(value) => {
                    self.breaker.success();
                    self.readers.lock().push(reader);
                    return Ok(Ok(value));
                }
                Err(fetch::FetchError::Reply(message)) => {
                    self.breaker.success();
                    self.readers.lock().push(reader);
                    self.remote.failures.incr();
                    return Ok(Err(message));
                }
                Err(e) if was_pooled && e.is_connection_closed() => {
                    tracing::debug!(error = %e, "pooled redis connection closed; reconnecting");
                }
                Err(e) => {
                    self.count_failure(&e);
                    return Err(Failed::Tried);
                }
            }
        }
    }

    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        if key.engine() != self.fingerprint {
            return Err(CacheError::Incompatible {
                engine: key.engine(),
            });
        }
        let entry = self.entry_key(key);
        let limit = self.max_artifact_bytes + envelope::HEADER_LEN as u64;
        // The length first: a value over the limit is refused without being downloaded. Then
        // at most `limit` bytes, whatever the value became in between (a value replaced in
        // between fails its checks like any other bad entry).
        let got = match self.read_call(|reader| {
            let len = reader.strlen(&entry)?;
            if len == 0 || len > limit {
                return Ok(Got::Len(len));
            }
            let mut tagger = envelope::Tagger::new(&self.tag_key);
            let value = reader.get_bounded(&entry, limit, &mut |part| tagger.feed(part))?;
            Ok(Got::Opened(self.open(key, value, tagger)))
        }) {
            Ok(Ok(got)) => Ok(got),
            Ok(Err(reply)) if reply.starts_with("WRONGTYPE") => Err(true),
            _ => Err(false),
        };
        match got {
            Ok(Got::Opened(Ok(module))) => {
                self.counters.hits.incr();
                Ok(Some(module))
            }
            Ok(Got::Opened(Err(bad))) => {
                self.reject(&entry, bad);
                Ok(None)
            }
            Ok(Got::Len(len)) if len > limit => {
                self.reject(&entry, BadEntry::TooLarge { len, limit });
                Ok(None)
            }
            Err(true) => {
                self.reject(&entry, BadEntry::WrongType);
                Ok(None)
            }
            Ok(Got::Len(_)) | Err(false) => {
                self.counters.misses.incr();
                Ok(None)
            }
        }
    }

    /// The module in `value`, the envelope of `key`, once its tag matched (`tagger` may have
    /// hashed part of it already, as it arrived).
    fn open(
        &self,
        key: &CacheKey,
        value: &[u8],
        tagger: envelope::Tagger,
    ) -> Result<Module, BadEntry> {
        let opened = envelope::open(key, value, self.max_artifact_bytes, tagger)?;
        let artifact = opened.artifact()?;
        // A memfd is anonymous memory with a file handle, not storage (no path, nothing
        // durable): no file-system call, so nothing for strata-fs to make.
        let module = match self.memfds.file(&artifact) {
            // SAFETY: `Module::deserialize_open_file` trusts the file to hold an artifact of
            // this wasmtime build, unchanged while mapped. It holds exactly the bytes whose
            // keyed tag just matched (only nodes of this engine's fingerprint, which `load`
            // checked and the tag covers, hold the fleet's MAC key). It cannot change: the
            // pool rewrites a memfd only once no other open description of it (this one, or
            // wasmtime's mapping) exists, and a one-off memfd is sealed (`memfd.rs`).
            Ok(memfd) => unsafe { Module::deserialize_open_file(&self.engine, memfd.into()) },
            // SAFETY: as above, the bytes whose tag matched, copied by wasmtime.
            Err(_) => unsafe { Module::deserialize(&self.engine, &artifact) },
        };
        module.map_err(|e| BadEntry::Refused(e.to_string().replace('\n', " ")))
    }

    /// A bad entry: a miss, counted, deleted on a best-effort basis.
    fn reject(&self, entry: &str, bad: BadEntry) {
        tracing::warn!(key = entry, reason = %bad, "redis cache entry rejected");
        self.counters.misses.incr();
        self.counters.rejected.incr();
        let _ = self.call(|con| redis::cmd("DEL").arg(entry).query::<i64>(con));
    }

    fn upload(&self, key: &CacheKey, module: &Module) {
        let artifact = match module.serialize() {
            Ok(artifact) => artifact,
            Err(_) => {
                self.counters.errors.incr();
                return;
            }
        };
        if artifact.len() as u64 > self.max_artifact_bytes {
            self.counters.rejected.incr();
            return;
        }
        let (payload, zstd) = match self.compression {
            Compression::None => (artifact.clone(), false),
            Compression::Zstd { level } => match zstd::bulk::compress(&artifact, level) {
                Ok(packed) => (packed, true),
                Err(_) => (artifact.clone(), false),
            },
        };
        let value = envelope::seal(&self.tag_key, key, artifact.len() as u64, &payload, zstd);
        let entry = self.entry_key(key);
        let sent = self.call(|con| redis::cmd("SET").arg(&entry).arg(&value).query::<()>(con));
        if sent.is_ok() {
            self.counters.inserts.incr();
            self.remote.uploads.incr();
            self.remote.upload_bytes.add(value.len() as u64);
        }
    }

    fn release(&self, lease: &str, token: &str) {
        let _ = self.call(|con| {
            redis::Script::new(RELEASE)
                .key(lease)
                .arg(token)
                .invoke::<i64>(con)
        });
    }
}

fn worker(shared: Arc<Shared>, jobs: Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Upload(key, module) => shared.upload(&key, &module),
            Job::Release { lease, token } => shared.release(&lease, &token),
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// A [`ModuleCache`] layer on a Redis server, and a [`CompileLease`]. See the crate docs.
pub struct RedisCache {
    shared: Arc<Shared>,
    name: String,
    jobs: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("server", &self.shared.client.get_connection_info().addr())
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

/// What the server holds for one engine ([`RedisCache::held`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Held {
    /// Entries of this engine.
    pub entries: u64,
    /// Their bytes (envelopes).
    pub bytes: u64,
    /// Whether the scan stopped at its bound before seeing every key.
    pub truncated: bool,
}

impl RedisCache {
    /// A cache on the server of `url` (`redis://[:password@]host:port[/db]`), for artifacts of
    /// `engine`. Connects to nothing: an unreachable server is a miss at every load.
    pub fn open(url: &str, engine: &Engine, config: RedisConfig) -> Result<Self, RedisCacheError> {
        if config.mac_key.len() < MIN_MAC_KEY_BYTES {
            return Err(RedisCacheError::ShortMacKey(config.mac_key.len()));
        }
        if config.upload_queue == 0 {
            return Err(RedisCacheError::Setting(
                "the upload queue needs room for one upload",
            ));
        }
        if config.breaker_failures == 0 {
            return Err(RedisCacheError::Setting(
                "the breaker needs at least one failure",
            ));
        }
        if config.connect_timeout.is_zero() || config.io_timeout.is_zero() {
            return Err(RedisCacheError::Setting("timeouts must be above zero"));
        }
        if config.lease_ttl < Duration::from_millis(30) {
            return Err(RedisCacheError::Setting(
                "the lease ttl must be at least 30 ms",
            ));
        }
        let client = redis::Client::open(url).map_err(RedisCacheError::Url)?;
        let shared = Arc::new(Shared {
            client,
            engine: engine.clone(),
            fingerprint: EngineFingerprint::of(engine),
            tag_key: envelope::tag_key(&config.mac_key),
            prefix: config.prefix,
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            max_artifact_bytes: config.max_artifact_bytes,
            compression: config.compression,
            lease_ttl: config.lease_ttl,
            pool: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::new()),
            memfds: memfd::MemfdPool::new(config.memfd_pool_bytes),
            breaker: Breaker {
                threshold: config.breaker_failures,
                cooldown: config.breaker_cooldown,
                state: Mutex::new((0, None)),
                trips: Counter::new(),
                skips: Counter::new(),
            },
            counters: StatCounters::default(),
            remote: Remote::default(),
        });
        let (jobs, queue) = std::sync::mpsc::sync_channel(config.upload_queue);
        let for_worker = shared.clone();
        let worker = std::thread::Builder::new()
            .name("strata-redis-upload".into())
            .spawn(move || worker(for_worker, queue))
            .map_err(|_| RedisCacheError::Setting("cannot start the upload thread"))?;
        Ok(RedisCache {
            shared,
            name: "redis".to_owned(),
            jobs: Some(jobs),
            worker: Some(worker),
        })
    }

    /// Waits until every upload queued so far is done (or failed), at most `timeout`; returns
    /// whether it saw them done. `vmhost precompile` calls it before exiting.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(jobs) = &self.jobs else {
            return true;
        };
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut job = Job::Flush(done);
        loop {
            match jobs.try_send(job) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return false,
            }
        }
        wait.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Whether an entry is stored under `key` (no download, no check). `None` when Redis
    /// cannot be asked.
    pub fn contains(&self, key: &CacheKey) -> Option<bool> {
        let entry = self.shared.entry_key(key);
        self.shared
            .call(|con| redis::cmd("EXISTS").arg(&entry).query::<u64>(con))
            .ok()
            .map(|n| n > 0)
    }

    /// Counts the entries (and their bytes) the server holds for this cache's engine, scanning
    /// at most `max_keys` keys.
    pub fn held(&self, max_keys: u64) -> Result<Held, RedisCacheError> {
        let shared = &self.shared;
        let pattern = format!("{}*-{}", shared.prefix, shared.fingerprint);
        let lease_prefix = format!("{}lease:", shared.prefix);
        let mut held = Held::default();
        let mut con = shared.connect().map_err(RedisCacheError::Redis)?;
        let mut cursor = 0u64;
        let mut seen = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)
                .map_err(RedisCacheError::Redis)?;
            let keys: Vec<String> = keys
                .into_iter()
                .filter(|k| !k.starts_with(&lease_prefix))
                .collect();
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("STRLEN").arg(key);
                }
                let lens: Vec<u64> = pipe.query(&mut con).map_err(RedisCacheError::Redis)?;
                held.entries += lens.iter().filter(|&&n| n > 0).count() as u64;
                held.bytes += lens.iter().sum::<u64>();
            }
            seen += 1000;
            cursor = next;
            if cursor == 0 {
                return Ok(held);
            }
            if seen >= max_keys {
                held.truncated = true;
                return Ok(held);
            }
        }
    }

    /// The counters beyond [`LayerStats`]: uploads, failures, breaker, leases.
    pub fn remote_stats(&self) -> RemoteStats {
        let s = &self.shared;
        RemoteStats {
            uploads: s.remote.uploads.get(),
            upload_bytes: s.remote.upload_bytes.get(),
            uploads_dropped: s.remote.uploads_dropped.get(),
            failures: s.remote.failures.get(),
            breaker_trips: s.breaker.trips.get(),
            breaker_skips: s.breaker.skips.get(),
            breaker_open: s.breaker.is_open(),
            leases_won: s.remote.leases_won.get(),
            leases_busy: s.remote.leases_busy.get(),
            lease_renewals: s.remote.lease_renewals.get(),
        }
    }

    fn queue(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.try_send(job).map_err(|e| match e {
                TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
            }),
            None => Err(job),
        }
    }
}

impl Drop for RedisCache {
    fn drop(&mut self) {
        // The worker finishes what is queued (each call bounded by the timeouts), then ends.
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl ModuleCache for RedisCache {
    fn name(&self) -> &str {
        &self.name
    }

    fn load(&self, key: &CacheKey) -> Result<Option<Module>, CacheError> {
        self.shared.load(key)
    }

    /// Queues the upload and returns at once; a full queue or an open circuit drops it.
    fn save(&self, key: &CacheKey, module: &Module) -> Result<(), CacheError> {
        if !Engine::same(module.engine(), &self.shared.engine) {
            return Err(CacheError::EngineMismatch {
                module: EngineFingerprint::of(module.engine()),
                key: key.engine(),
            });
        }
        if self.shared.breaker.is_open() {
            self.shared.breaker.skips.incr();
            return Ok(());
        }
        if self.queue(Job::Upload(*key, module.clone())).is_err() {
            self.shared.remote.uploads_dropped.incr();
        }
        Ok(())
    }

    fn remove(&self, key: &CacheKey) -> Result<bool, CacheError> {
        let entry = self.shared.entry_key(key);
        Ok(self
            .shared
            .call(|con| redis::cmd("DEL").arg(&entry).query::<u64>(con))
            .is_ok_and(|n| n > 0))
    }

    /// `entries` and `bytes` are 0: what the server holds is shared by the fleet
    /// ([`RedisCache::held`] counts it).
    fn stats(&self) -> Vec<LayerStats> {
        vec![self.shared.counters.snapshot(&self.name, 0, 0)]
    }
}

impl CompileLease for RedisCache {
    fn try_acquire(&self, key: &CacheKey) -> LeaseAttempt {
        let shared = &self.shared;
        let lease = shared.lease_key(key);
        let mut random = [0u8; 16];
        if getrandom::fill(&mut random).is_err() {
            return LeaseAttempt::Unavailable;
        }
        // The holder's pid leads the token, for operators (and the tests) to see who holds it.
        let token = format!(
            "{}:{}",
            std::process::id(),
            random
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let ttl_ms = shared.lease_ttl.as_millis() as u64;
        let set = shared.call(|con| {
            redis::cmd("SET")
                .arg(&lease)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query::<Option<String>>(con)
        });
        match set {
            Ok(Some(_)) => {
                shared.remote.leases_won.incr();
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let renewer = {
                    let shared = shared.clone();
                    let (lease, token) = (lease.clone(), token.clone());
                    std::thread::Builder::new()
                        .name("strata-redis-lease".into())
                        .spawn(move || renew(&shared, &lease, &token, &stopped))
                        .ok()
                };
                LeaseAttempt::Won(Box::new(RedisLease {
                    jobs: self.jobs.clone(),
                    shared: shared.clone(),
                    lease,
                    token,
                    stop: Some(stop),
                    renewer,
                }))
            }
            Ok(None) => {
                shared.remote.leases_busy.incr();
                LeaseAttempt::Held
            }
            Err(_) => LeaseAttempt::Unavailable,
        }
    }
}

/// Renews the lease every third of its ttl until told to stop (or it is lost).
fn renew(shared: &Shared, lease: &str, token: &str, stop: &Receiver<()>) {
    let ttl_ms = shared.lease_ttl.as_millis() as u64;
    loop {
        match stop.recv_timeout(shared.lease_ttl / 3) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let renewed = shared.call(|con| {
            redis::Script::new(RENEW)
                .key(lease)
                .arg(token)
                .arg(ttl_ms)
                .invoke::<i64>(con)
        });
        match renewed {
            Ok(1) => shared.remote.lease_renewals.incr(),
            // Lost (expired and taken, or deleted): nothing left to renew.
            Ok(_) => return,
            // Unreachable for now: try again at the next tick.
            Err(_) => {}
        }
    }
}

struct RedisLease {
    jobs: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    lease: String,
    token: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<JoinHandle<()>>,
}

impl RedisLease {
    fn end(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        drop(stop);
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        let job = Job::Release {
            lease: std::mem::take(&mut self.lease),
            token: std::mem::take(&mut self.token),
        };
        // Behind the upload when there is room; else now (the upload was dropped anyway).
        let job = match &self.jobs {
            Some(jobs) => match jobs.try_send(job) {
                Ok(()) => return,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        if let Job::Release { lease, token } = job {
            self.shared.release(&lease, &token);
        }
    }
}

impl Lease for RedisLease {
    fn release(mut self: Box<Self>) {
        self.end();
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_mac_key_and_bad_settings_are_refused() {
        let engine = Engine::default();
        let err = RedisCache::open("redis://127.0.0.1/", &engine, RedisConfig::new(vec![1; 8]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the redis mac key must have at least 16 bytes, got 8"
        );
        let err =
            RedisCache::open("http://x/", &engine, RedisConfig::new(vec![1; 32])).unwrap_err();
        assert!(matches!(err, RedisCacheError::Url(_)), "{err}");
        let mut config = RedisConfig::new(vec![1; 32]);
        config.upload_queue = 0;
        let err = RedisCache::open("redis://127.0.0.1/", &engine, config).unwrap_err();
        assert!(matches!(err, RedisCacheError::Setting(_)), "{err}");
        assert!(!format!("{:?}", RedisConfig::new(vec![0xab; 32])).contains("171"));
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_closes_on_success() {
        let breaker = Breaker {
            threshold: 2,
            cooldown: Duration::from_secs(60),
            state: Mutex::new((0, None)),
            trips: Counter::new(),
            skips: Counter::new(),
        };
        breaker.failure();
        breaker.success();
        breaker.failure();
        assert!(breaker.allow());
        breaker.failure();
        assert!(!breaker.allow());
        assert_eq!((breaker.trips.get(), breaker.skips.get()), (1, 1));
        breaker.success();
        assert!(breaker.allow());
    }
}
