//! The CosmWasm ABI (vm-cosmwasm) across crates: our WAT counter always; CosmWasm's own
//! hackatom and cyberpunk contracts, unmodified, when the corpus is on this machine
//! (`$STRATA_CORPUS`, default `../shared/corpus` beside the repository).

use std::path::PathBuf;

use anyhow::Result;
use vm_cosmwasm::registry::{addr_make, classic_address};
use vm_cosmwasm::{CallContext, CallOutcome, CwConfig, CwError, CwSession, CwVm, FailureKind};

const GAS: u64 = 500_000_000_000;

fn corpus(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("STRATA_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            eprintln!(
                "corpus file {name} is absent from {}: its checks do not run",
                dir.display()
            );
            None
        }
    }
}

fn addr(name: &str) -> String {
    addr_make("cosmwasm", name).expect("valid prefix")
}

/// The contract's whole storage.
fn storage(session: &mut CwSession, contract: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    session.storage(contract).expect("storage")
}

/// The `ok` payload of a query, decoded from base64 JSON.
fn query_json(out: &CallOutcome) -> serde_json::Value {
    let bytes = out.result.as_ref().expect("query ran");
    let result: serde_json::Value = serde_json::from_slice(bytes).expect("json");
    let b64 = result["ok"]
        .as_str()
        .unwrap_or_else(|| panic!("query failed: {result}"));
    let raw = cosmwasm_std::Binary::from_base64(b64).expect("base64");
    serde_json::from_slice(&raw).expect("json payload")
}

/// `wasm` without its custom section `name` (another checksum, the same code).
fn strip_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    let mut out = wasm[..8].to_vec();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let payload = payload.expect("valid wasm");
        if let wasmparser::Payload::CustomSection(c) = &payload
            && c.name() == name
        {
            continue;
        }
        if let Some((id, range)) = payload.as_section() {
            out.push(id);
            let mut len = range.len();
            loop {
                let byte = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            out.extend_from_slice(&wasm[range]);
        }
    }
    out
}

fn failure_kind(out: &CallOutcome) -> Option<FailureKind> {
    out.result.as_ref().err().map(|f| f.kind)
}

#[test]
fn classic_addresses_are_wasmds() -> Result<()> {
    // The first contract of a wasmd chain (code 1, instance 1), as wasmd derives it.
    assert_eq!(
        classic_address("wasm", 1, 1)?,
        "wasm14hj2tavq8fpesdwxxcu44rty3hh90vhujrvcmstl4zr3txmfvw9s0phg4d"
    );
    Ok(())
}

