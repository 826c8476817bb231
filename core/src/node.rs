//! A running node: the parts of core wired together, each background loop
//! a named task that shutdown awaits.
//!
//! ```text
//!             clients, peers (one port)
//!                      │
//!                   server ──► NodeHandler ──► Coordinator ──► EngineStore (engine)
//!                                  │               │  └──────► TcpTransport ──► peers
//!                                  │               └─────────► HintStore
//!                                  └──► Gossiper ──► ClusterView (watch) ──► Coordinator
//! workers: gossip (rounds), handoff (hint replay), repair (scheduled
//! Merkle repair), server (accept loop)
//! ```
//!
//! What it is not: the place where merge functions run. The binary hands a
//! [`MergeHook`] in (the wasm host); core never sees wasmtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_client::wire::{
    Context, ErrorCode, NodeReport, RepairReport, RequestBody, ResponseBody, Sibling, WireError,
    decode, encode,
};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bridge::{BoxFuture, BridgeFactory, BridgeParts, FullSync};
use crate::config::{FsyncMode, NodeConfig, parse_resolver_binding};
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::engine::{EngineOptions, FsyncPolicy};
use crate::gossip::membership::{Endpoint, NodeStatus};
use crate::gossip::service::{GossipConfig, Gossiper};
use crate::hints::{HintConfig, HintStore};
use crate::limit::Limits;
use crate::merge::MergeHook;
use crate::model::{Actor, Clock, DcName, KeyspaceConfig, VersionSet};
use crate::peer::{PeerRequest, PeerResponse};
use crate::repair::{RepairConfig, RepairError, RepairStats, Repairer, Share, StoreData};
use crate::replica::Replica;
use crate::ring::{NodeId, Placement};
use crate::server::{self, Handler, ServerConfig};
use crate::store::EngineStore;
use crate::system::{self, REGISTRY_KEYSPACE, RegistryHook, SystemStore, SystemWriter};
use crate::transport::TcpTransport;

pub use crate::limit::CONTEXT_ENTRIES_MAX;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The data directory belongs to another node or is unreadable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The storage engine could not open.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// What the OS said.
        reason: String,
    },
}

type NodeCoordinator = Coordinator<EngineStore, TcpTransport, Arc<HintStore>>;

/// A node's Merkle repair: its store, absorbing through its replica.
pub type NodeRepairer = Repairer<StoreData<EngineStore, Arc<Replica<EngineStore>>>, TcpTransport>;

/// Runtime knobs that are not part of the operator's config file.
#[derive(Clone, Default)]
pub struct NodeTuning {
    /// Builds the cross-DC bridge (the binary passes
    /// `isthmus-dc-bridge`'s); `None` runs without one.
    pub bridge: Option<Arc<dyn BridgeFactory>>,
    /// Gossip timing.
    pub gossip: GossipConfig,
    /// Connection-layer limits.
    pub server: Option<ServerConfig>,
    /// Hint bounds.
    pub hints: HintConfig,
    /// Size limits.
    pub limits: Limits,
    /// Merkle repair schedule and deadlines.
    pub repair: RepairConfig,
    /// Serves the resolver registry over the `_registry` system keyspace
    /// (the binary passes `isthmus-resolvers`'s); `None` answers registry
    /// requests with an error.
    pub registry: Option<Arc<dyn RegistryHook>>,
}

impl std::fmt::Debug for NodeTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTuning")
            .field("bridge", &self.bridge.is_some())
            .field("gossip", &self.gossip)
            .field("server", &self.server)
            .field("hints", &self.hints)
            .field("limits", &self.limits)
            .field("repair", &self.repair)
            .field("registry", &self.registry.is_some())
            .finish()
    }
}

/// Merkle full-sync against another DC, for the bridge. It holds the
/// repairer weakly: the repairer holds the coordinator, which owns the
/// bridge, which owns this.
#[derive(Default)]
struct NodeFullSync {
    repairer: std::sync::OnceLock<std::sync::Weak<NodeRepairer>>,
}

