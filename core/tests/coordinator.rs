//! The coordinator over an in-process network of nodes (memory stores, a
//! transport that calls the other coordinators directly, and a switch to
//! take nodes down): quorums, hints, forwarding, retries, siblings, read
//! repair and server-side merges.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::ClientError;
use isthmus_client::wire::{ErrorCode, QuarantineRequest, QuarantineResponse, WireError};
use isthmus_core::bridge::{BoxFuture, Bridge, BridgeReport, Deliver, ShipRefusal};
use isthmus_core::coordinator::{Coordinator, CoordinatorConfig, CoordinatorError};
use isthmus_core::hints::HintSink;
use isthmus_core::limit::{LimitError, Limits};
use isthmus_core::merge::{MergeFailure, MergeHook, NoMerge};
use isthmus_core::model::{
    Actor, Clock, Consistency, DcName, KeyspaceConfig, Payload, Version, VersionSet,
};
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::ring::{NodeId, Placement, Ring};
use isthmus_core::store::{LocalStore, MemStore, StoreError};
use isthmus_core::transport::Transport;
use isthmus_core::view::ClusterView;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

type Node = Coordinator<MemStore, Net, Hints>;

#[derive(Default)]
struct Net {
    nodes: RwLock<HashMap<NodeId, Arc<Node>>>,
    down: RwLock<BTreeSet<NodeId>>,
    /// Added to the timestamp of every version a node sends another: the
    /// senders' clocks run this far ahead of the receivers'.
    ahead_ms: std::sync::atomic::AtomicU64,
    /// Nodes whose calls hang until their timeout (alive in the view).
    hung: RwLock<BTreeSet<NodeId>>,
    /// Peer reads sent so far.
    reads: std::sync::atomic::AtomicU64,
}

impl Transport for Net {
    fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<PeerResponse, ClientError>> + Send {
        // Boxed: a forwarded write calls back into a coordinator, whose
        // future contains this one.
        let target = if self.down.read().contains(to) {
            None
        } else {
            self.nodes.read().get(to).cloned()
        };
        let hung = self.hung.read().contains(to);
        if let PeerRequest::Read { .. } = &request {
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let to = to.clone();
        let ahead_ms = self.ahead_ms.load(std::sync::atomic::Ordering::Relaxed);
        let mut request = request;
        if let PeerRequest::Apply { versions, .. } = &mut request {
            for v in versions {
                v.timestamp_ms += ahead_ms;
            }
        }
        let call: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            Box::pin(async move {
                if hung {
                    tokio::time::sleep(timeout).await;
                    return Err(ClientError::Connect {
                        addr: to.0,
                        reason: "hung".into(),
                    });
                }
                match target {
                    Some(node) => Ok(node.serve_peer(request, timeout).await),
                    None => Err(ClientError::Connect {
                        addr: to.0,
                        reason: "down".into(),
                    }),
                }
            });
        call
    }
}

/// A hint as the test sink keeps it: target, keyspace, key, versions.
type Hint = (NodeId, String, Vec<u8>, Vec<Version>);

#[derive(Default)]
struct Hints {
    kept: Mutex<Vec<Hint>>,
}

impl HintSink for Hints {
    async fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.kept
            .lock()
            .push((target.clone(), keyspace.into(), key.to_vec(), versions));
        Ok(())
    }
}

/// Concatenates live sibling values in canonical order: a stand-in
/// resolver that shows where merges happen.
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
    stores: BTreeMap<NodeId, MemStore>,
    hints: BTreeMap<NodeId, Arc<Hints>>,
    view: watch::Sender<Arc<ClusterView>>,
}

const DEADLINE: Duration = Duration::from_secs(2);

fn n(i: usize) -> NodeId {
    NodeId(format!("n{i}"))
}

fn cluster(nodes: usize, rf: u32, merge: Arc<dyn MergeHook>, limits: Limits) -> Cluster {
    cluster_with(nodes, rf, merge, limits, None)
}

/// [`cluster`], every node running `bridge` when given.
fn cluster_with(
    nodes: usize,
    rf: u32,
    merge: Arc<dyn MergeHook>,
    limits: Limits,
    bridge: Option<Arc<dyn Bridge>>,
) -> Cluster {
    let placements: Vec<(NodeId, Placement)> = (0..nodes)
        .map(|i| {
            (
                n(i),
                Placement {
                    dc: "dc1".into(),
                    rack: format!("r{i}"),
                },
            )
        })
        .collect();
    let ring = Ring::build(placements.iter().map(|(id, p)| (id, p, 16)));
    let alive = placements.iter().map(|(id, _)| id.clone()).collect();
    let (view, view_rx) = watch::channel(Arc::new(ClusterView {
        ring,
        alive,
        next: Default::default(),
    }));
    let mut carts = KeyspaceConfig {
        replication: BTreeMap::from([("dc1".into(), rf)]),
        ..KeyspaceConfig::default()
    };
    let plain = carts.clone();
    carts.resolver = Some(("concat".into(), 1));
    let lean = KeyspaceConfig {
        read_repair_percent: 0,
        ..plain.clone()
    };
    let keyspaces = Arc::new(RwLock::new(BTreeMap::from([
        ("lean".to_string(), Arc::new(lean)),
        ("plain".to_string(), Arc::new(plain)),
        ("merged".to_string(), Arc::new(carts)),
    ])));
    let net = Arc::new(Net::default());
    let (mut stores, mut hints) = (BTreeMap::new(), BTreeMap::new());
    for (i, (id, _)) in placements.iter().enumerate() {
        let store = MemStore::new();
        let hint = Arc::new(Hints::default());
        let config = CoordinatorConfig {
            node: id.clone(),
            dc: "dc1".into(),
            actor: Actor(100 + i as u64),
            limits: limits.clone(),
            clock_skew_max_ms: isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
            merge: Default::default(),
        };
        let node = Coordinator::new(
            config,
            store.clone(),
            net.clone(),
            hint.clone(),
            merge.clone(),
            keyspaces.clone(),
            view_rx.clone(),
        );
        let node = match &bridge {
            Some(bridge) => node.with_bridge(bridge.clone()),
            None => node,
        };
        net.nodes.write().insert(id.clone(), Arc::new(node));
        stores.insert(id.clone(), store);
        hints.insert(id.clone(), hint);
    }
    Cluster {
        net,
        stores,
        hints,
        view,
    }
}

