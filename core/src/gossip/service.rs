//! The gossip worker: spreads membership, watches heartbeats, and publishes
//! the [`ClusterView`] the coordinator routes by.
//!
//! Every round (one second by default) the node bumps its own heartbeat and
//! exchanges views with one random live peer, and with a seed while it
//! knows no live peer (or one round in ten, so partitioned groups find each
//! other again). An exchange is push-pull: the sender ships its digest and
//! all its entries; the receiver merges them and answers with the entries
//! it holds newer than the sender's digest. Any entry whose
//! `(generation, version)` grew counts as a heartbeat of that node for the
//! phi accrual detector.
//!
//! Every entry that arrives, in an exchange or in its answer, is first
//! judged by [`membership::validate`] against the sender's id (the one
//! its handshake named) and this node's wall clock; a refused entry
//! changes nothing (not the membership, not the transport's addresses or
//! datacenters, not the failure detector), and is counted by kind
//! ([`Gossiper::rejections`]) and logged at warn (the 1st, 2nd, 4th,
//! 8th... of each kind, so a flood of forged entries does not flood the
//! log).
//!
//! Until it has heard from a peer (an answer to one of its exchanges, or
//! a peer's exchange: a member's, or one of which nothing was refused;
//! not its own answer through a seed address that is its own), a node that has seeds other than itself publishes an empty ring: knowing only itself, it would otherwise place every key on
//! itself, and a node restarting behind a slow or cut link would
//! acknowledge writes at ONE that no real replica ever receives. With an
//! empty ring its coordinator refuses requests as unavailable instead.
//!
//! The worker runs over any [`GossipTransport`]: [`TcpTransport`] in a
//! node, a simulated network in deterministic tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::{Channel, ClientError};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::detector::{ArrivalWindow, DetectorConfig};
use super::membership::{
    self, Endpoint, EntryBounds, GossipRejection, Membership, NodeStatus, Receiver, RejectionKind,
    Sender,
};
use crate::model::DcName;
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::{NodeId, Ring};
use crate::transport::TcpTransport;
use crate::transport::Transport;
use crate::view::ClusterView;
use crate::worker::WorkerHandle;

/// What gossip needs of the network: calls by node id (a
/// [`Transport`]), the addresses and datacenters it learns, and one-off
/// channels to seeds, whose ids are not known yet.
pub trait GossipTransport: Transport {
    /// Learn (or update) where `node` listens.
    fn set_addr(&self, node: &NodeId, addr: &str);

    /// Learn which datacenter `node` is in.
    fn set_dc(&self, node: &NodeId, dc: &DcName);

    /// Open a channel to an address (a seed).
    fn connect(
        &self,
        addr: &str,
    ) -> impl Future<Output = Result<Channel<PeerRequest, PeerResponse>, ClientError>> + Send;
}

impl GossipTransport for TcpTransport {
    fn set_addr(&self, node: &NodeId, addr: &str) {
        TcpTransport::set_addr(self, node, addr);
    }

    fn set_dc(&self, node: &NodeId, dc: &DcName) {
        TcpTransport::set_dc(self, node, dc);
    }

    fn connect(
        &self,
        addr: &str,
    ) -> impl Future<Output = Result<Channel<PeerRequest, PeerResponse>, ClientError>> + Send {
        TcpTransport::connect(self, addr)
    }
}

/// Tuning of the gossip worker.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// Deadline of one exchange.
    pub exchange_timeout: Duration,
    /// Failure detector tuning.
    pub detector: DetectorConfig,
    /// Most vnodes an entry may claim; entries claiming more (or none)
    /// are refused. A node's own `vnodes` must be within it (checked at
    /// start). Default [`VNODES_MAX`](crate::config::VNODES_MAX).
    pub vnodes_max: u32,
    /// How far a generation (a start time in Unix milliseconds) may be
    /// ahead of this node's wall clock; entries further ahead are refused.
    /// Default five minutes: clocks of a cluster are NTP-synchronised to
    /// well within it, and a generation within it is superseded by the
    /// node's next start a few minutes later at the latest.
    pub generation_skew_max: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            interval: Duration::from_millis(500),
            exchange_timeout: Duration::from_secs(1),
            detector: DetectorConfig {
                initial_interval: Duration::from_millis(500),
                ..DetectorConfig::default()
            },
            vnodes_max: crate::config::VNODES_MAX,
            generation_skew_max: Duration::from_secs(5 * 60),
        }
    }
}

