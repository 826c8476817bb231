//! Whole nodes in one process over real TCP on loopback: gossip forms the
//! cluster, clients write and read through any node, a stopped node's
//! writes go to hints, the hints are handed off when it returns, an
//! on-demand repair brings diverged replicas together, and a node joins
//! and another is decommissioned under writes with nothing lost.

use std::sync::Arc;
use std::time::Duration;

use isthmus_client::Session;
use isthmus_client::wire::{
    Context, OperationKind, OperationState, OperationsRequest, RequestBody, ResponseBody, WriteId,
};
use isthmus_core::config::FsyncMode;
use isthmus_core::node::RunningNode;
use isthmus_core::store::LocalStore;
use isthmus_testkit::version::covering;
use isthmus_testkit::{ClusterSpec, LocalCluster, NodeKind, Root, config};

/// Three nodes of dc1 (`n0`, `n1`, `n2`), core's node alone (no merge,
/// no registry, no bridge), an fsync per write, gossip every 100 ms, one
/// `carts` keyspace at RF 3.
async fn three_nodes() -> LocalCluster {
    let spec = ClusterSpec {
        kind: NodeKind::Bare,
        fsync: FsyncMode::Always,
        gossip: config::gossip(Duration::from_millis(100)),
        ..ClusterSpec::new(&["dc1"], 3)
    };
    LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap()
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
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.to_vec(),
        value: value.to_vec(),
        context: Context::default(),
        consistency: None,
        write_id: WriteId([id; 16]),
        expiry: Default::default(),
        sloppy: None,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_survives_a_stopped_node_and_hands_off_its_hints() {
    let mut cluster = three_nodes().await;
    let nodes: Vec<&RunningNode> = cluster.nodes.values().collect();

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
    cluster.stop_node("n2").await;
    cluster.wait_alive(2, "n2 is seen down").await.unwrap();
    for i in 0..20u8 {
        assert_eq!(
            put(&client, &[b'k', i], b"during", 10 + i).await,
            ResponseBody::Written
        );
    }
    // n2 returns on a new port with its data directory; hints flow back.
    cluster.start_node("dc1", 2).await.unwrap();
    cluster.wait_alive(3, "n2 is seen up again").await.unwrap();
    let nodes: Vec<&RunningNode> = cluster.nodes.values().collect();
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
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_routes_retries_and_survives_a_stopped_node() {
    let mut cluster = three_nodes().await;
    let client = isthmus_client::Client::builder()
        .seed(cluster.seed().to_owned())
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
    cluster.stop_node("n0").await;
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
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_repair_makes_diverged_replicas_identical() {
    let cluster = three_nodes().await;
    let nodes: Vec<&RunningNode> = cluster.nodes.values().collect();
    let version = |counter: u64, value: &[u8]| covering(1, counter).value(value);
    // Writes that bypass replication: keys only n0 holds, and a key on
    // which n1 holds a newer version than n0 and n2.
    let mut keys: Vec<Vec<u8>> = (0..50u8).map(|i| vec![b'd', i]).collect();
    for key in &keys {
        nodes[0]
            .coordinator()
            .replica()
            .apply("carts", key, vec![version(1, b"only on n0")])
            .await
            .unwrap();
    }
    keys.push(b"both".to_vec());
    for node in &nodes {
        node.coordinator()
            .replica()
            .apply("carts", b"both", vec![version(1, b"old")])
            .await
            .unwrap();
    }
    nodes[1]
        .coordinator()
        .replica()
        .apply("carts", b"both", vec![version(2, b"new")])
        .await
        .unwrap();

    let client = Session::connect(&nodes[0].addr, "test", Duration::from_secs(5))
        .await
        .unwrap();
    let repair = RequestBody::Repair {
        keyspace: Some("carts".into()),
        remote_dc: None,
    };
    // The request answers at once with the operation; its progress is
    // followed by id until it ends.
    let started = client.call(repair, Duration::from_secs(30)).await;
    let c = &client;
    let done = isthmus_testkit::operation::finished(
        move |b| c.call(b, Duration::from_secs(5)),
        started,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(done.state, OperationState::Done, "{done:?}");
    assert_eq!(done.kind, OperationKind::Repair);
    assert_eq!(done.keyspace.as_deref(), Some("carts"));
    let report = done.progress;
    assert_eq!(
        done.ranges_total,
        report.ranges + report.ranges_failed,
        "every planned range sync is counted: {done:?}"
    );
    assert_eq!(report.ranges_failed, 0, "{report:?}");
    assert!(report.ranges > 0 && report.bytes > 0, "{report:?}");
    assert!(
        report.keys_pushed >= 100,
        "50 keys to each partner: {report:?}"
    );
    assert!(report.keys_pulled >= 1, "the newer version: {report:?}");
    // n0 synced with each partner in turn; n1's own repair finishes the job.
    let stats = nodes[1].repair(Some("carts"), None).await.unwrap();
    assert_eq!(stats.ranges_failed, 0);
    for key in &keys {
        let mut sets = Vec::new();
        for node in &nodes {
            sets.push(node.store().get("carts", key).await.unwrap());
        }
        assert!(sets.iter().all(|s| *s == sets[0]), "{key:?}: {sets:?}");
        assert_eq!(sets[0].len(), 1);
    }
    let both = nodes[2].store().get("carts", b"both").await.unwrap();
    assert_eq!(both.versions()[0].value_bytes(), Some(&b"new"[..]));

    // Nothing left to do; bad names are typed errors.
    let again = nodes[2].repair(None, None).await.unwrap();
    assert_eq!(again.keys_differing, 0, "{again:?}");
    for bad in [
        RequestBody::Repair {
            keyspace: Some("nope".into()),
            remote_dc: None,
        },
        RequestBody::Repair {
            keyspace: None,
            remote_dc: Some("dc9".into()),
        },
    ] {
        match client.call(bad, Duration::from_secs(5)).await {
            Err(isthmus_client::ClientError::Server(e)) => {
                assert_eq!(e.code, isthmus_client::wire::ErrorCode::BadRequest, "{e:?}")
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_another_leaves_with_nothing_lost() {
    use isthmus_core::gossip::membership::NodeStatus;
    use isthmus_core::ring::NodeId;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut cluster = three_nodes().await;
    let nodes: Vec<&RunningNode> = cluster.nodes.values().collect();
    let session = Session::connect(&nodes[1].addr, "test", Duration::from_secs(2))
        .await
        .unwrap();
    let mut acked: Vec<Vec<u8>> = Vec::new();
    for i in 0..300u32 {
        let key = format!("before-{i}").into_bytes();
        assert_eq!(put(&session, &key, &key, 1).await, ResponseBody::Written);
        acked.push(key);
    }
    // A writer keeps going through the join and the decommission: ranges
    // in motion must miss none of its writes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, stop) = (nodes[2].addr.clone(), stop.clone());
        tokio::spawn(async move {
            let session = Session::connect(&addr, "writer", Duration::from_secs(2))
                .await
                .unwrap();
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("during-{i}").into_bytes();
                i += 1;
                let body = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: "carts".into(),
                    key: key.clone(),
                    value: key.clone(),
                    context: Context::default(),
                    consistency: None,
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                // A write that fails (a timeout while nodes move) is not
                // acknowledged; only acknowledged ones are audited.
                if let Ok(ResponseBody::Written) = session.call(body, Duration::from_secs(5)).await
                {
                    acked.push(key);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };

    // n3 joins: it streams the ranges it will own, then takes them.
    let mut joining = cluster.node_config("dc1", 3);
    joining.bootstrap = Some(true);
    cluster.start_with(joining).await.unwrap();
    let nodes: Vec<&RunningNode> = cluster.nodes.values().collect();
    let status_of = |node: &RunningNode, id: &str| {
        node.gossiper()
            .membership()
            .endpoints()
            .get(&NodeId(id.into()))
            .map(|e| e.status)
    };
    for _ in 0..400 {
        if nodes
            .iter()
            .all(|n| status_of(n, "n3") == Some(NodeStatus::Normal))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        nodes
            .iter()
            .all(|n| status_of(n, "n3") == Some(NodeStatus::Normal)),
        "n3 did not finish joining"
    );
    let held = nodes[3]
        .store()
        .scan_hashes("carts", 0..u64::MAX)
        .await
        .unwrap()
        .len();
    assert!(held >= 150, "n3 holds only {held} keys after joining");
    // Its join was an operation, listed with what it pulled.
    let joiner = Session::connect(&nodes[3].addr, "admin", Duration::from_secs(2))
        .await
        .unwrap();
    let listed = joiner
        .call(
            RequestBody::Operations(OperationsRequest::List),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let ResponseBody::Operations(listed) = listed else {
        panic!("unexpected answer {listed:?}");
    };
    let join = listed
        .iter()
        .rfind(|o| o.kind == OperationKind::Join)
        .expect("a join operation");
    assert_eq!(join.state, OperationState::Done, "{join:?}");
    assert!(
        join.ranges_total > 0 && join.progress.ranges == join.ranges_total,
        "{join:?}"
    );
    assert!(join.progress.keys_pulled > 0, "{join:?}");

    // n0 leaves: it hands its ranges to the next owners, then goes.
    let admin = Session::connect(&nodes[0].addr, "admin", Duration::from_secs(2))
        .await
        .unwrap();
    let started = admin
        .call(RequestBody::Decommission, Duration::from_secs(30))
        .await;
    let a = &admin;
    let done = isthmus_testkit::operation::finished(
        move |b| a.call(b, Duration::from_secs(5)),
        started,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(done.state, OperationState::Done, "{done:?}");
    assert_eq!(done.kind, OperationKind::Decommission);
    assert_eq!(done.progress.ranges_failed, 0, "{done:?}");
    assert_eq!(status_of(nodes[1], "n0"), Some(NodeStatus::Left));
    cluster.stop_node("n0").await;
    let nodes: Vec<&RunningNode> = cluster.nodes.values().collect();
    stop.store(true, Ordering::Relaxed);
    acked.extend(writer.await.unwrap());

    // Three nodes remain at RF 3: every acknowledged write must be in
    // each one's own store (no read repair helps here).
    // (The last writes' third copies may still be in flight: look again
    // for a few seconds before calling anything lost.)
    let mut lost = Vec::new();
    for _ in 0..50 {
        lost.clear();
        for node in &nodes {
            for key in &acked {
                if node.store().get("carts", key).await.unwrap().is_empty() {
                    lost.push((node.addr.clone(), String::from_utf8_lossy(key).into_owned()));
                }
            }
        }
        if lost.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_find_each_other_while_their_seed_is_down() {
    use isthmus_core::ring::NodeId;

    let mut cluster = three_nodes().await;
    let addrs: Vec<String> = cluster.nodes.values().map(|n| n.addr.clone()).collect();
    for i in [1, 2] {
        let file = cluster.root().join(format!("n{i}")).join("peers");
        until("the nodes remember their peers", || {
            std::fs::read_to_string(&file)
                .is_ok_and(|p| addrs.iter().filter(|a| p.contains(a.as_str())).count() == 2)
        })
        .await;
    }
    // The whole cluster stops; n0, the seed everyone joined through,
    // stays down.
    for id in ["n0", "n1", "n2"] {
        cluster.stop_node(id).await;
    }
    // n1 and n2 come back knowing nothing but that dead seed, and find
    // each other through the peers they remembered.
    for i in [1, 2] {
        let mut config = cluster.node_config("dc1", i);
        config.listen = addrs[i].clone();
        cluster.start_with(config).await.unwrap();
    }
    let back: Vec<&RunningNode> = cluster.nodes.values().collect();
    until("n1 and n2 see each other", || {
        back.iter().all(|n| {
            let alive = n.gossiper().alive();
            alive.contains(&NodeId("n1".into())) && alive.contains(&NodeId("n2".into()))
        })
    })
    .await;
    let session = Session::connect(&back[0].addr, "test", Duration::from_secs(2))
        .await
        .unwrap();
    // LOCAL_QUORUM of three replicas: n1 and n2 are two.
    assert_eq!(
        put(&session, b"after", b"v", 1).await,
        ResponseBody::Written
    );
    assert_eq!(get(&session, b"after").await, vec![b"v".to_vec()]);
    cluster.shutdown().await;
}
