//! What a deployment relies on, with real nodes (`node::start`) on
//! loopback: a node advertises a DNS name that its peers dial it by; a
//! new node decides for itself whether to form its datacenter's ring or
//! bootstrap into it; the `[tuning]` tables reach the running node.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_client::wire::{Consistency, Context, RequestBody, ResponseBody, WriteId};
use isthmus_client::{ConnectOptions, Session};
use isthmus_core::config::{
    AuthSection, FsyncMode, GossipSection, KeyspaceSection, LimitsSection, NodeConfig,
    RepairSection, Tuning,
};
use isthmus_core::gossip::membership::NodeStatus;
use isthmus_core::merge::NoMerge;
use isthmus_core::node::movement::JOINING_FILE;
use isthmus_core::node::{NodeTuning, RunningNode, start};
use isthmus_core::ring::NodeId;
use isthmus_core::store::LocalStore;

/// A free port on 127.0.0.1 (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node `id` on `port` of 127.0.0.1, advertised as `localhost:port`,
/// `bootstrap` unset (the node decides), gossip every 50 ms through the
/// `[tuning.gossip]` table, `carts` with two replicas in dc1.
fn config(dir: &Path, id: &str, port: u16, seeds: Vec<String>) -> NodeConfig {
    NodeConfig {
        clock_skew_max_ms: isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
        tombstone_grace_ms: isthmus_core::config::TOMBSTONE_GRACE_MS_DEFAULT,
        hint_window_ms: isthmus_core::config::HINT_WINDOW_MS_DEFAULT,
        node_id: id.into(),
        dc: "dc1".into(),
        rack: "r1".into(),
        listen: format!("127.0.0.1:{port}"),
        advertise: Some(format!("localhost:{port}")),
        data_dir: dir.join(id),
        seeds,
        vnodes: 8,
        fsync: FsyncMode::Always,
        fsync_interval_ms: 5,
        bridge: Default::default(),
        wan_proxy: None,
        bootstrap: None,
        tls: None,
        insecure_plaintext: true,
        server: Default::default(),
        merge: Default::default(),
        ops: isthmus_core::config::OpsSection {
            enabled: false,
            ..Default::default()
        },
        redis: Default::default(),
        tuning: Tuning {
            gossip: GossipSection {
                interval_ms: Some(50),
                ..GossipSection::default()
            },
            ..Tuning::default()
        },
        auth: AuthSection {
            anonymous_full_access: true,
            ..AuthSection::default()
        },
        keyspaces: BTreeMap::from([(
            "carts".into(),
            KeyspaceSection {
                replication: BTreeMap::from([("dc1".into(), 2)]),
                consistency: Consistency::One,
                resolver: None,
                ttl_s: None,
                counter: false,
                sloppy_quorum: false,
                read_repair_percent: isthmus_core::config::READ_REPAIR_PERCENT_DEFAULT,
            },
        )]),
    }
}

async fn session(addr: &str) -> Session {
    let options = ConnectOptions {
        name: "test".into(),
        tls: None,
        credentials: None,
    };
    Session::connect_with(addr, &options, Duration::from_secs(2))
        .await
        .unwrap()
}

fn put(key: &[u8], value: Vec<u8>) -> RequestBody {
    RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.to_vec(),
        value,
        context: Context::default(),
        consistency: Some(Consistency::One),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    }
}

fn status_of(node: &RunningNode, id: &str) -> Option<(NodeStatus, String)> {
    node.gossiper()
        .membership()
        .endpoints()
        .get(&NodeId(id.into()))
        .map(|e| (e.status, e.addr.clone()))
}

