//! A running node: the parts of core wired together, each background loop
//! a named [`Worker`](crate::worker) that shutdown awaits.
//!
//! ```text
//!             clients, peers (one port)
//!                      │
//!                   server ──► NodeHandler ──► Coordinator ──► Replica ──► store (engine)
//!                                  │               │  ├──────► transport ──► peers
//!                                  │               │  ├──────► hints
//!                                  │               │  └──────► bridge (outbox ──► shippers)
//!                                  ├──► Repairer ──► Replica
//!                                  └──► Gossiper ──► ClusterView (watch) ──► Coordinator, Repairer
//! workers: server (accept loop), gossip (rounds), peers (remembered
//! addresses), handoff (hint replay), repair (scheduled Merkle repair),
//! system-replication, bootstrap, the bridge's shippers and full-syncers
//! ```
//!
//! [`start`] builds a node as a process runs it (an engine in a data
//! directory, durable hints, TCP); [`start_with`] wires the same node from
//! parts handed in, which is how the deterministic simulation runs the
//! production node over its simulated network and disks.
//!
//! - `identity`: the data directory's identity file (the node's actor).
//! - `handler`: one function per request, client and peer.
//! - `status`: what `isthmus status` reports.
//! - `movement`: bootstrap and decommission (range movement).
//!
//! What it is not: the place where merge functions run. The binary hands a
//! [`MergeHook`] in (the wasm host); core never sees wasmtime.

pub mod access;
mod full_sync;
pub mod handler;
pub mod identity;
pub mod liveness;
pub mod movement;
mod probe;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use handler::{NodeHandler, decode_context, to_response};

use crate::bridge::{Bridge, BridgeFactory, BridgeParts};
use crate::config::{FsyncMode, NodeConfig, parse_resolver_binding};
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::engine::{EngineOptions, FsyncPolicy};
use crate::gossip::membership::{Endpoint, NodeStatus};
use crate::gossip::service::{GossipConfig, GossipTransport, Gossiper};
use crate::hints::{HintConfig, HintQueue, HintSink, HintStore};
use crate::limit::Limits;
use crate::merge::MergeHook;
use crate::model::{Actor, DcName, KeyspaceConfig};
use crate::repair::{RepairConfig, RepairError, RepairStats, Repairer, StoreData};
use crate::replica::Replica;
use crate::ring::{NodeId, Placement};
use crate::server::{self, Listener, ServerConfig};
use crate::store::{BlockingRead, EngineStore, LocalStore};
use crate::system_keyspace::{self, REGISTRY_KEYSPACE, RegistryHook, SystemKeyspace, SystemWriter};
use crate::transport::TcpTransport;
use crate::view::ClusterView;
use crate::worker::{WorkerHandle, WorkerStatus, Workers};

pub use crate::limit::CONTEXT_ENTRIES_MAX;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The limits cannot work together.
    #[error(transparent)]
    Limits(#[from] crate::limit::LimitsInvalid),
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
    /// The TLS files are unreadable, or do not name this node.
    #[error(transparent)]
    Tls(#[from] isthmus_client::tls::TlsError),
    /// The user store could not start (password parameters).
    #[error("users: {0}")]
    Auth(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// What the OS said.
        reason: String,
    },
}

/// Runtime knobs that are not part of the operator's config file.
#[derive(Clone, Default)]
pub struct NodeTuning {
    /// Builds the cross-DC bridge (the binary passes
    /// `isthmus-dc-bridge`'s); `None` runs without one.
    pub bridge: Option<Arc<dyn BridgeFactory>>,
    /// Gossip timing.
    pub gossip: GossipConfig,
    /// Connection-layer limits; the config's `[server]` table
    /// ([`ServerSection`](crate::config::ServerSection)) overrides the
    /// bounds it holds.
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
    /// Password hashing and checking (argon2id's cost, checks at once).
    pub users: crate::auth::users::UsersConfig,
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
            .field("users", &self.users)
            .finish()
    }
}

/// A node's Merkle repair: its store, absorbing through its replica.
pub type NodeRepairer<S = EngineStore, T = TcpTransport> =
    Repairer<StoreData<S, Arc<Replica<S>>>, T>;

/// A node's coordinator.
pub type NodeCoordinator<S = EngineStore, T = TcpTransport, H = HintStore> =
    Coordinator<S, T, Arc<H>>;

