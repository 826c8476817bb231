//! A node's background loops are named workers with readable statuses,
//! and shutdown ends them all within its bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_core::config::{AuthSection, FsyncMode, KeyspaceSection, NodeConfig};
use isthmus_core::gossip::service::GossipConfig;
use isthmus_core::merge::NoMerge;
use isthmus_core::model::Consistency;
use isthmus_core::node::{NodeTuning, start};
use isthmus_core::repair::RepairConfig;
use isthmus_core::worker::WorkerState;

#[tokio::test]
async fn every_loop_is_a_named_worker_with_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        clock_skew_max_ms: isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
        tombstone_grace_ms: isthmus_core::config::TOMBSTONE_GRACE_MS_DEFAULT,
        hint_window_ms: isthmus_core::config::HINT_WINDOW_MS_DEFAULT,
        node_id: "n1".into(),
        dc: "dc1".into(),
        rack: "r1".into(),
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("n1"),
        seeds: vec![],
        vnodes: 8,
        fsync: FsyncMode::Always,
        fsync_interval_ms: 5,
        bridge: Default::default(),
        wan_proxy: None,
        advertise: None,
        bootstrap: Some(false),
        tuning: Default::default(),
        tls: None,
        insecure_plaintext: true,
        server: Default::default(),
        merge: Default::default(),
        ops: Default::default(),
        redis: Default::default(),
        auth: AuthSection {
            anonymous_full_access: true,
            ..AuthSection::default()
        },
        keyspaces: BTreeMap::from([(
            "carts".into(),
            KeyspaceSection {
                replication: BTreeMap::from([("dc1".into(), 1)]),
                consistency: Consistency::LocalOne,
                resolver: None,
                ttl_s: None,
                counter: false,
                sloppy_quorum: false,
                read_repair_percent: 10,
            },
        )]),
    };
    let tuning = NodeTuning {
        gossip: GossipConfig {
            interval: Duration::from_millis(50),
            ..GossipConfig::default()
        },
        repair: RepairConfig {
            interval: Duration::from_millis(200),
            ..RepairConfig::default()
        },
        ..NodeTuning::default()
    };
    let node = start(config, Arc::new(NoMerge), tuning).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses = node.workers();
        let names: Vec<&str> = statuses.iter().map(|s| s.name.as_str()).collect();
        for expected in [
            "server",
            "system-replication",
            "gossip",
            "merge-retry",
            "collapse-spread",
            "alive",
            "peers",
            "handoff",
            "repair",
            "lifecycle",
            "ops",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        let runs = |name: &str| statuses.iter().find(|s| s.name == name).unwrap().runs;
        // Gossip rounds, handoff ticks and scheduled repairs are counted
        // as they happen; none is dead.
        if runs("gossip") >= 3 && runs("handoff") >= 1 && runs("repair") >= 1 {
            assert!(statuses.iter().all(|s| s.state != WorkerState::Dead));
            let gossip = statuses.iter().find(|s| s.name == "gossip").unwrap();
            assert!(gossip.last_run_ms.is_some());
            break;
        }
        assert!(Instant::now() < deadline, "workers never ran: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    node.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(30));
}