impl FullSync for NodeFullSync {
    fn full_sync<'a>(&'a self, dc: &'a DcName) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(repairer) = self.repairer.get().and_then(|w| w.upgrade()) else {
                return Err("the node is stopping".to_owned());
            };
            // The writes the outbox dropped were coordinated here, so on
            // keys this node replicates: sync all of them, not only the
            // pieces it is primary for.
            let stats = repairer
                .full_sync(None, dc, Share::Replicated)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                %dc,
                ranges = stats.ranges,
                differing = stats.keys_differing,
                pulled = stats.keys_pulled,
                pushed = stats.keys_pushed,
                bytes = stats.bytes,
                "full-sync ranges synced"
            );
            match stats.ranges_failed {
                0 => Ok(()),
                n => Err(format!("{n} ranges could not be synced with {dc}")),
            }
        })
    }
}

/// A started node. Dropping it without [`RunningNode::shutdown`] aborts
/// its tasks.
pub struct RunningNode {
    /// The address it serves on.
    pub addr: String,
    coordinator: Arc<NodeCoordinator>,
    gossiper: Arc<Gossiper>,
    store: EngineStore,
    repairer: Arc<NodeRepairer>,
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// Read or create the node's identity file: its actor, random per data
/// directory, so a wiped node never reissues old dots.
fn identity(data_dir: &Path, node_id: &str) -> Result<Actor, NodeError> {
    let path = data_dir.join("IDENTITY");
    let bad = |reason: String| NodeError::DataDir {
        path: data_dir.to_owned(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (id, actor) = text
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad("IDENTITY is malformed".into()))?;
            if id != node_id {
                return Err(bad(format!("it belongs to node {id:?}, not {node_id:?}")));
            }
            let actor =
                u64::from_str_radix(actor, 16).map_err(|e| bad(format!("IDENTITY actor: {e}")))?;
            Ok(Actor(actor))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = format!("{node_id}/{:?}/{}", SystemTime::now(), std::process::id());
            let actor = xxhash_rust::xxh3::xxh3_64(seed.as_bytes());
            crate::fs::Fs::write_atomic(
                &crate::fs::StdFs,
                &path,
                format!("{node_id} {actor:016x}\n").as_bytes(),
            )
            .map_err(|e| bad(e.to_string()))?;
            Ok(Actor(actor))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Start a node from its configuration.
pub async fn start(
    config: NodeConfig,
    merge: Arc<dyn MergeHook>,
    tuning: NodeTuning,
) -> Result<RunningNode, NodeError> {
    config.validate()?;
    let frame_bytes_max = tuning
        .server
        .as_ref()
        .map_or(crate::limit::FRAME_BYTES_MAX_DEFAULT, |s| s.frame_bytes_max);
    tuning.limits.validate(frame_bytes_max)?;
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| NodeError::DataDir {
        path: data_dir.clone(),
        reason: e.to_string(),
    })?;
    let actor = identity(&data_dir, &config.node_id)?;
    let fsync = match config.fsync {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Interval => {
            FsyncPolicy::Interval(Duration::from_millis(config.fsync_interval_ms))
        }
    };
    let engine_options = EngineOptions {
        limits: tuning.limits.clone(),
        fsync,
        ..EngineOptions::default()
    };
    let store = EngineStore::open(&data_dir.join("data"), engine_options)?;
    let hints = Arc::new(HintStore::open(
        &data_dir.join("hints"),
        tuning.hints.clone(),
    )?);

    let keyspaces: BTreeMap<String, KeyspaceConfig> = config
        .keyspaces
        .iter()
        .map(|(name, ks)| {
            let ksc = KeyspaceConfig {
                replication: ks
                    .replication
                    .iter()
                    .map(|(dc, rf)| (DcName(dc.clone()), *rf))
                    .collect(),
                consistency: ks.consistency,
                resolver: ks.resolver.as_deref().and_then(parse_resolver_binding),
                ttl_s: ks.ttl_s,
            };
            (name.clone(), ksc)
        })
        .collect();
    let mut keyspaces = keyspaces;
    let registry_keyspace = system::registry_keyspace(
        &DcName(config.dc.clone()),
        &keyspaces,
        &crate::ring::Ring::default(),
    );
    keyspaces.insert(REGISTRY_KEYSPACE.to_owned(), registry_keyspace);
    let keyspaces = Arc::new(RwLock::new(keyspaces));

    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| NodeError::Listen {
            addr: config.listen.clone(),
            reason: e.to_string(),
        })?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.listen.clone());