impl GossipConfig {
    /// The bounds entries are judged by.
    pub fn bounds(&self) -> EntryBounds {
        EntryBounds {
            vnodes_max: self.vnodes_max,
            generation_skew_max_ms: u64::try_from(self.generation_skew_max.as_millis())
                .unwrap_or(u64::MAX),
        }
    }
}

/// Entries refused, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    counts: [u64; RejectionKind::ALL.len()],
}

impl Rejections {
    /// Entries refused for `kind`.
    pub fn count(&self, kind: RejectionKind) -> u64 {
        self.counts[kind as usize]
    }

    /// Entries refused, of any kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Count one; returns the new count of its kind.
    fn add(&mut self, kind: RejectionKind) -> u64 {
        let n = &mut self.counts[kind as usize];
        *n = n.saturating_add(1);
        *n
    }
}

struct State {
    membership: Membership,
    windows: HashMap<NodeId, ArrivalWindow>,
    round: u64,
    /// Whether the view holds what a peer knows (or there is no one to
    /// ask): until then the published ring is empty.
    joined: bool,
    /// Seed addresses that turned out to be this node.
    self_seeds: BTreeSet<String>,
    /// Entries refused, by kind.
    rejections: Rejections,
}

/// One node's gossip participant.
pub struct Gossiper<T = TcpTransport> {
    me: NodeId,
    seeds: Vec<String>,
    config: GossipConfig,
    state: Mutex<State>,
    transport: Arc<T>,
    view: watch::Sender<Arc<ClusterView>>,
    started: Instant,
    load: Box<dyn Fn() -> u64 + Send + Sync>,
    /// The wall clock generations are judged against, in Unix ms.
    wall_clock: fn() -> u64,
}

