//! The CosmWasm ABI's default storage (`vm_cosmwasm::backends::KvStorage`) over real store
//! sessions: what it writes commits and survives a restart, and its iterators (with
//! cosmwasm-vm's `MockStorage` charges) read the committed tables and the session's writes.

use anyhow::Result;
use cosmwasm_std::Order;
use vm_cosmwasm::backend::Storage;
use vm_cosmwasm::backends::KvStorage;
use vm_cosmwasm::gas::GasInfo;
use vm_host::{Vm, VmConfig};

/// Key-value entries.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

const LEDGER: &str = include_str!("../../crates/vm-host/contracts/ledger.wat");

/// Every entry of a scan, and the gas of all its steps (the end included).
fn drain(s: &mut KvStorage, start: Option<&[u8]>, order: Order) -> (Entries, GasInfo) {
    let (id, mut gas) = s.scan(start, None, order);
    let id = id.expect("scan");
    let mut out = Vec::new();
    loop {
        let (next, step) = s.next(id);
        gas += step;
        match next.expect("next") {
            Some(entry) => out.push(entry),
            None => return (out, gas),
        }
    }
}

fn entries(pairs: &[(&str, &str)]) -> Entries {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn kv_storage_commits_survives_a_restart_and_scans_tables_and_writes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (m, root1) = {
        let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
        let (m, _) = vm.deploy(&wat::parse_str(LEDGER)?)?;
        let mut s = vm.session(vm.latest())?;
        let mut storage = KvStorage::new(s.kv(&m)?);
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")] {
            assert_eq!(
                storage.set(k.as_bytes(), v.as_bytes()),
                (Ok(()), GasInfo::with_externally_used(2))
            );
        }
        (m, s.commit()?)
    };

    let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
    let mut s = vm.session(Some(root1))?;
    let mut storage = KvStorage::new(s.kv(&m)?);
    assert_eq!(
        storage.get(b"c"),
        (Ok(Some(b"3".to_vec())), GasInfo::with_externally_used(1))
    );
    storage.set(b"bb", b"22").0?;
    storage.remove(b"d").0?;
    let (all, gas) = drain(&mut storage, None, Order::Ascending);
    assert_eq!(
        all,
        entries(&[("a", "1"), ("b", "2"), ("bb", "22"), ("c", "3"), ("e", "5")])
    );
    // scan 11 and the end 37 external; each step its entry's bytes as VM gas.
    assert_eq!(
        gas,
        GasInfo {
            cost: 2 + 2 + 4 + 2 + 2,
            externally_used: 11 + 37
        }
    );
    let root2 = s.commit()?;
    drop(vm);

    let vm = Vm::open(dir.path(), VmConfig::for_tests())?;
    let mut s = vm.session(Some(root2))?;
    let mut storage = KvStorage::new(s.kv(&m)?);
    let (from_c, _) = drain(&mut storage, Some(b"bb"), Order::Descending);
    assert_eq!(from_c, entries(&[("e", "5"), ("c", "3"), ("bb", "22")]));
    // The first commit is unchanged.
    let mut old = vm.session(Some(root1))?;
    let storage = KvStorage::new(old.kv(&m)?);
    assert_eq!(storage.get(b"d").0?, Some(b"4".to_vec()));
    assert_eq!(storage.get(b"bb").0?, None);
    Ok(())
}
