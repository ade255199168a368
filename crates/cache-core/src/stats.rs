//! Per-layer statistics and the relaxed atomic counters layers keep them in.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one layer's statistics.
///
/// `hits + misses` is the number of loads; a load that failed with an error counts as a miss
/// and an error. `entries` and `bytes` describe the layer's current content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// The layer's name ([`crate::ModuleCache::name`]).
    pub name: String,
    /// Loads that found a module.
    pub hits: u64,
    /// Loads that found nothing (including rejected entries and failed loads).
    pub misses: u64,
    /// Modules stored.
    pub inserts: u64,
    /// Entries removed to respect a size limit (not replacements, not explicit removals).
    pub evictions: u64,
    /// Entries currently held.
    pub entries: u64,
    /// Bytes currently held (compiled artifact sizes, or file sizes on disk).
    pub bytes: u64,
    /// Entries discarded: failed verification (a bad file) or could not be admitted (too large).
    pub rejected: u64,
    /// Errors of this layer: those it absorbed itself and those a [`crate::FallbackCache`]
    /// absorbed on its behalf.
    pub errors: u64,
}

/// A relaxed atomic event counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn incr(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The event counters of one layer; `entries` and `bytes` are content, which each layer
/// measures itself when it takes a [`snapshot`](StatCounters::snapshot).
#[derive(Debug, Default)]
pub struct StatCounters {
    /// See [`LayerStats::hits`].
    pub hits: Counter,
    /// See [`LayerStats::misses`].
    pub misses: Counter,
    /// See [`LayerStats::inserts`].
    pub inserts: Counter,
    /// See [`LayerStats::evictions`].
    pub evictions: Counter,
    /// See [`LayerStats::rejected`].
    pub rejected: Counter,
    /// See [`LayerStats::errors`].
    pub errors: Counter,
}

impl StatCounters {
    /// Counts a load: a hit if `hit`, else a miss.
    pub fn record_lookup(&self, hit: bool) {
        if hit {
            self.hits.incr();
        } else {
            self.misses.incr();
        }
    }

    /// The counters as [`LayerStats`], with the layer's current `entries` and `bytes`.
    pub fn snapshot(&self, name: &str, entries: u64, bytes: u64) -> LayerStats {
        LayerStats {
            name: name.to_owned(),
            hits: self.hits.get(),
            misses: self.misses.get(),
            inserts: self.inserts.get(),
            evictions: self.evictions.get(),
            entries,
            bytes,
            rejected: self.rejected.get(),
            errors: self.errors.get(),
        }
    }
}
