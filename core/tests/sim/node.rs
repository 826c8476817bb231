//! One simulated node: the production node, started by `node::start_with`
//! (gossip, coordinator, hint handoff, Merkle repair, the request handler
//! and the connection server, and in bridged runs the real cross-DC
//! bridge), over the simulated network, with an in-memory "disk" (store,
//! hints, outbox, actor) that outlives crashes, and a native merge hook.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use isthmus_core::config::{AuthSection, BridgeSection, FsyncMode, KeyspaceSection, NodeConfig};
use isthmus_core::fs::MemFs;
use isthmus_core::gossip::detector::DetectorConfig;
use isthmus_core::gossip::service::GossipConfig;
use isthmus_core::hints::{HintQueue, HintRecord, HintSink};
use isthmus_core::limit::Limits;
use isthmus_core::merge::{MergeFailure, MergeHook};
use isthmus_core::model::{
    Actor, Clock, ContentHash, DcName, KeyspaceConfig, Payload, Version, VersionSet,
};
use isthmus_core::node::{NodeParts, NodeTuning, start_with};
use isthmus_core::repair::RepairConfig;
use isthmus_core::ring::{NodeId, Placement};
use isthmus_core::server::ServerConfig;
use isthmus_core::store::{LocalStore, MemStore, StoreError};
use isthmus_dc_bridge::{BridgeConfig, DcBridgeFactory};
use parking_lot::Mutex;

use super::bridge::{CursorWatch, WatchedFs};
use super::net::{PORT, SimListener, SimTransport};

/// Where and what a node is.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub dc: DcName,
    pub rack: String,
    /// Joins a running cluster (`config.bootstrap`).
    pub bootstrap: bool,
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

/// The clocks of every write id any replica ever absorbed, first seen
/// first: what the checks use to tell a superseded write from a lost one.
/// A write id with two clocks was coordinated twice (a client retried it
/// elsewhere while the first coordinator still held it). It belongs to
/// the harness, not to any node.
#[derive(Default)]
pub struct Oracle {
    clocks: Mutex<HashMap<[u8; 16], Vec<Clock>>>,
}

impl Oracle {
    fn saw(&self, versions: &[Version]) {
        let mut clocks = self.clocks.lock();
        for v in versions {
            let Some(id) = v.write_id else { continue };
            let known = clocks.entry(id).or_default();
            if !known.contains(&v.clock) {
                known.push(v.clock.clone());
            }
        }
    }

    /// Every clock the write `id` was seen with.
    pub fn clocks(&self, id: &[u8; 16]) -> Vec<Clock> {
        self.clocks.lock().get(id).cloned().unwrap_or_default()
    }

    /// Write ids seen with more than one clock.
    pub fn doubled(&self) -> usize {
        self.clocks.lock().values().filter(|c| c.len() > 1).count()
    }
}

/// A node's store: a [`MemStore`] (clones share it, so it survives a
/// crash as a disk would) that tells the oracle what it absorbs.
#[derive(Clone)]
pub struct RecStore {
    pub mem: MemStore,
    pub oracle: Arc<Oracle>,
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