#[test]
fn counter_state_persists_across_commits_and_a_restart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ctx = CallContext::new(addr("alice"), GAS);
    let (counter, root) = {
        let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
        let mut s = vm.session(None)?;
        let (code, _) = s.store_code(&vm_cosmwasm::counter_wasm())?;
        let (counter, out) = s.instantiate(&ctx, code, br#"{"count":1}"#, "c", None)?;
        assert!(out.is_ok(), "{}", out.text());
        let root = s.commit()?;
        let mut s = vm.session(Some(root))?;
        assert!(s.execute(&ctx, &counter, br#"{"increment":{}}"#)?.is_ok());
        (counter, s.commit()?)
    };
    let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
    assert_eq!(vm.latest(), Some(root));
    let mut s = vm.session(vm.latest())?;
    let out = s.query(&ctx, &counter, br#"{"get_count":{}}"#)?;
    assert_eq!(query_json(&out), serde_json::json!({"count": 2}));
    assert_eq!(s.contracts()?.len(), 1);
    assert_eq!(
        vm.compiles(),
        0,
        "the first VM's drop waited for its background write to the file cache"
    );
    Ok(())
}

#[test]
fn failed_calls_leave_no_trace() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
    let ctx = CallContext::new(addr("alice"), GAS);
    let mut s = vm.session(None)?;
    let (code, _) = s.store_code(&vm_cosmwasm::counter_wasm())?;
    let (counter, _) = s.instantiate(&ctx, code, br#"{"count":5}"#, "c", None)?;
    let before = storage(&mut s, &counter);

    // A contract error.
    let out = s.execute(&ctx, &counter, br#"{"bogus":{}}"#)?;
    assert!(!out.is_ok());
    assert_eq!(out.text(), r#"{"error":"unknown message"}"#);
    assert_eq!(storage(&mut s, &counter), before);

    // A query that writes fails in the VM, and writes nothing.
    let out = s.query(&ctx, &counter, br#"{"write":{}}"#)?;
    assert_eq!(
        failure_kind(&out),
        Some(FailureKind::WriteAccessDenied),
        "{}",
        out.text()
    );
    assert_eq!(storage(&mut s, &counter), before);

    // Out of gas: nothing kept, all the gas used.
    let poor = CallContext::new(addr("alice"), 1_000);
    let out = s.execute(&poor, &counter, br#"{"increment":{}}"#)?;
    assert_eq!(
        failure_kind(&out),
        Some(FailureKind::OutOfGas),
        "{}",
        out.text()
    );
    assert_eq!(out.gas.used(), 1_000);
    assert_eq!(storage(&mut s, &counter), before);

    // A failed instantiate leaves no contract behind.
    let (_, out) = s.instantiate(&poor, code, br#"{"count":1}"#, "poor", None)?;
    assert!(!out.is_ok());
    assert_eq!(s.contracts()?.len(), 1);
    Ok(())
}

#[test]
fn only_the_admin_migrates_and_the_state_stays() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
    let admin = CallContext::new(addr("admin"), GAS);
    let other = CallContext::new(addr("mallory"), GAS);
    let mut s = vm.session(None)?;
    let (code, _) = s.store_code(&vm_cosmwasm::counter_wasm())?;
    let (code2, _) = s.store_code(&vm_cosmwasm::counter_wasm())?;
    assert_ne!(code, code2);
    let (counter, _) = s.instantiate(&admin, code, br#"{"count":5}"#, "c", Some(&admin.sender))?;
    assert!(matches!(
        s.migrate(&other, &counter, code2, br#"{"count":9}"#),
        Err(CwError::Unauthorized(_))
    ));
    assert_eq!(s.contract(&counter)?.code_id, code);
    let out = s.migrate(&admin, &counter, code2, br#"{"count":9}"#)?;
    assert!(out.is_ok(), "{}", out.text());
    assert_eq!(s.contract(&counter)?.code_id, code2);
    let out = s.query(&admin, &counter, br#"{"get_count":{}}"#)?;
    assert_eq!(query_json(&out), serde_json::json!({"count": 9}));
    Ok(())
}

#[test]
fn store_code_refuses_a_module_without_the_cosmwasm_exports() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
    let mut s = vm.session(None)?;
    let wasm = wat::parse_str(r#"(module (memory (export "memory") 1))"#)?;
    let err = s.store_code(&wasm).expect_err("not a CosmWasm contract");
    assert!(matches!(err, CwError::Check(_)), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    Ok(())
}

#[test]
fn hackatom_runs_unmodified() -> Result<()> {
    let Some(wasm) = corpus("cosmwasm-hackatom.wasm") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let (verifier, beneficiary, creator) = (addr("verifier"), addr("beneficiary"), addr("creator"));
    let ctx = |sender: &str| CallContext::new(sender, GAS);
    let (contract, root) = {
        let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
        let mut s = vm.session(None)?;
        let (code, _) = s.store_code(&wasm)?;
        let msg = serde_json::json!({"verifier": verifier, "beneficiary": beneficiary});
        let (contract, out) = s.instantiate(
            &ctx(&creator),
            code,
            msg.to_string().as_bytes(),
            "hackatom",
            Some(&creator),
        )?;
        assert!(out.is_ok(), "{}", out.text());
        assert!(out.gas.used() > 0);
        let response = vm_cosmwasm::parse_response(out.result.as_ref().unwrap())?;
        let response = response.into_result().expect("ok");
        assert_eq!(response.attributes[0].key, "Let the");
        (contract, s.commit()?)
    };

    // State persists across a restart.
    let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
    let mut s = vm.session(Some(root))?;
    let out = s.query(&ctx(&creator), &contract, br#"{"verifier":{}}"#)?;
    assert_eq!(query_json(&out), serde_json::json!({"verifier": verifier}));
    let out = s.query(&ctx(&creator), &contract, br#"{"get_int":{}}"#)?;
    assert!(query_json(&out)["int"].is_u64());
    let out = s.query(
        &ctx(&creator),
        &contract,
        br#"{"recurse":{"depth":0,"work":10}}"#,
    )?;
    assert!(query_json(&out)["hashed"].is_string());
    let out = s.query(
        &ctx(&creator),
        &contract,
        br#"{"other_balance":{"address":"x"}}"#,
    )?;
    assert!(!out.is_ok(), "this hackatom has no other_balance query");
    let before = storage(&mut s, &contract);

    // release: only the verifier.
    let out = s.execute(
        &ctx(&beneficiary),
        &contract,
        br#"{"release":{"denom":"earth"}}"#,
    )?;
    assert!(!out.is_ok());
    assert!(out.text().contains("Unauthorized"), "{}", out.text());
    let out = s.execute(
        &ctx(&verifier),
        &contract,
        br#"{"release":{"denom":"earth"}}"#,
    )?;
    assert!(out.is_ok(), "{}", out.text());
    let response = vm_cosmwasm::parse_response(out.result.as_ref().unwrap())?
        .into_result()
        .unwrap();
    assert_eq!(response.messages.len(), 1);
    assert_eq!(response.data.as_deref(), Some(&[0xF0, 0x0B, 0xAA][..]));

    // Failures, each leaving the state as it was.
    let small = CallContext::new(&verifier, 5_000_000_000);
    for (msg, kind) in [
        (r#"{"panic":{}}"#, Some(FailureKind::Aborted)),
        (r#"{"cpu_loop":{}}"#, Some(FailureKind::OutOfGas)),
        (r#"{"storage_loop":{}}"#, Some(FailureKind::OutOfGas)),
        (r#"{"memory_loop":{}}"#, None),
    ] {
        let out = s.execute(&small, &contract, msg.as_bytes())?;
        assert!(!out.is_ok(), "{msg}: {}", out.text());
        if kind.is_some() {
            assert_eq!(failure_kind(&out), kind, "{msg}: {}", out.text());
        }
        if kind == Some(FailureKind::OutOfGas) {
            assert_eq!(out.gas.used(), small.gas_limit, "{msg}");
        }
        assert_eq!(storage(&mut s, &contract), before, "{msg}");
    }
    let out = s.execute(
        &ctx(&verifier),
        &contract,
        br#"{"user_errors_in_api_calls":{}}"#,
    )?;
    assert!(out.is_ok(), "{}", out.text());
    // 32 MiB is 512 pages: growing past it is refused.
    let out = s.execute(
        &ctx(&verifier),
        &contract,
        br#"{"allocate_large_memory":{"pages":1}}"#,
    )?;
    assert!(out.is_ok(), "{}", out.text());
    let out = s.execute(
        &ctx(&verifier),
        &contract,
        br#"{"allocate_large_memory":{"pages":600}}"#,
    )?;
    assert!(!out.is_ok());
    assert!(out.text().contains("memory.grow failed"), "{}", out.text());
    let out = s.execute(&ctx(&verifier), &contract, br#"{"message_loop":{}}"#)?;
    assert!(out.is_ok(), "{}", out.text());

    // sudo, and migrate to a new code id keeping the state.
    let steal = serde_json::json!({"steal_funds": {"recipient": beneficiary, "amount": [{"denom": "earth", "amount": "7"}]}});
    let out = s.sudo(&ctx(&creator), &contract, steal.to_string().as_bytes())?;
    assert!(out.is_ok(), "{}", out.text());
    // Migrating to the same code: the contract sees its own migrate version (420) as the old
    // one in MigrateInfo and refuses the downgrade; nothing changes.
    let (same, _) = s.store_code(&wasm)?;
    let new_verifier = addr("new verifier");
    let msg = serde_json::json!({"verifier": new_verifier});
    let before = storage(&mut s, &contract);
    let out = s.migrate(&ctx(&creator), &contract, same, msg.to_string().as_bytes())?;
    assert_eq!(out.text(), r#"{"error":"Downgrade is not supported"}"#);
    assert_eq!(storage(&mut s, &contract), before);
    assert_eq!(s.contract(&contract)?.code_id, 1);
    s.commit()?;

    // From a code without a migrate version (hackatom without its `cw_migrate_version`
    // section): the migration runs, the state stays and changes as the contract says.
    let mut s = vm.session(vm.latest())?;
    let (old, _) = s.store_code(&strip_custom_section(&wasm, "cw_migrate_version"))?;
    let msg = serde_json::json!({"verifier": verifier, "beneficiary": beneficiary});
    let (contract, out) = s.instantiate(
        &ctx(&creator),
        old,
        msg.to_string().as_bytes(),
        "old",
        Some(&creator),
    )?;
    assert!(out.is_ok(), "{}", out.text());
    let msg = serde_json::json!({"verifier": new_verifier});
    let out = s.migrate(&ctx(&creator), &contract, same, msg.to_string().as_bytes())?;
    assert!(out.is_ok(), "{}", out.text());
    assert_eq!(s.contract(&contract)?.code_id, same);
    let out = s.query(&ctx(&creator), &contract, br#"{"verifier":{}}"#)?;
    assert_eq!(
        query_json(&out),
        serde_json::json!({"verifier": new_verifier})
    );
    s.commit()?;
    Ok(())
}

#[test]
fn cyberpunk_runs_unmodified() -> Result<()> {
    let Some(wasm) = corpus("cosmwasm-cyberpunk.wasm") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let vm = CwVm::open(dir.path(), CwConfig::for_tests())?;
    let creator = addr("creator");
    let ctx = CallContext::new(&creator, GAS);
    let mut s = vm.session(None)?;
    let (code, _) = s.store_code(&wasm)?;
    let (contract, out) = s.instantiate(&ctx, code, b"{}", "cyberpunk", None)?;
    assert!(out.is_ok(), "{}", out.text());
    let before = storage(&mut s, &contract);

    for msg in [
        r#"{"argon2":{"mem_cost":256,"time_cost":1}}"#,
        r#"{"mirror_env":{}}"#,
        r#"{"noop":{}}"#,
        r#"{"debug":{}}"#,
        r#"{"message_loop":{}}"#,
        r#"{"allocate_large_memory":{"pages":1}}"#,
    ] {
        let out = s.execute(&ctx, &contract, msg.as_bytes())?;
        assert!(out.is_ok(), "{msg}: {}", out.text());
    }
    let small = CallContext::new(&creator, 5_000_000_000);
    for (msg, kind) in [
        (r#"{"panic":{}}"#, Some(FailureKind::Aborted)),
        (r#"{"unreachable":{}}"#, Some(FailureKind::Trap)),
        (r#"{"cpu_loop":{}}"#, Some(FailureKind::OutOfGas)),
        (r#"{"storage_loop":{}}"#, Some(FailureKind::OutOfGas)),
        (r#"{"memory_loop":{}}"#, None),
        (r#"{"allocate_large_memory":{"pages":600}}"#, None),
    ] {
        let out = s.execute(&small, &contract, msg.as_bytes())?;
        assert!(!out.is_ok(), "{msg}: {}", out.text());
        if kind.is_some() {
            assert_eq!(failure_kind(&out), kind, "{msg}: {}", out.text());
        }
        assert_eq!(storage(&mut s, &contract), before, "{msg}");
    }

    let out = s.query(&ctx, &contract, br#"{"mirror_env":{}}"#)?;
    assert_eq!(
        query_json(&out)["contract"]["address"],
        serde_json::json!(contract)
    );
    let out = s.query(&ctx, &contract, br#"{"denoms":{}}"#)?;
    assert!(query_json(&out).is_array(), "{}", out.text());
    let out = s.query(&ctx, &contract, br#"{"denom":{"denom":"ucosm"}}"#)?;
    assert!(out.result.is_ok(), "{}", out.text());
    Ok(())
}

/// Runs the counter's messages (and hackatom's when the corpus is here) and returns each
/// call's result text and gas.
fn transcript(vm: &CwVm) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let ctx = CallContext::new(addr("alice"), GAS);
    let mut s = vm.session(None)?;
    let (code, _) = s.store_code(&vm_cosmwasm::counter_wasm())?;
    let (counter, out) = s.instantiate(&ctx, code, br#"{"count":3}"#, "c", None)?;
    lines.push(format!("{} {}", out.text(), out.gas.used()));
    for msg in [
        &br#"{"increment":{}}"#[..],
        br#"{"reset":{"count":10}}"#,
        br#"{"nope":{}}"#,
    ] {
        let out = s.execute(&ctx, &counter, msg)?;
        lines.push(format!("{} {}", out.text(), out.gas.used()));
    }
    let out = s.query(&ctx, &counter, br#"{"get_count":{}}"#)?;
    lines.push(format!("{} {}", out.text(), out.gas.used()));
    if let Some(wasm) = corpus("cosmwasm-hackatom.wasm") {
        let (code, _) = s.store_code(&wasm)?;
        let msg = serde_json::json!({"verifier": addr("verifier"), "beneficiary": addr("b")});
        let (h, out) = s.instantiate(&ctx, code, msg.to_string().as_bytes(), "h", None)?;
        lines.push(format!("{} {}", out.text(), out.gas.used()));
        let v = CallContext::new(addr("verifier"), 3_000_000_000);
        for msg in [
            &br#"{"release":{"denom":"earth"}}"#[..],
            br#"{"cpu_loop":{}}"#,
            br#"{"storage_loop":{}}"#,
            br#"{"panic":{}}"#,
        ] {
            let out = s.execute(&v, &h, msg)?;
            lines.push(format!("{} {}", out.text(), out.gas.used()));
        }
        let out = s.query(&ctx, &h, br#"{"recurse":{"depth":0,"work":50}}"#)?;
        lines.push(format!("{} {}", out.text(), out.gas.used()));
    }
    lines.push(format!("root {}", s.commit()?));
    Ok(lines)
}

#[test]
fn winch_and_cranelift_give_the_same_results_and_gas_and_winch_tiers_up() -> Result<()> {
    let open = |tier| -> Result<(tempfile::TempDir, CwVm)> {
        let dir = tempfile::tempdir()?;
        let mut config = CwConfig::for_tests();
        config.tier = tier;
        let vm = CwVm::open(dir.path(), config)?;
        Ok((dir, vm))
    };
    let (_d1, cranelift) = open(vm_cosmwasm::TierPolicy::CraneliftOnly)?;
    let (_d2, winch) = open(vm_cosmwasm::TierPolicy::WinchOnly)?;
    let expected = transcript(&cranelift)?;
    assert_eq!(transcript(&winch)?, expected);

    // Winch at store_code, Cranelift in the background; the same transcript after the tier-up.
    let (_d3, tiered) = open(vm_cosmwasm::TierPolicy::WinchThenCranelift)?;
    assert_eq!(transcript(&tiered)?, expected);
    assert!(tiered.wait_tier_up(std::time::Duration::from_secs(120)));
    assert!(tiered.tier_ups() >= 1);
    let compiles = tiered.compiles();
    assert_eq!(transcript(&tiered)?, expected);
    assert_eq!(
        tiered.compiles(),
        compiles,
        "the second run loads the Cranelift modules"
    );
    Ok(())
}

#[test]
fn a_contract_over_the_cranelift_budget_is_refused_or_stays_on_winch() -> Result<()> {
    // Any contract is over a budget of 1 µs; vm-host's tests cover the estimate itself.
    let tiny = vm_cosmwasm::CompileBudget {
        function_us: 1,
        module_us: 1,
    };
    let open = |tier| -> Result<(tempfile::TempDir, CwVm)> {
        let dir = tempfile::tempdir()?;
        let mut config = CwConfig::for_tests();
        config.tier = tier;
        config.vm.cranelift_budget = Some(tiny);
        let vm = CwVm::open(dir.path(), config)?;
        Ok((dir, vm))
    };
    let ctx = CallContext::new(addr("alice"), GAS);

    let (_d1, cranelift) = open(vm_cosmwasm::TierPolicy::CraneliftOnly)?;
    let mut refused = cranelift.session(None)?;
    let s = &mut refused;
    let err = s.store_code(&vm_cosmwasm::counter_wasm()).unwrap_err();
    assert!(
        matches!(err, CwError::Vm(vm_cosmwasm::VmError::OverCompileBudget(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("over the budget"), "{err}");
    assert_eq!(cranelift.compiles(), 0);
    assert!(s.contracts()?.is_empty());

    let (_d2, tiered) = open(vm_cosmwasm::TierPolicy::WinchThenCranelift)?;
    let mut s = tiered.session(None)?;
    let (code, checksum) = s.store_code(&vm_cosmwasm::counter_wasm())?;
    // The refused store_code stored no code.
    assert!(refused.wasm(&checksum).is_err());
    let (counter, out) = s.instantiate(&ctx, code, br#"{"count":1}"#, "c", None)?;
    assert!(out.is_ok(), "{}", out.text());
    assert!(tiered.wait_tier_up(std::time::Duration::from_secs(120)));
    assert_eq!(tiered.over_budget(), 1);
    assert_eq!(tiered.tier_ups(), 0);
    assert_eq!(tiered.compiles(), 1, "only the Winch compile");
    assert!(s.execute(&ctx, &counter, br#"{"increment":{}}"#)?.is_ok());
    Ok(())
}
