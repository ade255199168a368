//! The remote (Redis) cache layer against a real `redis-server` that each test starts on
//! 127.0.0.1 (a free port, no persistence) and kills at its end; `STRATA_REDIS_URL` points the
//! tests that neither stop nor pause their server at an existing one instead. A missing
//! `redis-server` fails them: they never skip.
//!
//! Round trip between two VMs, tampering from a raw client, and faults (server stopped and
//! paused). The fleet tests with several `vmhost` processes are in crates/vmhost/tests/cli.rs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use cache_core::{CacheKey, ModuleCache};
use cache_redis::{RedisCache, RedisConfig};
use strata_harness::RedisServer;
use vm_host::{ModuleId, RemoteCache, Value, Vm, VmConfig};
use wasmtime::{Engine, Module};

const COUNTER: &str = include_str!("../../crates/vm-host/contracts/counter.wat");
const BANK: &str = include_str!("../../crates/vm-host/contracts/bank.wat");
const MAC_KEY: &[u8] = b"the fleet's remote cache key, 32+ bytes";

fn server() -> RedisServer {
    RedisServer::shared_or_start().unwrap_or_else(|e| panic!("{e}"))
}

fn own_server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("raw client connects")
}

/// Short timeouts and a unique prefix per test (tests may share a server).
fn redis_config(prefix: &str, key: &[u8]) -> RedisConfig {
    let mut config = RedisConfig::new(key.to_vec());
    config.prefix = format!("strata-test:{prefix}:{}:", std::process::id());
    config.connect_timeout = Duration::from_millis(200);
    config.io_timeout = Duration::from_millis(300);
    config.breaker_failures = 3;
    config.breaker_cooldown = Duration::from_millis(800);
    config.lease_ttl = Duration::from_secs(2);
    config
}

fn vm(dir: &Path, server: &RedisServer, config: RedisConfig) -> Result<Vm> {
    let mut remote = RemoteCache::new(server.url(), config.mac_key.clone());
    remote.config = config;
    remote.max_lease_wait = Duration::from_secs(10);
    Ok(Vm::open(
        dir,
        VmConfig {
            remote: Some(remote),
            ..VmConfig::for_tests()
        },
    )?)
}

fn layer(vm: &Vm, name: &str) -> cache_core::LayerStats {
    vm.stats()
        .layers
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

/// `add(n)` on the newest commit, committed.
fn add(vm: &Vm, module: &ModuleId, n: i64) -> Result<Value> {
    let mut session = vm.session(vm.latest())?;
    let result = session.call(module, "add", &[Value::I64(n)])?[0];
    session.commit()?;
    Ok(result)
}

/// The Redis keys under `prefix` of `module`'s artifacts.
fn entries(con: &mut redis::Connection, prefix: &str, module: &ModuleId) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}{module}-*"))
        .query(con)
        .expect("KEYS");
    keys.sort();
    keys
}

