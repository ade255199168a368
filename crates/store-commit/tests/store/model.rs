//! A property test against an in-memory model: random sessions of deploys, writes, grows, blob
//! changes, checkpoints and rollbacks, commits and deletes, checked against full contents.

use crate::{KvModel, ModelState, RES, model_root_kv, read, wasm, write};
use anyhow::{Context, Result};
use proptest::prelude::*;
use std::collections::HashMap;
use std::collections::btree_map::Entry;
use store_commit::{
    Bytecode, Deletion, KvHandle, KvIter, MemoryHandle, ModuleId, Namespace, Order, PAGE_SIZE,
    Root, Store, StoreConfig, StoreError,
};

#[derive(Clone, Debug)]
enum SessionOp {
    Deploy {
        module: u8,
        pages: u8,
        fill: u8,
    },
    Write {
        module: u8,
        at: u32,
        len: u16,
        byte: u8,
    },
    Grow {
        module: u8,
        pages: u8,
    },
    Blob {
        module: u8,
        blob: Vec<u8>,
    },
    /// Make the blob large (stored as a patch when that pays), or edit a large blob.
    BigBlob {
        module: u8,
        at: u32,
        insert: bool,
    },
    Checkpoint,
    Rollback,
    KvInsert {
        space: u8,
        key: u8,
        value: u8,
    },
    /// Inserts `count` keys from `from` on.
    KvBulk {
        space: u8,
        from: u8,
        count: u8,
    },
    KvRemove {
        space: u8,
        key: u8,
    },
    KvGet {
        space: u8,
        key: u8,
    },
    /// Opens an iterator over `[start, end)`; it is read one step after every later operation
    /// and must show the space as it was when it was opened.
    KvRange {
        space: u8,
        start: Option<u8>,
        end: Option<u8>,
        descending: bool,
    },
}

/// What a live iterator must still yield.
type Snapshot = std::vec::IntoIter<(Vec<u8>, Vec<u8>)>;

fn ns(space: u8) -> Namespace {
    Namespace::of_instance(&ModuleId::of_wasm(b"kv"), &[space % 3])
}

/// Keys of several lengths, some sharing their first 8 bytes.
fn key(k: u8) -> Vec<u8> {
    let mut out = vec![b'k'; (k % 3) as usize * 5];
    out.push(k % 64);
    out
}

fn value(k: u8, v: u8) -> Vec<u8> {
    vec![v; (k as usize * 7 + v as usize) % 40]
}

#[derive(Clone, Debug)]
enum ModelOp {
    Session {
        base: u8,
        ops: Vec<SessionOp>,
        commit: bool,
    },
    Delete(u8),
    Reopen,
}

fn session_op() -> impl Strategy<Value = SessionOp> {
    prop_oneof![
        1 => (0u8..4, 0u8..4, any::<u8>())
            .prop_map(|(module, pages, fill)| SessionOp::Deploy { module, pages, fill }),
        4 => (0u8..4, any::<u32>(), 1u16..9000, any::<u8>())
            .prop_map(|(module, at, len, byte)| SessionOp::Write { module, at, len, byte }),
        1 => (0u8..4, 0u8..3).prop_map(|(module, pages)| SessionOp::Grow { module, pages }),
        1 => (0u8..4, proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(module, blob)| SessionOp::Blob { module, blob }),
        1 => (0u8..4, any::<u32>(), any::<bool>())
            .prop_map(|(module, at, insert)| SessionOp::BigBlob { module, at, insert }),
        1 => Just(SessionOp::Checkpoint),
        1 => Just(SessionOp::Rollback),
        4 => (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(space, key, value)| SessionOp::KvInsert { space, key, value }),
        1 => (any::<u8>(), any::<u8>(), 0u8..40)
            .prop_map(|(space, from, count)| SessionOp::KvBulk { space, from, count }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(space, key)| SessionOp::KvRemove { space, key }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(space, key)| SessionOp::KvGet { space, key }),
        2 => (any::<u8>(), any::<Option<u8>>(), any::<Option<u8>>(), any::<bool>())
            .prop_map(|(space, start, end, descending)| SessionOp::KvRange { space, start, end, descending }),
    ]
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        6 => (any::<u8>(), proptest::collection::vec(session_op(), 0..12), prop::bool::weighted(0.85))
            .prop_map(|(base, ops, commit)| ModelOp::Session { base, ops, commit }),
        1 => any::<u8>().prop_map(ModelOp::Delete),
        1 => Just(ModelOp::Reopen),
    ]
}

