//! One simulated node: the production gossip, coordinator, hint handoff,
//! Merkle repair and connection server, over the simulated network, with
//! an in-memory "disk" (store, hints, actor) that outlives crashes.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::{ErrorCode, RepairReport, RequestBody, ResponseBody, WireError};
use isthmus_core::coordinator::{Coordinator, CoordinatorConfig};
use isthmus_core::gossip::detector::DetectorConfig;
use isthmus_core::gossip::membership::{Endpoint, NodeStatus};
use isthmus_core::gossip::service::{GossipConfig, Gossiper};
use isthmus_core::hints::HintSink;
use isthmus_core::hints::{HintQueue, HintRecord, handoff};
use isthmus_core::limit::Limits;
use isthmus_core::merge::NoMerge;
use isthmus_core::model::{Actor, Clock, ContentHash, DcName, KeyspaceConfig, Version, VersionSet};
use isthmus_core::node::{decode_context, to_response};
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::repair::{RepairConfig, Repairer, StoreData};
use isthmus_core::replica::Replica;
use isthmus_core::ring::{NodeId, Placement};
use isthmus_core::server::{self, Handler, ServerConfig};
use isthmus_core::store::{LocalStore, MemStore, StoreError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::net::{PORT, SimListener, SimTransport};

/// Where and what a node is.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub dc: DcName,
    pub rack: String,
}

impl NodeSpec {
    pub fn id(&self) -> NodeId {
        NodeId(self.name.clone())
    }

    pub fn addr(&self) -> String {
        format!("{}:{PORT}", self.name)
    }

    pub fn placement(&self) -> Placement {
        Placement {
            dc: self.dc.clone(),
            rack: self.rack.clone(),
        }
    }
}

/// The clock of every write id any replica ever absorbed, first seen:
/// what the checks use to tell a superseded write from a lost one. It
/// belongs to the harness, not to any node.
#[derive(Default)]
pub struct Oracle {
    clocks: Mutex<HashMap<[u8; 16], Clock>>,
    /// Write ids seen with two different clocks (one write coordinated
    /// twice).
    pub doubled: Mutex<Vec<[u8; 16]>>,
}

impl Oracle {
    fn saw(&self, versions: &[Version]) {
        let mut clocks = self.clocks.lock();
        for v in versions {
            let Some(id) = v.write_id else { continue };
            match clocks.get(&id) {
                None => {
                    clocks.insert(id, v.clock.clone());
                }
                Some(known) if *known != v.clock => self.doubled.lock().push(id),
                Some(_) => {}
            }
        }
    }

    pub fn clock(&self, id: &[u8; 16]) -> Option<Clock> {
        self.clocks.lock().get(id).cloned()
    }
}

/// A node's store: a [`MemStore`] (clones share it, so it survives a
/// crash as a disk would) that tells the oracle what it absorbs.
#[derive(Clone)]
pub struct RecStore {
    pub mem: MemStore,
    oracle: Arc<Oracle>,
}

impl RecStore {
    pub fn new(oracle: Arc<Oracle>) -> Self {
        RecStore {
            mem: MemStore::new(),
            oracle,
        }
    }
}

impl LocalStore for RecStore {
    async fn apply(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.oracle.saw(&versions);
        self.mem.apply(keyspace, key, versions).await
    }

    async fn apply_many(
        &self,
        keyspace: &str,
        entries: Vec<(Vec<u8>, Vec<Version>)>,
    ) -> Result<(), StoreError> {
        for (_, versions) in &entries {
            self.oracle.saw(versions);
        }
        self.mem.apply_many(keyspace, entries).await
    }

    async fn get(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        self.mem.get(keyspace, key).await
    }

    async fn scan_hashes(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        self.mem.scan_hashes(keyspace, hashes).await
    }

    async fn scan_digests(
        &self,
        keyspace: &str,
        hashes: impl RangeBounds<u64> + Send,
    ) -> Result<Vec<(Vec<u8>, ContentHash)>, StoreError> {
        self.mem.scan_digests(keyspace, hashes).await
    }
}