#[test]
fn a_second_vm_compiles_nothing_and_promotes_the_remote_hit() -> Result<()> {
    let server = server();
    let config = redis_config("round-trip", MAC_KEY);
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let wasm = wat::parse_str(COUNTER)?;

    let first = vm(a.path(), &server, config.clone())?;
    let (module, _) = first.deploy(&wasm)?;
    assert_eq!(add(&first, &module, 5)?, Value::I64(5));
    assert_eq!(first.stats().compiles, 1);
    assert!(first.flush_remote(Duration::from_secs(10)));
    assert_eq!(first.stats().remote.expect("remote").uploads, 1);
    let held = first.remote_held(1000).expect("remote")?;
    assert_eq!(held.entries, 1, "{held:?}");
    assert!(held.bytes > 1000, "{held:?}");
    drop(first);

    // Another node, another directory: the runtime form comes from Redis.
    let second = vm(b.path(), &server, config.clone())?;
    let (again, _) = second.deploy(&wasm)?;
    assert_eq!(again, module);
    assert_eq!(add(&second, &module, 2)?, Value::I64(2));
    let stats = second.stats();
    assert_eq!(stats.compiles, 0, "{stats:?}");
    let (lru, fs, redis) = (
        layer(&second, "lru"),
        layer(&second, "fs"),
        layer(&second, "redis"),
    );
    assert_eq!((redis.hits, redis.rejected), (1, 0), "{redis:?}");
    assert_eq!((fs.misses, fs.inserts), (1, 1), "promoted into fs: {fs:?}");
    assert_eq!(
        (lru.misses, lru.inserts),
        (1, 1),
        "promoted into lru: {lru:?}"
    );
    assert_eq!(stats.remote.expect("remote").uploads, 0);
    drop(second);

    // The promotion reached the disk: a restart hits the file cache, not Redis.
    let third = vm(b.path(), &server, config)?;
    assert_eq!(add(&third, &module, 1)?, Value::I64(3));
    assert_eq!(third.stats().compiles, 0);
    assert_eq!(layer(&third, "fs").hits, 1);
    assert_eq!(
        layer(&third, "redis").hits + layer(&third, "redis").misses,
        0
    );
    Ok(())
}

#[test]
fn tampered_entries_are_misses_and_recompiled_never_run() -> Result<()> {
    let server = server();
    let mut con = raw(&server);
    let config = redis_config("tamper", MAC_KEY);
    let prefix = config.prefix.clone();
    let (counter, bank) = (wat::parse_str(COUNTER)?, wat::parse_str(BANK)?);
    let origin = tempfile::tempdir()?;
    let first = vm(origin.path(), &server, config.clone())?;
    let (counter_id, _) = first.deploy(&counter)?;
    let (bank_id, _) = first.deploy(&bank)?;
    first.precompile(&counter)?;
    first.precompile(&bank)?;
    assert!(first.flush_remote(Duration::from_secs(10)));
    drop(first);
    let counter_key = entries(&mut con, &prefix, &counter_id)
        .pop()
        .expect("uploaded");
    let bank_key = entries(&mut con, &prefix, &bank_id)
        .pop()
        .expect("uploaded");
    let good: Vec<u8> = redis::cmd("GET").arg(&counter_key).query(&mut con)?;
    let bank_value: Vec<u8> = redis::cmd("GET").arg(&bank_key).query(&mut con)?;

    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 0x01;
    let mut header_flipped = good.clone();
    header_flipped[90] ^= 0x01; // the artifact length
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped byte of the artifact", flipped),
        ("a flipped byte of the header", header_flipped),
        ("a truncated value", good[..good.len() - 1000].to_vec()),
        ("the envelope of another module", bank_value),
        ("garbage", b"not an envelope at all".to_vec()),
    ];
    for (what, value) in cases {
        let () = redis::cmd("SET")
            .arg(&counter_key)
            .arg(&value)
            .query(&mut con)?;
        let dir = tempfile::tempdir()?;
        let node = vm(dir.path(), &server, config.clone())?;
        node.deploy(&counter)?;
        // The bad entry is not run: the call gives the counter's own result.
        assert_eq!(add(&node, &counter_id, 7)?, Value::I64(7), "{what}");
        let redis = layer(&node, "redis");
        assert_eq!((redis.hits, redis.rejected), (0, 1), "{what}: {redis:?}");
        assert_eq!(node.stats().compiles, 1, "{what}: recompiled");
        assert!(node.flush_remote(Duration::from_secs(10)));
        // Deleted, then replaced by the recompiled module's upload.
        let now: Vec<u8> = redis::cmd("GET").arg(&counter_key).query(&mut con)?;
        assert_ne!(now, value, "{what}");
    }

    // Written under another MAC key (a node of another fleet, or a forger with a key of his
    // own): a miss, and this node's recompile replaces it.
    let dir = tempfile::tempdir()?;
    let forger = vm(
        dir.path(),
        &server,
        redis_config("tamper", b"another key, also 32 bytes long!"),
    )?;
    let () = redis::cmd("DEL").arg(&counter_key).query(&mut con)?;
    forger.deploy(&counter)?;
    assert_eq!(add(&forger, &counter_id, 1)?, Value::I64(1));
    assert!(forger.flush_remote(Duration::from_secs(10)));
    drop(forger);
    let dir = tempfile::tempdir()?;
    let node = vm(dir.path(), &server, config)?;
    node.deploy(&counter)?;
    assert_eq!(add(&node, &counter_id, 7)?, Value::I64(7));
    assert_eq!(
        (layer(&node, "redis").rejected, node.stats().compiles),
        (1, 1)
    );
    Ok(())
}