impl<T: GossipTransport> Gossiper<T> {
    /// A gossiper announcing `own`, joining through `seeds`; `wall_clock`
    /// (Unix ms, the clock `own.generation` was read from) is what other
    /// nodes' generations are judged against.
    pub fn new(
        own: Endpoint,
        seeds: Vec<String>,
        config: GossipConfig,
        transport: Arc<T>,
        load: Box<dyn Fn() -> u64 + Send + Sync>,
        wall_clock: fn() -> u64,
    ) -> (Arc<Self>, watch::Receiver<Arc<ClusterView>>) {
        let me = own.id.clone();
        let joined = seeds.iter().all(|s| *s == own.addr);
        let mut membership = Membership::new();
        membership.observe(own);
        let (view, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        let state = State {
            membership,
            windows: HashMap::new(),
            round: 0,
            joined,
            self_seeds: BTreeSet::new(),
            rejections: Rejections::default(),
        };
        let gossiper = Arc::new(Gossiper {
            me,
            seeds,
            config,
            state: Mutex::new(state),
            transport,
            view,
            started: Instant::now(),
            load,
            wall_clock,
        });
        gossiper.publish();
        (gossiper, view_rx)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.clone()
    }

    /// A copy of the current membership view.
    pub fn membership(&self) -> Membership {
        self.state.lock().membership.clone()
    }

    /// Entries refused so far, by kind.
    pub fn rejections(&self) -> Rejections {
        self.state.lock().rejections.clone()
    }

    /// The failure detector's suspicion of each peer it has heard from
    /// (phi: at `detector.phi_threshold` a peer is held down), for
    /// `/metrics`.
    pub fn phis(&self) -> Vec<(NodeId, f64)> {
        let now = self.now_ms();
        let state = self.state.lock();
        state
            .windows
            .iter()
            .map(|(id, w)| (id.clone(), w.phi(now, &self.config.detector)))
            .collect()
    }

    /// Whether the node has heard what a peer knows (or there is no one
    /// to ask): until then it publishes an empty ring.
    pub fn joined(&self) -> bool {
        self.state.lock().joined
    }

    /// Nodes currently believed alive (self included).
    pub fn alive(&self) -> BTreeSet<NodeId> {
        self.view.borrow().alive.clone()
    }

    /// Change this node's announced status (joining, leaving, ...).
    pub fn set_status(&self, status: NodeStatus) {
        {
            let mut state = self.state.lock();
            if let Some(mut own) = state.membership.get(&self.me).cloned() {
                own.status = status;
                own.version += 1;
                state.membership.observe(own);
            }
        }
        self.publish();
    }

    /// Answer the exchange of peer `from` (the node id its handshake
    /// named): merge what it sent, return what it lacks.
    pub fn on_exchange(
        &self,
        from: &NodeId,
        digest: &[(NodeId, u64, u64)],
        entries: Vec<Endpoint>,
    ) -> Vec<Endpoint> {
        let reply = {
            let mut state = self.state.lock();
            let member = is_member(&state.membership, from);
            let tells = entries.iter().any(|e| e.id != self.me);
            let refused = self.absorb(&mut state, from, member, entries);
            // Heard from a peer: the view now holds what it knows, unless
            // entries of a non-member were refused (it may announce only
            // itself; see the module docs).
            if tells && (member || refused == 0) {
                state.joined = true;
            }
            state.membership.newer_than(digest)
        };
        self.publish();
        reply
    }

    /// Judge each entry sent by `from` and apply those accepted; `member`:
    /// whether `from` may tell of nodes this one does not know (judged
    /// before the exchange, so a non-member cannot vouch for others by
    /// announcing itself first). Returns how many were refused.
    fn absorb(
        &self,
        state: &mut State,
        from: &NodeId,
        member: bool,
        entries: Vec<Endpoint>,
    ) -> usize {
        let now = self.now_ms();
        let receiver = Receiver {
            me: &self.me,
            now_ms: (self.wall_clock)(),
            bounds: self.config.bounds(),
        };
        let sender = Sender { id: from, member };
        let mut refused = 0;
        for entry in entries {
            if let Err(rejection) =
                membership::validate(&entry, &state.membership, &receiver, &sender)
            {
                self.reject(state, &rejection);
                refused += 1;
                continue;
            }
            if entry.id == self.me {
                continue; // only this node writes its own entry
            }
            let (id, addr, dc) = (
                entry.id.clone(),
                entry.addr.clone(),
                entry.placement.dc.clone(),
            );
            // Applied only once judged and newer: a stale copy carries
            // no address or datacenter to learn.
            if state.membership.observe(entry) {
                self.transport.set_addr(&id, &addr);
                self.transport.set_dc(&id, &dc);
                state
                    .windows
                    .entry(id)
                    .or_default()
                    .heartbeat(now, &self.config.detector);
            }
        }
        refused
    }

    /// Count a refused entry, and log the 1st, 2nd, 4th, 8th... of its
    /// kind.
    fn reject(&self, state: &mut State, rejection: &GossipRejection) {
        let kind = rejection.kind();
        let count = state.rejections.add(kind);
        if count.is_power_of_two() {
            tracing::warn!(
                node = %self.me,
                reason = kind.name(),
                count,
                "gossip entry refused: {rejection}"
            );
        }
    }

    /// Rebuild the ring and the live set, and publish them.
    fn publish(&self) {
        let now = self.now_ms();
        let view = {
            let state = self.state.lock();
            // Not joined: no rings (see the module docs).
            let members: Vec<&Endpoint> = state
                .membership
                .endpoints()
                .values()
                .filter(|_| state.joined)
                .filter(|e| matches!(e.status, NodeStatus::Normal | NodeStatus::Leaving))
                .collect();
            let ring = Ring::build(members.iter().map(|e| (&e.id, &e.placement, e.vnodes)));
            let mut next = Ring::build(
                state
                    .membership
                    .endpoints()
                    .values()
                    .filter(|_| state.joined)
                    .filter(|e| matches!(e.status, NodeStatus::Normal | NodeStatus::Joining))
                    .map(|e| (&e.id, &e.placement, e.vnodes)),
            );
            // Where nothing moves (nearly always), a write's check for
            // pending owners is then a pointer comparison.
            next.share_equal(&ring);
            let alive = state
                .membership
                .endpoints()
                .values()
                .filter(|e| e.status != NodeStatus::Left)
                .filter(|e| {
                    e.id == self.me
                        || state
                            .windows
                            .get(&e.id)
                            .is_some_and(|w| !w.is_down(now, &self.config.detector))
                })
                .map(|e| e.id.clone())
                .collect();
            ClusterView { ring, alive, next }
        };
        self.view.send_replace(Arc::new(view));
    }

    /// One gossip round.
    pub async fn round(&self) {
        let (digest, entries, target, round) = {
            let mut state = self.state.lock();
            state.round += 1;
            if let Some(mut own) = state.membership.get(&self.me).cloned() {
                own.version += 1;
                own.load_bytes = (self.load)();
                state.membership.observe(own);
            }
            let alive = self.view.borrow().alive.clone();
            let peers: Vec<&NodeId> = state
                .membership
                .endpoints()
                .keys()
                .filter(|id| **id != self.me)
                .collect();
            let live: Vec<&NodeId> = peers
                .iter()
                .copied()
                .filter(|id| alive.contains(*id))
                .collect();
            // Cheap deterministic spread: rotate through candidates by round.
            let pick = |list: &[&NodeId]| {
                list.get((state.round as usize) % list.len().max(1))
                    .map(|id| (*id).clone())
            };
            let target = match pick(&live) {
                Some(id) if !state.round.is_multiple_of(10) || self.seeds.is_empty() => Some(id),
                _ => pick(&peers).filter(|_| self.seeds.is_empty()),
            };
            (
                state.membership.digest(),
                state.membership.endpoints().values().cloned().collect(),
                target,
                state.round,
            )
        };
        let request = PeerRequest::Gossip { digest, entries };
        let timeout = self.config.exchange_timeout;
        // A seed may be this node itself, under its own address: its
        // answer teaches nothing, unless every seed is.
        let (answer, from_self) = match target {
            Some(node) => {
                let answer = self.transport.call(&node, request, timeout).await.ok();
                (answer.map(|a| (a, node, None)), false)
            }
            None => match self.seeds.get(round as usize % self.seeds.len().max(1)) {
                Some(addr) => match self.transport.connect(addr).await {
                    Ok(channel) => {
                        let from_self = channel.peer().node_id == self.me.0;
                        if from_self {
                            self.state.lock().self_seeds.insert(addr.clone());
                        }
                        // A seed is one the operator named: it may tell
                        // of nodes this one does not know yet.
                        let answer = channel.call(request, timeout).await.ok();
                        let from = NodeId(channel.peer().node_id.clone());
                        (answer.map(|a| (a, from, Some(true))), from_self)
                    }
                    Err(_) => (None, false),
                },
                None => (None, false),
            },
        };
        if let Some((PeerResponse::Gossip { entries }, from, seed)) = answer {
            let mut state = self.state.lock();
            if !from_self || state.self_seeds.len() == self.seeds.len() {
                state.joined = true;
            }
            let member = seed.unwrap_or_else(|| is_member(&state.membership, &from));
            self.absorb(&mut state, &from, member, entries);
        }
        self.publish();
    }

    /// Run rounds until `stop` fires.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, worker: WorkerHandle) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    worker.busy();
                    self.round().await;
                    worker.idle();
                }
                _ = stop.changed() => break,
            }
        }
    }
}

