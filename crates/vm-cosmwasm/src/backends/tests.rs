//! Tests of the default backend: `KvStorage`'s charges and iterator semantics (those of
//! cosmwasm-vm's `MockStorage`), `Bech32Api`'s address cases (`MockApi`'s), and the querier's
//! answers, compared byte for byte with cosmwasm-std's own mock querier.

use cosmwasm_std::testing::MockQuerier;
use cosmwasm_std::{
    DenomMetadata, DenomUnit, Querier as _, QueryRequest, Uint256, coin, to_json_vec,
};

use super::*;

fn kv() -> KvHandle {
    KvHandle::detached(vm_host::Namespace::of_module(&vm_host::ModuleId::of_wasm(
        b"backends test",
    )))
}

fn user<T>(msg: &str) -> Result<T, BackendError> {
    Err(BackendError::UserErr { msg: msg.into() })
}

fn ext(n: u64) -> GasInfo {
    GasInfo::with_externally_used(n)
}

#[test]
fn kv_storage_charges_as_mock_storage() {
    let mut s = KvStorage::new(kv());
    assert_eq!(s.set(b"foo", b"barbaz"), (Ok(()), ext(9)));
    assert_eq!(s.get(b"foo"), (Ok(Some(b"barbaz".to_vec())), ext(3)));
    assert_eq!(s.get(b"food"), (Ok(None), ext(4)));
    assert_eq!(s.remove(b"foo"), (Ok(()), ext(3)));
    // Removing an absent key costs the same.
    assert_eq!(s.remove(b"foo"), (Ok(()), ext(3)));
    assert_eq!(s.get(b"foo"), (Ok(None), ext(3)));
}

#[test]
fn kv_storage_iterators_are_snapshots_with_mock_storage_ids_and_charges() {
    let mut s = KvStorage::new(kv());
    for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b"22"), (b"c", b"333")] {
        s.set(k, v).0.unwrap();
    }
    assert_eq!(s.scan(None, None, Order::Ascending), (Ok(1), ext(11)));
    s.set(b"aa", b"x").0.unwrap();
    s.remove(b"b").0.unwrap();
    let step = |k: &[u8], v: &[u8]| {
        (
            Ok(Some((k.to_vec(), v.to_vec()))),
            GasInfo::with_cost((k.len() + v.len()) as u64),
        )
    };
    assert_eq!(s.next(1), step(b"a", b"1"));
    assert_eq!(s.next(1), step(b"b", b"22"));
    assert_eq!(
        s.next_value(1),
        (Ok(Some(b"333".to_vec())), GasInfo::with_cost(4))
    );
    assert_eq!(s.live_iterators(), 1);
    for _ in 0..3 {
        assert_eq!(s.next(1), (Ok(None), ext(37)));
    }
    assert_eq!(s.live_iterators(), 0);

    // Now the iterator sees the writes; descending, start included, end excluded.
    assert_eq!(
        s.scan(Some(b"a"), Some(b"c"), Order::Descending),
        (Ok(2), ext(11))
    );
    assert_eq!(
        s.next_key(2),
        (Ok(Some(b"aa".to_vec())), GasInfo::with_cost(3))
    );
    assert_eq!(s.next(2), step(b"a", b"1"));
    assert_eq!(s.next(2), (Ok(None), ext(37)));
    // Start after end: empty, as MockStorage.
    assert_eq!(s.scan(Some(b"c"), Some(b"a"), Order::Ascending).0, Ok(3));
    assert_eq!(s.next(3), (Ok(None), ext(37)));
    // Start equal to end: empty.
    assert_eq!(s.scan(Some(b"a"), Some(b"a"), Order::Descending).0, Ok(4));
    assert_eq!(s.next(4), (Ok(None), ext(37)));
    // Unknown ids are free errors.
    for id in [0, 5, u32::MAX] {
        assert_eq!(
            s.next(id),
            (
                Err(BackendError::IteratorDoesNotExist { id }),
                GasInfo::free()
            )
        );
    }
}