#[test]
fn a_hundred_megabyte_value_is_refused_without_being_downloaded() -> Result<()> {
    let server = server();
    let mut con = raw(&server);
    let engine = Engine::default();
    let config = redis_config("oversized", MAC_KEY);
    let wat = r#"(module (func (export "f") (result i32) i32.const 11))"#;
    let key = CacheKey::new(&engine, wat.as_bytes());
    let entry = format!("{}{key}", config.prefix);
    let cache = RedisCache::open(server.url(), &engine, config)?;

    let () = redis::cmd("SET")
        .arg(&entry)
        .arg(vec![0x5au8; 100 << 20])
        .query(&mut con)?;
    let sent_before = net_output(&mut con);
    let started = Instant::now();
    assert!(cache.load(&key)?.is_none());
    let sent = net_output(&mut con) - sent_before;
    assert!(sent < 1 << 20, "the server sent {sent} bytes");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(cache.stats()[0].rejected, 1);
    let exists: u64 = redis::cmd("EXISTS").arg(&entry).query(&mut con)?;
    assert_eq!(exists, 0, "deleted");

    // Not a string at all: a miss too.
    let () = redis::cmd("RPUSH").arg(&entry).arg("x").query(&mut con)?;
    assert!(cache.load(&key)?.is_none());
    assert_eq!(cache.stats()[0].rejected, 2);

    // A valid entry still loads.
    cache.save(&key, &Module::new(&engine, wat)?)?;
    assert!(cache.flush(Duration::from_secs(10)));
    assert!(cache.load(&key)?.is_some());
    Ok(())
}

/// Bytes the server has sent so far.
fn net_output(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(con).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_net_output_bytes")
}

/// A call that waits on Redis waits at most a connect and an I/O timeout (500 ms here); the
/// bound asserted is generous (it checks a bound, not a speed).
const BOUND: Duration = Duration::from_secs(3);

#[test]
fn a_stopped_or_paused_redis_costs_misses_within_the_timeout_then_opens_the_breaker() -> Result<()>
{
    let mut server = own_server();
    let engine = Engine::default();
    let config = redis_config("faults", MAC_KEY);
    let wat = r#"(module (func (export "f") (result i32) i32.const 12))"#;
    let key = CacheKey::new(&engine, wat.as_bytes());
    let module = Module::new(&engine, wat)?;
    let cache = RedisCache::open(server.url(), &engine, config.clone())?;
    cache.save(&key, &module)?;
    assert!(cache.flush(Duration::from_secs(10)));
    assert!(cache.load(&key)?.is_some());

    // Paused: every call times out within its bound, and after 3 the breaker opens.
    server.pause();
    for attempt in 0..6 {
        let started = Instant::now();
        assert!(cache.load(&key)?.is_none(), "attempt {attempt}");
        let waited = started.elapsed();
        assert!(waited < BOUND, "attempt {attempt} waited {waited:?}");
    }
    let stats = cache.remote_stats();
    assert_eq!(stats.breaker_trips, 1, "{stats:?}");
    assert!(stats.breaker_open && stats.breaker_skips >= 3, "{stats:?}");
    // A save with the circuit open costs nothing and uploads nothing.
    cache.save(&key, &module)?;

    // A VM goes on while Redis is paused: deploy, compile, call.
    let dir = tempfile::tempdir()?;
    let node = vm(dir.path(), &server, config.clone())?;
    let (counter, _) = node.deploy(&wat::parse_str(COUNTER)?)?;
    assert_eq!(add(&node, &counter, 4)?, Value::I64(4));
    assert_eq!(node.stats().compiles, 1);

    // Back: after the cool-down, hits resume.
    server.resume();
    std::thread::sleep(config.breaker_cooldown + Duration::from_millis(100));
    assert!(cache.load(&key)?.is_some(), "{:?}", cache.remote_stats());
    assert!(!cache.remote_stats().breaker_open);

    // Stopped: refused connections are misses at once; the breaker opens again.
    server.stop();
    for _ in 0..4 {
        let started = Instant::now();
        assert!(cache.load(&key)?.is_none());
        assert!(started.elapsed() < BOUND);
    }
    assert_eq!(cache.remote_stats().breaker_trips, 2);
    assert_eq!(add(&node, &counter, 1)?, Value::I64(5));

    // A new (empty) server on the same port: uploads and hits resume.
    server.restart()?;
    std::thread::sleep(config.breaker_cooldown + Duration::from_millis(100));
    assert!(cache.load(&key)?.is_none(), "the new server is empty");
    cache.save(&key, &module)?;
    assert!(cache.flush(Duration::from_secs(10)));
    assert!(cache.load(&key)?.is_some());
    Ok(())
}

