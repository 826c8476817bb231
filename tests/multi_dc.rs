//! Two datacenters of three nodes each, joined by the cross-DC bridge over
//! a userspace WAN with 50 ms one-way latency.
//!
//! In-process clusters (real sockets, real data directories, one process):
//! conflicting cart writes in both DCs converge to byte-identical carts
//! holding the union (equal Merkle roots); a partition between the DCs
//! with writes on both sides heals with nothing lost; EACH_QUORUM waits
//! for every DC and LOCAL_QUORUM does not; an outbox past its bound falls
//! back to full-sync, which restores convergence by itself.
//!
//! Real processes (`isthmus server`): every node of DC2 SIGKILLed for 30 s
//! while DC1 takes over 1,000 writes/s at LOCAL_QUORUM, then restarted:
//! every acknowledged write is in both DCs; a DC1 node SIGKILLed while its
//! bridge ships, then restarted: nothing lost and no write twice.
//!
//! The tests take a shared lock: each runs six nodes, and two at once on a
//! small machine would only measure the scheduler.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Node, all_see, status, text, until};
use isthmus_client::wire::{
    BridgeReport, Consistency, Context, RequestBody, ResponseBody, WriteId,
};
use isthmus_client::{ConnectOptions, Session};
use isthmus_core::config::BridgeSection;
use isthmus_core::node::RunningNode;
use isthmus_core::store::LocalStore;
use isthmus_dc_bridge::wan::WanProxy;
use isthmus_example_cart_union as cart_union;
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};
use parking_lot::Mutex;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEYSPACE: &str = "carts";
const WAN_ONE_WAY: Duration = Duration::from_millis(50);

fn cart_module() -> Vec<u8> {
    std::fs::read(common::wasm("isthmus-example-cart-union")).unwrap()
}

// ---------------------------------------------------------------------------
// In-process clusters

/// Two DCs of three nodes, cart-union uploaded and bound to the keyspace.
async fn cluster(bridge: BridgeSection) -> LocalCluster {
    let spec = ClusterSpec {
        keyspace: KEYSPACE.into(),
        resolver: Some(("cart-union".into(), cart_module())),
        bridge,
        wan_one_way: Some(WAN_ONE_WAY),
        tls: true,
        ..ClusterSpec::new(&["dc1", "dc2"], 3)
    };
    LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap()
}

async fn settle(cluster: &LocalCluster, alive: usize) {
    cluster.wait_alive(alive, "settle").await.unwrap();
}

/// Every replica's local set of `key`, encoded.
async fn encodings(cluster: &LocalCluster, key: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let sets = cluster.sets(key).await.unwrap();
    sets.into_iter().map(|(id, s)| (id, s.encode())).collect()
}

/// Every node's Merkle root of the whole keyspace is the same (every
/// node holds every key: 3 nodes, RF 3, in each DC).
async fn assert_equal_roots(cluster: &LocalCluster) {
    let roots = cluster.merkle_roots().await.unwrap();
    let distinct: BTreeSet<_> = roots.values().collect();
    assert_eq!(distinct.len(), 1, "Merkle roots differ: {roots:?}");
}

/// The items of every live sibling of a cart, as one node holds it.
async fn cart_items(node: &RunningNode, key: &[u8]) -> (BTreeSet<String>, usize) {
    let set = node.store().get(KEYSPACE, key).await.unwrap();
    let mut items = BTreeSet::new();
    for v in set.live() {
        items.extend(
            cart_union::parse(v.value_bytes().unwrap_or_default())
                .unwrap()
                .into_keys(),
        );
    }
    (items, set.len())
}

#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeSet<(usize, String)>>,
    attempted: Mutex<BTreeSet<(usize, String)>>,
    writes: AtomicU64,
}

fn cart_key(cart: usize) -> Vec<u8> {
    format!("cart:{cart:03}").into_bytes()
}