impl Cluster {
    fn node(&self, id: &NodeId) -> Arc<Node> {
        self.net.nodes.read()[id].clone()
    }

    fn down(&self, id: &NodeId) {
        self.net.down.write().insert(id.clone());
        self.view.send_modify(|v| {
            let mut next = (**v).clone();
            next.alive.remove(id);
            *v = Arc::new(next);
        });
    }

    fn up(&self, id: &NodeId) {
        self.net.down.write().remove(id);
        self.view.send_modify(|v| {
            let mut next = (**v).clone();
            next.alive.insert(id.clone());
            *v = Arc::new(next);
        });
    }

    /// Write id 42 coordinated twice: n0 takes it alone (its peers
    /// unreachable), then stalls before its copy reaches anyone; the
    /// client retries the same write at n1, whose replicas do not hold it
    /// yet, so n1 issues a second dot for it (on n1 and n2). n0 stays down.
    async fn coordinate_twice(&self, value: &[u8]) {
        let write = |via: usize, level| {
            let node = self.node(&n(via));
            async move {
                node.write(
                    "plain",
                    b"k",
                    Some(value.to_vec()),
                    Clock::new(),
                    [42; 16],
                    level,
                    DEADLINE,
                )
                .await
            }
        };
        self.down(&n(1));
        self.down(&n(2));
        write(0, Consistency::One).await.unwrap();
        self.down(&n(0));
        self.up(&n(1));
        self.up(&n(2));
        write(1, Consistency::LocalQuorum).await.unwrap();
    }

    async fn put(
        &self,
        via: &NodeId,
        key: &[u8],
        value: &[u8],
        ctx: Clock,
        write_id: u8,
    ) -> Result<(), CoordinatorError> {
        self.node(via)
            .write(
                "plain",
                key,
                Some(value.to_vec()),
                ctx,
                [write_id; 16],
                Consistency::LocalQuorum,
                DEADLINE,
            )
            .await
    }

    async fn get(&self, via: &NodeId, keyspace: &str, key: &[u8]) -> VersionSet {
        self.node(via)
            .read(keyspace, key, Consistency::LocalQuorum, DEADLINE)
            .await
            .unwrap()
            .set
    }

    async fn copies(&self, keyspace: &str, key: &[u8]) -> Vec<VersionSet> {
        let mut out = Vec::new();
        for store in self.stores.values() {
            out.push(store.get(keyspace, key).await.unwrap());
        }
        out
    }
}

fn values(set: &VersionSet) -> Vec<Vec<u8>> {
    set.live()
        .map(|v| v.value_bytes().unwrap().to_vec())
        .collect()
}

/// Replicas of `key` (RF of the cluster).
fn replicas_of(c: &Cluster, key: &[u8]) -> Vec<NodeId> {
    let view = c.view.borrow().clone();
    view.ring
        .replicas_in_dc(&"dc1".into(), isthmus_core::model::key_hash(key), 3)
}

#[tokio::test]
async fn quorum_write_reaches_every_replica_and_reads_back() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    c.put(&n(0), b"k", b"v1", Clock::new(), 1).await.unwrap();
    assert_eq!(
        values(&c.get(&n(2), "plain", b"k").await),
        vec![b"v1".to_vec()]
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    for copy in c.copies("plain", b"k").await {
        assert_eq!(values(&copy), vec![b"v1".to_vec()]);
    }
    // A write over the read context supersedes, it does not add a sibling.
    let ctx = c.get(&n(1), "plain", b"k").await.lub();
    c.put(&n(1), b"k", b"v2", ctx, 2).await.unwrap();
    assert_eq!(
        values(&c.get(&n(0), "plain", b"k").await),
        vec![b"v2".to_vec()]
    );
}