/// Durable hints in memory: clones share them, so a restarted node finds
/// the hints it had stored (as `HintStore` finds its files).
#[derive(Clone, Default)]
pub struct MemHints {
    kept: Arc<Mutex<BTreeMap<NodeId, Vec<HintRecord>>>>,
}

impl MemHints {
    /// Hints waiting, over all targets.
    pub fn len(&self) -> usize {
        self.kept.lock().values().map(Vec::len).sum()
    }
}

impl HintSink for MemHints {
    async fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        let record = HintRecord {
            created_ms: turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64),
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            versions,
        };
        self.kept
            .lock()
            .entry(target.clone())
            .or_default()
            .push(record);
        Ok(())
    }
}

impl HintQueue for MemHints {
    fn pending(&self) -> Vec<(NodeId, u64)> {
        self.kept
            .lock()
            .iter()
            .filter(|(_, records)| !records.is_empty())
            .map(|(target, records)| (target.clone(), records.len() as u64))
            .collect()
    }

    async fn replay<F, Fut>(&self, target: &NodeId, mut deliver: F) -> Result<usize, StoreError>
    where
        F: FnMut(HintRecord) -> Fut + Send,
        Fut: Future<Output = bool> + Send,
    {
        let records = self.kept.lock().get(target).cloned().unwrap_or_default();
        let mut delivered = 0;
        for record in records {
            if !deliver(record).await {
                break;
            }
            delivered += 1;
        }
        // Records added meanwhile went to the end: forget only the ones
        // delivered.
        if let Some(records) = self.kept.lock().get_mut(target) {
            records.drain(..delivered.min(records.len()));
        }
        Ok(delivered)
    }
}

/// What survives a node's crash: its store, its hints and its actor.
#[derive(Clone)]
pub struct Disk {
    pub store: RecStore,
    pub hints: MemHints,
    pub actor: Actor,
}

/// What every node of one simulation shares: the cluster's shape and
/// timing.
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    pub seeds: Vec<String>,
    pub keyspaces: BTreeMap<String, KeyspaceConfig>,
    pub vnodes: u32,
    pub gossip: GossipConfig,
}

impl Cluster {
    pub fn gossip_config(interval: Duration) -> GossipConfig {
        GossipConfig {
            interval,
            exchange_timeout: interval * 2,
            detector: DetectorConfig {
                initial_interval: interval,
                interval_max: interval * 8,
                ..DetectorConfig::default()
            },
        }
    }
}

type SimCoordinator = Coordinator<RecStore, SimTransport, MemHints>;
type SimRepairer = Repairer<StoreData<RecStore, Arc<Replica<RecStore>>>, SimTransport>;

/// Serves one node's clients and peers (what `node::NodeHandler` does for
/// a real node, minus status and the bridge).
struct SimHandler {
    coordinator: Arc<SimCoordinator>,
    gossiper: Arc<Gossiper<SimTransport>>,
    repairer: Arc<SimRepairer>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> ResponseBody {
    ResponseBody::Error(WireError {
        code,
        message: message.into(),
        acks: None,
    })
}

impl Handler for SimHandler {
    async fn handle(&self, body: RequestBody, deadline: Duration) -> ResponseBody {
        let level =
            |asked: Option<_>| asked.unwrap_or(isthmus_core::model::Consistency::LocalQuorum);
        let (keyspace, key, value, context, consistency, write_id) = match body {
            RequestBody::Get {
                keyspace,
                key,
                consistency,
            } => {
                return match self
                    .coordinator
                    .read(&keyspace, &key, level(consistency), deadline)
                    .await
                {
                    Ok(set) => to_response(&set),
                    Err(e) => ResponseBody::Error(e.to_wire()),
                };
            }
            RequestBody::Put {
                keyspace,
                key,
                value,
                context,
                consistency,
                write_id,
            } => (keyspace, key, Some(value), context, consistency, write_id),
            RequestBody::Delete {
                keyspace,
                key,
                context,
                consistency,
                write_id,
            } => (keyspace, key, None, context, consistency, write_id),
            RequestBody::Repair {
                keyspace,
                remote_dc,
            } => {
                let remote_dc = remote_dc.map(DcName);
                return match self
                    .repairer
                    .repair(keyspace.as_deref(), remote_dc.as_ref())
                    .await
                {
                    Ok(s) => ResponseBody::Repaired(RepairReport {
                        ranges: s.ranges,
                        ranges_failed: s.ranges_failed,
                        keys_differing: s.keys_differing,
                        keys_pulled: s.keys_pulled,
                        keys_pushed: s.keys_pushed,
                        bytes: s.bytes,
                    }),
                    Err(e) => ResponseBody::Error(e.to_wire()),
                };
            }
            _ => return error(ErrorCode::BadRequest, "not served in the simulation"),
        };
        let clock = match decode_context(&context) {
            Ok(c) => c,
            Err(e) => return error(ErrorCode::BadRequest, e),
        };
        match self
            .coordinator
            .write(
                &keyspace,
                &key,
                value,
                clock,
                write_id.0,
                level(consistency),
                deadline,
            )
            .await
        {
            Ok(()) => ResponseBody::Written,
            Err(e) => ResponseBody::Error(e.to_wire()),
        }
    }