/// Read-modify-write shoppers adding unique items to shared carts.
async fn shoppers(
    dc: &'static str,
    addrs: Vec<String>,
    options: ConnectOptions,
    carts: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut tasks = Vec::new();
    for s in 0..3usize {
        let (addrs, ledger, stop) = (addrs.clone(), ledger.clone(), stop.clone());
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            let session =
                Session::connect_with(&addrs[s % addrs.len()], &options, Duration::from_secs(2))
                    .await
                    .unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let cart = (n * 7 + s) % carts;
                let item = format!("{dc}-s{s}-{n}");
                n += 1;
                let read = RequestBody::Get {
                    keyspace: KEYSPACE.into(),
                    key: cart_key(cart),
                    consistency: None,
                };
                let Ok(ResponseBody::Value {
                    siblings, context, ..
                }) = session.call(read, Duration::from_secs(2)).await
                else {
                    continue;
                };
                let mut items: BTreeMap<String, u64> = BTreeMap::new();
                for sib in siblings {
                    items.extend(cart_union::parse(&sib.value).unwrap());
                }
                items.insert(item.clone(), 1);
                ledger.attempted.lock().insert((cart, item.clone()));
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: KEYSPACE.into(),
                    key: cart_key(cart),
                    value: cart_union::encode(&items),
                    context,
                    consistency: Some(Consistency::LocalQuorum),
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                if let Ok(ResponseBody::Written) = session.call(put, Duration::from_secs(2)).await {
                    ledger.acked.lock().insert((cart, item));
                    ledger.writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Wait until every replica in both DCs holds byte-identical carts, a
/// single merged version each, holding every acknowledged item and
/// nothing never attempted; returns the time it took.
async fn converged(cluster: &LocalCluster, carts: usize, ledger: &Ledger) -> Duration {
    let start = Instant::now();
    let acked = ledger.acked.lock().clone();
    let attempted = ledger.attempted.lock().clone();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        let mut ok = true;
        for cart in 0..carts {
            let key = cart_key(cart);
            let encodings = encodings(cluster, &key).await;
            let distinct: BTreeSet<&Vec<u8>> = encodings.values().collect();
            if distinct.len() != 1 {
                ok = false;
                last = format!("cart {cart}: {} distinct encodings", distinct.len());
                break;
            }
            let node = cluster.nodes.values().next().unwrap();
            let (items, versions) = cart_items(node, &key).await;
            let want: BTreeSet<String> = acked
                .range((cart, String::new())..(cart + 1, String::new()))
                .map(|(_, i)| i.clone())
                .collect();
            let missing = want.difference(&items).count();
            let unknown = items
                .iter()
                .filter(|i| !attempted.contains(&(cart, (*i).clone())))
                .count();
            assert_eq!(unknown, 0, "cart {cart} holds items nobody wrote");
            if missing > 0 || versions != 1 {
                ok = false;
                last = format!("cart {cart}: {missing} acked items missing, {versions} versions");
                break;
            }
        }
        if ok {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("did not converge within 60 s: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_carts_in_both_dcs_converge_to_the_union() {
    let _serial = SERIAL.lock().await;
    let cluster = cluster(BridgeSection::default()).await;
    let carts = 6;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let dc1 = tokio::spawn(shoppers(
        "dc1",
        cluster.addrs("dc1"),
        cluster.connect_options("shopper"),
        carts,
        ledger.clone(),
        stop.clone(),
    ));
    let dc2 = tokio::spawn(shoppers(
        "dc2",
        cluster.addrs("dc2"),
        cluster.connect_options("shopper"),
        carts,
        ledger.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    dc1.await.unwrap();
    dc2.await.unwrap();
    let acked = ledger.acked.lock().len();
    let from_dc2 = ledger
        .acked
        .lock()
        .iter()
        .filter(|(_, i)| i.starts_with("dc2"))
        .count();
    assert!(
        acked > 100 && from_dc2 > 50,
        "too little traffic: {acked} ({from_dc2} in dc2)"
    );
    let took = converged(&cluster, carts, &ledger).await;
    eprintln!("converged {acked} acknowledged cart writes from both DCs in {took:?}");
    assert_equal_roots(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_between_the_dcs_heals_with_nothing_lost() {
    let _serial = SERIAL.lock().await;
    let cluster = cluster(BridgeSection::default()).await;
    let carts = 6;
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    cluster.wan().cut("dc1", "dc2");
    // Each side sees the other go down; both keep taking writes.
    for _ in 0..600 {
        if cluster
            .nodes
            .values()
            .all(|n| n.gossiper().alive().len() == 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster
            .nodes
            .values()
            .all(|n| n.gossiper().alive().len() == 3)
    );
    let dc1 = tokio::spawn(shoppers(
        "dc1",
        cluster.addrs("dc1"),
        cluster.connect_options("shopper"),
        carts,
        ledger.clone(),
        stop.clone(),
    ));
    let dc2 = tokio::spawn(shoppers(
        "dc2",
        cluster.addrs("dc2"),
        cluster.connect_options("shopper"),
        carts,
        ledger.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    dc1.await.unwrap();
    dc2.await.unwrap();
    let owed: u64 = cluster
        .reports()
        .into_iter()
        .map(|r| r.outbox_records)
        .sum();
    assert!(
        owed > 0,
        "the outboxes must hold what the partition kept back"
    );
    cluster.wan().heal("dc1", "dc2");
    let took = converged(&cluster, carts, &ledger).await;
    eprintln!(
        "partition healed: {} acknowledged writes, {owed} queued, converged in {took:?}",
        ledger.acked.lock().len()
    );
    assert_equal_roots(&cluster).await;
    cluster.shutdown().await;
}

async fn put_at(
    cluster: &LocalCluster,
    addr: &str,
    key: &[u8],
    level: Consistency,
) -> Result<ResponseBody, String> {
    let session = cluster
        .session(addr, "levels")
        .await
        .map_err(|e| e.to_string())?;
    let put = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: KEYSPACE.into(),
        key: key.to_vec(),
        value: cart_union::encode(&BTreeMap::from([("apple".to_string(), 1)])),
        context: Context::default(),
        consistency: Some(level),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    session
        .call(put, Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_quorum_waits_for_every_dc_and_local_quorum_does_not() {
    let _serial = SERIAL.lock().await;
    let mut cluster = cluster(BridgeSection::default()).await;
    let dc1 = cluster.addrs("dc1");
    // Acknowledged at EACH_QUORUM: already on a quorum of dc2's replicas,
    // without waiting for the bridge.
    assert_eq!(
        put_at(&cluster, &dc1[0], b"each", Consistency::EachQuorum).await,
        Ok(ResponseBody::Written)
    );
    let mut holders = 0;
    for (id, node) in &cluster.nodes {
        if id.starts_with("dc2")
            && !node
                .store()
                .get(KEYSPACE, b"each")
                .await
                .unwrap()
                .is_empty()
        {
            holders += 1;
        }
    }
    assert!(
        holders >= 2,
        "EACH_QUORUM acknowledged with {holders} dc2 replicas"
    );
    // With dc2 dark, EACH_QUORUM cannot be met; LOCAL_QUORUM is not held up.
    cluster.stop_dc("dc2").await;
    settle(&cluster, 3).await;
    let each = put_at(&cluster, &dc1[1], b"each-dark", Consistency::EachQuorum).await;
    assert!(
        matches!(&each, Err(e) if e.starts_with("TIMEOUT") || e.starts_with("UNAVAILABLE")),
        "{each:?}"
    );
    let started = Instant::now();
    assert_eq!(
        put_at(&cluster, &dc1[1], b"local-dark", Consistency::LocalQuorum).await,
        Ok(ResponseBody::Written)
    );
    eprintln!(
        "LOCAL_QUORUM with dc2 dark acknowledged in {:?}",
        started.elapsed()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_outbox_bound_a_full_sync_restores_convergence() {
    let _serial = SERIAL.lock().await;
    let bridge = BridgeSection {
        outbox_bytes_max: 1 << 20,
        ..BridgeSection::default()
    };
    let mut cluster = cluster(bridge).await;
    let carts = 4;
    let ledger = Arc::new(Ledger::default());
    cluster.stop_dc("dc2").await;
    settle(&cluster, 3).await;
    // Carts grow with every item: a few thousand writes of growing carts
    // are far more than the 1 MiB outbox bound.
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(shoppers(
        "dc1",
        cluster.addrs("dc1"),
        cluster.connect_options("shopper"),
        carts,
        ledger.clone(),
        stop.clone(),
    ));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let overflowed = cluster
            .reports()
            .into_iter()
            .filter(|r| r.overflows > 0)
            .count();
        if overflowed == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writers.await.unwrap();
    let reports: Vec<BridgeReport> = cluster.reports();
    assert!(
        reports
            .iter()
            .all(|r| r.overflows > 0 && r.full_sync_pending),
        "every dc1 outbox must have overflowed: {reports:?}"
    );
    assert!(
        reports
            .iter()
            .all(|r| r.outbox_bytes <= (1 << 20) + (8 << 20))
    );
    for i in 0..3 {
        cluster.start_node("dc2", i).await.unwrap();
    }
    settle(&cluster, 6).await;
    let took = converged(&cluster, carts, &ledger).await;
    for _ in 0..400 {
        let pending = cluster.reports().into_iter().any(|r| r.full_sync_pending);
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reports: Vec<BridgeReport> = cluster.reports();
    assert!(
        reports.iter().all(|r| !r.full_sync_pending),
        "full-syncs must complete: {reports:?}"
    );
    eprintln!(
        "outbox bound: {} acknowledged writes, dc2 restored by full-sync in {took:?}",
        ledger.acked.lock().len()
    );
    assert_equal_roots(&cluster).await;
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Real processes

fn processes(dir: &Path, wan: &WanProxy) -> Vec<Node> {
    let mut procs = Vec::new();
    for (d, dc) in ["dc1", "dc2"].into_iter().enumerate() {
        for i in 0..3 {
            let ip = format!("127.0.{}.{}", 10 + d, i + 2);
            procs.push(Node::new(dir, &format!("{dc}-n{i}"), dc, &ip));
        }
    }
    let seeds = [procs[0].addr.as_str(), procs[3].addr.as_str()];
    for p in &procs {
        wan.register(&p.addr, &p.dc);
        p.write_config(
            dir,
            &format!("r{}", p.id.chars().last().unwrap()),
            &seeds,
            &format!(
                "vnodes = 16\nfsync = \"interval\"\nfsync_interval_ms = 5\nwan_proxy = \"{}\"",
                wan.addr()
            ),
            "dc1 = 3, dc2 = 3",
        );
    }
    procs
}

/// The six processes of [`processes`], started, once they all see each
/// other, and the WAN proxy between their DCs.
async fn running_processes(dir: &Path) -> (WanProxy, Vec<Node>) {
    let wan = WanProxy::start("127.0.0.1:0", WAN_ONE_WAY).await.unwrap();
    let mut procs = processes(dir, &wan);
    for p in procs.iter_mut() {
        p.spawn();
    }
    until("six nodes see each other", &procs, 60, async || {
        all_see(&procs, 6).await
    })
    .await;
    (wan, procs)
}

/// Blind writes of distinct keys at LOCAL_QUORUM through `addrs`, paced
/// to `rate` per second, until `stop`; every acknowledged key is recorded.
async fn writers(
    prefix: String,
    addrs: Vec<String>,
    rate: u64,
    acked: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
) -> u64 {
    const TASKS: u64 = 32;
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (addrs, acked, stop, failed, prefix) = (
            addrs.clone(),
            acked.clone(),
            stop.clone(),
            failed.clone(),
            prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(TASKS as f64 / rate as f64);
            let mut next = tokio::time::Instant::now();
            let mut session: Option<Session> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                next += period;
                tokio::time::sleep_until(next).await;
                if session.as_ref().is_none_or(|s| !s.is_open()) {
                    let addr = &addrs[(t + n) as usize % addrs.len()];
                    session = common::session(addr, "writer", Duration::from_secs(1))
                        .await
                        .ok();
                }
                let Some(s) = &session else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let key = format!("{prefix}-{t}-{n}").into_bytes();
                n += 1;
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: KEYSPACE.into(),
                    key: key.clone(),
                    value: format!("{{\"item\":{n},\"qty\":1}}").into_bytes(),
                    context: Context::default(),
                    consistency: Some(Consistency::LocalQuorum),
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                match s.call(put, Duration::from_secs(2)).await {
                    Ok(ResponseBody::Written) => acked.lock().push(key),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        session = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    failed.load(Ordering::Relaxed)
}

/// Keys of `acked` missing from (or with more than one sibling in) the DC
/// `addr` belongs to, read at LOCAL_QUORUM there. A read that fails is
/// retried; one that keeps failing counts as lost.
async fn audit(addr: &str, acked: &[Vec<u8>]) -> (usize, usize) {
    let session = Arc::new(
        common::session(addr, "audit", Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let mut lost = 0;
    let mut doubled = 0;
    for chunk in acked.chunks(64) {
        let mut reads = Vec::new();
        for key in chunk {
            let (session, key) = (session.clone(), key.clone());
            reads.push(tokio::spawn(async move {
                let name = String::from_utf8_lossy(&key).into_owned();
                let mut last = None;
                for _ in 0..5 {
                    let get = RequestBody::Get {
                        keyspace: KEYSPACE.into(),
                        key: key.clone(),
                        consistency: Some(Consistency::LocalQuorum),
                    };
                    match session.call(get, Duration::from_secs(5)).await {
                        Ok(ResponseBody::Value { siblings, .. }) => {
                            return Ok((siblings.len(), name));
                        }
                        other => last = Some(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err((name, last))
            }));
        }
        for r in reads {
            match r.await.unwrap() {
                Ok((1, _)) => {}
                Ok((0, key)) => {
                    if lost < 10 {
                        eprintln!("audit: {key} is missing");
                    }
                    lost += 1;
                }
                Ok(_) => doubled += 1,
                Err((key, error)) => {
                    eprintln!("audit: {key}: {error:?}");
                    lost += 1;
                }
            }
        }
    }
    (lost, doubled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dark_dc_gets_every_write_back_and_a_killed_shipper_resumes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_wan, mut procs) = running_processes(dir.path()).await;
    let dc1: Vec<String> = procs[..3].iter().map(|p| p.addr.clone()).collect();
    let dc2: Vec<String> = procs[3..].iter().map(|p| p.addr.clone()).collect();

    // Both DCs write for a while.
    let acked1 = Arc::new(Mutex::new(Vec::new()));
    let acked2 = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let w1 = tokio::spawn(writers(
        "before1".into(),
        dc1.clone(),
        500,
        acked1.clone(),
        stop.clone(),
    ));
    let w2 = tokio::spawn(writers(
        "before2".into(),
        dc2.clone(),
        500,
        acked2.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    w1.await.unwrap();
    w2.await.unwrap();

    // DC2 goes dark: every node SIGKILLed. DC1 keeps writing at LOCAL_QUORUM.
    for p in procs[3..].iter_mut() {
        p.kill();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(Vec::new()));
    let rate = 1600;
    let w = tokio::spawn(writers(
        "during".into(),
        dc1.clone(),
        rate,
        during.clone(),
        stop.clone(),
    ));
    let dark = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Mid-outage, a DC1 node is SIGKILLed too and restarted: its outbox
    // must survive.
    procs[1].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    procs[1].spawn();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let failed = w.await.unwrap();
    let outage = dark.elapsed();
    let during_acked = during.lock().len();
    eprintln!(
        "outage of {outage:?}: {during_acked} writes acknowledged in dc1 ({:.0}/s), {failed} failed",
        during_acked as f64 / outage.as_secs_f64()
    );
    assert!(
        during_acked as f64 / 30.0 >= 1000.0,
        "dc1 must take at least 1,000 writes/s through the outage: {during_acked} in {outage:?}"
    );

    // DC2 returns; a DC1 node is killed while its bridge ships the
    // backlog, and restarted.
    let back = Instant::now();
    for p in procs[3..].iter_mut() {
        p.spawn();
    }
    until("six nodes see each other again", &procs, 60, async || {
        all_see(&procs, 6).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs[0].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    procs[0].spawn();
    until("dc1's outboxes are drained", &procs, 120, async || {
        for addr in &dc1 {
            match status(addr).await {
                Some((_, bridges)) if bridges.iter().all(|b| b.outbox_records == 0) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let catch_up = back.elapsed();

    let mut all1 = acked1.lock().clone();
    all1.extend(during.lock().iter().cloned());
    let all2 = acked2.lock().clone();
    let mut lost_total = 0;
    for (dc, addr) in [("dc1", &dc1[2]), ("dc2", &dc2[0])] {
        for (from, keys) in [("dc1", &all1), ("dc2", &all2)] {
            let (lost, doubled) = audit(addr, keys).await;
            eprintln!(
                "{dc} holds {} of {from}'s writes: lost {lost}, doubled {doubled}",
                keys.len()
            );
            assert_eq!(
                (lost, doubled),
                (0, 0),
                "{from}'s writes as {dc} holds them"
            );
            lost_total += lost;
        }
    }
    eprintln!(
        "dark-dc: acknowledged={} lost={lost_total} catch_up_s={:.1}",
        all1.len() + all2.len(),
        catch_up.as_secs_f64()
    );
}

/// What the writers of the pause test did: every logical write, by key,
/// retried under its one write id until acknowledged.
#[derive(Default)]
struct Writes {
    /// Unique keys, each written once.
    unique: Vec<Vec<u8>>,
    /// Counter keys: acknowledged increments of each (one sibling each).
    increments: BTreeMap<Vec<u8>, usize>,
    /// Attempts that failed after the client's own retries and were sent
    /// again under the same id.
    retried: u64,
    /// Writes that took longer than one attempt's deadline: at least one
    /// attempt timed out and the client retried it (on another node).
    slow: u64,
}

/// The deadline of one attempt of the pause test's writers.
const ATTEMPT: Duration = Duration::from_secs(1);

/// Increments per counter key: each is a sibling, and the keyspace keeps
/// at most 16 of them.
const INCREMENTS_PER_COUNTER: usize = 8;

/// Writers through the SDK, with a one-second deadline per attempt: each
/// task alternates a blind write of a fresh key and an increment of one
/// of its counters (a blind write of `1`: the counter is the number of
/// siblings). A write that fails is sent again with its write id until
/// acknowledged.
async fn idempotent_writers(
    client: isthmus_client::Client,
    writes: Arc<Mutex<Writes>>,
    stop: Arc<AtomicBool>,
) {
    const TASKS: usize = 16;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (client, writes, stop) = (client.clone(), writes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = if n.is_multiple_of(2) {
                    (format!("unique-{t}-{n}"), format!("once {n}"))
                } else {
                    let counter = n / 2 / INCREMENTS_PER_COUNTER;
                    (format!("counter-{t}-{counter}"), "1".to_owned())
                };
                let key = key.into_bytes();
                let id = WriteId(rand::random());
                let started = Instant::now();
                loop {
                    match client
                        .put_with_id(
                            KEYSPACE,
                            &key,
                            value.clone().into_bytes(),
                            &Context::default(),
                            id,
                        )
                        .await
                    {
                        Ok(()) => break,
                        Err(e) => {
                            assert!(
                                started.elapsed() < Duration::from_secs(60),
                                "a write failed for a minute: {e}"
                            );
                            writes.lock().retried += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                let mut w = writes.lock();
                if started.elapsed() >= ATTEMPT {
                    w.slow += 1;
                }
                if n.is_multiple_of(2) {
                    w.unique.push(key);
                } else {
                    *w.increments.entry(key).or_default() += 1;
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_paused_mid_write_does_not_apply_its_retried_writes_twice() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_wan, procs) = running_processes(dir.path()).await;
    let mut builder = isthmus_client::Client::builder()
        .tls(common::pki().material())
        .local_dc("dc1")
        .timeout(ATTEMPT)
        .retries(4)
        .consistency(Consistency::LocalQuorum);
    for p in &procs[..3] {
        builder = builder.seed(p.addr.clone());
    }
    let client = builder.build().await.unwrap();
    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(idempotent_writers(client, writes.clone(), stop.clone()));

    // A DC1 node stops dead for ten seconds, twice, holding the requests
    // it had read and those queued on its sockets; the clients time out
    // and retry elsewhere meanwhile.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        procs[1].pause();
        tokio::time::sleep(Duration::from_secs(10)).await;
        procs[1].resume();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    until("every outbox is drained", &procs, 120, async || {
        for p in &procs {
            match status(&p.addr).await {
                Some((_, bridges)) if bridges.iter().all(|b| b.outbox_records == 0) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let writes = std::mem::take(&mut *writes.lock());
    let increments: usize = writes.increments.values().sum();
    eprintln!(
        "pause: {} unique writes, {increments} increments of {} counters, {} writes retried \
         by the client, {} more after its retries failed",
        writes.unique.len(),
        writes.increments.len(),
        writes.slow,
        writes.retried
    );
    assert!(writes.slow > 0, "the pause must have made clients retry");

    // Every replica's own copy: one version per logical write, never two
    // versions of one write id (a write coordinated twice is one version
    // whose clock holds both dots).
    let probe = common::probe("audit");
    let mut doubled = Vec::new();
    for p in &procs {
        for key in &writes.unique {
            let set = common::local_set(&probe, &p.addr, KEYSPACE, key)
                .await
                .unwrap();
            if set.len() > 1 {
                doubled.push(format!("{} on {}: {:?}", text(key), p.id, set.versions()));
            }
        }
        for (key, &acked) in &writes.increments {
            let set = common::local_set(&probe, &p.addr, KEYSPACE, key)
                .await
                .unwrap();
            let ids: BTreeSet<_> = set.versions().iter().map(|v| v.write_id).collect();
            if set.len() > acked || ids.len() != set.len() {
                doubled.push(format!(
                    "{} on {}: {} versions for {acked} increments",
                    text(key),
                    p.id,
                    set.len()
                ));
            }
        }
    }
    assert!(doubled.is_empty(), "writes applied twice: {doubled:#?}");
    // Read in each DC: every unique key once, every counter's total equal
    // to its acknowledged increments.
    for dc in [&procs[0].addr, &procs[4].addr] {
        let (lost, twice) = audit(dc, &writes.unique).await;
        assert_eq!((lost, twice), (0, 0), "unique keys as {dc} reads them");
        let session = common::session(dc, "counters", Duration::from_secs(2))
            .await
            .unwrap();
        let mut total = 0;
        for (key, &acked) in &writes.increments {
            let get = RequestBody::Get {
                keyspace: KEYSPACE.into(),
                key: key.clone(),
                consistency: Some(Consistency::LocalQuorum),
            };
            match session.call(get, Duration::from_secs(5)).await {
                Ok(ResponseBody::Value { siblings, .. }) => {
                    assert_eq!(siblings.len(), acked, "{} as {dc} reads it", text(key));
                    total += siblings.len();
                }
                other => panic!("reading {} at {dc}: {other:?}", text(key)),
            }
        }
        assert_eq!(total, increments);
    }
    eprintln!(
        "pause: unique={} increments={increments} doubled=0",
        writes.unique.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_node_just_restarted_reach_every_replica_without_repair() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_wan, mut procs) = running_processes(dir.path()).await;
    let levels = [
        Consistency::One,
        Consistency::LocalOne,
        Consistency::LocalQuorum,
    ];
    let mut written = Vec::new();
    for round in 0..3 {
        // Restarted, and written through from the moment it answers:
        // each write is retried (same id) until acknowledged.
        procs[1].kill();
        procs[1].spawn();
        let addr = procs[1].addr.clone();
        let started = Instant::now();
        for i in 0..30 {
            let key = format!("restart-{round}-{i}").into_bytes();
            let put = RequestBody::Put {
                mode: isthmus_client::wire::WriteMode::Context,
                keyspace: KEYSPACE.into(),
                key: key.clone(),
                value: b"v".to_vec(),
                context: Context::default(),
                consistency: Some(levels[i % levels.len()]),
                write_id: WriteId(rand::random()),
                expiry: Default::default(),
                sloppy: None,
            };
            loop {
                let answer = match common::session(&addr, "writer", Duration::from_secs(1)).await {
                    Ok(s) => s.call(put.clone(), Duration::from_secs(2)).await,
                    Err(e) => Err(e),
                };
                if matches!(answer, Ok(ResponseBody::Written)) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the restarted node never took {}: {answer:?}",
                    text(&key)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written.push(key);
        }
        eprintln!(
            "round {round}: 30 writes through the restarted node in {:?}",
            started.elapsed()
        );
    }
    // With every hint handed off and every outbox drained (no repair
    // runs: the schedule is ten minutes away), every replica in both DCs
    // holds every write.
    until(
        "hints handed off and outboxes drained",
        &procs,
        120,
        async || {
            for p in &procs {
                match status(&p.addr).await {
                    Some((nodes, bridges))
                        if nodes.iter().all(|n| n.hint_bytes == 0)
                            && bridges.iter().all(|b| b.outbox_records == 0) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;
    let probe = common::probe("audit");
    let mut missing = Vec::new();
    for key in &written {
        for p in &procs {
            let set = common::local_set(&probe, &p.addr, KEYSPACE, key)
                .await
                .unwrap();
            if set.is_empty() {
                missing.push(format!("{} on {}", text(key), p.id));
            }
        }
    }
    assert!(missing.is_empty(), "replicas missing writes: {missing:?}");
}

// ---------------------------------------------------------------------------
// A datacenter lost for good, rebuilt

/// `GET path` on the operations listener at `addr`: the status and the
/// body (0 when it does not answer).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    // The operations listener speaks HTTPS with the node's certificate;
    // past the health probes it needs a login (the tests' admin).
    let (addr, path) = (addr.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || common::ops_get(&addr, &path, common::admin_login()))
        .await
        .unwrap()
        .unwrap_or((0, String::new()))
}

/// Each node's digest of its whole replica of the keyspace (the root a
/// Merkle sync compares first: equal digests, nothing to sync), and its
/// key count, asked over the peer protocol.
async fn digests(nodes: &[Node]) -> BTreeMap<String, (u64, String)> {
    use isthmus_core::peer::{PeerRequest, PeerResponse};
    use isthmus_core::repair::{HashRange, RepairRequest, RepairResponse};
    let transport = common::probe("digest-probe");
    let mut out = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let Ok(channel) = transport.connect(&node.addr).await else {
            continue;
        };
        let open = PeerRequest::Repair(RepairRequest::Open {
            session: 0xd16e_5700 + i as u64,
            keyspace: KEYSPACE.into(),
            range: HashRange::FULL,
        });
        if let Ok(PeerResponse::Repair(RepairResponse::Opened { keys, digest })) =
            channel.call(open, Duration::from_secs(10)).await
        {
            out.insert(node.id.clone(), (keys, format!("{digest:?}")));
        }
    }
    out
}

/// The operation a `rebuild --detach --json` printed.
fn started(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dc_lost_for_good_is_rebuilt_from_the_other_while_writes_go_on() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (_wan, mut procs) = running_processes(dir.path()).await;
    let dc1: Vec<String> = procs[..3].iter().map(|p| p.addr.clone()).collect();
    let dc2: Vec<String> = procs[3..].iter().map(|p| p.addr.clone()).collect();

    // Both DCs take writes; DC2's reach DC1 through the bridge.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let w1 = tokio::spawn(writers(
        "before1".into(),
        dc1.clone(),
        500,
        acked.clone(),
        stop.clone(),
    ));
    let w2 = tokio::spawn(writers(
        "before2".into(),
        dc2.clone(),
        500,
        acked.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    w1.await.unwrap();
    w2.await.unwrap();
    until("every outbox is drained", &procs, 60, async || {
        for addr in dc1.iter().chain(&dc2) {
            match status(addr).await {
                Some((_, bridges)) if bridges.iter().all(|b| b.outbox_records == 0) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let before = acked.lock().len();

    // DC2 is lost for good: every node SIGKILLed and its disk wiped.
    for p in procs[3..].iter_mut() {
        p.kill();
        std::fs::remove_dir_all(dir.path().join(&p.id)).unwrap();
    }
    // DC1 keeps taking writes from here to the end of the rebuild.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(writers(
        "during".into(),
        dc1.clone(),
        400,
        acked.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Three fresh DC2 nodes, with empty disks, join under the same names.
    for p in procs[3..].iter_mut() {
        p.spawn();
    }
    until("six nodes see each other again", &procs, 60, async || {
        all_see(&procs, 6).await
    })
    .await;

    // Each is rebuilt from DC1: two detached (followed with `rebuild
    // status`), one waited for by the CLI.
    let rebuilt = Instant::now();
    let cli = |addr: &str, extra: &[&str]| {
        let mut args: Vec<String> = ["rebuild", "--addr", addr, "--from-dc", "dc1", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let waited = tokio::spawn(common::isthmus(cli(&dc2[0], &[])));
    let mut detached = Vec::new();
    for p in &procs[4..] {
        let op = started(&common::isthmus(cli(&p.addr, &["--detach"])).await);
        assert_eq!(op["kind"], "rebuild", "{op}");
        assert_eq!(op["state"], "running", "{op}");
        detached.push((p.addr.clone(), p.ops.clone(), op["id"].as_u64().unwrap()));
    }
    // While a node rebuilds it is not ready; the status command shows
    // its progress.
    let mut seen_not_ready = false;
    let mut final_ops = Vec::new();
    for (addr, ops, id) in &detached {
        let info = loop {
            let (code, body) = http_get(ops, "/readyz").await;
            let out = common::isthmus(vec![
                "rebuild".into(),
                "status".into(),
                id.to_string(),
                "--addr".into(),
                addr.clone(),
                "--json".into(),
            ])
            .await;
            let info = started(&out);
            if info["state"] != "running" {
                break info;
            }
            if code == 503 && body.contains("rebuilding") {
                seen_not_ready = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(info["state"], "done", "{info}");
        assert_eq!(info["progress"]["ranges_failed"], 0, "{info}");
        assert_eq!(info["progress"]["ranges"], info["ranges_total"], "{info}");
        let (code, body) = http_get(ops, "/readyz").await;
        assert_eq!(code, 200, "ready once rebuilt: {body}");
        final_ops.push(info);
    }
    let out = waited.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ranges_failed"], 0, "{report}");
    let rebuild_s = rebuilt.elapsed().as_secs_f64();
    assert!(
        seen_not_ready,
        "a rebuilding node was never seen not ready (rebuilds took {rebuild_s:.1} s)"
    );
    // The rebuild is listed on the operations listener too.
    let (code, body) = http_get(&procs[3].ops, "/api/v1/operations").await;
    assert_eq!(code, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        listed["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "rebuild" && o["state"] == "done"),
        "{body}"
    );

    // The writer stops; DC1's outboxes drain into the new DC2.
    stop.store(true, Ordering::Relaxed);
    let failed = writer.await.unwrap();
    until("dc1's outboxes are drained", &procs, 120, async || {
        for addr in &dc1 {
            match status(addr).await {
                Some((_, bridges)) if bridges.iter().all(|b| b.outbox_records == 0) => {}
                _ => return false,
            }
        }
        true
    })
    .await;

    // Every acknowledged key reads at LOCAL_QUORUM in DC2, and every
    // replica of both DCs has the same digest of the keyspace.
    let keys = acked.lock().clone();
    let (lost, doubled) = audit(&dc2[1], &keys).await;
    assert_eq!(
        (lost, doubled),
        (0, 0),
        "acknowledged writes as dc2 holds them"
    );
    let mut roots = BTreeMap::new();
    until(
        "every replica's Merkle root agrees",
        &procs,
        60,
        async || {
            roots = digests(&procs).await;
            roots.len() == 6 && roots.values().collect::<BTreeSet<_>>().len() == 1
        },
    )
    .await;
    // A full sync over the WAN outlasts a request deadline of 300 ms: the
    // CLI follows it to its end rather than giving up at the deadline.
    let synced = Instant::now();
    let out = common::isthmus(vec![
        "repair".into(),
        "--addr".into(),
        dc2[2].clone(),
        "--dc".into(),
        "dc1".into(),
        "--timeout-ms".into(),
        "300".into(),
        "--json".into(),
    ])
    .await;
    let synced = synced.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let sync: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(sync["ranges"].as_u64().unwrap() > 0, "{sync}");
    assert_eq!(sync["keys_differing"], 0, "{sync}");
    assert!(
        synced > Duration::from_millis(300),
        "the full sync took {synced:?}: too short to outlast the deadline"
    );
    eprintln!("full sync dc2 <- dc1 after the rebuild: {synced:?}, {sync}");
    let pulled: u64 = final_ops
        .iter()
        .map(|o| o["progress"]["keys_pulled"].as_u64().unwrap())
        .sum::<u64>()
        + report["keys_pulled"].as_u64().unwrap();
    let bytes: u64 = final_ops
        .iter()
        .map(|o| o["progress"]["bytes"].as_u64().unwrap())
        .sum::<u64>()
        + report["bytes"].as_u64().unwrap();
    // How long the detached rebuilds ran on their nodes (the CLI's
    // polling above adds its own time to `rebuild_s`).
    let node_s: Vec<String> = final_ops
        .iter()
        .map(|o| {
            let ms = o["finished_ms"].as_u64().unwrap() - o["started_ms"].as_u64().unwrap();
            format!("{:.1}", ms as f64 / 1000.0)
        })
        .collect();
    eprintln!(
        "rebuild: acknowledged={} (before the loss {before}, {failed} writes failed) lost={lost} \
         keys_per_node={} keys_pulled={pulled} bytes={bytes} rebuild_s={rebuild_s:.1} \
         detached_rebuilds_s={node_s:?}",
        keys.len(),
        roots.values().next().map_or(0, |(k, _)| *k),
    );
}