/// What a node is made of that differs between a process and a
/// simulation: its store, hints, transport and listener, and the facts a
/// process reads from its data directory and clock.
pub struct NodeParts<S, T, H, L> {
    /// The replica's store.
    pub store: S,
    /// Durable hints for replicas that missed writes.
    pub hints: Arc<H>,
    /// Peer connections.
    pub transport: Arc<T>,
    /// Where clients and peers connect.
    pub listener: L,
    /// The address peers reach the listener at.
    pub addr: String,
    /// The actor the node's dots carry.
    pub actor: Actor,
    /// This incarnation's gossip generation (greater than any before):
    /// the start time read from `wall_clock`.
    pub generation: u64,
    /// The wall clock, in Unix milliseconds, that gossip judges other
    /// nodes' generations against (the simulation's own clock under
    /// simulation).
    pub wall_clock: fn() -> u64,
    /// Bytes stored, as gossip advertises them.
    pub load: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// Synchronous reads of the store for the resolver registry (which is
    /// read from inside merges); without it the node serves no registry.
    pub blocking_reads: Option<Arc<dyn BlockingRead>>,
    /// Where the node remembers its peers' addresses between runs
    /// (`None`: it does not).
    pub peers_dir: Option<PathBuf>,
    /// TLS for the listener (`None`: plaintext, `insecure_plaintext`).
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
}

/// A started node. Dropping it without [`RunningNode::shutdown`] aborts
/// its workers.
pub struct RunningNode<S = EngineStore, T: GossipTransport = TcpTransport, H = HintStore> {
    /// The address it serves on.
    pub addr: String,
    /// The address its operations listener (`/metrics`, `/healthz`,
    /// `/readyz`) serves on, when it runs one.
    pub ops_addr: Option<String>,
    /// The address its Redis front door serves on, when it runs one.
    pub redis_addr: Option<String>,
    requests: crate::ops::RequestMetrics,
    probe: Arc<dyn crate::ops::Probe>,
    coordinator: Arc<NodeCoordinator<S, T, H>>,
    gossiper: Arc<Gossiper<T>>,
    store: S,
    repairer: Arc<NodeRepairer<S, T>>,
    stop: watch::Sender<bool>,
    workers: Arc<Workers>,
    /// The login the operations listener's figures need (`None`: open).
    ops_guard: Option<Arc<crate::ops::http::Guard>>,
    /// The request handler, which the Redis front door also serves
    /// through.
    handler: Arc<NodeHandler<S, T, H>>,
    /// What `[redis]` says, for the front door.
    redis: crate::config::RedisSection,
    node_id: String,
    dc: String,
}

/// The operations listener's logins, checked by the node's user store.
struct UserLogin(crate::auth::Users);

impl crate::ops::http::Login for UserLogin {
    fn login<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let credentials = isthmus_client::wire::Credentials {
                user: user.to_owned(),
                password: password.to_owned(),
            };
            self.0
                .authenticate(&credentials)
                .await
                .map(|_| ())
                .map_err(|e| e.to_wire().message)
        })
    }
}

/// How long shutdown waits for the workers before aborting them.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// The keyspaces a node serves: its configured ones and the registry's
/// system keyspace.
fn keyspaces_of(config: &NodeConfig) -> crate::model::KeyspaceMap {
    let mut keyspaces: BTreeMap<String, KeyspaceConfig> = config
        .keyspaces
        .iter()
        .map(|(name, ks)| {
            let ksc = KeyspaceConfig {
                replication: ks
                    .replication
                    .iter()
                    .map(|(dc, rf)| (DcName::from(dc.as_str()), *rf))
                    .collect(),
                consistency: ks.consistency,
                resolver: ks.resolver.as_deref().and_then(parse_resolver_binding),
                ttl_s: ks.ttl_s,
                counter: ks.counter,
                sloppy_quorum: ks.sloppy_quorum,
                read_repair_percent: ks.read_repair_percent,
            };
            (name.clone(), ksc)
        })
        .collect();
    let registry = system_keyspace::registry_keyspace(
        &DcName::from(config.dc.as_str()),
        &keyspaces,
        &crate::ring::Ring::default(),
    );
    for name in system_keyspace::SYSTEM_KEYSPACES {
        keyspaces.insert(name.to_owned(), registry.clone());
    }
    crate::model::keyspace_map(keyspaces)
}

