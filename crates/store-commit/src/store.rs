//! The registry: which commits exist, how many sessions hold each as their base, which await
//! deferred deletion, and whether an I/O error poisoned the store. It decides; the files layer
//! ([`crate::files`]) does every file-system operation.
//!
//! Sessions use the crate-private API at the end of `impl Store` (a base's directory, the
//! writability check, writing a planned commit, releasing a base); nothing else of the registry is
//! visible to them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use store_index::{CommitIndex, ModuleId, Root, commit_root};
use strata_fs::{Fs, RealFs};

use crate::files::{CommitDir, Create, Listed, StoreFiles};
use crate::plan::CommitPlan;
use crate::pool::ReservationPool;
use crate::warm::Warm;
use crate::{
    CommitInfo, Deletion, Missing, Problem, Session, StoreConfig, StoreError, VerifyReport,
};

/// The commit store. Cheap to clone (shared state); `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Dropped first: waits for the background compactions, which write into the directory.
    compactions: crate::kv::Compactions,
    files: StoreFiles,
    config: StoreConfig,
    poisoned: AtomicBool,
    registry: Mutex<Registry>,
    pool: Arc<ReservationPool>,
    warm: Warm,
}

#[derive(Debug, Default)]
struct Registry {
    /// Every commit on disk, including those awaiting deferred deletion.
    commits: HashMap<Root, Arc<CommitIndex>>,
    /// Live sessions per base.
    sessions: HashMap<Root, usize>,
    pending_delete: HashSet<Root>,
    next_seq: u64,
    /// Commit directories that failed to load at open.
    broken: Vec<Problem>,
}

impl Registry {
    /// A listed commit: on disk and not awaiting deletion.
    fn listed(&self, root: &Root) -> Option<&Arc<CommitIndex>> {
        self.commits
            .get(root)
            .filter(|_| !self.pending_delete.contains(root))
    }
}

