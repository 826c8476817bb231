//! Whole nodes in one process over real TCP on loopback: gossip forms the
//! cluster, clients write and read through any node, a stopped node's
//! writes go to hints, and the hints are handed off when it returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::Session;
use isthmus_client::wire::{Consistency, Context, RequestBody, ResponseBody, WriteId};
use isthmus_core::config::{FsyncMode, KeyspaceSection, NodeConfig};
use isthmus_core::gossip::detector::DetectorConfig;
use isthmus_core::gossip::service::GossipConfig;
use isthmus_core::merge::NoMerge;
use isthmus_core::node::{NodeTuning, RunningNode, start};
use isthmus_core::store::LocalStore;

fn config(i: usize, dir: &Path, listen: &str, seeds: Vec<String>) -> NodeConfig {
    NodeConfig {
        node_id: format!("n{i}"),
        dc: "dc1".into(),
        rack: format!("r{i}"),
        listen: listen.into(),
        data_dir: dir.join(format!("n{i}")),
        seeds,
        vnodes: 16,
        fsync: FsyncMode::Always,
        fsync_interval_ms: 5,
        bridge: Default::default(),
        wan_proxy: None,
        keyspaces: BTreeMap::from([(
            "carts".into(),
            KeyspaceSection {
                replication: BTreeMap::from([("dc1".into(), 3)]),
                consistency: Consistency::LocalQuorum,
                resolver: None,
                ttl_s: None,
            },
        )]),
    }
}

fn tuning() -> NodeTuning {
    NodeTuning {
        gossip: GossipConfig {
            interval: Duration::from_millis(100),
            exchange_timeout: Duration::from_millis(500),
            detector: DetectorConfig {
                initial_interval: Duration::from_millis(100),
                interval_max: Duration::from_millis(400),
                ..DetectorConfig::default()
            },
        },
        ..NodeTuning::default()
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn put(session: &Session, key: &[u8], value: &[u8], id: u8) -> ResponseBody {
    let body = RequestBody::Put {
        keyspace: "carts".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context: Context::default(),
        consistency: None,
        write_id: WriteId([id; 16]),
    };
    session.call(body, Duration::from_secs(5)).await.unwrap()
}

async fn get(session: &Session, key: &[u8]) -> Vec<Vec<u8>> {
    let body = RequestBody::Get {
        keyspace: "carts".into(),
        key: key.to_vec(),
        consistency: None,
    };
    match session.call(body, Duration::from_secs(5)).await.unwrap() {
        ResponseBody::Value { siblings, .. } => siblings.into_iter().map(|s| s.value).collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Three nodes joined through the first; returns its address and them.
async fn three_nodes(dir: &Path) -> (String, Vec<RunningNode>) {
    let first = start(
        config(0, dir, "127.0.0.1:0", vec![]),
        Arc::new(NoMerge),
        tuning(),
    )
    .await
    .unwrap();
    let seed = first.addr.clone();
    let mut nodes: Vec<RunningNode> = vec![first];
    for i in 1..3 {
        let config = config(i, dir, "127.0.0.1:0", vec![seed.clone()]);
        nodes.push(start(config, Arc::new(NoMerge), tuning()).await.unwrap());
    }
    until("every node sees three live nodes", || {
        nodes.iter().all(|n| n.gossiper().alive().len() == 3)
    })
    .await;
    (seed, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_survives_a_stopped_node_and_hands_off_its_hints() {
    let dir = tempfile::tempdir().unwrap();
    let (seed, mut nodes) = three_nodes(dir.path()).await;

    let client = Session::connect(&nodes[0].addr, "test", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        put(&client, b"alice", b"apples", 1).await,
        ResponseBody::Written
    );
    let other = Session::connect(&nodes[2].addr, "test", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(get(&other, b"alice").await, vec![b"apples".to_vec()]);
    match other
        .call(RequestBody::Status, Duration::from_secs(5))
        .await
        .unwrap()
    {
        ResponseBody::Status { nodes: reports, .. } => {
            assert_eq!(reports.len(), 3);
            assert!(
                reports.iter().all(|r| r.up && r.ownership > 0.99),
                "{reports:?}"
            );
        }
        other => panic!("unexpected status answer {other:?}"),
    }

    // Stop n2: writes at LOCAL_QUORUM go on, n2's share becomes hints.
    let stopped = nodes.pop().unwrap();
    let n2_config = config(2, dir.path(), "127.0.0.1:0", vec![seed.clone()]);
    stopped.shutdown().await;
    until("n2 is seen down", || {
        nodes.iter().all(|n| n.gossiper().alive().len() == 2)
    })
    .await;
    for i in 0..20u8 {
        assert_eq!(
            put(&client, &[b'k', i], b"during", 10 + i).await,
            ResponseBody::Written
        );
    }
    // n2 returns on a new port with its data directory; hints flow back.
    let back = start(n2_config, Arc::new(NoMerge), tuning()).await.unwrap();
    nodes.push(back);
    until("n2 is seen up again", || {
        nodes.iter().all(|n| n.gossiper().alive().len() == 3)
    })
    .await;
    for _ in 0..200 {
        let mut held = 0;
        for i in 0..20u8 {
            if !nodes[2]
                .store()
                .get("carts", &[b'k', i])
                .await
                .unwrap()
                .is_empty()
            {
                held += 1;
            }
        }
        if held == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..20u8 {
        let set = nodes[2].store().get("carts", &[b'k', i]).await.unwrap();
        assert_eq!(set.live().count(), 1, "n2 lacks key {i} after handoff");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_routes_retries_and_survives_a_stopped_node() {
    let dir = tempfile::tempdir().unwrap();
    let (seed, mut nodes) = three_nodes(dir.path()).await;
    let client = isthmus_client::Client::builder()
        .seed(seed.clone())
        .local_dc("dc1")
        .timeout(Duration::from_secs(2))
        .retries(4)
        .build()
        .await
        .unwrap();
    for i in 0..30u8 {
        let read = client.get("carts", &[i]).await.unwrap();
        assert!(read.siblings.is_empty());
        client
            .put("carts", &[i], vec![i], &read.context)
            .await
            .unwrap();
    }
    client
        .update("carts", &[7], |siblings| {
            assert_eq!(siblings.len(), 1);
            Some(vec![70])
        })
        .await
        .unwrap();
    let read = client.get("carts", &[7]).await.unwrap();
    assert_eq!(
        read.siblings
            .iter()
            .map(|s| s.value.clone())
            .collect::<Vec<_>>(),
        vec![vec![70]]
    );

    // Stop the seed node: the client fails over to the others.
    nodes.remove(0).shutdown().await;
    for i in 0..30u8 {
        let read = client.get("carts", &[i]).await.unwrap();
        let want = if i == 7 { vec![70] } else { vec![i] };
        assert_eq!(
            read.siblings
                .iter()
                .map(|s| s.value.clone())
                .collect::<Vec<_>>(),
            vec![want]
        );
    }
    client
        .delete(
            "carts",
            &[1],
            &client.get("carts", &[1]).await.unwrap().context,
        )
        .await
        .unwrap();
    assert!(client.get("carts", &[1]).await.unwrap().siblings.is_empty());
    for node in nodes {
        node.shutdown().await;
    }
}