#[tokio::test]
async fn one_replica_down_keeps_local_quorum_and_leaves_a_hint() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    c.down(&n(2));
    c.put(&n(0), b"k", b"v", Clock::new(), 1).await.unwrap();
    assert_eq!(
        values(&c.get(&n(1), "plain", b"k").await),
        vec![b"v".to_vec()]
    );
    let hints = c.hints[&n(0)].kept.lock().clone();
    assert_eq!(hints.len(), 1);
    assert_eq!(hints[0].0, n(2));
    assert_eq!(
        values(&VersionSet::from_versions(hints[0].3.clone())),
        vec![b"v".to_vec()]
    );
    assert!(c.stores[&n(2)].get("plain", b"k").await.unwrap().is_empty());
}

#[tokio::test]
async fn two_replicas_down_fail_local_quorum_with_ack_counts() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    c.down(&n(1));
    c.down(&n(2));
    match c.put(&n(0), b"k", b"v", Clock::new(), 1).await {
        Err(CoordinatorError::QuorumLost {
            required: 2,
            acked: 1,
        }) => {}
        other => panic!("expected a lost quorum with 1 of 2 acks, got {other:?}"),
    }
    let err = c
        .node(&n(0))
        .read("plain", b"k", Consistency::LocalQuorum, DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordinatorError::QuorumLost {
                required: 2,
                acked: 1
            }
        ),
        "{err:?}"
    );
    assert!(err.to_wire().code.is_retryable());
}

#[tokio::test]
async fn a_retried_write_adds_no_sibling() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    for _ in 0..3 {
        c.put(&n(0), b"k", b"v", Clock::new(), 7).await.unwrap();
    }
    let set = c.get(&n(0), "plain", b"k").await;
    assert_eq!(
        set.len(),
        1,
        "retries with one write id must not pile up siblings: {set:?}"
    );
}

#[tokio::test]
async fn blind_writes_become_siblings_and_the_sibling_bound_holds() {
    let limits = Limits {
        siblings_max: 3,
        ..Limits::default()
    };
    let c = cluster(3, 3, Arc::new(NoMerge), limits);
    for i in 0..3u8 {
        c.put(&n(0), b"k", &[b'a' + i], Clock::new(), i + 1)
            .await
            .unwrap();
    }
    assert_eq!(c.get(&n(1), "plain", b"k").await.len(), 3);
    match c.put(&n(0), b"k", b"d", Clock::new(), 9).await {
        Err(CoordinatorError::Limit(LimitError::TooManySiblings { count: 4, max: 3 })) => {}
        other => panic!("expected the sibling bound, got {other:?}"),
    }
    // A write over the full context resolves them into one.
    let ctx = c.get(&n(1), "plain", b"k").await.lub();
    c.put(&n(0), b"k", b"resolved", ctx, 10).await.unwrap();
    assert_eq!(
        values(&c.get(&n(2), "plain", b"k").await),
        vec![b"resolved".to_vec()]
    );
}

#[tokio::test]
async fn non_replicas_forward_writes_to_a_replica() {
    let c = cluster(5, 3, Arc::new(NoMerge), Limits::default());
    let key = b"forwarded";
    let replicas = replicas_of(&c, key);
    let outsider = (0..5).map(n).find(|id| !replicas.contains(id)).unwrap();
    c.put(&outsider, key, b"v", Clock::new(), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        c.stores[&outsider]
            .get("plain", key)
            .await
            .unwrap()
            .is_empty()
    );
    for r in &replicas {
        assert_eq!(
            values(&c.stores[r].get("plain", key).await.unwrap()),
            vec![b"v".to_vec()]
        );
    }
}

#[tokio::test]
async fn a_forwarded_write_keeps_the_replicas_error_whole() {
    let limits = Limits {
        siblings_max: 2,
        ..Limits::default()
    };
    let c = cluster(5, 3, Arc::new(NoMerge), limits);
    let key = b"bounded";
    let replicas = replicas_of(&c, key);
    let outsider = (0..5).map(n).find(|id| !replicas.contains(id)).unwrap();
    for i in 0..2u8 {
        c.put(&outsider, key, &[b'a' + i], Clock::new(), i + 1)
            .await
            .unwrap();
    }
    // The outsider forwards; the replica that coordinates refuses with the
    // sibling bound, and the outsider's caller sees that, not a generic
    // storage failure.
    let err = c
        .put(&outsider, key, b"c", Clock::new(), 3)
        .await
        .unwrap_err();
    match &err {
        CoordinatorError::Peer { node, error } => {
            assert!(replicas.contains(node), "{node} is no replica");
            assert_eq!(error.code, ErrorCode::TooManySiblings, "{err}");
        }
        other => panic!("expected the replica's error, got {other:?}"),
    }
    assert_eq!(err.to_wire().code, ErrorCode::TooManySiblings);
    assert!(err.to_wire().message.contains("siblings"), "{err}");
}

