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
//! Until it has heard from a peer (an answer to one of its exchanges, or a
//! peer's exchange; not its own answer through a seed address that is its
//! own), a node that has seeds other than itself publishes an empty ring: knowing only itself, it would otherwise place every key on
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
use super::membership::{Endpoint, Membership, NodeStatus};
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
        }
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
}

impl<T: GossipTransport> Gossiper<T> {
    /// A gossiper announcing `own`, joining through `seeds`.
    pub fn new(
        own: Endpoint,
        seeds: Vec<String>,
        config: GossipConfig,
        transport: Arc<T>,
        load: Box<dyn Fn() -> u64 + Send + Sync>,
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

    /// Answer a peer's exchange: merge what it sent, return what it lacks.
    pub fn on_exchange(
        &self,
        digest: &[(NodeId, u64, u64)],
        entries: Vec<Endpoint>,
    ) -> Vec<Endpoint> {
        let reply = {
            let mut state = self.state.lock();
            if entries.iter().any(|e| e.id != self.me) {
                state.joined = true;
            }
            self.absorb(&mut state, entries);
            state.membership.newer_than(digest)
        };
        self.publish();
        reply
    }

    fn absorb(&self, state: &mut State, entries: Vec<Endpoint>) {
        let now = self.now_ms();
        for entry in entries {
            if entry.id == self.me {
                continue; // only this node writes its own entry
            }
            let id = entry.id.clone();
            self.transport.set_addr(&id, &entry.addr);
            self.transport.set_dc(&id, &entry.placement.dc);
            if state.membership.observe(entry) {
                state
                    .windows
                    .entry(id)
                    .or_default()
                    .heartbeat(now, &self.config.detector);
            }
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
            let next = Ring::build(
                state
                    .membership
                    .endpoints()
                    .values()
                    .filter(|_| state.joined)
                    .filter(|e| matches!(e.status, NodeStatus::Normal | NodeStatus::Joining))
                    .map(|e| (&e.id, &e.placement, e.vnodes)),
            );
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
            Some(node) => (
                self.transport.call(&node, request, timeout).await.ok(),
                false,
            ),
            None => match self.seeds.get(round as usize % self.seeds.len().max(1)) {
                Some(addr) => match self.transport.connect(addr).await {
                    Ok(channel) => {
                        let from_self = channel.peer().node_id == self.me.0;
                        if from_self {
                            self.state.lock().self_seeds.insert(addr.clone());
                        }
                        (channel.call(request, timeout).await.ok(), from_self)
                    }
                    Err(_) => (None, false),
                },
                None => (None, false),
            },
        };
        if let Some(PeerResponse::Gossip { entries }) = answer {
            let mut state = self.state.lock();
            if !from_self || state.self_seeds.len() == self.seeds.len() {
                state.joined = true;
            }
            self.absorb(&mut state, entries);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parking_lot::RwLock;

    use super::*;
    use crate::coordinator::{Coordinator, CoordinatorConfig, CoordinatorError};
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
            },
            MemStore::new(),
            Arc::new(Silent),
            Arc::new(NoHints),
            Arc::new(NoMerge),
            Arc::new(RwLock::new(keyspaces)),
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
            Err(CoordinatorError::Unavailable { .. })
        ));
        assert!(
            coordinator
                .replica()
                .read("ks", b"k")
                .await
                .unwrap()
                .is_empty()
        );

        // A peer's exchange brings the membership: the ring is whole.
        let entries: Vec<Endpoint> = (2..=4).map(endpoint).collect();
        gossiper.on_exchange(&[], entries);
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
            use isthmus_client::wire::{Envelope, Hello, HelloAck, Reply, frame};
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
                };
                let _ = conn.write(&ack).await;
                if let Ok(Some(request)) = conn.read::<Envelope<PeerRequest>>().await {
                    let reply = Reply {
                        id: request.id,
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

    #[tokio::test]
    async fn a_node_without_other_seeds_is_its_own_cluster_at_once() {
        for seeds in [&[][..], &["n1:7000"][..]] {
            let (_gossiper, view) = gossiper(seeds);
            assert_eq!(view.borrow().ring.node_count(&"dc1".into()), 1);
        }
    }
}