/// The node's fsync policy (engine, outbox).
pub fn fsync_policy(config: &NodeConfig) -> FsyncPolicy {
    match config.fsync {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Interval => {
            FsyncPolicy::Interval(Duration::from_millis(config.fsync_interval_ms))
        }
    }
}

/// Start a node as a process runs it: validate the configuration, open
/// the data directory (identity, engine, hints), bind the listener, and
/// wire it all with [`start_with`].
pub async fn start(
    config: NodeConfig,
    merge: Arc<dyn MergeHook>,
    tuning: NodeTuning,
) -> Result<RunningNode, NodeError> {
    config.validate()?;
    let tuning = config.tuning.apply(tuning);
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
    let mut config = config;
    let joining_mark = data_dir.join(movement::JOINING_FILE);
    let new_dir = !data_dir.join("IDENTITY").exists() || joining_mark.exists();
    let actor = identity::load_or_create(&data_dir, &config.node_id)?;
    if config.bootstrap.is_none() {
        if new_dir {
            // Decided once it knows its cluster (`Movement::bootstrap`).
            crate::fs::Fs::write_atomic(&crate::fs::StdFs, &joining_mark, b"").map_err(|e| {
                NodeError::DataDir {
                    path: data_dir.clone(),
                    reason: format!("{}: {e}", joining_mark.display()),
                }
            })?;
        } else {
            // It has been on the ring: it takes its place again.
            config.bootstrap = Some(false);
        }
    }
    let grace = Duration::from_millis(config.tombstone_grace_ms);
    let liveness = liveness::on_start(&data_dir, grace, crate::wall_clock::now_ms())?;
    let engine_options = config.tuning.engine(EngineOptions {
        limits: tuning.limits.clone(),
        fsync: fsync_policy(&config),
        tombstone_grace: grace,
        ..EngineOptions::default()
    });
    let store = EngineStore::open(&data_dir.join("data"), engine_options)?;
    let hints = Arc::new(HintStore::open(
        &data_dir.join("hints"),
        HintConfig {
            window: Duration::from_millis(config.hint_window_ms),
            ..tuning.hints.clone()
        },
    )?);
    let remote_dcs: Vec<DcName> = config
        .keyspaces
        .values()
        .flat_map(|ks| ks.replication.keys())
        .filter(|dc| **dc != config.dc)
        .map(|dc| DcName::from(dc.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| NodeError::Listen {
            addr: config.listen.clone(),
            reason: e.to_string(),
        })?;
    // What other nodes and clients are told: `advertise` (a DNS name is
    // resolved by whoever dials it, on every dial), else the bound address.
    let addr = config.advertised(
        &listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| config.listen.clone()),
    );
    let ops_listener = match config.ops.address(&config.listen) {
        Some(ops) => Some(
            TcpListener::bind(&ops)
                .await
                .map_err(|e| NodeError::Listen {
                    addr: ops.clone(),
                    reason: format!("operations listener (`ops.listen`): {e}"),
                })?,
        ),
        None => None,
    };
    let redis_listener = match config.redis.address(&config.listen) {
        Some(redis) => Some(
            TcpListener::bind(&redis)
                .await
                .map_err(|e| NodeError::Listen {
                    addr: redis.clone(),
                    reason: format!("Redis front door (`redis.listen`): {e}"),
                })?,
        ),
        None => None,
    };
    let me = NodeId(config.node_id.clone());
    let mut transport = TcpTransport::new(me, Duration::from_secs(2));
    if let Some(proxy) = &config.wan_proxy {
        transport = transport.with_wan_proxy(DcName::from(config.dc.as_str()), proxy.clone());
    }
    let server_tls = match &config.tls {
        Some(section) => {
            let (server, client) = load_tls(&config, section)?;
            transport = transport.with_tls(client);
            Some(server)
        }
        None => {
            tracing::warn!(
                node = %config.node_id,
                "insecure_plaintext: TLS is off; every link is plaintext, and any connection \
                 that says it is a node is believed"
            );
            None
        }
    };
    let engine = store.engine().clone();
    let parts = NodeParts {
        store: store.clone(),
        hints,
        transport: Arc::new(transport),
        listener,
        addr,
        actor,
        generation: crate::wall_clock::now_ms().max(1),
        wall_clock: crate::wall_clock::now_ms,
        load: Arc::new(move || engine.stats().table_bytes),
        blocking_reads: Some(store.engine().clone() as Arc<dyn BlockingRead>),
        peers_dir: Some(data_dir.clone()),
        server_tls,
    };
    let ops_tls = parts.server_tls.clone();
    let mut node = start_with(config, parts, merge, tuning).await?;
    if let Some(listener) = ops_listener {
        node.serve_ops(listener, ops_tls.clone());
    }
    if let Some(listener) = redis_listener {
        node.serve_redis(listener, ops_tls);
    }
    let stop = || node.stop.subscribe();
    node.workers.spawn("alive", |w| {
        liveness::keep_alive(data_dir.clone(), grace, stop(), w)
    });
    if matches!(liveness, liveness::Start::Rebuild { .. }) {
        let repairer = node.repairer.clone();
        node.workers.spawn("rebuild", |w| {
            liveness::rebuild(data_dir, repairer, remote_dcs, stop(), w)
        });
    }
    Ok(node)
}

