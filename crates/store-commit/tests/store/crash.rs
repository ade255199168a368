//! The SIGKILL crash test: a child process commits and deletes in a loop, the parent kills it at
//! random moments and checks every reported commit survives whole. Commits change memories,
//! blobs and key-value spaces (with small thresholds, so top deltas, folds and rebases all
//! happen).

use crate::{RES, write};
use anyhow::{Result, bail, ensure};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use store_commit::{Bytecode, Namespace, PAGE_SIZE, Root, Store, StoreConfig};

const CRASH_CHILD: &str = "STRATA_STORE_CRASH_CHILD";

fn crash_child(dir: &Path, seed: u64) -> Result<()> {
    use std::io::Write;
    let config = StoreConfig {
        kv_top_entries: 16,
        kv_min_delta: 64,
        ..StoreConfig::default()
    };
    let store = Store::open(dir, config)?;
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let base = store.latest();
        let mut s = store.session(base)?;
        if s.modules().len() < 3 && next() % 4 == 0 || s.modules().is_empty() {
            let code = (seed * 1000 + i).to_le_bytes().to_vec();
            let pages = 1 + (next() % 4) as usize;
            s.deploy(
                Bytecode::hash(code),
                vec![i as u8; pages * PAGE_SIZE],
                vec![],
            )?;
        }
        let modules = s.modules();
        let id = modules[(next() % modules.len() as u64) as usize];
        let m = s.memory(&id, RES)?;
        if next() % 5 == 0 && m.len() < RES {
            m.grow_to(m.len() + PAGE_SIZE)?;
        }
        for _ in 0..1 + next() % 8 {
            let at = (next() as usize) % (m.len() - 16);
            write(&m, at, &next().to_le_bytes());
        }
        s.set_blob(&id, next().to_le_bytes().to_vec())?;
        let kv = s.kv(&Namespace::of_module(&id))?;
        for _ in 0..1 + next() % 40 {
            let key = (next() % 500).to_le_bytes();
            if next() % 4 == 0 {
                kv.remove(&key)?;
            } else {
                kv.insert(&key, &next().to_le_bytes())?;
            }
        }
        writeln!(out, "begin")?;
        out.flush()?;
        let root = s.commit()?;
        writeln!(out, "commit {root}")?;
        out.flush()?;
        // Deletes keep the store small (the parent verifies all of it after every kill): a third
        // of the time above 4 commits, and always above 8.
        let commits = store.commits();
        if commits.len() > 8 || (commits.len() > 4 && next() % 3 == 0) {
            let victim = commits[(next() % (commits.len() as u64 - 1)) as usize].root;
            writeln!(out, "deleting {victim}")?;
            out.flush()?;
            store.delete(&victim)?;
            writeln!(out, "deleted {victim}")?;
            out.flush()?;
        }
    }
    Ok(())
}

#[test]
fn sigkill_at_random_moments() -> Result<()> {
    if let Ok(dir) = std::env::var(CRASH_CHILD) {
        let seed = std::env::var("STRATA_CRASH_SEED")?.parse()?;
        return crash_child(Path::new(&dir), seed);
    }
    let rounds = strata_harness::crash_rounds(20);
    let dir = tempfile::tempdir()?;
    let name = strata_harness::test_name!(sigkill_at_random_moments);
    let mut live: HashSet<Root> = HashSet::new();
    let mut total = 0;
    let (mut kills_in_commit, mut kills_in_delete, mut unreported_seen) = (0, 0, 0);
    let start = std::time::Instant::now();
    for round in 0..rounds {
        let seed = round.to_string();
        let env = [
            (CRASH_CHILD, dir.path().as_os_str()),
            ("STRATA_CRASH_SEED", seed.as_ref()),
        ];
        let child = strata_harness::Child::spawn(&name, &env, None)?;
        let wait = 20 + (round * 7919) % 80;
        std::thread::sleep(Duration::from_millis(wait));
        let lines = child.kill()?;
        let mut in_doubt: HashSet<Root> = HashSet::new();
        let mut in_commit = false;
        for line in &lines {
            if line.ends_with("begin") {
                in_commit = true;
                continue;
            }
            // The harness may print its own text before the first line of ours.
            let mut words = line.split(' ').rev();
            let (Some(hex), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(root) = Root::from_hex(hex) else {
                continue; // test harness output
            };
            match what {
                "commit" => {
                    live.insert(root);
                    total += 1;
                    in_commit = false;
                }
                "deleting" => {
                    in_doubt.insert(root);
                }
                "deleted" => {
                    in_doubt.remove(&root);
                    live.remove(&root);
                }
                _ => bail!("unexpected line {line}"),
            }
        }
        kills_in_commit += u64::from(in_commit);
        kills_in_delete += u64::from(!in_doubt.is_empty());
        let store = Store::open(dir.path(), StoreConfig::default())?;
        for name in std::fs::read_dir(dir.path())? {
            let name = name?.file_name();
            ensure!(
                !name.to_string_lossy().starts_with('.'),
                "leftover {name:?}"
            );
        }
        let report = store.verify()?;
        ensure!(report.is_ok(), "round {round}: {:?}", report.problems);
        for root in &in_doubt {
            if !store.contains(root) {
                live.remove(root);
            }
        }
        let on_disk: HashSet<Root> = store.commits().into_iter().map(|c| c.root).collect();
        for root in &live {
            ensure!(
                on_disk.contains(root),
                "round {round}: reported commit {root} lost"
            );
            let index = store.index(root)?;
            for m in index.modules() {
                store.read_memory(root, &m.id())?;
            }
            for space in index.kv() {
                let kv = store.session(Some(*root))?.kv(&space.namespace())?;
                let all = kv.range(None, None, store_commit::Order::Ascending)?;
                ensure!(
                    all.count() as u64 == space.keys(),
                    "round {round}: key count"
                );
            }
        }
        // At most the one commit in flight at the kill was not reported.
        let unreported: Vec<_> = on_disk.difference(&live).collect();
        ensure!(
            unreported.len() <= 1,
            "round {round}: unreported commits {:?}, child said {:?}",
            unreported
                .iter()
                .map(|r| store.index(r).map(|i| (**r, i.seq(), i.parent())))
                .collect::<Vec<_>>(),
            &lines[lines.len().saturating_sub(6)..]
        );
        unreported_seen += unreported.len();
        live = on_disk;
        if (round + 1) % 100 == 0 || round + 1 == rounds {
            println!(
                "store crash: {} rounds in {:.1} s, {total} commits reported, {kills_in_commit} \
                 kills inside a commit ({unreported_seen} of those commits appeared whole), \
                 {kills_in_delete} inside a delete, {} commits alive",
                round + 1,
                start.elapsed().as_secs_f64(),
                live.len()
            );
        }
    }
    ensure!(total > 0, "the child never committed");
    Ok(())
}