    let me = NodeId(config.node_id.clone());
    let mut transport = TcpTransport::new(me.clone(), Duration::from_secs(2));
    if let Some(proxy) = &config.wan_proxy {
        transport = transport.with_wan_proxy(DcName(config.dc.clone()), proxy.clone());
    }
    let transport = Arc::new(transport);
    let own = Endpoint {
        id: me.clone(),
        addr: addr.clone(),
        placement: Placement {
            dc: DcName(config.dc.clone()),
            rack: config.rack.clone(),
        },
        vnodes: config.vnodes,
        generation: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64),
        version: 1,
        status: if config.bootstrap {
            NodeStatus::Joining
        } else {
            NodeStatus::Normal
        },
        load_bytes: store.engine().stats().table_bytes,
    };
    let engine = store.engine().clone();
    let load = Box::new(move || engine.stats().table_bytes);
    // The configured seeds, then the peers this node knew when it last ran
    // (in case the seeds are down too).
    let mut seeds = config.seeds.clone();
    for peer in crate::gossip::peers::load(&data_dir, &addr) {
        if !seeds.contains(&peer) {
            seeds.push(peer);
        }
    }
    let (gossiper, view) =
        Gossiper::new(own, seeds, tuning.gossip.clone(), transport.clone(), load);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let full_sync = Arc::new(NodeFullSync::default());
    let bridge = match (&tuning.bridge, config.bridge.enabled) {
        (Some(factory), true) => {
            let started = factory.start(BridgeParts {
                node: me.clone(),
                dc: DcName(config.dc.clone()),
                dir: data_dir.join("outbox"),
                fsync,
                transport: transport.clone(),
                view: view.clone(),
                keyspaces: keyspaces.clone(),
                stop: stop_rx.clone(),
                full_sync: full_sync.clone(),
            })?;
            tasks.extend(started.tasks);
            Some(started.bridge)
        }
        _ => None,
    };
    let mut coordinator = Coordinator::new(
        CoordinatorConfig {
            node: me.clone(),
            dc: DcName(config.dc.clone()),
            actor,
            limits: tuning.limits.clone(),
        },
        store.clone(),
        transport.clone(),
        Arc::new(hints.clone()),
        merge,
        keyspaces.clone(),
        view.clone(),
    );
    if let Some(bridge) = bridge {
        coordinator = coordinator.with_bridge(bridge);
    }
    let coordinator = Arc::new(coordinator);
    tasks.push((
        "system-replication",
        tokio::spawn(system::track_replication(
            keyspaces.clone(),
            view.clone(),
            stop_rx.clone(),
        )),
    ));
    if let Some(registry) = &tuning.registry {
        let writer: Arc<dyn SystemWriter> = coordinator.clone();
        registry.attach(SystemStore::new(
            me.clone(),
            REGISTRY_KEYSPACE,
            store.engine(),
            &writer,
            coordinator.replica().system_applies().clone(),
            keyspaces.clone(),
            &tuning.limits,
        ));
    }
    let repairer = Arc::new(Repairer::new(
        me.clone(),
        DcName(config.dc.clone()),
        StoreData {
            store: store.clone(),
            absorb: coordinator.replica().clone(),
        },
        transport.clone(),
        keyspaces.clone(),
        view.clone(),
        tuning.repair.clone(),
    ));
    let _ = full_sync.repairer.set(Arc::downgrade(&repairer));

    let handler = Arc::new(NodeHandler {
        coordinator: coordinator.clone(),
        hints: hints.clone(),
        gossiper: gossiper.clone(),
        keyspaces: keyspaces.clone(),
        repairer: repairer.clone(),
        registry: tuning.registry.clone(),
        stop: stop_rx.clone(),
        view: view.clone(),
        dc: DcName(config.dc.clone()),
        spread: tuning.gossip.interval * 4 + Duration::from_millis(500),
    });
    let server_config = ServerConfig {
        node_id: config.node_id.clone(),
        dc: config.dc.clone(),
        ..tuning.server.clone().unwrap_or_default()
    };
    let mut server_stop = stop_rx.clone();
    tasks.push((
        "server",
        tokio::spawn(server::run(listener, handler, server_config, async move {
            let _ = server_stop.changed().await;
        })),
    ));
    tasks.push((
        "gossip",
        tokio::spawn(gossiper.clone().run(stop_rx.clone())),
    ));
    tasks.push((
        "peers",
        tokio::spawn(crate::gossip::peers::keep(
            gossiper.clone(),
            data_dir.clone(),
            tuning.gossip.interval * 5,
            stop_rx.clone(),
        )),
    ));
    tasks.push((
        "handoff",
        tokio::spawn(crate::hints::handoff(
            hints.clone(),
            transport.clone(),
            view.clone(),
            stop_rx.clone(),
        )),
    ));
    if config.bootstrap {
        tasks.push((
            "bootstrap",
            tokio::spawn(bootstrap(
                gossiper.clone(),
                repairer.clone(),
                keyspaces.clone(),
                view.clone(),
                DcName(config.dc.clone()),
                tuning.gossip.interval,
                stop_rx.clone(),
            )),
        ));
    }
    if !tuning.repair.interval.is_zero() {
        tasks.push((
            "repair",
            tokio::spawn(repairer.clone().run(stop_rx.clone())),
        ));
    }
    tracing::info!(node = %me, %addr, "node started");
    Ok(RunningNode {
        addr,
        coordinator,
        gossiper,
        store,
        repairer,
        stop,
        tasks,
    })
}