/// Nodes on `WinchThenCranelift`: Winch artifacts stay on the node, the tier-up's Cranelift
/// artifact goes to Redis, and another node deploying the module compiles nothing.
#[test]
fn with_winch_then_cranelift_only_cranelift_reaches_the_fleet() -> Result<()> {
    let server = server();
    let config = redis_config("tiers", MAC_KEY);
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let wasm = wat::parse_str(COUNTER)?;
    let node = |dir: &Path| -> Result<Vm> {
        let mut remote = RemoteCache::new(server.url(), config.mac_key.clone());
        remote.config = config.clone();
        Ok(Vm::open(
            dir,
            VmConfig {
                remote: Some(remote),
                tier: vm_host::TierPolicy::WinchThenCranelift,
                ..VmConfig::for_tests()
            },
        )?)
    };

    let first = node(a.path())?;
    let (module, _) = first.deploy(&wasm)?;
    assert_eq!(add(&first, &module, 5)?, Value::I64(5));
    assert!(first.wait_tier_up(Duration::from_secs(60)));
    assert!(first.flush_remote(Duration::from_secs(10)));
    let stats = first.stats();
    assert_eq!((stats.tiers.winch_compiles, stats.tiers.tier_ups), (1, 1));
    assert_eq!(stats.remote.expect("remote").uploads, 1, "Cranelift only");
    assert_eq!(layer(&first, "redis").errors, 0);
    let held = first.remote_held(1000).expect("remote")?;
    assert_eq!(held.entries, 1, "{held:?}");
    drop(first);

    let second = node(b.path())?;
    second.deploy(&wasm)?;
    assert_eq!(add(&second, &module, 2)?, Value::I64(2));
    let stats = second.stats();
    assert_eq!(stats.compiles, 0, "{stats:?}");
    assert_eq!(stats.tiers.cranelift_modules, 1);
    assert_eq!(layer(&second, "redis").hits, 1);
    Ok(())
}