fn run_model(ops: Vec<ModelOp>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Small thresholds, so that key-value spaces go through top deltas, folds and rebases.
    let config = StoreConfig {
        fsync: false,
        delta_ratio: 4,
        kv_top_entries: 6,
        kv_delta_ratio: 2,
        kv_min_delta: 10,
        ..StoreConfig::default()
    };
    let mut store = Store::open(dir.path(), config.clone())?;
    let mut model: HashMap<Root, (ModelState, KvModel)> = HashMap::new();
    let mut order: Vec<Root> = Vec::new();
    for op in ops {
        match op {
            ModelOp::Reopen => {
                drop(store);
                store = Store::open(dir.path(), config.clone())?;
            }
            ModelOp::Delete(i) => {
                if order.is_empty() {
                    continue;
                }
                let root = order.remove(i as usize % order.len());
                model.remove(&root);
                assert_eq!(store.delete(&root)?, Deletion::Deleted);
            }
            ModelOp::Session { base, ops, commit } => {
                let base = match base as usize % (order.len() + 1) {
                    0 => None,
                    i => Some(order[i - 1]),
                };
                let (mut state, mut kv): (ModelState, KvModel) =
                    base.map(|b| model[&b].clone()).unwrap_or_default();
                let mut s = store.session(base)?;
                let mut handles: HashMap<ModuleId, MemoryHandle> = HashMap::new();
                let mut saved: Option<(store_commit::Checkpoint, ModelState, KvModel)> = None;
                let mut iters: Vec<(KvIter, Snapshot)> = Vec::new();
                let space = |s: &mut store_commit::Session, n: u8| -> Result<KvHandle> {
                    Ok(s.kv(&ns(n))?)
                };
                for op in ops {
                    let pick = |m: u8, state: &ModelState| {
                        let keys: Vec<ModuleId> = state.keys().copied().collect();
                        (!keys.is_empty()).then(|| keys[m as usize % keys.len()])
                    };
                    match op {
                        SessionOp::Deploy {
                            module,
                            pages,
                            fill,
                        } => {
                            let code = wasm(module);
                            let id = ModuleId::of_wasm(&code);
                            let mut mem = vec![0u8; pages as usize * PAGE_SIZE];
                            for (i, b) in mem.iter_mut().enumerate().step_by(997) {
                                *b = fill.wrapping_add(i as u8);
                            }
                            let r = s.deploy(Bytecode::hash(&code[..]), mem.clone(), vec![fill]);
                            match state.entry(id) {
                                Entry::Occupied(_) => assert!(
                                    matches!(r, Err(StoreError::AlreadyDeployed { .. })),
                                    "{r:?}"
                                ),
                                Entry::Vacant(v) => {
                                    r?;
                                    v.insert((code, mem, vec![fill]));
                                }
                            }
                        }
                        SessionOp::Write {
                            module,
                            at,
                            len,
                            byte,
                        } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            let m = match handles.get(&id) {
                                Some(m) => m.clone(),
                                None => s.memory(&id, RES)?,
                            };
                            handles.insert(id, m.clone());
                            let mem = &mut state.get_mut(&id).context("module")?.1;
                            if mem.is_empty() {
                                continue;
                            }
                            let at = at as usize % mem.len();
                            let len = (len as usize).min(mem.len() - at);
                            let data: Vec<u8> = (0..len)
                                .map(|i| byte.wrapping_add((i / 4096) as u8))
                                .collect();
                            write(&m, at, &data);
                            mem[at..at + len].copy_from_slice(&data);
                        }
                        SessionOp::Grow { module, pages } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            let m = match handles.get(&id) {
                                Some(m) => m.clone(),
                                None => s.memory(&id, RES)?,
                            };
                            handles.insert(id, m.clone());
                            let mem = &mut state.get_mut(&id).context("module")?.1;
                            let new = mem.len() + pages as usize * PAGE_SIZE;
                            let r = m.grow_to(new);
                            if new > RES {
                                assert!(matches!(r, Err(StoreError::InvalidInput { .. })));
                            } else {
                                r?;
                                mem.resize(new, 0);
                            }
                        }
                        SessionOp::Blob { module, blob } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            s.set_blob(&id, blob.clone())?;
                            state.get_mut(&id).context("module")?.2 = blob;
                        }
                        SessionOp::BigBlob { module, at, insert } => {
                            let Some(id) = pick(module, &state) else {
                                continue;
                            };
                            let blob = &mut state.get_mut(&id).context("module")?.2;
                            if blob.len() < 70_000 {
                                *blob = (0..70_000u32).map(|i| (i % 251) as u8 ^ module).collect();
                            } else {
                                let at = at as usize % blob.len();
                                if insert {
                                    blob.insert(at, module);
                                } else {
                                    blob[at] ^= 0x5a;
                                }
                            }
                            s.set_blob(&id, blob.clone())?;
                        }
                        SessionOp::Checkpoint => {
                            saved = Some((s.checkpoint()?, state.clone(), kv.clone()))
                        }
                        SessionOp::Rollback => {
                            if let Some((c, st, k)) = &saved {
                                s.rollback(c)?;
                                state = st.clone();
                                kv = k.clone();
                                handles.retain(|id, _| state.contains_key(id));
                            }
                        }
                        SessionOp::KvInsert {
                            space: n,
                            key: k,
                            value: v,
                        } => {
                            space(&mut s, n)?.insert(&key(k), &value(k, v))?;
                            kv.entry(ns(n)).or_default().insert(key(k), value(k, v));
                        }
                        SessionOp::KvBulk {
                            space: n,
                            from,
                            count,
                        } => {
                            let h = space(&mut s, n)?;
                            for k in (0..count).map(|i| from.wrapping_add(i)) {
                                h.insert(&key(k), &value(k, count))?;
                                kv.entry(ns(n)).or_default().insert(key(k), value(k, count));
                            }
                        }
                        SessionOp::KvRemove { space: n, key: k } => {
                            let was = kv.entry(ns(n)).or_default().remove(&key(k)).is_some();
                            assert_eq!(space(&mut s, n)?.remove(&key(k))?, was);
                        }
                        SessionOp::KvGet { space: n, key: k } => {
                            let expected = kv.get(&ns(n)).and_then(|m| m.get(&key(k))).cloned();
                            assert_eq!(space(&mut s, n)?.get(&key(k))?, expected);
                        }
                        SessionOp::KvRange {
                            space: n,
                            start,
                            end,
                            descending,
                        } => {
                            let (start, end) = (start.map(key), end.map(key));
                            let order = if descending {
                                Order::Descending
                            } else {
                                Order::Ascending
                            };
                            let it =
                                space(&mut s, n)?.range(start.as_deref(), end.as_deref(), order)?;
                            let m = kv.get(&ns(n)).cloned().unwrap_or_default();
                            let mut expected: Vec<(Vec<u8>, Vec<u8>)> = m
                                .into_iter()
                                .filter(|(k, _)| {
                                    start.as_ref().is_none_or(|s| k >= s)
                                        && end.as_ref().is_none_or(|e| k < e)
                                })
                                .collect();
                            if descending {
                                expected.reverse();
                            }
                            iters.push((it, expected.into_iter()));
                        }
                    }
                    // Every live iterator yields its snapshot, one step per operation.
                    for (it, expected) in &mut iters {
                        let got = it.next().transpose()?;
                        assert_eq!(got, expected.next(), "iterator diverged from its snapshot");
                    }
                    // The session's view matches the model at every step.
                    for (id, m) in &handles {
                        assert_eq!(&read(m), &state[id].1, "memory of {id} diverged");
                    }
                }
                for id in state.keys() {
                    assert_eq!(s.blob(id)?, state[id].2);
                }
                for (it, expected) in iters {
                    let rest: Vec<_> = it.collect::<Result<_, _>>()?;
                    assert_eq!(rest, expected.collect::<Vec<_>>(), "iterator diverged");
                }
                if !commit {
                    continue;
                }
                let root = s.commit()?;
                kv.retain(|_, m| !m.is_empty());
                assert_eq!(
                    root,
                    model_root_kv(&state, &kv),
                    "root differs from the model's"
                );
                if !model.contains_key(&root) {
                    order.push(root);
                }
                model.insert(root, (state, kv));
            }
        }
    }
    // Every readable commit matches the model, through the files and through a mapped session.
    let mut listed: Vec<Root> = store.commits().into_iter().map(|c| c.root).collect();
    listed.sort();
    let mut expected: Vec<Root> = model.keys().copied().collect();
    expected.sort();
    assert_eq!(listed, expected);
    for (root, (state, kv)) in &model {
        let mut s = store.session(Some(*root))?;
        for n in 0..3 {
            let h = s.kv(&ns(n))?;
            let m = kv.get(&ns(n)).cloned().unwrap_or_default();
            let all: Vec<_> = h
                .range(None, None, Order::Ascending)?
                .collect::<Result<_, _>>()?;
            assert_eq!(all, m.clone().into_iter().collect::<Vec<_>>());
            let back: Vec<_> = h
                .range(None, None, Order::Descending)?
                .collect::<Result<_, _>>()?;
            assert_eq!(back, m.clone().into_iter().rev().collect::<Vec<_>>());
            assert_eq!(h.len(), m.len() as u64);
        }
        assert_eq!(s.modules(), state.keys().copied().collect::<Vec<_>>());
        for (id, (code, mem, blob)) in state {
            assert_eq!(&store.read_memory(root, id)?, mem);
            assert_eq!(&read(&s.memory(id, RES)?), mem);
            assert_eq!(&s.blob(id)?, blob);
            assert_eq!(&s.bytecode(id)?, code);
        }
    }
    let report = store.verify()?;
    assert!(report.is_ok(), "{:?}", report.problems);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises it for a longer run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(model_op(), 1..25)) {
        run_model(ops).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
    }
}