#[test]
fn kv_storage_bounds_its_live_iterators() {
    let mut s = KvStorage::new(kv()).with_max_live_iterators(2);
    s.set(b"k", b"v").0.unwrap();
    assert_eq!(s.scan(None, None, Order::Ascending).0, Ok(1));
    assert_eq!(s.scan(None, None, Order::Ascending).0, Ok(2));
    let (refused, gas) = s.scan(None, None, Order::Ascending);
    assert_eq!(gas, ext(11));
    assert!(
        matches!(refused, Err(BackendError::Unknown { ref msg }) if msg == "too many open iterators: at most 2 may be open at once"),
        "{refused:?}"
    );
    // An iterator at its end frees its place; ids go on.
    while s.next(1).0.unwrap().is_some() {}
    assert_eq!(s.scan(None, None, Order::Ascending).0, Ok(3));
    assert_eq!(s.handle().live_iterators(), 2);
}

#[test]
fn kv_storage_reports_a_quota_as_an_unknown_backend_error_with_its_charge() {
    let handle = kv();
    handle.set_quota(vm_host::KvQuota {
        bytes: 10,
        keys: u64::MAX,
    });
    let mut s = KvStorage::new(handle);
    assert_eq!(s.set(b"k", b"1234").0, Ok(()));
    let (result, gas) = s.set(b"key", b"12345678");
    assert_eq!(gas, ext(11));
    assert!(
        matches!(result, Err(BackendError::Unknown { ref msg }) if msg.contains("quota")),
        "{result:?}"
    );
    assert_eq!(s.get(b"key").0, Ok(None));
}

#[test]
fn bech32_api_answers_and_charges_as_mock_api() {
    let api = Bech32Api::default();
    let addr = api.addr_make("creator").unwrap();
    assert_eq!(
        addr,
        "cosmwasm1h34lmpywh4upnjdg90cjf4j70aee6z8qqfspugamjp42e4q28kqs8s7vcp"
    );
    assert_eq!(
        Bech32Api::new("juno").addr_make("creator").unwrap(),
        "juno1h34lmpywh4upnjdg90cjf4j70aee6z8qqfspugamjp42e4q28kqsksmtyp"
    );
    let canonicalize = GasInfo::with_cost(700_000);
    let humanize = GasInfo::with_cost(560_000);
    let both = GasInfo::with_cost(1_260_000);

    assert_eq!(api.addr_validate(&addr), (Ok(()), both));
    let (canonical, gas) = api.addr_canonicalize(&addr);
    let canonical = canonical.unwrap();
    assert_eq!((canonical.len(), gas), (32, canonicalize));
    assert_eq!(api.addr_humanize(&canonical), (Ok(addr.clone()), humanize));
    // Upper case decodes (the prefix is compared without case) but is not normal.
    let upper = addr.to_uppercase();
    assert_eq!(
        api.addr_canonicalize(&upper),
        (Ok(canonical.clone()), canonicalize)
    );
    assert_eq!(
        api.addr_validate(&upper),
        (user("Invalid input: address not normalized"), both)
    );
    assert_eq!(
        api.addr_validate("foobar"),
        (user("Error decoding bech32"), canonicalize)
    );
    // A changed character breaks the checksum.
    let broken = addr.replace("h34", "h35");
    assert_eq!(
        api.addr_canonicalize(&broken),
        (user("Error decoding bech32"), canonicalize)
    );
    let juno = Bech32Api::new("juno").addr_make("x").unwrap();
    assert_eq!(
        api.addr_validate(&juno),
        (user("Wrong bech32 prefix"), canonicalize)
    );
    // Canonical length 1 to 255.
    assert_eq!(
        api.addr_humanize(b""),
        (user("Invalid canonical address length"), humanize)
    );
    assert_eq!(
        api.addr_humanize(&[1u8; 256]),
        (user("Invalid canonical address length"), humanize)
    );
    let one = api.addr_humanize(&[1u8]).0.unwrap();
    assert_eq!(api.addr_canonicalize(&one).0, Ok(vec![1u8]));
    // An empty data part decodes to no bytes: a length error.
    let empty = bech32::encode::<Bech32>(Hrp::parse("cosmwasm").unwrap(), b"").unwrap();
    assert_eq!(
        api.addr_canonicalize(&empty),
        (user("Invalid canonical address length"), canonicalize)
    );
    // A prefix that is not a valid bech32 prefix fails at humanize.
    assert_eq!(
        Bech32Api::new("").addr_humanize(&[1u8; 20]),
        (user("Invalid bech32 prefix"), humanize)
    );
}