/// With `read_repair_percent = 0`, a LOCAL_QUORUM read of RF 3 asks its
/// own copy and one peer; when that peer fails it asks the third, and
/// when it hangs it asks the third after the speculative delay instead of
/// waiting out the deadline. At 100 (`plain`) it asks both peers.
#[tokio::test]
async fn reads_ask_just_enough_replicas_and_more_when_one_fails_or_hangs() {
    use std::sync::atomic::Ordering::Relaxed;
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    for ks in ["lean", "plain"] {
        c.node(&n(0))
            .write(
                ks,
                b"k",
                Some(b"v".to_vec()),
                Clock::new(),
                [1; 16],
                Consistency::All,
                DEADLINE,
            )
            .await
            .unwrap();
    }
    let reads = |ks: &'static str| {
        let c = &c;
        async move {
            let before = c.net.reads.load(Relaxed);
            let got = c
                .node(&n(0))
                .read(ks, b"k", Consistency::LocalQuorum, DEADLINE)
                .await;
            (
                got.ok().map(|answer| values(&answer.set)),
                c.net.reads.load(Relaxed) - before,
            )
        }
    };
    let ok = Some(vec![b"v".to_vec()]);
    assert_eq!(
        reads("lean").await,
        (ok.clone(), 1),
        "its own copy and one peer"
    );
    assert_eq!(reads("plain").await, (ok.clone(), 2), "every replica");
    let local_one = || async {
        let before = c.net.reads.load(Relaxed);
        let got = c
            .node(&n(0))
            .read("lean", b"k", Consistency::LocalOne, DEADLINE)
            .await
            .unwrap();
        (Some(values(&got.set)), c.net.reads.load(Relaxed) - before)
    };
    // A level this node's own copy wins alone asks no peer.
    assert_eq!(local_one().await, (ok.clone(), 0), "LOCAL_ONE asks no peer");
    // This node's own copy failing to read: the level it would have won
    // alone is won by asking one peer instead.
    c.stores[&n(0)].fail_reads(true);
    assert_eq!(
        local_one().await,
        (ok.clone(), 1),
        "LOCAL_ONE with a failed local read asks one peer"
    );
    c.stores[&n(0)].fail_reads(false);
    // One peer failing: whichever of the two was asked first, the read
    // wins; where it was the one asked, the other is asked after it.
    let mut asked = 0;
    for peer in [n(1), n(2)] {
        *c.net.down.write() = BTreeSet::from([peer.clone()]);
        let (got, sent) = reads("lean").await;
        assert_eq!(got, ok, "{peer} failing");
        asked += sent;
    }
    assert_eq!(
        asked, 3,
        "one failure, so one read more than two reads of one peer"
    );
    c.net.down.write().clear();
    // One peer hanging (alive in the view): the read still wins, well
    // before its deadline, by asking the third replica.
    for peer in [n(1), n(2)] {
        *c.net.hung.write() = BTreeSet::from([peer.clone()]);
        let started = std::time::Instant::now();
        let (got, _) = reads("lean").await;
        assert_eq!(got, ok, "{peer} hanging");
        assert!(
            started.elapsed() < DEADLINE,
            "{peer} hanging: the read waited out its deadline"
        );
    }
    c.net.hung.write().clear();
}

#[tokio::test]
async fn reads_repair_a_stale_replica() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    c.down(&n(2));
    c.put(&n(0), b"k", b"v", Clock::new(), 1).await.unwrap();
    // n2 comes back without its hint being replayed.
    c.net.down.write().clear();
    c.view.send_modify(|v| {
        let mut next = (**v).clone();
        next.alive.insert(n(2));
        *v = Arc::new(next);
    });
    assert_eq!(
        values(&c.get(&n(0), "plain", b"k").await),
        vec![b"v".to_vec()]
    );
    let mut repaired = false;
    for _ in 0..100 {
        if !c.stores[&n(2)].get("plain", b"k").await.unwrap().is_empty() {
            repaired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(repaired, "the stale replica was not repaired by the read");
}

#[tokio::test]
async fn siblings_of_a_resolver_keyspace_merge_to_the_same_bytes_everywhere() {
    let c = cluster(3, 3, Arc::new(Concat), Limits::default());
    for (i, value) in [b"x", b"y", b"z"].iter().enumerate() {
        c.node(&n(i))
            .write(
                "merged",
                b"k",
                Some(value.to_vec()),
                Clock::new(),
                [i as u8; 16],
                Consistency::All,
                DEADLINE,
            )
            .await
            .unwrap();
    }
    let read = c.get(&n(0), "merged", b"k").await;
    assert_eq!(
        read.len(),
        1,
        "a resolver keyspace returns one merged version: {read:?}"
    );
    let mut merged = values(&read)[0].clone();
    merged.sort();
    assert_eq!(merged, b"xyz".to_vec());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let copies = c.copies("merged", b"k").await;
    assert!(
        copies.iter().all(|s| s.encode() == copies[0].encode()),
        "replicas differ: {copies:?}"
    );
}

#[tokio::test]
async fn a_context_naming_events_the_replica_never_issued_is_refused_and_the_key_stays_writable() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    c.put(&n(0), b"k", b"v1", Clock::new(), 1).await.unwrap();
    let read = c.get(&n(0), "plain", b"k").await;
    // n0 (actor 100) issued the key's only event so far.
    assert_eq!(read.lub().max_counter(Actor(100)), 1);
    // Contexts naming later events of n0's actor: one just ahead, and the
    // largest counter there is (the next event would wrap to 0).
    for forged in [2, 1_000, u64::MAX] {
        let context = Clock::from_parts([(Actor(100), forged)], []);
        match c.put(&n(0), b"k", b"forged", context, 2).await {
            Err(e @ CoordinatorError::InvalidContext { .. }) => {
                assert_eq!(e.to_wire().code, ErrorCode::InvalidContext);
                assert!(!e.to_wire().code.is_retryable());
            }
            other => panic!("a context naming event {forged} was not refused: {other:?}"),
        }
    }
    // Nothing of the refused writes was stored, and the key still takes
    // writes: a blind write becomes a sibling, a write over the read
    // context supersedes both.
    c.put(&n(0), b"k", b"v2", Clock::new(), 3).await.unwrap();
    let read = c.get(&n(1), "plain", b"k").await;
    let mut got = values(&read);
    got.sort();
    assert_eq!(got, vec![b"v1".to_vec(), b"v2".to_vec()]);
    c.put(&n(0), b"k", b"v3", read.lub(), 4).await.unwrap();
    assert_eq!(
        values(&c.get(&n(2), "plain", b"k").await),
        vec![b"v3".to_vec()]
    );
}

