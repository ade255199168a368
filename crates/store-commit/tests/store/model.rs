//! A property test against an in-memory model: random sessions of deploys, writes, grows, blob
//! changes, checkpoints and rollbacks, commits and deletes, checked against full contents.

use crate::{ModelState, RES, model_root, read, wasm, write};
use anyhow::{Context, Result};
use proptest::prelude::*;
use std::collections::HashMap;
use std::collections::btree_map::Entry;
use store_commit::{
    Bytecode, Deletion, MemoryHandle, ModuleId, PAGE_SIZE, Root, Store, StoreConfig, StoreError,
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
    let config = StoreConfig {
        fsync: false,
        delta_ratio: 4,
        ..StoreConfig::default()
    };
    let mut store = Store::open(dir.path(), config.clone())?;
    let mut model: HashMap<Root, ModelState> = HashMap::new();
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
                let mut state: ModelState = base.map(|b| model[&b].clone()).unwrap_or_default();
                let mut s = store.session(base)?;
                let mut handles: HashMap<ModuleId, MemoryHandle> = HashMap::new();
                let mut saved: Option<(store_commit::Checkpoint, ModelState)> = None;
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
                        SessionOp::Checkpoint => saved = Some((s.checkpoint()?, state.clone())),
                        SessionOp::Rollback => {
                            if let Some((c, st)) = &saved {
                                s.rollback(c)?;
                                state = st.clone();
                                handles.retain(|id, _| state.contains_key(id));
                            }
                        }
                    }
                    // The session's view matches the model at every step.
                    for (id, m) in &handles {
                        assert_eq!(&read(m), &state[id].1, "memory of {id} diverged");
                    }
                }
                for id in state.keys() {
                    assert_eq!(s.blob(id)?, state[id].2);
                }
                if !commit {
                    continue;
                }
                let root = s.commit()?;
                assert_eq!(root, model_root(&state), "root differs from the model's");
                if !model.contains_key(&root) {
                    order.push(root);
                }
                model.insert(root, state);
            }
        }
    }
    // Every readable commit matches the model, through the files and through a mapped session.
    let mut listed: Vec<Root> = store.commits().into_iter().map(|c| c.root).collect();
    listed.sort();
    let mut expected: Vec<Root> = model.keys().copied().collect();
    expected.sort();
    assert_eq!(listed, expected);
    for (root, state) in &model {
        let mut s = store.session(Some(*root))?;
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