fn metadata(base: &str) -> DenomMetadata {
    DenomMetadata {
        description: format!("the {base}"),
        denom_units: vec![DenomUnit {
            denom: base.to_string(),
            exponent: 0,
            aliases: vec![format!("micro{base}")],
        }],
        base: base.to_string(),
        display: base.to_uppercase(),
        name: base.to_string(),
        symbol: base.to_uppercase(),
        uri: String::new(),
        uri_hash: String::new(),
    }
}

/// The same bank on both sides: ours, and cosmwasm-std's mock querier (behind cosmwasm-vm's).
fn both() -> (DefaultQuerier, MockQuerier) {
    let balances: [(&str, Vec<Coin>); 3] = [
        ("alice", vec![coin(100, "ucosm"), coin(7, "uatom")]),
        ("bob", vec![coin(50, "ucosm")]),
        ("carol", vec![]),
    ];
    let denoms: Vec<DenomMetadata> = ["uatom", "ucosm", "uosmo", "ujuno", "a"]
        .into_iter()
        .map(metadata)
        .collect();
    let mut config = BankConfig::default();
    for (addr, coins) in &balances {
        config = config.with_balance(*addr, coins.clone());
    }
    for m in &denoms {
        config = config.with_denom_metadata(m.clone());
    }
    let refs: Vec<(&str, &[Coin])> = balances.iter().map(|(a, c)| (*a, c.as_slice())).collect();
    let mut mock = MockQuerier::new(&refs);
    mock.bank.set_denom_metadata(&denoms);
    (DefaultQuerier::new(config, None), mock)
}

#[test]
fn bank_and_other_queries_match_the_mock_querier_byte_for_byte() {
    let (mut ours, mock) = both();
    let requests: Vec<Vec<u8>> = [
        r#"{"bank":{"balance":{"address":"alice","denom":"ucosm"}}}"#,
        r#"{"bank":{"balance":{"address":"alice","denom":"unknown"}}}"#,
        r#"{"bank":{"balance":{"address":"nobody","denom":"ucosm"}}}"#,
        r#"{"bank":{"supply":{"denom":"ucosm"}}}"#,
        r#"{"bank":{"supply":{"denom":"none"}}}"#,
        r#"{"bank":{"denom_metadata":{"denom":"ucosm"}}}"#,
        r#"{"bank":{"denom_metadata":{"denom":"missing"}}}"#,
        r#"{"bank":{"all_denom_metadata":{}}}"#,
        r#"{"bank":{"all_denom_metadata":{"pagination":null}}}"#,
        r#"{"bank":{"all_denom_metadata":{"pagination":{"key":null,"limit":2,"reverse":false}}}}"#,
        r#"{"bank":{"all_denom_metadata":{"pagination":{"key":"dWNvc20=","limit":2,"reverse":false}}}}"#,
        r#"{"bank":{"all_denom_metadata":{"pagination":{"key":"dWNvc20=","limit":2,"reverse":true}}}}"#,
        r#"{"bank":{"all_denom_metadata":{"pagination":{"key":null,"limit":0,"reverse":true}}}}"#,
        r#"{"bank":{"all_denom_metadata":{"pagination":{"key":null,"limit":4294967295,"reverse":false}}}}"#,
        r#"{"bank":{"all_balances":{"address":"alice"}}}"#,
        r#"{"wasm":{"smart":{"contract_addr":"c1","msg":"e30="}}}"#,
        r#"{"wasm":{"raw":{"contract_addr":"c2","key":"a2V5"}}}"#,
        r#"{"wasm":{"contract_info":{"contract_addr":"c3"}}}"#,
        r#"{"wasm":{"code_info":{"code_id":4}}}"#,
        r#"{"custom":{}}"#,
        r#"{"grpc":{"path":"/x","data":""}}"#,
        r#"{"distribution":{"delegator_withdraw_address":{"delegator_address":"alice"}}}"#,
        r#"{"distribution":{"delegator_validators":{"delegator_address":"alice"}}}"#,
        r#"{"staking":{"bonded_denom":{}}}"#,
        r#"{"stargate":{"path":"/x","data":""}}"#,
        r#"{"ibc":{"port_id":{}}}"#,
        r#"{"unknown":{}}"#,
        r#"not json"#,
        r#"{}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for request in requests {
        let expected = mock.raw_query(&request);
        let (answer, gas) = ours.query_raw(&request, u64::MAX);
        let answer = answer.unwrap();
        let text = String::from_utf8_lossy(&request);
        let bytes = to_json_vec(&answer).unwrap();
        assert_eq!(bytes, to_json_vec(&expected).unwrap(), "{text}");
        assert_eq!(
            gas,
            GasInfo::with_externally_used(100_000 + 100 * bytes.len() as u64),
            "{text}"
        );
    }
    // Parsed requests too (the other path into the mock querier).
    let request = QueryRequest::<Empty>::Bank(BankQuery::Supply {
        denom: "ucosm".into(),
    });
    let expected = mock.handle_query(&request);
    assert_eq!(
        ours.query_raw(&to_json_vec(&request).unwrap(), u64::MAX).0,
        Ok(expected)
    );
    // Supply sums the balances.
    let supply = ours.bank().query(&BankQuery::Supply {
        denom: "ucosm".into(),
    });
    let SystemResult::Ok(ContractResult::Ok(bytes)) = supply else {
        panic!("{supply:?}")
    };
    let response: SupplyResponse = cosmwasm_std::from_json(bytes).unwrap();
    assert_eq!(response.amount.amount, Uint256::from(150u128));
}