/// The node's TLS configurations, server side and dialling side, from the
/// `[tls]` files. The certificate must name this node: a node started with
/// another node's certificate would be refused by every peer anyway, so it
/// is refused here, with the reason.
fn load_tls(
    config: &NodeConfig,
    section: &crate::config::TlsSection,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), NodeError> {
    use isthmus_client::tls::{CertIdentity, TlsMaterial};
    let material = TlsMaterial::load(&section.ca, Some((&section.cert, &section.key)))?;
    let want = CertIdentity::Node {
        node_id: config.node_id.clone(),
        dc: config.dc.clone(),
    };
    if material.identity() != Some(&want) {
        return Err(NodeError::Tls(isthmus_client::tls::TlsError::Identity {
            reason: format!(
                "{} names {}, but this is {want}",
                section.cert.display(),
                material
                    .identity()
                    .map_or_else(|| "nothing".to_owned(), ToString::to_string),
            ),
        }));
    }
    Ok((material.server_config()?, material.client_config()?))
}

/// Start a node from parts handed in (see [`NodeParts`]); the caller has
/// validated `config` (its `listen`, `data_dir` and `wan_proxy` are not
/// used here: the parts stand for them). Its `vnodes` are checked here
/// against the gossip tuning's bound, which peers hold every entry to.
pub async fn start_with<S, T, H, L>(
    config: NodeConfig,
    parts: NodeParts<S, T, H, L>,
    merge: Arc<dyn MergeHook>,
    tuning: NodeTuning,
) -> Result<RunningNode<S, T, H>, NodeError>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
    L: Listener,
{
    config.validate_vnodes(tuning.gossip.vnodes_max)?;
    let me = NodeId(config.node_id.clone());
    let dc = DcName::from(config.dc.as_str());
    let keyspaces = Arc::new(RwLock::new(keyspaces_of(&config)));
    let (stop, stop_rx) = watch::channel(false);
    let workers = Arc::new(Workers::new());
    let (gossiper, view) = gossip(&config, &parts, &tuning);
    let full_sync = Arc::new(full_sync::NodeFullSync::default());
    let bridge = match (&tuning.bridge, config.bridge.enabled) {
        (Some(factory), true) => Some(start_bridge(
            factory.as_ref(),
            BridgeParts {
                node: me.clone(),
                dc: dc.clone(),
                dir: config.data_dir.join("outbox"),
                fsync: fsync_policy(&config),
                transport: parts.transport.clone(),
                view: view.clone(),
                keyspaces: keyspaces.clone(),
                stop: stop_rx.clone(),
                full_sync: full_sync.clone(),
            },
            &workers,
        )?),
        _ => None,
    };
    let identity = CoordinatorConfig {
        node: me.clone(),
        dc: dc.clone(),
        actor: parts.actor,
        limits: tuning.limits.clone(),
        clock_skew_max_ms: config.clock_skew_max_ms,
        merge: config.merge.to_config(),
    };
    let coordinator = coordinator(identity, &parts, merge, &keyspaces, &view, bridge);
    {
        let (coordinator, stop) = (coordinator.clone(), stop_rx.clone());
        workers.spawn("collapse-spread", |_| async move {
            coordinator.spread_collapsed(stop).await
        });
    }
    let system = |name| system_keyspace(name, &me, &parts, &coordinator, &keyspaces, &tuning);
    attach_registry(system(REGISTRY_KEYSPACE), &tuning);
    let access = access::Access {
        users: users(system(system_keyspace::AUTH_KEYSPACE), &tuning)?,
        anonymous_full_access: config.auth.anonymous_full_access,
    };
    if config.auth.anonymous_full_access {
        tracing::warn!(
            node = %config.node_id,
            "auth.anonymous_full_access: clients without credentials may do anything"
        );
    }
    let repairer = Arc::new(Repairer::new(
        me.clone(),
        dc.clone(),
        StoreData {
            store: parts.store.clone(),
            absorb: coordinator.replica().clone(),
        },
        parts.transport.clone(),
        keyspaces.clone(),
        view.clone(),
        tuning.repair.clone(),
    ));
    let _ = full_sync.repairer.set(Arc::downgrade(&repairer));
    let movement = movement::Movement {
        gossiper: gossiper.clone(),
        repairer: repairer.clone(),
        keyspaces: keyspaces.clone(),
        view: view.clone(),
        dc: dc.clone(),
        spread: tuning.gossip.interval * 4 + Duration::from_millis(500),
    };
    let requests = crate::ops::RequestMetrics::default();
    let handler = Arc::new(NodeHandler {
        coordinator: coordinator.clone(),
        hints: parts.hints.clone(),
        gossiper: gossiper.clone(),
        keyspaces: keyspaces.clone(),
        repairer: repairer.clone(),
        movement: movement.clone(),
        registry: tuning.registry.clone(),
        access: access.clone(),
        stop: stop_rx.clone(),
        requests: requests.clone(),
    });
    let server_config = config.server.apply(ServerConfig {
        node_id: config.node_id.clone(),
        dc: config.dc.clone(),
        tls: parts.server_tls.clone(),
        ..tuning.server.clone().unwrap_or_default()
    });
    let server_stats = server_config.stats.clone();
    spawn_server(
        &workers,
        parts.listener,
        handler.clone(),
        server_config,
        &stop_rx,
    );
    let probe: Arc<dyn crate::ops::Probe> = Arc::new(probe::NodeProbe {
        me: me.clone(),
        dc: config.dc.clone(),
        store: parts.store.clone(),
        keyspaces: keyspaces.clone(),
        replica: coordinator.replica().clone(),
        hints: parts.hints.clone(),
        gossiper: gossiper.clone(),
        bridge: coordinator.bridge().cloned(),
        repairer: repairer.clone(),
        server: server_stats,
        workers: workers.clone(),
        view: view.clone(),
        stop: stop_rx.clone(),
    });
    let auth_view = view.clone();
    let lifecycle_view = view.clone();
    spawn_background(
        &workers,
        Background {
            replica: coordinator.replica().clone(),
            gossiper: gossiper.clone(),
            repairer: repairer.clone(),
            movement,
            hints: parts.hints.clone(),
            transport: parts.transport.clone(),
            keyspaces,
            view,
            peers_dir: parts.peers_dir.clone(),
            bootstrap: config.bootstrap,
        },
        &tuning,
        &stop_rx,
    );
    let first_admin = config.auth.bootstrap()?;
    // Not on a node told to join a running cluster; a node that decides
    // for itself may run it (a record it writes never wins over one an
    // operator wrote).
    if let (Some((name, password)), Some(users), false) = (
        first_admin,
        access.users.clone(),
        config.bootstrap == Some(true),
    ) {
        let (view, stop) = (auth_view, stop_rx.clone());
        workers.spawn("auth-bootstrap", |w| {
            bootstrap_admin(users, name, password, view, stop, w)
        });
    }
    let ops_guard = match (&access.users, config.ops.auth) {
        (Some(users), crate::config::OpsAuth::Login) if !access.anonymous_full_access => {
            Some(Arc::new(crate::ops::http::Guard::new(Arc::new(UserLogin(
                users.clone(),
            )))))
        }
        _ => None,
    };
    tracing::info!(node = %me, dc = %dc, addr = %parts.addr, "node started");
    {
        let (probe, stop) = (probe.clone(), stop_rx.clone());
        workers.spawn("lifecycle", |w| {
            probe::lifecycle(probe, lifecycle_view, stop, w)
        });
    }
    Ok(RunningNode {
        addr: parts.addr,
        ops_addr: None,
        redis_addr: None,
        requests,
        probe,
        coordinator,
        gossiper,
        store: parts.store,
        repairer,
        stop,
        workers,
        ops_guard,
        handler,
        redis: config.redis.clone(),
        node_id: me.0.clone(),
        dc: dc.to_string(),
    })
}

