//! Merkle repair between in-process nodes (memory stores, real
//! coordinators) whose every peer message goes through the guarded
//! postcard codec: in-DC repair of 20,000 keys, resolver merges on the way
//! in, cross-DC full sync between datacenters with different rings, and
//! partners that cannot be reached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use isthmus_client::ClientError;
use isthmus_client::wire::{OperationKind, OperationState, decode, encode};
use isthmus_core::coordinator::{Coordinator, CoordinatorConfig};
use isthmus_core::hints::HintSink;
use isthmus_core::limit::Limits;
use isthmus_core::merge::{MergeFailure, MergeHook};
use isthmus_core::model::{Actor, DcName, KeyspaceConfig, Payload, Version, VersionSet, key_hash};
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::repair::{Partners, RepairConfig, RepairError, Repairer, Share, StoreData};
use isthmus_core::replica::Replica;
use isthmus_core::ring::{NodeId, Placement, Ring};
use isthmus_core::store::{LocalStore, MemStore, StoreError};
use isthmus_core::transport::Transport;
use isthmus_core::view::ClusterView;
use isthmus_testkit::version::{covering, dotted};
use parking_lot::RwLock;
use tokio::sync::watch;

type Node = Coordinator<MemStore, Net, NoHints>;
type NodeRepair = Repairer<StoreData<MemStore, Arc<Replica<MemStore>>>, Net>;
/// A node's coordinator and repair, as the network dispatches to them.
type Parts = (Arc<Node>, Arc<NodeRepair>);

/// Nodes by id; every message is encoded, decoded by the guarded decoder
/// and dispatched as a node would; repair messages' bytes are counted.
#[derive(Default)]
struct Net {
    nodes: RwLock<HashMap<NodeId, Parts>>,
    down: RwLock<BTreeSet<NodeId>>,
    repair_bytes: AtomicU64,
}

impl Transport for Net {
    fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<PeerResponse, ClientError>> + Send {
        let target = if self.down.read().contains(to) {
            None
        } else {
            self.nodes.read().get(to).cloned()
        };
        let to = to.clone();
        let sent = encode(&request);
        let counted = matches!(request, PeerRequest::Repair(_));
        let bytes = &self.repair_bytes;
        // Boxed: a forwarded write calls back into a coordinator, whose
        // future contains this one.
        let call: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
            Box::pin(async move {
                let Some((node, repair)) = target else {
                    return Err(ClientError::Connect {
                        addr: to.0,
                        reason: "down".into(),
                    });
                };
                let request: PeerRequest = decode(&sent).expect("peer requests decode");
                let response = match request {
                    // The test network does not say who calls: one owner.
                    PeerRequest::Repair(r) => repair.serve(&NodeId("caller".into()), r).await,
                    other => node.serve_peer(other, timeout).await,
                };
                let answered = encode(&response);
                if counted {
                    bytes.fetch_add((sent.len() + answered.len()) as u64, Ordering::Relaxed);
                }
                Ok(decode(&answered).expect("peer responses decode"))
            });
        call
    }
}

/// Hints are not what these tests look at: none are needed, as every
/// replica write here is direct.
struct NoHints;