async fn until(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_forms_or_bootstraps_by_itself_and_peers_dial_its_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    // n1: a new data directory whose only seed is itself: nothing to join,
    // it forms the ring.
    let n1 = start(
        config(dir.path(), "n1", p1, vec![format!("localhost:{p1}")]),
        Arc::new(NoMerge),
        NodeTuning::default(),
    )
    .await
    .unwrap();
    assert_eq!(n1.addr, format!("localhost:{p1}"), "the advertised name");
    assert!(dir.path().join("n1").join(JOINING_FILE).exists());
    until("n1 forms its ring", 20, || {
        status_of(&n1, "n1").is_some_and(|(s, _)| s == NodeStatus::Normal)
    })
    .await;
    assert!(!dir.path().join("n1").join(JOINING_FILE).exists());

    let client = session(&n1.addr).await;
    for i in 0..200u32 {
        let key = format!("k{i}").into_bytes();
        let answer = client
            .call(put(&key, key.clone()), Duration::from_secs(5))
            .await;
        assert!(matches!(answer, Ok(ResponseBody::Written)), "{answer:?}");
    }

    // n2: a new data directory, no bootstrap flag, seeded by n1's DNS
    // name: the ring has a member, so it streams before taking its place.
    let n2 = start(
        config(dir.path(), "n2", p2, vec![format!("localhost:{p1}")]),
        Arc::new(NoMerge),
        NodeTuning::default(),
    )
    .await
    .unwrap();
    until("n1 sees n2 joining, by its name", 20, || {
        status_of(&n1, "n2").is_some_and(|(_, addr)| addr == format!("localhost:{p2}"))
    })
    .await;
    until("n2 is Normal on both", 60, || {
        [&n1, &n2]
            .iter()
            .all(|n| status_of(n, "n2").is_some_and(|(s, _)| s == NodeStatus::Normal))
    })
    .await;
    assert!(!dir.path().join("n2").join(JOINING_FILE).exists());
    // Two replicas on two nodes: n2 holds every key, streamed in.
    for i in 0..200u32 {
        let key = format!("k{i}").into_bytes();
        let set = n2.store().get("carts", &key).await.unwrap();
        assert_eq!(set.len(), 1, "k{i} was not streamed to n2");
    }
    n2.shutdown().await;

    // n2 again: its data directory has been on the ring, so it takes its
    // place at once (no second bootstrap), and stays reachable by name.
    let n2 = start(
        config(dir.path(), "n2", p2, vec![format!("localhost:{p1}")]),
        Arc::new(NoMerge),
        NodeTuning::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(&n2, "n2").map(|(s, _)| s),
        Some(NodeStatus::Normal),
        "a restarted member starts Normal"
    );
    assert!(!n2.workers().iter().any(|w| w.name == "bootstrap"));
    n2.shutdown().await;
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_whose_seeds_never_answer_does_not_form_a_ring() {
    let dir = tempfile::tempdir().unwrap();
    let (port, nobody) = (free_port(), free_port());
    let node = start(
        config(dir.path(), "n1", port, vec![format!("localhost:{nobody}")]),
        Arc::new(NoMerge),
        NodeTuning::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_of(&node, "n1").map(|(s, _)| s),
        Some(NodeStatus::Joining),
        "a new node that cannot reach its seeds waits"
    );
    let bootstrap = node.workers().into_iter().find(|w| w.name == "bootstrap");
    let error = bootstrap
        .and_then(|w| w.last_error)
        .map(|(_, e)| e)
        .unwrap_or_default();
    assert!(error.contains("no seed has answered"), "{error}");
    assert!(dir.path().join("n1").join(JOINING_FILE).exists());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tuning_tables_reach_the_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = config(dir.path(), "n1", port, vec![]);
    config.bootstrap = Some(false);
    config.tuning.limits = LimitsSection {
        value_bytes_max: Some(4096),
        ..LimitsSection::default()
    };
    config.tuning.repair = RepairSection {
        interval_ms: Some(0),
        ..RepairSection::default()
    };
    // Limits that together overflow the frame cap stop the node at start,
    // naming the field.
    let mut too_large = config.clone();
    too_large.tuning.limits.value_bytes_max = Some(16 << 20);
    let refused = start(too_large, Arc::new(NoMerge), NodeTuning::default()).await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("tuning.limits.siblings_max"), "{error}");
    let node = start(config, Arc::new(NoMerge), NodeTuning::default())
        .await
        .unwrap();
    // Scheduled repair is off.
    assert!(!node.workers().iter().any(|w| w.name == "repair"));
    let client = session(&node.addr).await;
    until("the node has a ring", 10, || node.readiness().is_ok()).await;
    let small = client
        .call(put(b"small", vec![7; 4096]), Duration::from_secs(5))
        .await;
    assert!(matches!(small, Ok(ResponseBody::Written)), "{small:?}");
    let large = client
        .call(put(b"large", vec![7; 4097]), Duration::from_secs(5))
        .await;
    let error = format!("{large:?}");
    assert!(
        error.contains("4097") && error.contains("4096"),
        "a value over the configured limit: {error}"
    );
    node.shutdown().await;
}