#[test]
fn a_query_answer_over_the_gas_limit_is_out_of_gas_with_its_charge() {
    let (mut ours, _) = both();
    let request = br#"{"bank":{"balance":{"address":"alice","denom":"ucosm"}}}"#;
    let (_, gas) = ours.query_raw(request, u64::MAX);
    let cost = gas.externally_used;
    assert_eq!(ours.query_raw(request, cost).0.map(|_| ()), Ok(()));
    assert_eq!(
        ours.query_raw(request, cost - 1),
        (Err(BackendError::OutOfGas), gas)
    );
}

/// A hook answering every wasm query with the contract address, for 5 gas.
struct Echo;

impl WasmQuerier for Echo {
    fn query(
        &mut self,
        query: &WasmQuery,
        _gas_limit: u64,
    ) -> BackendResult<SystemResult<ContractResult<Binary>>> {
        let WasmQuery::Smart { contract_addr, .. } = query else {
            return (Err(BackendError::BadArgument), GasInfo::with_cost(5));
        };
        let answer = Binary::from(contract_addr.as_bytes());
        (
            Ok(SystemResult::Ok(ContractResult::Ok(answer))),
            GasInfo::with_cost(5),
        )
    }
}

#[test]
fn wasm_queries_go_to_the_hook_whose_gas_adds_to_the_querier_charge() {
    let bank = BankQuerier::new(BankConfig::default());
    let mut ours = DefaultQuerier::with_bank(bank, Some(Box::new(Echo)));
    let request = br#"{"wasm":{"smart":{"contract_addr":"c1","msg":"e30="}}}"#;
    let (answer, gas) = ours.query_raw(request, u64::MAX);
    let answer = answer.unwrap();
    assert_eq!(
        answer,
        SystemResult::Ok(ContractResult::Ok(Binary::from(b"c1".as_slice())))
    );
    let len = to_json_vec(&answer).unwrap().len() as u64;
    assert_eq!(
        gas,
        GasInfo {
            cost: 5,
            externally_used: 100_000 + 100 * len
        }
    );
    // The hook's failure is the query's, with the hook's gas.
    let raw = br#"{"wasm":{"raw":{"contract_addr":"c2","key":"a2V5"}}}"#;
    assert_eq!(
        ours.query_raw(raw, u64::MAX),
        (Err(BackendError::BadArgument), GasInfo::with_cost(5))
    );
}