impl HintSink for NoHints {
    async fn add(&self, _: &NodeId, _: &str, _: &[u8], _: Vec<Version>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Concatenates live sibling values in canonical order.
struct Concat;

impl MergeHook for Concat {
    fn merge(&self, _: &str, _: &[u8], set: &VersionSet) -> Result<Option<Version>, MergeFailure> {
        let bytes: Vec<u8> = set
            .live()
            .flat_map(|v| v.value_bytes().unwrap_or_default().to_vec())
            .collect();
        Ok(set.merged(Payload::Value(bytes), [9; 32]))
    }
}

struct Cluster {
    net: Arc<Net>,
    ring: Ring,
    stores: BTreeMap<NodeId, MemStore>,
    keyspaces: BTreeMap<String, Arc<KeyspaceConfig>>,
    view: watch::Sender<Arc<ClusterView>>,
}

fn cluster(dcs: &[(&str, usize)], replication: &[(&str, u32)]) -> Cluster {
    let placements: Vec<(NodeId, Placement)> = dcs
        .iter()
        .flat_map(|&(dc, n)| {
            (0..n).map(move |i| {
                (
                    NodeId(format!("{dc}-n{i}")),
                    Placement {
                        dc: dc.into(),
                        rack: format!("r{i}"),
                    },
                )
            })
        })
        .collect();
    let ring = Ring::build(placements.iter().map(|(id, p)| (id, p, 16)));
    let alive = placements.iter().map(|(id, _)| id.clone()).collect();
    let (view, view_rx) = watch::channel(Arc::new(ClusterView {
        ring: ring.clone(),
        alive,
        next: Default::default(),
    }));
    let plain = KeyspaceConfig {
        replication: replication
            .iter()
            .map(|&(dc, rf)| (DcName::from(dc), rf))
            .collect(),
        ..KeyspaceConfig::default()
    };
    let merged = KeyspaceConfig {
        resolver: Some(("concat".into(), 1)),
        ..plain.clone()
    };
    let keyspaces = BTreeMap::from([
        ("plain".to_string(), Arc::new(plain)),
        ("merged".to_string(), Arc::new(merged)),
    ]);
    let shared = Arc::new(parking_lot::RwLock::new(keyspaces.clone()));
    let net = Arc::new(Net::default());
    let mut stores = BTreeMap::new();
    for (i, (id, placement)) in placements.iter().enumerate() {
        let store = MemStore::new();
        let node = Arc::new(Coordinator::new(
            CoordinatorConfig {
                node: id.clone(),
                dc: placement.dc.clone(),
                actor: Actor(100 + i as u64),
                limits: Limits::default(),
                clock_skew_max_ms: isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
                merge: Default::default(),
            },
            store.clone(),
            net.clone(),
            Arc::new(NoHints),
            Arc::new(Concat),
            shared.clone(),
            view_rx.clone(),
        ));
        let repair = Arc::new(Repairer::new(
            id.clone(),
            placement.dc.clone(),
            StoreData {
                store: store.clone(),
                absorb: node.replica().clone(),
            },
            net.clone(),
            shared.clone(),
            view_rx.clone(),
            RepairConfig::default(),
        ));
        net.nodes.write().insert(id.clone(), (node, repair));
        stores.insert(id.clone(), store);
    }
    Cluster {
        net,
        ring,
        stores,
        keyspaces,
        view,
    }
}

impl Cluster {
    fn repairer(&self, id: &str) -> Arc<NodeRepair> {
        self.net.nodes.read()[&NodeId(id.into())].1.clone()
    }

    fn replicas(&self, keyspace: &str, key: &[u8]) -> Vec<NodeId> {
        self.ring
            .replicas(&self.keyspaces[keyspace].replication, key_hash(key))
            .into_iter()
            .flat_map(|(_, nodes)| nodes)
            .collect()
    }

    /// Write straight into one replica's store, bypassing replication.
    async fn plant(&self, node: &NodeId, keyspace: &str, key: &[u8], versions: Vec<Version>) {
        self.stores[node]
            .apply(keyspace, key, versions)
            .await
            .unwrap();
    }

    /// Each key's copies on its replicas (empty sets included).
    async fn copies(&self, keyspace: &str, key: &[u8]) -> Vec<VersionSet> {
        let mut out = Vec::new();
        for node in self.replicas(keyspace, key) {
            out.push(self.stores[&node].get(keyspace, key).await.unwrap());
        }
        out
    }

    /// No store holds a key it does not replicate.
    async fn nothing_misplaced(&self, keyspace: &str) {
        for (node, store) in &self.stores {
            for (key, _) in store.scan_hashes(keyspace, ..).await.unwrap() {
                assert!(
                    self.replicas(keyspace, &key).contains(node),
                    "{node} holds a key it does not replicate"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dc_repair_of_twenty_thousand_keys_makes_every_replica_equal() {
    const KEYS: u32 = 20_000;
    let c = cluster(&[("dc1", 4)], &[("dc1", 3)]);
    let mut divergent = 0;
    for i in 0..KEYS {
        let key = format!("key:{i:06}").into_bytes();
        let replicas = c.replicas("plain", &key);
        let base = dotted(1, u64::from(i) + 1).at(1).value(b"base");
        for (r, node) in replicas.iter().enumerate() {
            let versions = match (i % 100, r) {
                // Missing on one replica.
                (0, 1) => continue,
                // Missing on all but one.
                (1, 0 | 2) => continue,
                // A concurrent write one replica alone took.
                (2, 2) => vec![base.clone(), dotted(2, 1).at(2).value(b"extra")],
                // A newer version on one replica.
                (3, 0) => vec![covering(1, u64::from(i) + 2).at(3).value(b"newer")],
                _ => vec![base.clone()],
            };
            c.plant(node, "plain", &key, versions).await;
        }
        if i % 100 < 4 {
            divergent += 1;
        }
    }
    // Every node repairs its ranges with the replicas after it: each pair
    // of replicas is synced once.
    let mut total = isthmus_core::repair::RepairStats::default();
    for i in 0..4 {
        let stats = c
            .repairer(&format!("dc1-n{i}"))
            .repair_dc(None, Partners::Following)
            .await
            .unwrap();
        assert_eq!(stats.ranges_failed, 0);
        total += stats;
    }
    assert_eq!(total.bytes, c.net.repair_bytes.load(Ordering::Relaxed));
    assert!(total.keys_differing >= divergent, "{total:?}");
    let naive: u64 = (0..KEYS)
        .map(|i| format!("key:{i:06}").len() as u64 + 32)
        .sum::<u64>()
        * 3;
    println!(
        "20k keys x 3 replicas, {divergent} divergent: {total:?}; naive listing of every copy {naive} bytes"
    );
    for i in 0..KEYS {
        let key = format!("key:{i:06}").into_bytes();
        let copies = c.copies("plain", &key).await;
        assert!(
            copies.iter().all(|s| *s == copies[0] && !s.is_empty()),
            "key {i}: {copies:?}"
        );
        if i % 100 == 2 {
            assert_eq!(
                copies[0].len(),
                2,
                "the concurrent write is a sibling everywhere"
            );
        }
        if i % 100 == 3 {
            assert_eq!(copies[0].versions()[0].value_bytes(), Some(&b"newer"[..]));
        }
    }
    c.nothing_misplaced("plain").await;

    // A second round finds nothing and costs little.
    let before = c.net.repair_bytes.load(Ordering::Relaxed);
    let mut ranges = 0;
    for i in 0..4 {
        let again = c
            .repairer(&format!("dc1-n{i}"))
            .repair_dc(None, Partners::All)
            .await
            .unwrap();
        assert_eq!(again.keys_differing, 0, "{again:?}");
        ranges += again.ranges;
    }
    let quiet = c.net.repair_bytes.load(Ordering::Relaxed) - before;
    println!("a quiet round: {ranges} range syncs, {quiet} bytes");
    assert!(quiet <= 80 * ranges, "a quiet round cost {quiet} bytes");
}

#[tokio::test]
async fn repaired_siblings_are_merged_by_the_keyspace_resolver_on_both_sides() {
    let c = cluster(&[("dc1", 2)], &[("dc1", 2)]);
    let key = b"cart".to_vec();
    let [a, b] = <[NodeId; 2]>::try_from(c.replicas("merged", &key)).unwrap();
    c.plant(
        &a,
        "merged",
        &key,
        vec![dotted(1, 1).at(1).value(b"apples,")],
    )
    .await;
    c.plant(
        &b,
        "merged",
        &key,
        vec![dotted(2, 1).at(2).value(b"pears,")],
    )
    .await;
    let stats = c.repairer(&a.0).repair(Some("merged"), None).await.unwrap();
    assert_eq!(
        (stats.keys_differing, stats.keys_pulled, stats.keys_pushed),
        (1, 1, 1)
    );
    let copies = c.copies("merged", &key).await;
    assert_eq!(copies[0], copies[1]);
    assert_eq!(
        copies[0].len(),
        1,
        "merged into one version: {:?}",
        copies[0]
    );
    assert_eq!(
        copies[0].versions()[0].value_bytes(),
        Some(&b"apples,pears,"[..])
    );
    assert!(c.stores[&a].get("plain", &key).await.unwrap().is_empty());
    let again = c.repairer(&b.0).repair(Some("merged"), None).await.unwrap();
    assert_eq!(again.keys_differing, 0);
    assert!(matches!(
        c.repairer(&a.0).repair(Some("nope"), None).await,
        Err(isthmus_core::repair::RepairError::UnknownKeyspace { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_brings_two_datacenters_with_different_rings_together() {
    let c = cluster(&[("dc1", 3), ("dc2", 2)], &[("dc1", 2), ("dc2", 1)]);
    let (dc1, dc2) = (DcName::from("dc1"), DcName::from("dc2"));
    // dc1 took writes the bridge never shipped, and dc2 some of its own.
    for i in 0..3000u32 {
        let key = format!("k{i}").into_bytes();
        let by_dc = c
            .ring
            .replicas(&c.keyspaces["plain"].replication, key_hash(&key));
        let (home, v) = if i % 10 == 0 {
            (&dc2, dotted(7, 1).at(5).value(b"from dc2"))
        } else {
            (&dc1, dotted(1, 1).at(1).value(b"from dc1"))
        };
        for (dc, nodes) in &by_dc {
            if dc == home {
                for node in nodes {
                    c.plant(node, "plain", &key, vec![v.clone()]).await;
                }
            }
        }
    }
    let unknown = c
        .repairer("dc1-n0")
        .repair(None, Some(&DcName::from("dc9")))
        .await;
    assert!(matches!(
        unknown,
        Err(isthmus_core::repair::RepairError::UnknownDc { .. })
    ));
    let mut total = isthmus_core::repair::RepairStats::default();
    for i in 0..3 {
        total += c
            .repairer(&format!("dc1-n{i}"))
            .full_sync(None, &dc2, Share::Primary)
            .await
            .unwrap();
    }
    assert_eq!(total.keys_differing, 3000, "{total:?}");
    assert_eq!((total.keys_pushed, total.keys_pulled), (2700, 300));
    // What dc1's primaries pulled reaches their local partners by in-DC repair.
    for i in 0..3 {
        c.repairer(&format!("dc1-n{i}"))
            .repair_dc(None, Partners::Following)
            .await
            .unwrap();
    }
    for i in 0..3000u32 {
        let key = format!("k{i}").into_bytes();
        let copies = c.copies("plain", &key).await;
        assert_eq!(copies.len(), 3);
        assert!(
            copies.iter().all(|s| *s == copies[0] && s.len() == 1),
            "key {i}: {copies:?}"
        );
    }
    c.nothing_misplaced("plain").await;
    // The other way round: dc2 finds nothing left to do.
    for i in 0..2 {
        let back = c
            .repairer(&format!("dc2-n{i}"))
            .full_sync(None, &dc1, Share::Primary)
            .await
            .unwrap();
        assert_eq!(back.keys_differing, 0, "{back:?}");
    }
}

#[tokio::test]
async fn a_nodes_own_full_sync_covers_every_key_it_replicates() {
    // What the bridge asks of a node whose outbox dropped writes it
    // coordinated: those keys are the node's, wherever it is not primary.
    let c = cluster(&[("dc1", 3), ("dc2", 2)], &[("dc1", 2), ("dc2", 1)]);
    let me = NodeId("dc1-n0".into());
    let mut mine = Vec::new();
    for i in 0..1000u32 {
        let key = format!("k{i}").into_bytes();
        let replicas = c.replicas("plain", &key);
        if replicas.contains(&me) {
            c.plant(&me, "plain", &key, vec![dotted(1, 1).at(1).value(b"x")])
                .await;
            mine.push(key);
        }
    }
    let primary = c
        .repairer(&me.0)
        .full_sync(None, &DcName::from("dc2"), Share::Primary)
        .await
        .unwrap();
    assert!(primary.keys_pushed < mine.len() as u64, "{primary:?}");
    let all = c
        .repairer(&me.0)
        .full_sync(None, &DcName::from("dc2"), Share::Replicated)
        .await
        .unwrap();
    assert_eq!(primary.keys_pushed + all.keys_pushed, mine.len() as u64);
    for key in &mine {
        let copies = c.copies("plain", key).await;
        let ours = c.stores[&me].get("plain", key).await.unwrap();
        assert_eq!(copies[2], ours, "the dc2 copy of {key:?}");
    }
}

#[tokio::test]
async fn an_unreachable_partner_fails_its_ranges_and_the_rest_still_run() {
    let c = cluster(&[("dc1", 3)], &[("dc1", 3)]);
    for i in 0..200u32 {
        let key = i.to_be_bytes();
        c.plant(
            &NodeId("dc1-n0".into()),
            "plain",
            &key,
            vec![dotted(1, 1).at(1).value(b"x")],
        )
        .await;
    }
    // The detector still believes n2 alive, but it does not answer.
    c.net.down.write().insert(NodeId("dc1-n2".into()));
    let stats = c
        .repairer("dc1-n0")
        .repair(Some("plain"), None)
        .await
        .unwrap();
    assert!(stats.ranges_failed > 0 && stats.ranges > 0, "{stats:?}");
    assert_eq!(stats.keys_pushed, 200, "n1 got everything: {stats:?}");
    assert_eq!(
        c.stores[&NodeId("dc1-n1".into())]
            .scan_hashes("plain", ..)
            .await
            .unwrap()
            .len(),
        200
    );
    // Once the detector sees it down, it is not tried, and still counted.
    c.view.send_modify(|v| {
        let mut next = (**v).clone();
        next.alive.remove(&NodeId("dc1-n2".into()));
        *v = Arc::new(next);
    });
    let before = c.net.repair_bytes.load(Ordering::Relaxed);
    let again = c
        .repairer("dc1-n0")
        .repair(Some("plain"), None)
        .await
        .unwrap();
    assert_eq!(again.ranges_failed, stats.ranges_failed);
    assert_eq!(again.keys_differing, 0);
    assert_eq!(
        again.bytes,
        c.net.repair_bytes.load(Ordering::Relaxed) - before
    );
    // A full sync with a datacenter none of whose nodes is up does nothing
    // and says so.
    let c = cluster(&[("dc1", 1), ("dc2", 1)], &[("dc1", 1), ("dc2", 1)]);
    c.view.send_modify(|v| {
        let mut next = (**v).clone();
        next.alive.remove(&NodeId("dc2-n0".into()));
        *v = Arc::new(next);
    });
    let stats = c
        .repairer("dc1-n0")
        .full_sync(None, &DcName::from("dc2"), Share::Primary)
        .await
        .unwrap();
    assert_eq!(stats.ranges, 0);
    assert!(stats.ranges_failed > 0, "{stats:?}");
}

#[tokio::test]
async fn one_administrative_operation_runs_at_a_time_on_a_node() {
    let c = cluster(&[("dc1", 3), ("dc2", 1)], &[("dc1", 3), ("dc2", 1)]);
    let repairer = c.repairer("dc1-n0");
    let turn = repairer.try_admin("a decommission").unwrap();
    for remote in [None, Some(DcName::from("dc2"))] {
        match repairer.repair(None, remote.as_ref()).await {
            Err(e @ RepairError::Busy { .. }) => {
                assert!(
                    e.to_string().contains("a decommission is already running"),
                    "{e}"
                );
                assert_eq!(
                    e.to_wire().code,
                    isthmus_client::wire::ErrorCode::Overloaded
                );
            }
            other => panic!("a second operation ran alongside: {other:?}"),
        }
    }
    assert!(matches!(
        repairer.try_admin("another"),
        Err(RepairError::Busy {
            running: "a decommission",
            ..
        })
    ));
    drop(turn);
    repairer.repair(None, None).await.unwrap();
    // Another node's slot is its own.
    let other = c.repairer("dc1-n1");
    let _turn = other.try_admin("a repair").unwrap();
    repairer.repair(None, None).await.unwrap();
}

#[tokio::test]
async fn a_rebuild_pulls_every_key_a_node_owns_and_only_those() {
    // dc2 was lost: its nodes are back with nothing. dc2-n0 rebuilds
    // from dc1 alone; its dc2 peers, empty too, are not asked.
    let c = cluster(&[("dc1", 3), ("dc2", 3)], &[("dc1", 2), ("dc2", 2)]);
    let me = NodeId("dc2-n0".into());
    let mut owned = 0u64;
    for i in 0..1000u32 {
        let key = format!("k{i}").into_bytes();
        let replicas = c.replicas("plain", &key);
        for node in replicas.iter().filter(|n| n.0.starts_with("dc1")) {
            c.plant(node, "plain", &key, vec![dotted(1, 1).at(1).value(b"x")])
                .await;
        }
        owned += u64::from(replicas.contains(&me));
    }
    let repairer = c.repairer(&me.0);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // Bad sources are refused at once, with typed errors.
    assert!(matches!(
        repairer
            .start_rebuild(Some(DcName::from("dc2")), stop.clone())
            .await,
        Err(RepairError::BadRequest { .. })
    ));
    assert!(matches!(
        repairer
            .start_rebuild(Some(DcName::from("dc9")), stop.clone())
            .await,
        Err(RepairError::UnknownDc { .. })
    ));
    let started = repairer.start_rebuild(None, stop.clone()).await.unwrap();
    assert_eq!(started.kind, OperationKind::Rebuild);
    let done = loop {
        let info = repairer.operations().get(started.id).unwrap();
        if info.state != OperationState::Running {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(done.state, OperationState::Done, "{done:?}");
    assert_eq!(done.progress.ranges, done.ranges_total, "{done:?}");
    assert_eq!(done.progress.keys_pulled, owned, "{done:?}");
    for i in 0..1000u32 {
        let key = format!("k{i}").into_bytes();
        let held = !c.stores[&me].get("plain", &key).await.unwrap().is_empty();
        assert_eq!(
            held,
            c.replicas("plain", &key).contains(&me),
            "key {i}: held {held}"
        );
    }
}
