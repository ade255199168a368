//! Concurrency: one store per directory, and sessions, commits and deletes on many threads at once.

use crate::{RES, quick, read, wasm, write};
use anyhow::Result;
use store_commit::{Bytecode, ModuleId, PAGE_SIZE, Root, Store, StoreError};

#[test]
fn a_second_store_on_the_same_directory_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let err = Store::open(dir.path(), quick()).unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    drop(store);
    Store::open(dir.path(), quick())?;
    Ok(())
}

#[test]
fn concurrent_sessions_and_deletes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), quick())?;
    let mut s = store.session(None)?;
    let ids: Vec<ModuleId> = (0..4u8)
        .map(|t| {
            let code = wasm(t);
            let id = ModuleId::of_wasm(&code);
            s.deploy(Bytecode::hash(&code[..]), vec![t; 2 * PAGE_SIZE], vec![t])
                .map(|()| id)
        })
        .collect::<Result<_, _>>()?;
    let genesis = s.commit()?;
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(t, id)| {
            let (store, id) = (store.clone(), *id);
            std::thread::spawn(move || -> Result<Vec<(Root, Vec<u8>)>> {
                let mut mine = Vec::new();
                let mut base = genesis;
                for i in 0..15usize {
                    let mut s = match store.session(Some(base)) {
                        Ok(s) => s,
                        Err(StoreError::NotFound(_)) => store.session(Some(genesis))?,
                        Err(e) => return Err(e.into()),
                    };
                    let m = s.memory(&id, RES)?;
                    write(
                        &m,
                        (i * 4099) % (2 * PAGE_SIZE - 8),
                        &[(t * 16 + i) as u8 | 0x80; 8],
                    );
                    let content = read(&m);
                    base = s.commit()?;
                    mine.push((base, content));
                    // Delete an older commit of this thread now and then; others may hold it.
                    if i % 3 == 2 {
                        let old = mine.remove(0).0;
                        match store.delete(&old) {
                            Ok(_) | Err(StoreError::NotFound(_)) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(mine)
            })
        })
        .collect();
    let mut kept = Vec::new();
    for (t, th) in threads.into_iter().enumerate() {
        let mine = th
            .join()
            .map_err(|_| anyhow::anyhow!("thread panicked"))??;
        kept.extend(mine.into_iter().map(|(r, c)| (ids[t], r, c)));
    }
    let report = store.verify()?;
    assert!(report.is_ok(), "{:?}", report.problems);
    for (id, root, content) in kept {
        assert_eq!(store.read_memory(&root, &id)?, content);
    }
    Ok(())
}