/// Stream the ranges whose owners change in `dc` between the view's ring
/// and its next ring: a joining node pulls what it will own from the
/// current owners; a leaving node pushes what it owns to the next owners.
/// Merkle sync moves only what the other side lacks, and both ways.
async fn move_ranges(
    repairer: &NodeRepairer,
    keyspaces: &RwLock<BTreeMap<String, KeyspaceConfig>>,
    view: &watch::Receiver<Arc<crate::view::ClusterView>>,
    dc: &DcName,
    joining: bool,
) -> RepairStats {
    let view = view.borrow().clone();
    let me = repairer.me().clone();
    let keyspaces = keyspaces.read().clone();
    let mut stats = RepairStats::default();
    for (name, ks) in keyspaces {
        let Some(&rf) = ks.replication.get(dc) else {
            continue;
        };
        // Every node holds all of a system keyspace: its factor follows
        // the current ring, so a joining node takes the next ring's.
        let rf = if system::is_system(&name) {
            rf.max(system::factor(&view.next, dc))
        } else {
            rf
        };
        let mut jobs = Vec::new();
        for (range, now, next) in
            crate::repair::plan::movement(&view.ring, &view.next, dc, rf as usize)
        {
            let (mine, partners) = if joining {
                (next.contains(&me), now)
            } else {
                (now.contains(&me), next)
            };
            if !mine {
                continue;
            }
            for partner in partners {
                if partner == me {
                    continue;
                }
                if view.alive.contains(&partner) {
                    jobs.push((range, partner));
                } else {
                    stats.ranges_failed += 1;
                }
            }
        }
        stats += repairer.stream(&name, jobs).await;
    }
    stats
}

/// Join a running cluster: learn it through gossip, pull the ranges this
/// node will own, then announce `Normal` (writes already reach it as a
/// pending owner while it streams). Retries until every range came in.
async fn bootstrap(
    gossiper: Arc<Gossiper>,
    repairer: Arc<NodeRepairer>,
    keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
    view: watch::Receiver<Arc<crate::view::ClusterView>>,
    dc: DcName,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut rounds_seen = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        // Let gossip settle: the owners must know this node is joining
        // (so they send it writes) before it copies their data.
        if view.borrow().ring.node_count(&dc) == 0 {
            continue;
        }
        rounds_seen += 1;
        if rounds_seen < 6 {
            continue;
        }
        let stats = tokio::select! {
            s = move_ranges(&repairer, &keyspaces, &view, &dc, true) => s,
            _ = stop.changed() => return,
        };
        if stats.ranges_failed == 0 {
            tracing::info!(
                ranges = stats.ranges,
                pulled = stats.keys_pulled,
                bytes = stats.bytes,
                "bootstrap streamed; joining the ring"
            );
            gossiper.set_status(NodeStatus::Normal);
            return;
        }
        tracing::warn!(
            failed = stats.ranges_failed,
            "bootstrap incomplete; retrying"
        );
    }
}

impl RunningNode {
    /// The node's coordinator (tests and admin).
    pub fn coordinator(&self) -> &Arc<Coordinator<EngineStore, TcpTransport, Arc<HintStore>>> {
        &self.coordinator
    }

    /// The node's gossip participant.
    pub fn gossiper(&self) -> &Arc<Gossiper> {
        &self.gossiper
    }

    /// The node's local store.
    pub fn store(&self) -> &EngineStore {
        &self.store
    }