/// The node's coordinator over a replica of the parts' store, with the
/// bridge when the node runs one.
fn coordinator<S, T, H, L>(
    config: CoordinatorConfig,
    parts: &NodeParts<S, T, H, L>,
    merge: Arc<dyn MergeHook>,
    keyspaces: &Arc<RwLock<crate::model::KeyspaceMap>>,
    view: &watch::Receiver<Arc<ClusterView>>,
    bridge: Option<Arc<dyn Bridge>>,
) -> Arc<NodeCoordinator<S, T, H>>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let mut coordinator = Coordinator::new(
        config,
        parts.store.clone(),
        parts.transport.clone(),
        Arc::new(parts.hints.clone()),
        merge,
        keyspaces.clone(),
        view.clone(),
    );
    if let Some(bridge) = bridge {
        coordinator = coordinator.with_bridge(bridge);
    }
    Arc::new(coordinator)
}

/// Serve clients and peers on `listener` until the node stops.
fn spawn_server<S, T, H, L>(
    workers: &Workers,
    listener: L,
    handler: Arc<NodeHandler<S, T, H>>,
    config: ServerConfig,
    stop: &watch::Receiver<bool>,
) where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
    L: Listener,
{
    let mut stop = stop.clone();
    workers.spawn("server", |_| {
        server::run(listener, handler, config, async move {
            let _ = stop.changed().await;
        })
    });
}