/// Whether `node` is a member of `view`: known, and not `Left`.
fn is_member(view: &Membership, node: &NodeId) -> bool {
    view.get(node).is_some_and(|e| e.status != NodeStatus::Left)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parking_lot::RwLock;

    use super::*;
    use crate::coordinator::{Coordinator, CoordinatorConfig, CoordinatorError};
    use crate::gossip::membership::RejectionKind;
    use crate::hints::HintSink;
    use crate::limit::Limits;
    use crate::merge::NoMerge;
    use crate::model::{Actor, Clock, Consistency, KeyspaceConfig, Version};
    use crate::ring::Placement;
    use crate::store::{MemStore, StoreError};

    /// A network where nobody answers.
    struct Silent;

    impl Transport for Silent {
        async fn call(
            &self,
            to: &NodeId,
            _: PeerRequest,
            _: Duration,
        ) -> Result<PeerResponse, ClientError> {
            Err(ClientError::Connect {
                addr: to.0.clone(),
                reason: "unreachable".into(),
            })
        }
    }

    impl GossipTransport for Silent {
        fn set_addr(&self, _: &NodeId, _: &str) {}

        fn set_dc(&self, _: &NodeId, _: &DcName) {}

        async fn connect(
            &self,
            addr: &str,
        ) -> Result<Channel<PeerRequest, PeerResponse>, ClientError> {
            Err(ClientError::Connect {
                addr: addr.to_owned(),
                reason: "unreachable".into(),
            })
        }
    }

    struct NoHints;

    impl HintSink for NoHints {
        async fn add(
            &self,
            _: &NodeId,
            _: &str,
            _: &[u8],
            _: Vec<Version>,
        ) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn endpoint(i: u32) -> Endpoint {
        Endpoint {
            id: NodeId(format!("n{i}")),
            addr: format!("n{i}:7000"),
            placement: Placement {
                dc: "dc1".into(),
                rack: format!("r{}", i % 2),
            },
            vnodes: 8,
            generation: 1,
            version: 1,
            status: NodeStatus::Normal,
            load_bytes: 0,
        }
    }

    fn gossiper(seeds: &[&str]) -> (Arc<Gossiper<Silent>>, watch::Receiver<Arc<ClusterView>>) {
        Gossiper::new(
            endpoint(1),
            seeds.iter().map(|s| s.to_string()).collect(),
            GossipConfig::default(),
            Arc::new(Silent),
            Box::new(|| 0),
            crate::wall_clock::now_ms,
        )
    }

    #[tokio::test]
    async fn a_node_that_has_heard_from_no_peer_places_no_key_and_acknowledges_no_write() {
        // Restarted behind a cut link: its seeds do not answer.
        let (gossiper, view) = gossiper(&["n2:7000"]);
        gossiper.round().await;
        assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 0);
        let keyspaces = BTreeMap::from([(
            "ks".to_owned(),
            KeyspaceConfig {
                replication: BTreeMap::from([("dc1".into(), 3)]),
                ..KeyspaceConfig::default()
            },
        )]);
        let coordinator = Coordinator::new(
            CoordinatorConfig {
                node: NodeId("n1".into()),
                dc: "dc1".into(),
                actor: Actor(1),
                limits: Limits::default(),
                clock_skew_max_ms: crate::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
                merge: Default::default(),
            },
            MemStore::new(),
            Arc::new(Silent),
            Arc::new(NoHints),
            Arc::new(NoMerge),
            Arc::new(RwLock::new(crate::model::keyspace_map(keyspaces))),
            view.clone(),
        );
        let write = |key: &'static [u8]| {
            coordinator.write(
                "ks",
                key,
                Some(b"v".to_vec()),
                Clock::new(),
                [7; 16],
                Consistency::One,
                Duration::from_millis(100),
            )
        };
        // Knowing only itself, it used to be every key's only replica and
        // acknowledged this write at ONE on itself alone.
        assert!(matches!(
            write(b"k").await,
            Err(CoordinatorError::NoReplicas { .. })
        ));
        assert!(
            coordinator
                .replica()
                .read("ks", b"k")
                .await
                .unwrap()
                .is_empty()
        );

        // A peer's exchange brings the membership: the ring is whole. Its
        // first exchange, while it is not a member yet, teaches only its
        // own entry (the others are refused, and the ring stays empty);
        // the next, the rest.
        let n2 = NodeId("n2".into());
        let entries: Vec<Endpoint> = (2..=4).map(endpoint).collect();
        gossiper.on_exchange(&n2, &[], entries.clone());
        assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 0);
        gossiper.on_exchange(&n2, &[], entries);
        assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 4);
    }

    /// A network where the seed `me:1` is the node itself (a one-request
    /// stand-in for its own server, which knows nothing newer) and every
    /// other address is unreachable.
    struct OwnSeed;

    impl Transport for OwnSeed {
        async fn call(
            &self,
            to: &NodeId,
            request: PeerRequest,
            timeout: Duration,
        ) -> Result<PeerResponse, ClientError> {
            Silent.call(to, request, timeout).await
        }
    }

    impl GossipTransport for OwnSeed {
        fn set_addr(&self, _: &NodeId, _: &str) {}

        fn set_dc(&self, _: &NodeId, _: &DcName) {}

        async fn connect(
            &self,
            addr: &str,
        ) -> Result<Channel<PeerRequest, PeerResponse>, ClientError> {
            use isthmus_client::wire::connection::Connection;
            use isthmus_client::wire::{Envelope, Hello, HelloAck, Reply, WireError, frame};
            if addr != "me:1" {
                return Silent.connect(addr).await;
            }
            let (near, far) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let mut conn = Connection::new(far, frame::FRAME_BYTES_MAX_DEFAULT);
                let Ok(Some(hello)) = conn.read::<Hello>().await else {
                    return;
                };
                let ack = HelloAck {
                    magic: hello.magic,
                    version: hello.version,
                    node_id: "n1".into(),
                    dc: "dc1".into(),
                    clock_ms: 1,
                };
                let _ = conn.write(&Ok::<_, WireError>(ack)).await;
                if let Ok(Some(request)) = conn.read::<Envelope<PeerRequest>>().await {
                    let reply = Reply {
                        id: request.id,
                        clock_ms: 1,
                        body: PeerResponse::Gossip { entries: vec![] },
                    };
                    let _ = conn.write(&reply).await;
                }
            });
            Channel::handshake(
                Box::new(near),
                addr,
                "n1",
                isthmus_client::wire::PeerRole::Node,
                Duration::from_secs(1),
            )
            .await
        }
    }

    #[tokio::test]
    async fn its_own_answer_through_a_seed_address_is_not_hearing_from_a_peer() {
        let own = |seeds: &[&str]| {
            Gossiper::new(
                endpoint(1),
                seeds.iter().map(|s| s.to_string()).collect(),
                GossipConfig::default(),
                Arc::new(OwnSeed),
                Box::new(|| 0),
                crate::wall_clock::now_ms,
            )
        };
        // Its seeds: itself (under another name) and a peer out of reach.
        let (gossiper, view) = own(&["me:1", "n2:7000"]);
        for _ in 0..4 {
            gossiper.round().await;
        }
        assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 0);
        // Its only seed is itself: once it knows, it is its own cluster.
        let (gossiper, view) = own(&["me:1"]);
        gossiper.round().await;
        assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 1);
    }

    #[test]
    fn a_strangers_exchange_that_announces_only_itself_is_hearing_from_a_peer() {
        // Restarted, its seed down: a peer that restarted too (and knows
        // no one else) calls it.
        let (gossiper, view) = gossiper(&["n9:7000"]);
        gossiper.on_exchange(&NodeId("n2".into()), &[], vec![endpoint(1), endpoint(2)]);
        assert_eq!(gossiper.rejections().total(), 0);
        assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 2);
    }

    #[tokio::test]
    async fn a_node_without_other_seeds_is_its_own_cluster_at_once() {
        for seeds in [&[][..], &["n1:7000"][..]] {
            let (_gossiper, view) = gossiper(seeds);
            assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 1);
        }
    }

    /// A network that answers every call with `answer` and records the
    /// addresses and datacenters gossip teaches it.
    #[derive(Default)]
    struct Recorder {
        answer: Mutex<Vec<Endpoint>>,
        addrs: Mutex<BTreeMap<NodeId, String>>,
        dcs: Mutex<BTreeMap<NodeId, DcName>>,
    }

    impl Transport for Recorder {
        async fn call(
            &self,
            _: &NodeId,
            _: PeerRequest,
            _: Duration,
        ) -> Result<PeerResponse, ClientError> {
            Ok(PeerResponse::Gossip {
                entries: self.answer.lock().clone(),
            })
        }
    }

    impl GossipTransport for Recorder {
        fn set_addr(&self, node: &NodeId, addr: &str) {
            self.addrs.lock().insert(node.clone(), addr.to_owned());
        }

        fn set_dc(&self, node: &NodeId, dc: &DcName) {
            self.dcs.lock().insert(node.clone(), dc.clone());
        }

        async fn connect(
            &self,
            addr: &str,
        ) -> Result<Channel<PeerRequest, PeerResponse>, ClientError> {
            Silent.connect(addr).await
        }
    }

    fn id(i: u32) -> NodeId {
        NodeId(format!("n{i}"))
    }

    /// Node `i` as it announces itself now: started a second ago.
    fn current(i: u32) -> Endpoint {
        Endpoint {
            generation: crate::wall_clock::now_ms() - 1000,
            ..endpoint(i)
        }
    }

    /// `n1`, a cluster of its own, that `n2` and `n3` have each announced
    /// themselves to.
    fn member_of_three() -> (Arc<Gossiper<Recorder>>, Arc<Recorder>) {
        let transport = Arc::new(Recorder::default());
        let (gossiper, _view) = Gossiper::new(
            current(1),
            vec![],
            GossipConfig::default(),
            transport.clone(),
            Box::new(|| 0),
            crate::wall_clock::now_ms,
        );
        for i in [2, 3] {
            gossiper.on_exchange(&id(i), &[], vec![current(i)]);
        }
        assert_eq!(gossiper.membership().endpoints().len(), 3);
        assert_eq!(gossiper.rejections().total(), 0);
        (gossiper, transport)
    }

    /// `entry` newer than what `n1` holds of its node.
    fn bumped(mut entry: Endpoint) -> Endpoint {
        entry.version += 1;
        entry
    }

    #[test]
    fn an_entry_claiming_u32_max_vnodes_is_refused_and_changes_nothing() {
        let (gossiper, _) = member_of_three();
        let before = gossiper.membership();
        let forged = Endpoint {
            vnodes: u32::MAX,
            ..bumped(current(2))
        };
        // Neither relayed by n3 nor announced by n2 itself.
        gossiper.on_exchange(&id(3), &[], vec![forged.clone()]);
        gossiper.on_exchange(&id(2), &[], vec![forged]);
        assert_eq!(gossiper.membership(), before);
        let rejections = gossiper.rejections();
        assert_eq!(rejections.count(RejectionKind::VnodesOutOfBounds), 2);
        assert_eq!(rejections.total(), 2);
    }

    #[test]
    fn a_generation_of_u64_max_is_refused_and_cannot_mark_a_node_left() {
        let (gossiper, _) = member_of_three();
        let before = gossiper.membership();
        let forever_left = Endpoint {
            generation: u64::MAX,
            status: NodeStatus::Left,
            ..current(2)
        };
        gossiper.on_exchange(&id(3), &[], vec![forever_left.clone()]);
        gossiper.on_exchange(&id(2), &[], vec![forever_left]);
        assert_eq!(gossiper.membership(), before);
        assert!(gossiper.alive().contains(&id(2)));
        assert_eq!(
            gossiper.rejections().count(RejectionKind::GenerationAhead),
            2
        );
    }

    #[test]
    fn another_nodes_address_in_third_party_gossip_is_refused_until_the_node_announces_it() {
        let (gossiper, transport) = member_of_three();
        let before = gossiper.membership();
        let moved = Endpoint {
            addr: "10.9.9.9:7000".into(),
            ..bumped(current(2))
        };
        // n3 says n2 moved: refused, the transport still dials n2:7000.
        gossiper.on_exchange(&id(3), &[], vec![moved.clone()]);
        assert_eq!(gossiper.membership(), before);
        assert_eq!(transport.addrs.lock()[&id(2)], "n2:7000");
        let rejections = gossiper.rejections();
        assert_eq!(rejections.count(RejectionKind::AddressFromThirdParty), 1);
        // Nor another datacenter for it.
        let elsewhere = Endpoint {
            placement: Placement {
                dc: "dc2".into(),
                rack: "r0".into(),
            },
            ..bumped(current(2))
        };
        gossiper.on_exchange(&id(3), &[], vec![elsewhere]);
        assert_eq!(gossiper.membership(), before);
        assert_eq!(transport.dcs.lock()[&id(2)], DcName::from("dc1"));
        assert_eq!(
            gossiper
                .rejections()
                .count(RejectionKind::PlacementFromThirdParty),
            1
        );
        // n2 announcing its own new address: taken.
        gossiper.on_exchange(&id(2), &[], vec![moved]);
        assert_eq!(
            gossiper.membership().get(&id(2)).unwrap().addr,
            "10.9.9.9:7000"
        );
        assert_eq!(transport.addrs.lock()[&id(2)], "10.9.9.9:7000");
        assert_eq!(gossiper.rejections().total(), 2);
    }

    #[test]
    fn an_entry_claiming_to_be_the_receiver_is_refused_but_echoes_of_its_own_are_not() {
        let (gossiper, _) = member_of_three();
        let before = gossiper.membership();
        let own = before.get(&id(1)).unwrap().clone();
        // Every exchange carries copies of the receiver's own entry.
        gossiper.on_exchange(&id(2), &[], vec![own.clone()]);
        assert_eq!(gossiper.rejections().total(), 0);
        let impostor = Endpoint {
            status: NodeStatus::Left,
            ..bumped(own)
        };
        gossiper.on_exchange(&id(2), &[], vec![impostor]);
        assert_eq!(gossiper.membership(), before);
        assert_eq!(
            gossiper.rejections().count(RejectionKind::ClaimsReceiver),
            1
        );
    }

    #[test]
    fn a_non_member_may_announce_only_itself() {
        let (gossiper, transport) = member_of_three();
        // n9 is new: its own entry is taken, the node it vouches for not.
        gossiper.on_exchange(&id(9), &[], vec![current(9), current(5)]);
        let membership = gossiper.membership();
        assert!(membership.get(&id(9)).is_some());
        assert!(membership.get(&id(5)).is_none());
        assert!(!transport.addrs.lock().contains_key(&id(5)));
        assert_eq!(
            gossiper
                .rejections()
                .count(RejectionKind::UnknownFromNonMember),
            1
        );
        // A member tells of a node this one does not know: taken.
        gossiper.on_exchange(&id(2), &[], vec![current(5)]);
        assert!(gossiper.membership().get(&id(5)).is_some());
        assert_eq!(gossiper.rejections().total(), 1);
    }

    #[test]
    fn a_restarted_node_with_a_generation_within_the_skew_is_taken_even_relayed() {
        let (gossiper, _) = member_of_three();
        // Its clock a minute ahead of this one's: within the five minutes.
        let restarted = Endpoint {
            generation: crate::wall_clock::now_ms() + 60_000,
            version: 1,
            status: NodeStatus::Joining,
            ..endpoint(2)
        };
        gossiper.on_exchange(&id(3), &[], vec![restarted.clone()]);
        assert_eq!(gossiper.membership().get(&id(2)), Some(&restarted));
        assert_eq!(gossiper.rejections().total(), 0);
        // Ten minutes ahead: refused.
        let too_far = Endpoint {
            generation: crate::wall_clock::now_ms() + 600_000,
            ..endpoint(2)
        };
        gossiper.on_exchange(&id(2), &[], vec![too_far]);
        assert_eq!(gossiper.membership().get(&id(2)), Some(&restarted));
        assert_eq!(
            gossiper.rejections().count(RejectionKind::GenerationAhead),
            1
        );
    }

    #[tokio::test]
    async fn the_answer_to_a_round_is_judged_as_coming_from_the_node_called() {
        let (gossiper, transport) = member_of_three();
        let before = gossiper.membership();
        // Whoever this node calls (n2 or n3) answers with a new address
        // for both: each may change only its own.
        *transport.answer.lock() = [2, 3]
            .map(|i| Endpoint {
                addr: format!("10.0.0.{i}:7000"),
                ..bumped(before.get(&id(i)).unwrap().clone())
            })
            .to_vec();
        gossiper.round().await;
        let after = gossiper.membership();
        let moved: Vec<u32> = [2, 3]
            .into_iter()
            .filter(|&i| after.get(&id(i)) != before.get(&id(i)))
            .collect();
        assert_eq!(moved.len(), 1, "only the node called moves: {moved:?}");
        assert_eq!(
            gossiper
                .rejections()
                .count(RejectionKind::AddressFromThirdParty),
            1
        );
    }
}