    /// Every hint waiting: its target, keyspace and key.
    pub fn waiting(&self) -> Vec<(NodeId, String, Vec<u8>)> {
        self.kept
            .lock()
            .iter()
            .flat_map(|(target, records)| {
                records
                    .iter()
                    .map(|r| (target.clone(), r.keyspace.clone(), r.key.clone()))
            })
            .collect()
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

/// What survives a node's crash: its store, its hints, its outbox and its
/// actor.
#[derive(Clone)]
pub struct Disk {
    pub store: RecStore,
    pub hints: MemHints,
    pub outbox: MemFs,
    pub actor: Actor,
}

/// The resolver bound to the merged keyspace (its name in the binding).
pub const UNION: &str = "union";

/// The elements of a value of the merged keyspace: comma-separated.
pub fn elements(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A native merge hook: the union of the siblings' elements, for
/// keyspaces bound to [`UNION`] (a join, as resolvers must be).
pub struct Union {
    pub keyspaces: BTreeSet<String>,
}

impl MergeHook for Union {
    fn merge(
        &self,
        keyspace: &str,
        _key: &[u8],
        siblings: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure> {
        if !self.keyspaces.contains(keyspace) {
            return Ok(None);
        }
        let mut union = BTreeSet::new();
        let mut live = 0;
        for v in siblings.live() {
            live += 1;
            union.extend(elements(v.value_bytes().unwrap_or_default()));
        }
        if live == 0 {
            return Ok(None);
        }
        let value = union.into_iter().collect::<Vec<_>>().join(",");
        Ok(siblings.merged(Payload::Value(value.into_bytes()), [0x55; 32]))
    }
}

/// What every node of one simulation shares: the cluster's shape and
/// timing.
pub struct Cluster {
    pub nodes: Vec<NodeSpec>,
    pub seeds: Vec<String>,
    pub keyspaces: BTreeMap<String, KeyspaceConfig>,
    pub vnodes: u32,
    pub gossip: GossipConfig,
    /// Run the cross-DC bridge, with this outbox bound.
    pub bridge: Option<u64>,
    /// Sees every outbox's records and cursors.
    pub watch: Arc<CursorWatch>,
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
            ..GossipConfig::default()
        }
    }
}

/// The node's configuration as the simulation runs it: the production
/// node, addressed by host name, with the cluster's keyspaces.
fn config(cluster: &Cluster, spec: &NodeSpec) -> NodeConfig {
    NodeConfig {
        clock_skew_max_ms: isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
        tombstone_grace_ms: isthmus_core::config::TOMBSTONE_GRACE_MS_DEFAULT,
        hint_window_ms: isthmus_core::config::HINT_WINDOW_MS_DEFAULT,
        node_id: spec.name.clone(),
        dc: spec.dc.0.to_string(),
        rack: spec.rack.clone(),
        listen: spec.addr(),
        data_dir: PathBuf::from(format!("/sim/{}", spec.name)),
        seeds: cluster.seeds.clone(),
        vnodes: cluster.vnodes,
        fsync: FsyncMode::Always,
        fsync_interval_ms: 5,
        keyspaces: cluster
            .keyspaces
            .iter()
            .map(|(name, ks)| {
                let section = KeyspaceSection {
                    replication: ks
                        .replication
                        .iter()
                        .map(|(dc, rf)| (dc.0.to_string(), *rf))
                        .collect(),
                    consistency: ks.consistency,
                    resolver: ks.resolver.as_ref().map(|(n, v)| format!("{n}@{v}")),
                    ttl_s: ks.ttl_s,
                    counter: ks.counter,
                    sloppy_quorum: ks.sloppy_quorum,
                    read_repair_percent: ks.read_repair_percent,
                };
                (name.clone(), section)
            })
            .collect(),
        bridge: BridgeSection {
            enabled: cluster.bridge.is_some(),
            outbox_bytes_max: cluster.bridge.unwrap_or(1 << 30),
            // Small batches: several in flight at once.
            batch_bytes_max: 4096,
            linger_ms: 2,
            ..BridgeSection::default()
        },
        wan_proxy: None,
        advertise: None,
        bootstrap: Some(spec.bootstrap),
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
    }
}

/// The simulation's wall clock, in Unix milliseconds: what generations
/// are read from and judged against.
fn sim_clock_ms() -> u64 {
    turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64)
}

/// The software of one node host: the production node (`node::start_with`)
/// over the simulated network and the node's "disk"; runs until the host
/// crashes.
pub async fn run(cluster: Arc<Cluster>, me: usize, disk: Disk) -> turmoil::Result {
    let spec = cluster.nodes[me].clone();
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let transport = Arc::new(SimTransport::new(spec.id(), Duration::from_millis(500)));
    // Each incarnation announces a greater generation: the simulated time
    // it started at.
    let generation = turmoil::since_epoch()
        .map_or(1, |d| d.as_millis() as u64)
        .max(1);
    let parts = NodeParts {
        store: disk.store.clone(),
        hints: Arc::new(disk.hints.clone()),
        transport,
        listener: SimListener(listener),
        addr: spec.addr(),
        actor: disk.actor,
        generation,
        wall_clock: sim_clock_ms,
        load: Arc::new(|| 0),
        blocking_reads: None,
        peers_dir: None,
        server_tls: None,
    };
    let config = config(&cluster, &spec);
    let bridge = WatchedFs {
        mem: disk.outbox.clone(),
        node: spec.name.clone(),
        watch: cluster.watch.clone(),
    };
    let bridge = DcBridgeFactory::with_fs(BridgeConfig::from(&config.bridge), bridge);
    let tuning = NodeTuning {
        bridge: Some(Arc::new(bridge)),
        gossip: cluster.gossip.clone(),
        server: Some(ServerConfig {
            request_deadline_max: Duration::from_secs(120),
            ..ServerConfig::default()
        }),
        limits: Limits::default(),
        repair: RepairConfig {
            interval: Duration::ZERO,
            call_timeout: Duration::from_secs(5),
        },
        ..NodeTuning::default()
    };
    let merge = Union {
        keyspaces: cluster
            .keyspaces
            .iter()
            .filter(|(_, ks)| ks.resolver.as_ref().is_some_and(|(n, _)| n == UNION))
            .map(|(name, _)| name.clone())
            .collect(),
    };
    let node = start_with(config, parts, Arc::new(merge), tuning)
        .await
        .map_err(|e| e.to_string())?;
    // The node runs until the simulation crashes the host.
    std::future::pending::<()>().await;
    drop(node);
    Ok(())
}