/// What a node's background loops are given.
struct Background<S, T: GossipTransport, H> {
    replica: Arc<Replica<S>>,
    gossiper: Arc<Gossiper<T>>,
    repairer: Arc<NodeRepairer<S, T>>,
    movement: movement::Movement<StoreData<S, Arc<Replica<S>>>, T>,
    hints: Arc<H>,
    transport: Arc<T>,
    keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    view: watch::Receiver<Arc<ClusterView>>,
    peers_dir: Option<PathBuf>,
    /// `NodeConfig::bootstrap`: join (`Some(true)`), take its place at
    /// once (`Some(false)`), or decide (`None`).
    bootstrap: Option<bool>,
}

/// Start the node's background loops: the system keyspace's factors,
/// gossip rounds, remembered peers, hint handoff, bootstrap (on a joining
/// node) and scheduled repair.
fn spawn_background<S, T, H>(
    workers: &Workers,
    bg: Background<S, T, H>,
    tuning: &NodeTuning,
    stop: &watch::Receiver<bool>,
) where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let stopped = || stop.clone();
    let marker = bg
        .peers_dir
        .as_ref()
        .map(|dir| dir.join(movement::JOINING_FILE));
    workers.spawn("system-replication", |w| {
        system_keyspace::track_replication(bg.keyspaces.clone(), bg.view.clone(), stopped(), w)
    });
    workers.spawn("gossip", |w| bg.gossiper.clone().run(stopped(), w));
    workers.spawn("merge-retry", |w| {
        retry_merges(bg.replica.clone(), stopped(), w)
    });
    if let Some(dir) = bg.peers_dir {
        let interval = tuning.gossip.interval * 5;
        workers.spawn("peers", |w| {
            crate::gossip::peers::keep(bg.gossiper.clone(), dir, interval, stopped(), w)
        });
    }
    workers.spawn("handoff", |w| {
        crate::hints::handoff(bg.hints, bg.transport, bg.view.clone(), stopped(), w)
    });
    if bg.bootstrap != Some(false) {
        let interval = tuning.gossip.interval;
        let auto = bg.bootstrap.is_none();
        workers.spawn("bootstrap", |w| {
            bg.movement.bootstrap(auto, interval, marker, stopped(), w)
        });
    }
    if !tuning.repair.interval.is_zero() {
        workers.spawn("repair", |w| bg.repairer.run(stopped(), w));
    }
}

/// Every 100 ms, merge again (up to 16 batches of 64) the keys whose merge was
/// deferred for their keyspace's budget or a full merge queue, once the
/// keyspace has budget again ([`Replica::retry_deferred`]).
async fn retry_merges<S: LocalStore>(
    replica: Arc<Replica<S>>,
    mut stop: watch::Receiver<bool>,
    worker: WorkerHandle,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if replica.merge_pool().deferred_keys() == 0 {
            continue;
        }
        worker.busy();
        // At most 16 batches a round: keys deferred again wait for the next.
        for _ in 0..16 {
            if *stop.borrow() || replica.retry_deferred(64).await == 0 {
                break;
            }
        }
        worker.idle();
    }
}