fn stamped(value: &[u8], at: u64) -> Version {
    let clock = Clock::from_parts(
        [],
        [isthmus_core::model::Dot {
            actor: Actor(7),
            counter: 1,
        }],
    );
    Version::value(clock, value.to_vec(), at, "dc1".into())
}

#[tokio::test]
async fn versions_stamped_past_the_clock_skew_bound_are_refused() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    let now = isthmus_core::wall_clock::now_ms();
    let bound = isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT;
    let node = c.node(&n(1));
    // An hour ahead, alone or in a batch with honest versions: refused,
    // typed, and nothing of it stored.
    let ahead = stamped(b"future", now + 3_600_000);
    let refusals = [
        PeerRequest::Apply {
            keyspace: "plain".into(),
            key: b"k".to_vec(),
            versions: vec![ahead.clone()],
            hint_for: None,
        },
        PeerRequest::ApplyBatch {
            keyspace: "plain".into(),
            entries: vec![
                (b"j".to_vec(), vec![stamped(b"honest", now)]),
                (b"k".to_vec(), vec![ahead]),
            ],
        },
    ];
    for request in refusals {
        match node.serve_peer(request, DEADLINE).await {
            PeerResponse::Error(e) => assert_eq!(e.code, ErrorCode::ClockSkew, "{e:?}"),
            other => panic!("a version an hour ahead was taken: {other:?}"),
        }
    }
    for key in [&b"j"[..], b"k"] {
        assert!(c.stores[&n(1)].get("plain", key).await.unwrap().is_empty());
    }
    // Within the bound (a clock a little ahead, a message in flight): taken.
    let near = stamped(b"near", now + bound / 2);
    let answer = node
        .serve_peer(
            PeerRequest::Apply {
                keyspace: "plain".into(),
                key: b"k".to_vec(),
                versions: vec![near],
                hint_for: None,
            },
            DEADLINE,
        )
        .await;
    assert!(matches!(answer, PeerResponse::Applied), "{answer:?}");

    // A coordinator whose clock runs an hour ahead of its peers': its
    // write fails with the replicas' reason, not a bare count.
    c.net
        .ahead_ms
        .store(3_600_000, std::sync::atomic::Ordering::Relaxed);
    match c.put(&n(0), b"m", b"v", Clock::new(), 1).await {
        Err(e) => assert_eq!(e.to_wire().code, ErrorCode::ClockSkew, "{e:?}"),
        Ok(()) => panic!("a write stamped an hour ahead reached a quorum"),
    }
}

#[tokio::test]
async fn hints_are_kept_only_for_nodes_of_the_ring() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    let hint = |target: &str| PeerRequest::Apply {
        keyspace: "plain".into(),
        key: b"k".to_vec(),
        versions: vec![stamped(b"v", isthmus_core::wall_clock::now_ms())],
        hint_for: Some(NodeId(target.into())),
    };
    match c.node(&n(0)).serve_peer(hint("nobody"), DEADLINE).await {
        PeerResponse::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        other => panic!("a hint for a node outside the ring was kept: {other:?}"),
    }
    assert!(c.hints[&n(0)].kept.lock().is_empty());
    let answer = c.node(&n(0)).serve_peer(hint("n2"), DEADLINE).await;
    assert!(matches!(answer, PeerResponse::Applied), "{answer:?}");
    assert_eq!(c.hints[&n(0)].kept.lock().len(), 1);
}

#[tokio::test]
async fn a_node_that_knows_no_replica_says_so() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    // A node just restarted: it has not heard from any peer, its ring is
    // empty.
    c.view.send_modify(|v| {
        *v = Arc::new(ClusterView {
            ring: Ring::build([]),
            alive: BTreeSet::from([n(0)]),
            next: Ring::build([]),
        });
    });
    let write = c.put(&n(0), b"k", b"v", Clock::new(), 1).await;
    let read = c
        .node(&n(0))
        .read("plain", b"k", Consistency::LocalQuorum, DEADLINE)
        .await;
    for err in [write.unwrap_err(), read.unwrap_err()] {
        let wire = err.to_wire();
        assert_eq!(wire.code, ErrorCode::Unavailable, "{err:?}");
        assert!(wire.code.is_retryable());
        assert!(
            wire.message.contains("knows no replica") && wire.message.contains("dc1"),
            "{}",
            wire.message
        );
    }
}

/// A resolver that fails every merge (a trap, say).
struct Failing;