    async fn handle_peer(&self, body: PeerRequest, deadline: Duration) -> PeerResponse {
        match body {
            PeerRequest::Gossip { digest, entries } => PeerResponse::Gossip {
                entries: self.gossiper.on_exchange(&digest, entries),
            },
            PeerRequest::Repair(request) => self.repairer.serve(request).await,
            other => self.coordinator.serve_peer(other, deadline).await,
        }
    }
}

/// The software of one node host: runs until the host crashes.
pub async fn run(cluster: Arc<Cluster>, me: usize, disk: Disk) -> turmoil::Result {
    let spec = cluster.nodes[me].clone();
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let id = spec.id();
    let transport = Arc::new(SimTransport::new(id.clone(), Duration::from_millis(500)));
    // Each incarnation announces a greater generation: the simulated time
    // it started at.
    let generation = turmoil::since_epoch()
        .map_or(1, |d| d.as_millis() as u64)
        .max(1);
    let own = Endpoint {
        id: id.clone(),
        addr: spec.addr(),
        placement: spec.placement(),
        vnodes: cluster.vnodes,
        generation,
        version: 1,
        status: NodeStatus::Normal,
        load_bytes: 0,
    };
    // A seed's own list names itself too, as operators' configs do.
    let seeds = cluster.seeds.clone();
    let (gossiper, view) = Gossiper::new(
        own,
        seeds,
        cluster.gossip.clone(),
        transport.clone(),
        Box::new(|| 0),
    );
    let keyspaces = Arc::new(RwLock::new(cluster.keyspaces.clone()));
    let hints = Arc::new(disk.hints.clone());
    let coordinator = Arc::new(Coordinator::new(
        CoordinatorConfig {
            node: id.clone(),
            dc: spec.dc.clone(),
            actor: disk.actor,
            limits: Limits::default(),
        },
        disk.store.clone(),
        transport.clone(),
        hints.clone(),
        Arc::new(NoMerge),
        keyspaces.clone(),
        view.clone(),
    ));
    let repairer = Arc::new(Repairer::new(
        id.clone(),
        spec.dc.clone(),
        StoreData {
            store: disk.store.clone(),
            absorb: coordinator.replica().clone(),
        },
        transport.clone(),
        keyspaces,
        view.clone(),
        RepairConfig {
            interval: Duration::ZERO,
            call_timeout: Duration::from_secs(5),
        },
    ));
    let handler = Arc::new(SimHandler {
        coordinator,
        gossiper: gossiper.clone(),
        repairer,
    });
    // Never fires: the node runs until the simulation crashes it.
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(gossiper.run(stop_rx.clone()));
    tokio::spawn(handoff(hints, transport, view, stop_rx));
    let config = ServerConfig {
        node_id: spec.name.clone(),
        dc: spec.dc.0.clone(),
        request_deadline_max: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    server::run(
        SimListener(listener),
        handler,
        config,
        std::future::pending::<()>(),
    )
    .await;
    Ok(())
}