/// The node's gossip participant and the view it publishes: it announces
/// itself `Joining` when it bootstraps, and contacts the configured seeds
/// and then the peers it knew when it last ran (in case the seeds are
/// down too).
fn gossip<S, T: GossipTransport, H, L>(
    config: &NodeConfig,
    parts: &NodeParts<S, T, H, L>,
    tuning: &NodeTuning,
) -> (Arc<Gossiper<T>>, watch::Receiver<Arc<ClusterView>>) {
    let own = Endpoint {
        id: NodeId(config.node_id.clone()),
        addr: parts.addr.clone(),
        placement: Placement {
            dc: DcName::from(config.dc.as_str()),
            rack: config.rack.clone(),
        },
        vnodes: config.vnodes,
        generation: parts.generation,
        version: 1,
        status: if config.bootstrap != Some(false) {
            NodeStatus::Joining
        } else {
            NodeStatus::Normal
        },
        load_bytes: (parts.load)(),
    };
    let mut seeds = config.seeds.clone();
    if let Some(dir) = &parts.peers_dir {
        for peer in crate::gossip::peers::load(dir, &parts.addr) {
            if !seeds.contains(&peer) {
                seeds.push(peer);
            }
        }
    }
    let load = parts.load.clone();
    Gossiper::new(
        own,
        seeds,
        tuning.gossip.clone(),
        parts.transport.clone(),
        Box::new(move || load()),
        parts.wall_clock,
    )
}

/// Start the bridge and adopt its workers.
fn start_bridge(
    factory: &dyn BridgeFactory,
    parts: BridgeParts,
    workers: &Workers,
) -> Result<Arc<dyn Bridge>, NodeError> {
    let started = factory.start(parts)?;
    for (name, task) in started.tasks {
        workers.adopt(name, task);
    }
    Ok(started.bridge)
}

/// A system keyspace of this node: read from its replica, written through
/// its coordinator. None when the store has no synchronous reads.
fn system_keyspace<S, T, H, L>(
    name: &str,
    me: &NodeId,
    parts: &NodeParts<S, T, H, L>,
    coordinator: &Arc<NodeCoordinator<S, T, H>>,
    keyspaces: &Arc<RwLock<crate::model::KeyspaceMap>>,
    tuning: &NodeTuning,
) -> Option<SystemKeyspace>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let reads = parts.blocking_reads.as_ref()?;
    let writer: Arc<dyn SystemWriter> = coordinator.clone();
    Some(SystemKeyspace::new(
        me.clone(),
        name,
        reads,
        &writer,
        coordinator.replica().system_applies().clone(),
        keyspaces.clone(),
        &tuning.limits,
    ))
}

/// The node's user store over the `_auth` system keyspace (none on a
/// store without synchronous reads).
fn users(
    system: Option<SystemKeyspace>,
    tuning: &NodeTuning,
) -> Result<Option<crate::auth::Users>, NodeError> {
    let Some(system) = system else {
        return Ok(None);
    };
    crate::auth::Users::new(system, tuning.users)
        .map(Some)
        .map_err(|e| NodeError::Auth(e.to_string()))
}