impl Store {
    /// Opens (creating if missing) the store in `dir`: locks it (one `Store` per directory, else
    /// [`StoreError::Busy`]), checks its format version, removes leftovers of interrupted commits
    /// and deletions, finishes the deferred deletions a crash interrupted, and reads every other
    /// commit's index (no memory file).
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        Store::open_with_fs(dir, config, Arc::new(RealFs))
    }

    /// [`open`](Self::open) through another file system (tests inject faults with
    /// `strata_fs::FaultFs`).
    pub fn open_with_fs(
        dir: &Path,
        config: StoreConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<Store, StoreError> {
        Store::open_inner(dir, config, fs, Create::IfMissing)
    }

    /// Opens the store in `dir` as [`open_with_fs`](Self::open_with_fs) does, but only if it
    /// exists: a missing directory is an `Io` error (`NotFound`), and a directory without the
    /// format marker is [`Corruption::NoFormatMarker`](crate::Corruption::NoFormatMarker)
    /// instead of being made a new, empty store. For tools that diagnose a store (a damaged one
    /// must stay as it is found).
    pub fn open_existing_with_fs(
        dir: &Path,
        config: StoreConfig,
        fs: Arc<dyn Fs>,
    ) -> Result<Store, StoreError> {
        Store::open_inner(dir, config, fs, Create::Never)
    }

    fn open_inner(
        dir: &Path,
        config: StoreConfig,
        fs: Arc<dyn Fs>,
        create: Create,
    ) -> Result<Store, StoreError> {
        if config.delta_ratio == 0 {
            return Err(StoreError::InvalidInput {
                reason: "delta_ratio must be at least 1".into(),
            });
        }
        let files = StoreFiles::open(dir, fs, config.fsync, config.sync, create)?;
        let mut registry = Registry::default();
        for Listed { root, path, index } in files.scan()? {
            match index {
                Ok(index) => {
                    registry.next_seq = registry.next_seq.max(index.seq() + 1);
                    registry.commits.insert(root, Arc::new(index));
                }
                Err(e @ StoreError::Incompatible { .. }) => return Err(e),
                Err(e) => registry.broken.push(Problem {
                    path,
                    reason: e.to_string(),
                }),
            }
        }
        Ok(Store {
            inner: Arc::new(Inner {
                compactions: crate::kv::Compactions::new(files.staged()),
                files,
                poisoned: AtomicBool::new(false),
                registry: Mutex::new(registry),
                pool: Arc::new(ReservationPool::new(config.pooled_reservations)),
                warm: Warm::new(config.warm_memories, config.warm_bytes),
                config,
            }),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        self.inner.files.dir()
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Every commit (except deleted ones), oldest first.
    pub fn commits(&self) -> Vec<CommitInfo> {
        let registry = self.inner.registry.lock();
        let mut v: Vec<CommitInfo> = registry
            .commits
            .iter()
            .filter(|(r, _)| !registry.pending_delete.contains(r))
            .map(|(r, i)| CommitInfo {
                root: *r,
                parent: i.parent(),
                modules: i.modules().iter().map(|m| m.id()).collect(),
                seq: i.seq(),
            })
            .collect();
        v.sort_by_key(|c| c.seq);
        v
    }

    /// The newest commit.
    pub fn latest(&self) -> Option<Root> {
        let registry = self.inner.registry.lock();
        registry
            .commits
            .iter()
            .filter(|(r, _)| !registry.pending_delete.contains(r))
            .max_by_key(|(_, i)| i.seq())
            .map(|(r, _)| *r)
    }

    /// Whether a commit exists (and is not deleted).
    pub fn contains(&self, root: &Root) -> bool {
        self.inner.registry.lock().listed(root).is_some()
    }

    /// The index of a commit.
    pub fn index(&self, root: &Root) -> Result<Arc<CommitIndex>, StoreError> {
        self.inner
            .registry
            .lock()
            .listed(root)
            .cloned()
            .ok_or(StoreError::NotFound(Missing::Commit(*root)))
    }

    /// Starts a session from `base` (`None`: the empty state). The base is kept on disk while the
    /// session lives, even if deleted meanwhile.
    pub fn session(&self, base: Option<Root>) -> Result<Session, StoreError> {
        let index = match base {
            None => None,
            Some(root) => {
                let mut registry = self.inner.registry.lock();
                let index = registry
                    .listed(&root)
                    .cloned()
                    .ok_or(StoreError::NotFound(Missing::Commit(root)))?;
                *registry.sessions.entry(root).or_insert(0) += 1;
                Some(index)
            }
        };
        Ok(Session::new(self.clone(), base, index))
    }

    /// Deletes a commit. Other commits are unaffected (their files are their own hard links). If live
    /// sessions are based on it, it disappears from the listing at once, a marker in its directory
    /// records the deletion durably, and its files go when the last of them ends, or at the next
    /// open after a crash.
    pub fn delete(&self, root: &Root) -> Result<Deletion, StoreError> {
        self.check_writable()?;
        let mut registry = self.inner.registry.lock();
        if !registry.commits.contains_key(root) {
            return Err(StoreError::NotFound(Missing::Commit(*root)));
        }
        let sessions = registry.sessions.get(root).copied().unwrap_or(0);
        if sessions > 0 {
            // Durable before it is acknowledged, so a crash before the sessions end cannot bring
            // the commit back. After an error it stays unlisted here, and the next open removes
            // it or, if the marker did not reach the disk, lists it again.
            if registry.pending_delete.insert(*root) {
                self.inner
                    .files
                    .mark_deleted(root)
                    .inspect_err(|_| self.poison())?;
            }
            return Ok(Deletion::Deferred { sessions });
        }
        if registry.pending_delete.contains(root) {
            return Err(StoreError::NotFound(Missing::Commit(*root)));
        }
        let doomed = self.unlink_locked(&mut registry, root)?;
        drop(registry);
        self.remove_unlinked(&doomed)?;
        Ok(Deletion::Deleted)
    }

    /// Renames a commit directory out of the way (the deletion's commit point) and forgets it.
    fn unlink_locked(&self, registry: &mut Registry, root: &Root) -> Result<PathBuf, StoreError> {
        let doomed = self
            .inner
            .files
            .unlink(root)
            .inspect_err(|_| self.poison())?;
        registry.commits.remove(root);
        registry.pending_delete.remove(root);
        self.inner.warm.forget(root);
        self.inner.pool.forget(root);
        Ok(doomed)
    }

    fn remove_unlinked(&self, doomed: &Path) -> Result<(), StoreError> {
        self.inner
            .files
            .remove_unlinked(doomed)
            .inspect_err(|_| self.poison())
    }

    /// Recomputes every commit's root and file hashes from its files, and reports the commit
    /// directories that failed to load at open. Reads every file; holds one memory at a time.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let (roots, broken) = {
            let registry = self.inner.registry.lock();
            let mut roots: Vec<(u64, Root)> = registry
                .commits
                .iter()
                .map(|(r, i)| (i.seq(), *r))
                .collect();
            roots.sort();
            (roots, registry.broken.clone())
        };
        let mut report = VerifyReport {
            checked: 0,
            problems: broken,
        };
        for (_, root) in roots {
            let dir = self.commit_dir(&root);
            if let Err(e) = dir.verify(&root) {
                report.problems.push(Problem {
                    path: dir.path().to_path_buf(),
                    reason: e.to_string(),
                });
            }
            report.checked += 1;
        }
        Ok(report)
    }

    /// A module's memory bytes in a commit, read from its files (image + delta).
    pub fn read_memory(&self, root: &Root, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let index = self.index(root)?;
        let m = index
            .module(id)
            .ok_or(StoreError::NotFound(Missing::Module(*id)))?;
        self.commit_dir(root).memory(m)
    }

    /// A module's blob in a commit.
    pub fn read_blob(&self, root: &Root, id: &ModuleId) -> Result<Vec<u8>, StoreError> {
        let index = self.index(root)?;
        let m = index
            .module(id)
            .ok_or(StoreError::NotFound(Missing::Module(*id)))?;
        self.commit_dir(root).blob(m)
    }

    /// Waits until the background compactions of key-value spaces have finished (their
    /// tables are then adopted by the next commits that descend from theirs).
    pub fn wait_for_compactions(&self) {
        self.inner.compactions.wait();
    }

    /// The background compactions (for the planner).
    pub(crate) fn compactions(&self) -> &crate::kv::Compactions {
        &self.inner.compactions
    }

    /// Whether an earlier I/O error makes the store refuse writes.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    fn poison(&self) {
        self.inner.poisoned.store(true, Ordering::SeqCst);
    }

    // The crate-private API of sessions.

    /// [`StoreError::Poisoned`] when an earlier I/O error poisoned the store.
    pub(crate) fn check_writable(&self) -> Result<(), StoreError> {
        if self.is_poisoned() {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// The pool memories take their reservations from.
    pub(crate) fn pool(&self) -> &Arc<ReservationPool> {
        &self.inner.pool
    }

    /// What sessions keep of commits' modules across sessions.
    pub(crate) fn warm(&self) -> &Warm {
        &self.inner.warm
    }

    /// The directory of commit `root`, to read its files.
    pub(crate) fn commit_dir(&self, root: &Root) -> CommitDir<'_> {
        self.inner.files.commit(root)
    }

    /// Writes a planned commit whose session started from `parent`, and registers it. A state
    /// equal to an existing commit returns that commit's root and writes nothing (a commit awaiting
    /// deferred deletion is revived). An I/O error poisons the store.
    pub(crate) fn write_commit(
        &self,
        parent: Option<Root>,
        mut plan: CommitPlan<'_>,
    ) -> Result<Root, StoreError> {
        // Started once the commit is written (or found to exist): the merge is not its work.
        let compactions = std::mem::take(&mut plan.compactions);
        let result = self.write_planned(parent, plan);
        if result.is_ok() {
            for spec in compactions {
                self.inner.compactions.start(spec);
            }
        }
        result
    }

    fn write_planned(
        &self,
        parent: Option<Root>,
        plan: CommitPlan<'_>,
    ) -> Result<Root, StoreError> {
        let root = commit_root(
            plan.entries.iter().map(|e| (e.id(), e.leaf())),
            plan.kv.iter().map(|k| (k.namespace(), k.root())),
        );
        // Also covers an unchanged session: its base is listed while the session lives.
        if self.revive(&mut self.inner.registry.lock(), &root)? {
            return Ok(root);
        }
        self.check_writable()?;
        let seq = {
            let mut registry = self.inner.registry.lock();
            let seq = registry.next_seq;
            // At `u64::MAX` the index constructor refuses the commit.
            registry.next_seq = seq.saturating_add(1);
            seq
        };
        let index = CommitIndex::with_kv(seq, parent, plan.entries, plan.kv)
            .map_err(|source| StoreError::InvalidPlan { source })?;
        let files = &self.inner.files;
        let result = files
            .write_commit(parent.as_ref(), &index, plan.files, plan.kv_files)
            .and_then(|tmp| {
                self.publish(&tmp, &root, index)
                    .inspect_err(|_| files.discard(&tmp))
            });
        result.inspect_err(|_| self.poison()).map(|()| root)
    }

    /// Whether `root` exists already; a commit awaiting deferred deletion is revived, its marker
    /// removed durably first (an error poisons the store).
    fn revive(&self, registry: &mut Registry, root: &Root) -> Result<bool, StoreError> {
        if !registry.commits.contains_key(root) {
            return Ok(false);
        }
        if registry.pending_delete.contains(root) {
            self.check_writable()?;
            self.inner
                .files
                .unmark_deleted(root)
                .inspect_err(|_| self.poison())?;
            registry.pending_delete.remove(root);
        }
        Ok(true)
    }

    /// Moves a written commit into place and registers it.
    fn publish(&self, tmp: &Path, root: &Root, index: CommitIndex) -> Result<(), StoreError> {
        let files = &self.inner.files;
        // The lock spans rename and parent fsync, so a commit is listed only once durable and two
        // sessions committing the same state never race on the directory name.
        let mut registry = self.inner.registry.lock();
        if self.revive(&mut registry, root)? {
            drop(registry);
            files.discard(tmp);
            return Ok(());
        }
        // A directory that failed to load at open holds this root: replace it.
        let target = self.commit_dir(root);
        let broken = registry.broken.iter().position(|p| p.path == target.path());
        files.publish(tmp, root, broken.is_some())?;
        if let Some(i) = broken {
            registry.broken.remove(i);
        }
        registry.commits.insert(*root, Arc::new(index));
        Ok(())
    }

    /// Called when a session ends: releases its base and finishes a deferred deletion.
    pub(crate) fn release(&self, base: &Root) {
        let mut registry = self.inner.registry.lock();
        let count = registry.sessions.entry(*base).or_insert(1);
        *count -= 1;
        if *count > 0 {
            return;
        }
        registry.sessions.remove(base);
        if !registry.pending_delete.contains(base) {
            return;
        }
        if let Ok(doomed) = self.unlink_locked(&mut registry, base) {
            drop(registry);
            // An error poisons the store; the next open removes the leftover.
            let _ = self.remove_unlinked(&doomed);
        }
    }
}