    /// The node's Merkle repair (for the cross-DC bridge's full sync).
    pub fn repairer(&self) -> &Arc<NodeRepairer> {
        &self.repairer
    }

    /// Repair now: this node's ranges in its datacenter with their other
    /// live replicas or, with `remote_dc`, a full sync with that
    /// datacenter; every keyspace, or just `keyspace`.
    pub async fn repair(
        &self,
        keyspace: Option<&str>,
        remote_dc: Option<&DcName>,
    ) -> Result<RepairStats, RepairError> {
        self.repairer.repair(keyspace, remote_dc).await
    }

    /// Stop every worker, drain the server, and wait for all of them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks.drain(..) {
            if let Err(e) = task.await {
                tracing::warn!(worker = name, error = %e, "worker ended abnormally");
            }
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        for (_, task) in &self.tasks {
            task.abort();
        }
    }
}

/// Serves client and peer requests of one node.
struct NodeHandler {
    coordinator: Arc<NodeCoordinator>,
    hints: Arc<HintStore>,
    gossiper: Arc<Gossiper>,
    keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
    repairer: Arc<NodeRepairer>,
    registry: Option<Arc<dyn RegistryHook>>,
    stop: watch::Receiver<bool>,
    view: watch::Receiver<Arc<crate::view::ClusterView>>,
    dc: DcName,
    /// How long a status change takes to reach every node.
    spread: Duration,
}

fn bad_request(message: String) -> ResponseBody {
    ResponseBody::Error(WireError {
        code: ErrorCode::BadRequest,
        message,
        acks: None,
    })
}

/// Decode a client's context: postcard of a [`Clock`], bounded.
pub fn decode_context(context: &Context) -> Result<Clock, String> {
    if context.0.is_empty() {
        return Ok(Clock::new());
    }
    let clock: Clock = decode(&context.0).map_err(|e| format!("undecodable context: {e}"))?;
    if clock.entry_count() > CONTEXT_ENTRIES_MAX {
        return Err(format!(
            "context of {} entries exceeds {CONTEXT_ENTRIES_MAX}",
            clock.entry_count()
        ));
    }
    // Re-normalise: a hand-made context must not carry a clock that absorb
    // would never build.
    Ok(Clock::from_parts(
        clock.vector().iter().map(|(a, n)| (*a, *n)),
        clock.dots().iter().copied(),
    ))
}

/// The client's view of a set: live siblings and the context covering all.
pub fn to_response(set: &VersionSet) -> ResponseBody {
    let siblings = set
        .live()
        .map(|v| Sibling {
            value: v.value_bytes().unwrap_or_default().to_vec(),
            timestamp_ms: v.timestamp_ms,
            origin_dc: v.origin_dc.0.clone(),
        })
        .collect();
    let lub = set.lub();
    let context = if lub.is_empty() {
        Context::default()
    } else {
        Context(encode(&lub))
    };
    ResponseBody::Value { siblings, context }
}

impl NodeHandler {
    fn status(&self) -> ResponseBody {
        let membership = self.gossiper.membership();
        let alive = self.gossiper.alive();
        let view = self.coordinator_view();
        let keyspaces = self.keyspaces.read().clone();
        let hints: BTreeMap<NodeId, u64> = self.hints.pending().into_iter().collect();
        let nodes = membership
            .endpoints()
            .values()
            .map(|e| {
                let ownership = keyspaces
                    .iter()
                    .filter(|(name, _)| !system::is_system(name))
                    .filter_map(|(_, ks)| ks.replication.get(e.dc()))
                    .map(|rf| {
                        view.ring
                            .ownership(e.dc(), *rf as usize)
                            .get(&e.id)
                            .copied()
                            .unwrap_or(0.0)
                    })
                    .fold(0.0, f64::max);
                NodeReport {
                    node_id: e.id.0.clone(),
                    addr: e.addr.clone(),
                    dc: e.placement.dc.0.clone(),
                    rack: e.placement.rack.clone(),
                    vnodes: e.vnodes,
                    up: alive.contains(&e.id),
                    status: format!("{:?}", e.status),
                    load_bytes: e.load_bytes,
                    hint_bytes: hints.get(&e.id).copied().unwrap_or(0),
                    ownership,
                }
            })
            .collect();
        let bridges = self
            .coordinator
            .bridge()
            .map(|b| b.report())
            .unwrap_or_default();
        ResponseBody::Status { nodes, bridges }
    }