impl MergeHook for Failing {
    fn merge(
        &self,
        keyspace: &str,
        _: &[u8],
        _: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure> {
        Err(MergeFailure {
            keyspace: keyspace.into(),
            resolver: None,
            resolver_name: None,
            class: isthmus_core::merge::FailureClass::Trap,
            detail: "trapped".into(),
        })
    }
}

fn concurrent(actor: u64, value: &[u8]) -> Version {
    let clock = Clock::from_parts(
        [],
        [isthmus_core::model::Dot {
            actor: Actor(actor),
            counter: 1,
        }],
    );
    Version::value(
        clock,
        value.to_vec(),
        isthmus_core::wall_clock::now_ms(),
        "dc1".into(),
    )
}

#[tokio::test]
async fn the_sibling_bound_holds_with_a_failing_resolver_and_at_every_replica() {
    let limits = Limits {
        siblings_max: 3,
        ..Limits::default()
    };
    let c = cluster(3, 3, Arc::new(Failing), limits);
    let node = c.node(&n(0));
    let write = |i: u8| {
        node.write(
            "merged",
            b"k",
            Some(vec![i]),
            Clock::new(),
            [i; 16],
            Consistency::All,
            DEADLINE,
        )
    };
    // The resolver fails every merge: blind writes stay siblings, up to
    // the bound and no further.
    for i in 1..=3 {
        write(i).await.unwrap();
    }
    match write(4).await {
        Err(CoordinatorError::Limit(LimitError::TooManySiblings { count: 4, max: 3 })) => {}
        other => panic!("expected the sibling bound, got {other:?}"),
    }
    for copy in c.copies("merged", b"k").await {
        assert_eq!(copy.len(), 3);
    }

    // A peer delivering concurrent versions one by one: the replica
    // refuses the one past the bound, whichever path brings it.
    let replica = c.node(&n(1));
    let apply = |versions: Vec<Version>| PeerRequest::Apply {
        keyspace: "plain".into(),
        key: b"p".to_vec(),
        versions,
        hint_for: None,
    };
    for actor in 1..=3 {
        let answer = replica
            .serve_peer(apply(vec![concurrent(actor, b"x")]), DEADLINE)
            .await;
        assert!(matches!(answer, PeerResponse::Applied), "{answer:?}");
    }
    match replica
        .serve_peer(apply(vec![concurrent(4, b"x")]), DEADLINE)
        .await
    {
        PeerResponse::Error(e) => assert_eq!(e.code, ErrorCode::TooManySiblings, "{e:?}"),
        other => panic!("a fourth sibling was taken: {other:?}"),
    }
    // One delivery carrying thousands of concurrent versions of a key is
    // refused before any is absorbed.
    let flood: Vec<Version> = (10..5_010).map(|a| concurrent(a, b"y")).collect();
    for request in [
        apply(flood.clone()),
        PeerRequest::ApplyBatch {
            keyspace: "plain".into(),
            entries: vec![(b"q".to_vec(), flood)],
        },
    ] {
        match replica.serve_peer(request, DEADLINE).await {
            PeerResponse::Error(e) => assert_eq!(e.code, ErrorCode::TooManySiblings, "{e:?}"),
            other => panic!("a flood of siblings was taken: {other:?}"),
        }
    }
    assert_eq!(c.stores[&n(1)].get("plain", b"p").await.unwrap().len(), 3);
    assert!(c.stores[&n(1)].get("plain", b"q").await.unwrap().is_empty());
}

/// A hot key of a merging keyspace whose siblings piled up to the bound
/// faster than the merge pool replaced them (here: put in the store
/// directly, as blind writes racing the pool leave them): the
/// coordinator's own write merges what the key holds first, as a peer's
/// apply does, instead of refusing with `TooManySiblings`.
#[tokio::test]
async fn a_write_to_a_merging_key_at_its_sibling_bound_merges_first() {
    let limits = Limits {
        siblings_max: 3,
        ..Limits::default()
    };
    let c = cluster(1, 1, Arc::new(Concat), limits);
    let held: Vec<Version> = [b"a", b"b", b"c"]
        .iter()
        .enumerate()
        .map(|(i, v)| concurrent(1 + i as u64, *v))
        .collect();
    c.stores[&n(0)].apply("merged", b"k", held).await.unwrap();
    assert_eq!(c.stores[&n(0)].get("merged", b"k").await.unwrap().len(), 3);
    c.node(&n(0))
        .write(
            "merged",
            b"k",
            Some(b"d".to_vec()),
            Clock::new(),
            [7; 16],
            Consistency::One,
            DEADLINE,
        )
        .await
        .expect("the write merges the held siblings first");
    let stored = c.stores[&n(0)].get("merged", b"k").await.unwrap();
    assert_eq!(stored.len(), 1, "merged into one: {stored:?}");
    let mut bytes = values(&stored)[0].clone();
    bytes.sort();
    assert_eq!(bytes, b"abcd".to_vec());

    // Where the keyspace does not merge, the bound still refuses.
    let held: Vec<Version> = (1..=3).map(|a| concurrent(a, b"p")).collect();
    c.stores[&n(0)].apply("plain", b"k", held).await.unwrap();
    match c.put(&n(0), b"k", b"q", Clock::new(), 8).await {
        Err(CoordinatorError::Limit(LimitError::TooManySiblings { count: 4, max: 3 })) => {}
        other => panic!("expected the sibling bound, got {other:?}"),
    }
}

/// A bridge delivery this DC refuses for good says why, so the bridge
/// can quarantine the key: what the receiving node can tell alone
/// (`admit`: an unknown keyspace, a value over its limit, more versions
/// than a set may hold) before any replica is asked, and a replica's
/// refusal (its sibling bound) as the replica's code rather than a bare
/// count of acknowledgements.
#[tokio::test]
async fn a_delivery_refused_for_good_says_why() {
    let limits = Limits {
        siblings_max: 2,
        value_bytes_max: 16,
        ..Limits::default()
    };
    // Replicas keep the sibling bound under the key's lock, resolver or
    // not (this one fails every merge).
    let c = cluster(3, 3, Arc::new(Failing), limits);
    let node = c.node(&n(0));
    let code = |r: Result<(), CoordinatorError>| r.map_err(|e| e.to_wire().code);
    assert_eq!(
        code(node.admit_delivery("orders", b"k", &[concurrent(1, b"x")])),
        Err(ErrorCode::BadRequest)
    );
    assert_eq!(
        code(node.admit_delivery("plain", b"k", &[concurrent(1, &[b'x'; 17])])),
        Err(ErrorCode::ValueTooLarge)
    );
    let three: Vec<Version> = (1..=3).map(|a| concurrent(a, b"x")).collect();
    assert_eq!(
        code(node.admit_delivery("plain", b"k", &three)),
        Err(ErrorCode::TooManySiblings)
    );
    assert_eq!(
        code(node.admit_delivery("plain", b"k", &three[..2])),
        Ok(())
    );

    // Two concurrent versions reach every replica; a third, concurrent
    // with both, would leave three siblings: every replica refuses it.
    for actor in 1..=2 {
        let entries = vec![(b"p".to_vec(), vec![concurrent(actor, b"x")])];
        node.deliver_local("merged", entries, DEADLINE)
            .await
            .unwrap();
    }
    let entries = vec![(b"p".to_vec(), vec![concurrent(3, b"x")])];
    let refused = node.deliver_local("merged", entries, DEADLINE).await;
    assert_eq!(code(refused), Err(ErrorCode::TooManySiblings));
    for copy in c.copies("merged", b"p").await {
        assert_eq!(copy.len(), 2);
    }
}

#[tokio::test]
async fn a_write_retried_at_a_second_coordinator_takes_effect_once() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    c.coordinate_twice(b"once").await;
    c.up(&n(0));
    // Both versions meet on every replica (as hint replay, read repair or
    // Merkle repair would bring them).
    let mut all = Vec::new();
    for copy in c.copies("plain", b"k").await {
        all.extend(copy.into_versions());
    }
    let mut clocks: Vec<Clock> = Vec::new();
    for v in &all {
        if !clocks.contains(&v.clock) {
            clocks.push(v.clock.clone());
        }
    }
    assert_eq!(clocks.len(), 2, "the write was coordinated twice: {all:?}");
    for id in [n(0), n(1), n(2)] {
        let answer = c
            .node(&id)
            .serve_peer(
                PeerRequest::Apply {
                    keyspace: "plain".into(),
                    key: b"k".to_vec(),
                    versions: all.clone(),
                    hint_for: None,
                },
                DEADLINE,
            )
            .await;
        assert!(matches!(answer, PeerResponse::Applied), "{answer:?}");
    }
    // One version of the write everywhere, the same on every replica, and
    // a read sees the value once.
    let copies = c.copies("plain", b"k").await;
    for copy in &copies {
        assert_eq!(copy.len(), 1, "two versions of one write: {copy:?}");
        assert_eq!(copy.encode(), copies[0].encode());
    }
    assert_eq!(
        values(&c.get(&n(2), "plain", b"k").await),
        vec![b"once".to_vec()]
    );
}