/// The first-admin bootstrap, on a node forming a cluster: once the node
/// has a ring (it heard from its peers, or it is alone), and while no user
/// exists, create the configured admin; retried until a write succeeds.
/// A record written so never wins over one an operator wrote (see
/// `auth::record::resolve`), so a node that bootstraps before the users
/// reach it undoes nothing.
async fn bootstrap_admin(
    users: crate::auth::Users,
    name: String,
    password: String,
    mut view: watch::Receiver<Arc<ClusterView>>,
    mut stop: watch::Receiver<bool>,
    worker: crate::worker::WorkerHandle,
) {
    loop {
        let ready = view.borrow_and_update().ring.dcs().next().is_some();
        if ready {
            worker.busy();
            match users.ensure_bootstrap_admin(&name, &password).await {
                Ok(created) => {
                    if created {
                        tracing::info!(user = %name, "created the bootstrap admin");
                    }
                    worker.idle();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bootstrap admin not written yet");
                    worker.failed(e.to_string());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Hand the registry (when the node runs one) its system keyspace.
fn attach_registry(system: Option<SystemKeyspace>, tuning: &NodeTuning) {
    let Some(registry) = &tuning.registry else {
        return;
    };
    let Some(system) = system else {
        tracing::warn!("this node's store has no blocking reads; it serves no registry");
        return;
    };
    registry.attach(system);
}

impl<S, T, H> RunningNode<S, T, H>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    /// The node's coordinator (tests and admin).
    pub fn coordinator(&self) -> &Arc<NodeCoordinator<S, T, H>> {
        &self.coordinator
    }

    /// The node's gossip participant.
    pub fn gossiper(&self) -> &Arc<Gossiper<T>> {
        &self.gossiper
    }

    /// The node's local store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The node's Merkle repair (for the cross-DC bridge's full sync).
    pub fn repairer(&self) -> &Arc<NodeRepairer<S, T>> {
        &self.repairer
    }

    /// Every background worker's status.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers.statuses()
    }

    /// Whether the node would serve requests, as `/readyz` answers.
    pub fn readiness(&self) -> Result<(), crate::ops::NotReady> {
        self.probe.readiness()
    }

    /// A registry of the node's metrics (a fresh registry over the same
    /// counters on each call), as `/metrics` encodes it.
    pub fn metrics(&self) -> prometheus_client::registry::Registry {
        crate::ops::registry(&self.requests, self.probe.clone())
    }

    /// Serve the operations listener on `listener` until the node stops
    /// (the `ops` worker): over TLS with `tls` (the node's own server
    /// configuration), plain HTTP without.
    pub fn serve_ops(&mut self, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
        self.ops_addr = listener.local_addr().ok().map(|a| a.to_string());
        let history = Arc::new(parking_lot::Mutex::new(crate::ops::api::History::default()));
        let router = crate::ops::http::router(
            self.metrics(),
            self.probe.clone(),
            history.clone(),
            self.ops_guard.clone(),
        );
        let mut stop = self.stop.subscribe();
        tracing::info!(
            addr = self.ops_addr.as_deref().unwrap_or("?"),
            scheme = if tls.is_some() { "https" } else { "http" },
            login = self.ops_guard.is_some(),
            "operations listener: /metrics, /healthz, /readyz, /api/v1/overview, the dashboard at /"
        );
        let sampler = crate::ops::http::sample(self.probe.clone(), history);
        self.workers.spawn("ops", |_| async move {
            let stopped = async move {
                let _ = stop.changed().await;
            };
            let serve: futures_util::future::BoxFuture<'static, ()> = match tls {
                Some(tls) => Box::pin(crate::ops::http::serve_tls(listener, router, tls, stopped)),
                None => Box::pin(crate::ops::http::serve(listener, router, stopped)),
            };
            // The history's sampler stops with the listener.
            tokio::select! {
                () = serve => {}
                () = sampler => {}
            }
        });
    }

    /// Serve the Redis front door on `listener` until the node stops (the
    /// `redis` worker): over TLS with `tls`.
    pub fn serve_redis(&mut self, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>)
    where
        S: LocalStore + Clone,
        H: HintQueue + HintSink,
    {
        self.redis_addr = listener.local_addr().ok().map(|a| a.to_string());
        let door = crate::redis::FrontDoor {
            databases: self.redis.databases.clone(),
            timeout: Duration::from_millis(self.redis.timeout_ms),
            connections_max: self.redis.connections_max,
            request_bytes_max: crate::limit::FRAME_BYTES_MAX_DEFAULT,
            node_id: self.node_id.clone(),
            dc: self.dc.clone(),
            counters: self
                .handler
                .keyspaces
                .read()
                .iter()
                .filter(|(_, ks)| ks.counter)
                .map(|(name, _)| name.clone())
                .collect(),
        };
        tracing::info!(
            addr = self.redis_addr.as_deref().unwrap_or("?"),
            tls = tls.is_some(),
            databases = ?door.databases,
            "Redis front door"
        );
        let mut stop = self.stop.subscribe();
        let handler = self.handler.clone();
        self.workers.spawn("redis", |_| {
            crate::redis::serve(listener, tls, handler, door, async move {
                let _ = stop.changed().await;
            })
        });
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

    /// Stop every worker, drain the server, and wait for all of them
    /// (those still running after 30 s are aborted).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.workers.shutdown(SHUTDOWN_WAIT).await;
    }
}

impl<S, T: GossipTransport, H> Drop for RunningNode<S, T, H> {
    fn drop(&mut self) {
        self.workers.abort_all();
    }
}