/// Something that is not Redis on the port (another service, a proxy gone wrong, a server
/// answering junk): every load is a miss within the bound, uploads fail quietly, the breaker
/// opens, and a VM on it deploys and calls as if there were no remote layer.
#[test]
fn a_server_answering_garbage_costs_misses_and_calls_go_on() -> Result<()> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("redis://127.0.0.1:{}/", listener.local_addr()?.port());
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let junk: &[&[u8]] = &[
                    b"HTTP/1.1 400 Bad Request\r\n\r\n",
                    b"$99999999999999\r\n",
                    b":12\r\n$5\r\nab",
                    b"\x00\xff\xfe garbage \r\n\r\n",
                ];
                let mut request = [0u8; 4096];
                while stream.read(&mut request).is_ok_and(|got| got > 0) {
                    if stream.write_all(junk[n % junk.len()]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let engine = Engine::default();
    let config = redis_config("garbage", MAC_KEY);
    let wat = r#"(module (func (export "f") (result i32) i32.const 13))"#;
    let key = CacheKey::new(&engine, wat.as_bytes());
    let cache = RedisCache::open(&url, &engine, config.clone())?;
    for attempt in 0..6 {
        let started = Instant::now();
        assert!(cache.load(&key)?.is_none(), "attempt {attempt}");
        let waited = started.elapsed();
        assert!(waited < BOUND, "attempt {attempt} waited {waited:?}");
    }
    cache.save(&key, &Module::new(&engine, wat)?)?;
    assert!(cache.flush(Duration::from_secs(10)));
    let stats = cache.remote_stats();
    assert_eq!(stats.uploads, 0, "{stats:?}");
    assert!(stats.failures >= 3 && stats.breaker_trips >= 1, "{stats:?}");
    assert_eq!(cache.stats()[0].hits, 0);

    let dir = tempfile::tempdir()?;
    let mut remote = RemoteCache::new(&url, config.mac_key.clone());
    remote.config = config;
    let node = Vm::open(
        dir.path(),
        VmConfig {
            remote: Some(remote),
            ..VmConfig::for_tests()
        },
    )?;
    let (counter, _) = node.deploy(&wat::parse_str(COUNTER)?)?;
    assert_eq!(add(&node, &counter, 3)?, Value::I64(3));
    assert_eq!(add(&node, &counter, 4)?, Value::I64(7));
    assert_eq!(node.stats().compiles, 1);
    Ok(())
}

/// A full Redis (`maxmemory` reached, `allkeys-lru`): uploads that cannot fit are refused by
/// the server (an error reply) and counted, loads are misses, and the node compiles; once there
/// is room again, uploads and hits resume.
#[test]
fn a_full_redis_refuses_uploads_and_the_node_compiles() -> Result<()> {
    let server = own_server();
    let mut con = raw(&server);
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut con)?;
    // Below what the empty server already uses: nothing more fits, whatever is evicted.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query(&mut con)?;
    let config = redis_config("full", MAC_KEY);
    let wasm = wat::parse_str(COUNTER)?;
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);

    let first = vm(a.path(), &server, config.clone())?;
    let (counter, _) = first.deploy(&wasm)?;
    assert_eq!(add(&first, &counter, 2)?, Value::I64(2));
    assert!(first.flush_remote(Duration::from_secs(10)));
    let remote = first.stats().remote.expect("remote");
    assert_eq!(remote.uploads, 0, "{remote:?}");
    assert!(remote.failures >= 1, "the OOM reply is counted: {remote:?}");
    assert!(
        !remote.breaker_open,
        "an error reply is not an outage: {remote:?}"
    );
    drop(first);

    let second = vm(b.path(), &server, config.clone())?;
    second.deploy(&wasm)?;
    assert_eq!(add(&second, &counter, 1)?, Value::I64(1));
    assert_eq!(second.stats().compiles, 1, "nothing in Redis: compiled");
    drop(second);

    // Room again: the next node's upload lands, and a fourth node hits it.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query(&mut con)?;
    let c = tempfile::tempdir()?;
    let third = vm(c.path(), &server, config.clone())?;
    third.deploy(&wasm)?;
    assert!(third.flush_remote(Duration::from_secs(10)));
    assert_eq!(third.stats().remote.expect("remote").uploads, 1);
    drop(third);
    let d = tempfile::tempdir()?;
    let fourth = vm(d.path(), &server, config)?;
    fourth.deploy(&wasm)?;
    assert_eq!(add(&fourth, &counter, 5)?, Value::I64(5));
    assert_eq!(fourth.stats().compiles, 0);
    assert_eq!(layer(&fourth, "redis").hits, 1);
    Ok(())
}