#[tokio::test]
async fn a_write_whose_deadline_has_passed_is_not_issued() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    let node = c.node(&n(0));
    let late = node
        .write(
            "plain",
            b"k",
            Some(b"late".to_vec()),
            Clock::new(),
            [7; 16],
            Consistency::LocalQuorum,
            Duration::ZERO,
        )
        .await;
    match late {
        Err(e @ CoordinatorError::Expired) => assert_eq!(e.to_wire().code, ErrorCode::Timeout),
        other => panic!("a write past its deadline was issued: {other:?}"),
    }
    for copy in c.copies("plain", b"k").await {
        assert!(copy.is_empty(), "{copy:?}");
    }
}

#[tokio::test]
async fn a_collapsed_write_reaches_the_replica_where_a_later_write_replaced_one_copy() {
    let c = cluster(3, 3, Arc::new(NoMerge), Limits::default());
    let (_stop, stop) = watch::channel(false);
    for i in 0..3 {
        let (node, stop) = (c.node(&n(i)), stop.clone());
        tokio::spawn(async move { node.spread_collapsed(stop).await });
    }
    // W reaches n0 alone and a second dot at n1 and n2; a client reads
    // that copy at n1 and writes W2 over it.
    c.coordinate_twice(b"w").await;
    let b = c.stores[&n(1)]
        .get("plain", b"k")
        .await
        .unwrap()
        .into_versions();
    let seen = c.get(&n(1), "plain", b"k").await;
    c.put(&n(1), b"k", b"w2", seen.lub(), 43).await.unwrap();
    c.up(&n(0));
    let a = c.stores[&n(0)]
        .get("plain", b"k")
        .await
        .unwrap()
        .into_versions();
    let w2 = c.stores[&n(1)]
        .get("plain", b"k")
        .await
        .unwrap()
        .into_versions();
    let apply = |to: usize, versions: Vec<Version>| {
        let node = c.node(&n(to));
        async move {
            let request = PeerRequest::Apply {
                keyspace: "plain".into(),
                key: b"k".to_vec(),
                versions,
                hint_for: None,
            };
            node.serve_peer(request, DEADLINE).await
        }
    };
    // n0 gets the second copy while it still holds the first (and
    // collapses them), then W2; n1 and n2 get the first copy after W2
    // replaced the second: they cannot collapse anything.
    for (to, versions) in [(0, b), (0, w2), (1, a.clone()), (2, a)] {
        assert!(matches!(apply(to, versions).await, PeerResponse::Applied));
    }
    // The version n0 made is spread: every replica ends the same.
    let started = std::time::Instant::now();
    loop {
        let copies = c.copies("plain", b"k").await;
        if copies.iter().all(|s| s.encode() == copies[0].encode()) {
            assert_eq!(copies[0].len(), 2, "{copies:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "replicas differ: {copies:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn blind(c: &Cluster, keyspace: &str, i: u8) {
    c.node(&n(0))
        .write(
            keyspace,
            b"k",
            Some(vec![i]),
            Clock::new(),
            [i; 16],
            Consistency::All,
            DEADLINE,
        )
        .await
        .unwrap();
}

async fn read_answer(c: &Cluster, keyspace: &str) -> isthmus_core::coordinator::ReadAnswer {
    c.node(&n(0))
        .read(keyspace, b"k", Consistency::LocalQuorum, DEADLINE)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_read_names_the_failed_merge_and_only_in_a_keyspace_that_merges() {
    let failing = cluster(3, 3, Arc::new(Failing), Limits::default());
    for i in 1..=2 {
        blind(&failing, "merged", i).await;
        blind(&failing, "plain", i).await;
    }
    let answer = read_answer(&failing, "merged").await;
    assert_eq!(answer.set.len(), 2, "the siblings are kept");
    let failure = answer.merge_failure.expect("the failed merge is named");
    assert_eq!(failure.class, isthmus_core::merge::FailureClass::Trap);
    let plain = read_answer(&failing, "plain").await;
    assert_eq!(plain.set.len(), 2);
    assert_eq!(plain.merge_failure, None, "no resolver, no flag");

    let working = cluster(3, 3, Arc::new(Concat), Limits::default());
    for i in 1..=2 {
        blind(&working, "merged", i).await;
    }
    let answer = read_answer(&working, "merged").await;
    assert_eq!(answer.set.len(), 1);
    assert_eq!(answer.merge_failure, None);
}

/// A bridge whose outbox never takes a write: a write waits in it, after
/// its coordinator applied it, until the write's request is dropped.
struct Stalled;

impl Bridge for Stalled {
    fn enqueue<'a>(
        &'a self,
        _: &'a str,
        _: &'a [u8],
        _: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::pending())
    }

    fn receive<'a>(
        &'a self,
        _: &'a DcName,
        _: &'a [u8],
        _: &'a dyn Deliver,
    ) -> BoxFuture<'a, Result<Vec<ShipRefusal>, WireError>> {
        Box::pin(std::future::pending())
    }

    fn report(&self) -> Vec<BridgeReport> {
        Vec::new()
    }

    fn quarantine(
        &self,
        _: QuarantineRequest,
    ) -> BoxFuture<'_, Result<QuarantineResponse, WireError>> {
        Box::pin(std::future::pending())
    }
}

/// A request's deadline drops its handler wherever it is: a write its
/// coordinator already applied still goes to the other replicas (or to
/// hints for them), or the coordinator alone would hold it until repair.
#[tokio::test]
async fn a_write_applied_at_its_coordinator_reaches_the_replicas_when_its_request_is_dropped() {
    let c = cluster_with(
        3,
        3,
        Arc::new(NoMerge),
        Limits::default(),
        Some(Arc::new(Stalled)),
    );
    let node = c.node(&n(0));
    let write = node.write(
        "plain",
        b"k",
        Some(b"v".to_vec()),
        Clock::new(),
        [5; 16],
        Consistency::LocalQuorum,
        DEADLINE,
    );
    let dropped = tokio::time::timeout(Duration::from_millis(100), write).await;
    assert!(dropped.is_err(), "the write finished: {dropped:?}");
    let mut copies = Vec::new();
    for _ in 0..50 {
        copies = c
            .copies("plain", b"k")
            .await
            .iter()
            .map(|copy| values(copy) == vec![b"v".to_vec()])
            .collect();
        if copies.iter().all(|held| *held) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(copies, vec![true; 3], "which replicas hold the write");
}
