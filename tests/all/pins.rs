//! Pins that cannot load never stop a VM from opening (issue 11, item 7): a line of the `pins`
//! file that is not a module id, a module no commit holds, damaged bytecode. Each is kept as a
//! failed pin, reported by `verify` and `disk_stats`, and removed by `unpin`.

use anyhow::Result;
use vm_host::{ModuleId, Vm, VmConfig};

const COUNTER: &str = include_str!("../../crates/vm-host/contracts/counter.wat");

#[test]
fn failed_pins_never_stop_the_vm_from_opening() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = VmConfig::for_tests;
    let vm = Vm::open(dir.path(), config())?;
    let (counter, root) = vm.deploy(&wat::parse_str(COUNTER)?)?;
    vm.pin(&counter)?;
    drop(vm);
    let bytecode = dir
        .path()
        .join("store")
        .join(root.to_hex())
        .join("bytecode")
        .join(counter.to_hex());
    let mut bytes = std::fs::read(&bytecode)?;
    bytes[8] ^= 0x40;
    crate::overwrite(&bytecode, &bytes)?;
    std::fs::remove_dir_all(dir.path().join("cache"))?;
    let stranger = ModuleId::of_wasm(b"never deployed");
    let pins = dir.path().join("pins");
    let mut text = std::fs::read_to_string(&pins)?;
    text.push_str(&format!("{stranger}\n  garbage\n\u{0}\u{7}\n"));
    std::fs::write(&pins, text)?;

    let vm = Vm::open(dir.path(), config())?;
    let failed = vm.failed_pins();
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert_eq!(failed[0].id, Some(counter));
    assert!(failed[0].reason.contains("store"), "{}", failed[0]);
    assert_eq!(failed[1].id, Some(stranger));
    assert!(failed[1].reason.contains("unknown module"), "{}", failed[1]);
    assert_eq!((failed[2].id, failed[2].line.as_str()), (None, "garbage"));
    assert_eq!(failed[3].line, "\u{0}\u{7}");
    for f in &failed {
        let text = f.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    assert!(!vm.is_pinned(&counter));
    assert_eq!(vm.pins(), {
        let mut ids = vec![counter, stranger];
        ids.sort();
        ids
    });
    let outcome = vm.verify()?;
    let pin_problems = outcome
        .problems
        .iter()
        .filter(|p| p.starts_with("pins: "))
        .count();
    assert_eq!(pin_problems, 4, "{:?}", outcome.problems);
    assert_eq!(vm.disk_stats()?.failed_pins, failed);

    // Unpinning the unknown module removes it and rewrites the file without the bad lines.
    assert!(vm.unpin(&stranger)?);
    assert_eq!(vm.failed_pins().len(), 1);
    assert_eq!(std::fs::read_to_string(&pins)?, format!("{counter}\n"));
    assert!(vm.unpin(&counter)?);
    assert!(vm.failed_pins().is_empty() && vm.pins().is_empty());
    drop(vm);
    let vm = Vm::open(dir.path(), config())?;
    assert!(vm.failed_pins().is_empty() && vm.pins().is_empty());
    Ok(())
}