    /// A client put (`Some(value)`) or delete (`None`).
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        keyspace: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        context: Context,
        consistency: Option<crate::model::Consistency>,
        write_id: isthmus_client::wire::WriteId,
        deadline: Duration,
    ) -> ResponseBody {
        let clock = match decode_context(&context) {
            Ok(c) => c,
            Err(e) => return bad_request(e),
        };
        let level = self.level(&keyspace, consistency);
        match self
            .coordinator
            .write(&keyspace, &key, value, clock, write_id.0, level, deadline)
            .await
        {
            Ok(()) => ResponseBody::Written,
            Err(e) => ResponseBody::Error(e.to_wire()),
        }
    }

    /// An on-demand repair. It runs as its own task, so a client deadline
    /// shorter than the repair ends the wait, not the repair (which logs
    /// its outcome); node shutdown ends it.
    /// Leave the ring: announce `Leaving` (coordinators start sending
    /// writes to the next owners too), hand every range to its next
    /// owners, then announce `Left`. On a failed range the node stays
    /// `Normal` and says so; nothing has been given up.
    ///
    /// It runs as its own task: a client that stops waiting (the request
    /// deadline) does not stop a decommission halfway.
    async fn decommission(&self) -> ResponseBody {
        let (gossiper, repairer, keyspaces, view, dc, spread) = (
            self.gossiper.clone(),
            self.repairer.clone(),
            self.keyspaces.clone(),
            self.view.clone(),
            self.dc.clone(),
            self.spread,
        );
        let task = tokio::spawn(async move {
            Self::leave(&gossiper, &repairer, &keyspaces, &view, &dc, spread).await
        });
        task.await.unwrap_or_else(|e| {
            ResponseBody::Error(WireError {
                code: ErrorCode::Internal,
                message: format!("decommission failed: {e}"),
                acks: None,
            })
        })
    }

    async fn leave(
        gossiper: &Gossiper,
        repairer: &NodeRepairer,
        keyspaces: &RwLock<BTreeMap<String, KeyspaceConfig>>,
        view: &watch::Receiver<Arc<crate::view::ClusterView>>,
        dc: &DcName,
        spread: Duration,
    ) -> ResponseBody {
        gossiper.set_status(NodeStatus::Leaving);
        tokio::time::sleep(spread).await;
        let stats = move_ranges(repairer, keyspaces, view, dc, false).await;
        let report = RepairReport {
            ranges: stats.ranges,
            ranges_failed: stats.ranges_failed,
            keys_differing: stats.keys_differing,
            keys_pulled: stats.keys_pulled,
            keys_pushed: stats.keys_pushed,
            bytes: stats.bytes,
        };
        if stats.ranges_failed > 0 {
            gossiper.set_status(NodeStatus::Normal);
            return ResponseBody::Error(WireError {
                code: ErrorCode::Unavailable,
                message: format!(
                    "{} ranges could not be handed over (a next owner is down); still a member",
                    stats.ranges_failed
                ),
                acks: None,
            });
        }
        gossiper.set_status(NodeStatus::Left);
        tokio::time::sleep(spread).await;
        tracing::info!(
            pushed = stats.keys_pushed,
            bytes = stats.bytes,
            "decommissioned"
        );
        ResponseBody::Repaired(report)
    }

    async fn repair(&self, keyspace: Option<String>, remote_dc: Option<String>) -> ResponseBody {
        let (repairer, mut stop) = (self.repairer.clone(), self.stop.clone());
        let task = tokio::spawn(async move {
            let remote_dc = remote_dc.map(DcName);
            tokio::select! {
                result = repairer.repair(keyspace.as_deref(), remote_dc.as_ref()) => {
                    match &result {
                        Ok(s) => tracing::info!(
                            keyspace = keyspace.as_deref().unwrap_or("*"),
                            remote_dc = remote_dc.as_ref().map_or("", |d| d.0.as_str()),
                            ranges = s.ranges,
                            failed = s.ranges_failed,
                            differing = s.keys_differing,
                            pulled = s.keys_pulled,
                            pushed = s.keys_pushed,
                            bytes = s.bytes,
                            "repair done"
                        ),
                        Err(e) => tracing::warn!(error = %e, "repair failed"),
                    }
                    Some(result)
                }
                _ = stop.changed() => None,
            }
        });
        match task.await {
            Ok(Some(Ok(s))) => ResponseBody::Repaired(RepairReport {
                ranges: s.ranges,
                ranges_failed: s.ranges_failed,
                keys_differing: s.keys_differing,
                keys_pulled: s.keys_pulled,
                keys_pushed: s.keys_pushed,
                bytes: s.bytes,
            }),
            Ok(Some(Err(e))) => ResponseBody::Error(e.to_wire()),
            Ok(None) | Err(_) => ResponseBody::Error(WireError {
                code: ErrorCode::Unavailable,
                message: "the node is shutting down".into(),
                acks: None,
            }),
        }
    }

    fn coordinator_view(&self) -> crate::view::ClusterView {
        let membership = self.gossiper.membership();
        let members: Vec<&Endpoint> = membership
            .endpoints()
            .values()
            .filter(|e| e.status == NodeStatus::Normal)
            .collect();
        crate::view::ClusterView {
            ring: crate::ring::Ring::build(members.iter().map(|e| (&e.id, &e.placement, e.vnodes))),
            alive: self.gossiper.alive(),
            next: Default::default(),
        }
    }

    fn level(
        &self,
        keyspace: &str,
        asked: Option<crate::model::Consistency>,
    ) -> crate::model::Consistency {
        asked.unwrap_or_else(|| {
            self.keyspaces
                .read()
                .get(keyspace)
                .map_or(crate::model::Consistency::LocalQuorum, |k| k.consistency)
        })
    }
}

impl Handler for NodeHandler {
    async fn handle(&self, body: RequestBody, deadline: Duration) -> ResponseBody {
        if let RequestBody::Get { keyspace, .. }
        | RequestBody::Put { keyspace, .. }
        | RequestBody::Delete { keyspace, .. } = &body
            && system::is_system(keyspace)
        {
            return bad_request(format!(
                "keyspace {keyspace:?} is a system keyspace; use the registry requests"
            ));
        }
        match body {
            RequestBody::Get {
                keyspace,
                key,
                consistency,
            } => {
                let level = self.level(&keyspace, consistency);
                match self
                    .coordinator
                    .read(&keyspace, &key, level, deadline)
                    .await
                {
                    Ok(set) => to_response(&set),
                    Err(e) => ResponseBody::Error(e.to_wire()),
                }
            }
            RequestBody::Put {
                keyspace,
                key,
                value,
                context,
                consistency,
                write_id,
            } => {
                self.write(
                    keyspace,
                    key,
                    Some(value),
                    context,
                    consistency,
                    write_id,
                    deadline,
                )
                .await
            }
            RequestBody::Delete {
                keyspace,
                key,
                context,
                consistency,
                write_id,
            } => {
                self.write(
                    keyspace,
                    key,
                    None,
                    context,
                    consistency,
                    write_id,
                    deadline,
                )
                .await
            }
            RequestBody::Status => self.status(),
            RequestBody::Repair {
                keyspace,
                remote_dc,
            } => self.repair(keyspace, remote_dc).await,
            RequestBody::Decommission => self.decommission().await,
            RequestBody::Registry(request) => match &self.registry {
                Some(registry) => match registry.serve(request, deadline).await {
                    Ok(answer) => ResponseBody::Registry(answer),
                    Err(e) => ResponseBody::Error(e),
                },
                None => bad_request("this node runs no resolver registry".into()),
            },
        }
    }

    async fn handle_peer(&self, body: PeerRequest, deadline: Duration) -> PeerResponse {
        match body {
            PeerRequest::Gossip { digest, entries } => PeerResponse::Gossip {
                entries: self.gossiper.on_exchange(&digest, entries),
            },
            PeerRequest::Repair(request) => self.repairer.serve(request).await,
            PeerRequest::Ship { from_dc, batch } => match self.coordinator.bridge() {
                Some(bridge) => match bridge
                    .receive(&from_dc, &batch, self.coordinator.as_ref())
                    .await
                {
                    Ok(()) => PeerResponse::Applied,
                    Err(e) => PeerResponse::Error(e),
                },
                None => PeerResponse::Error(WireError {
                    code: ErrorCode::BadRequest,
                    message: "this node runs no cross-DC bridge".into(),
                    acks: None,
                }),
            },
            other => self.coordinator.serve_peer(other, deadline).await,
        }
    }
}
