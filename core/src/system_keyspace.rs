//! System keyspaces: data the cluster keeps for itself, in keyspaces whose
//! names start with `_` (config validation refuses such names for users,
//! and the node refuses client reads and writes of them).
//!
//! One exists: [`REGISTRY_KEYSPACE`], where the resolver registry lives
//! (merge modules, their records, keyspace bindings; the
//! `isthmus-resolvers` crate defines the records). Every node has it, and
//! it is an ordinary keyspace to the machinery: the coordinator writes
//! it, the bridge ships it to the other datacenters, hints and Merkle
//! repair cover what a replica missed. What is special is its replication
//! and how it is read and written:
//!
//! - Replication: every datacenter the node's keyspaces name (and its
//!   own), each at a factor equal to the number of nodes of that
//!   datacenter on the ring, down ones included, so every node is a
//!   replica of every registry key and reads it locally.
//!   [`track_replication`] keeps the factors equal to the ring as gossip
//!   changes it. Why not a fixed large factor: quorums count the
//!   *configured* factor (`QuorumTracker::for_replication`), so a fixed
//!   15 would make a local quorum 8 acknowledgements in a datacenter of
//!   three nodes, which no write (nor a bridge batch, applied at a local
//!   quorum on the far side) could ever reach. The factor is not capped
//!   at `REPLICATION_PER_DC_MAX`: past it, some nodes would not hold the
//!   registry and could not read it locally. A bootstrapping node streams
//!   all of it: its movement plan takes the factor of the ring it joins.
//! - Writes ([`SystemKeyspace::write`]) go through the coordinator at
//!   [`SYSTEM_WRITE_LEVEL`], LOCAL_QUORUM: acknowledged by a majority of
//!   the writing node's datacenter (so by the node itself and survives a
//!   node loss there), queued durably for the other datacenters by the
//!   bridge. Each write supersedes what the writing node's replica holds
//!   (its context is the local set's clock), so an operator's successive
//!   writes of one key replace each other; concurrent writes of one key
//!   through two nodes become siblings, which readers resolve
//!   deterministically (the registry takes the latest by timestamp, then
//!   digest).
//! - Reads ([`SystemKeyspace::get`], [`SystemKeyspace::scan`]) are of the
//!   node's own replica, synchronous, straight from the storage engine:
//!   the merge hook reads bindings from inside a merge, which cannot
//!   await.
//!
//! Limits, stated: a node whose view of the ring is incomplete (just
//! started, gossip not yet exchanged) computes smaller factors, so a
//! system write through it may be acknowledged by fewer nodes than a
//! majority of its datacenter; repair and the next writes bring the
//! others along. Values obey the node's value limit (1 MiB by default),
//! which therefore bounds a registered module's size.
//!
//! What it is not: a Wasm host or the registry's logic. Core defines the
//! [`RegistryHook`] the binary plugs in (as it does the merge hook), and
//! never sees wasmtime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use isthmus_client::wire::{
    BindingEvent, BindingInfo, BoundResolver, CanaryInfo, ErrorCode, LawCheckOutcome,
    RegistryRequest, RegistryResponse, ResolverInfo, WireError,
};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::bridge::BoxFuture;
use crate::coordinator::error::CoordinatorError;
use crate::limit::Limits;
use crate::model::{Clock, Consistency, DcName, KeyspaceConfig, Version, VersionSet};
use crate::ring::{NodeId, Ring};
use crate::store::{BlockingRead, StoreError};
use crate::view::ClusterView;
use crate::worker::WorkerHandle;

/// The system keyspace of the resolver registry.
pub const REGISTRY_KEYSPACE: &str = "_registry";

/// The system keyspace of users, their password hashes and grants
/// (`crate::auth`).
pub const AUTH_KEYSPACE: &str = "_auth";

/// Every system keyspace a node has; all are replicated alike (see the
/// module docs).
pub const SYSTEM_KEYSPACES: [&str; 2] = [REGISTRY_KEYSPACE, AUTH_KEYSPACE];

/// The level of system keyspace writes.
pub const SYSTEM_WRITE_LEVEL: Consistency = Consistency::LocalQuorum;

/// Whether `keyspace` is a system keyspace (its name starts with `_`).
pub fn is_system(keyspace: &str) -> bool {
    keyspace.starts_with('_')
}

/// The registry keyspace of a node in `own_dc` whose user keyspaces are
/// `keyspaces`: replicated to `own_dc` and every datacenter they name, at
/// the factors `ring` gives (see [`factor`]).
pub fn registry_keyspace(
    own_dc: &DcName,
    keyspaces: &BTreeMap<String, KeyspaceConfig>,
    ring: &Ring,
) -> KeyspaceConfig {
    let dcs: BTreeSet<DcName> = keyspaces
        .iter()
        .filter(|(name, _)| !is_system(name))
        .flat_map(|(_, ks)| ks.replication.keys().cloned())
        .chain([own_dc.clone()])
        .collect();
    KeyspaceConfig {
        replication: dcs
            .into_iter()
            .map(|dc| (dc.clone(), factor(ring, &dc)))
            .collect(),
        consistency: SYSTEM_WRITE_LEVEL,
        resolver: None,
        ttl_s: None,
        counter: false,
        sloppy_quorum: false,
        // Small and read rarely: every read asks every replica.
        read_repair_percent: 100,
    }
}

/// A system keyspace's factor in `dc`: the datacenter's nodes on the
/// ring, at least one (a datacenter not seen yet still gets the bridge's
/// writes).
pub fn factor(ring: &Ring, dc: &DcName) -> u32 {
    u32::try_from(ring.node_count(dc))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Set the registry keyspace's factors from `ring` (its datacenters stay
/// those it started with: the bridge ships to the datacenters it knew at
/// start).
pub fn update_replication(keyspaces: &RwLock<crate::model::KeyspaceMap>, ring: &Ring) {
    let mut keyspaces = keyspaces.write();
    for name in SYSTEM_KEYSPACES {
        if let Some(system) = keyspaces.get_mut(name) {
            for (dc, rf) in Arc::make_mut(system).replication.iter_mut() {
                *rf = factor(ring, dc);
            }
        }
    }
}

/// Keep the registry keyspace's factors equal to the ring, as gossip
/// publishes it, until `stop`.
pub async fn track_replication(
    keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    mut view: watch::Receiver<Arc<ClusterView>>,
    mut stop: watch::Receiver<bool>,
    worker: WorkerHandle,
) {
    loop {
        let current = view.borrow_and_update().clone();
        worker.busy();
        update_replication(&keyspaces, &current.ring);
        worker.idle();
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

/// The version a replica's set of a system key reads as: the latest by
/// `(timestamp, digest)`, the same choice on every replica that holds the
/// same set; `None` when the set is empty. A tombstone chosen this way
/// means the key is deleted.
pub fn latest(set: &VersionSet) -> Option<&Version> {
    set.versions()
        .iter()
        .max_by_key(|v| (v.timestamp_ms, v.digest()))
}

/// Writes a system keyspace through the cluster (the coordinator
/// implements it).
pub trait SystemWriter: Send + Sync {
    /// Write `value` under `key` over `context` at [`SYSTEM_WRITE_LEVEL`];
    /// `None` writes a tombstone.
    fn write<'a>(
        &'a self,
        keyspace: &'a str,
        key: &'a [u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>>;
}

/// One system keyspace of a node: synchronous reads of the node's own
/// replica, writes through the cluster. Cheap to clone. It holds the
/// engine and the writer weakly: once the node is gone, calls fail with
/// an error instead of keeping its storage open.
#[derive(Clone)]
pub struct SystemKeyspace {
    node: NodeId,
    keyspace: String,
    reader: Weak<dyn BlockingRead>,
    writer: Weak<dyn SystemWriter>,
    applies: Arc<AtomicU64>,
    keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    value_bytes_max: usize,
    runtime: Option<tokio::runtime::Handle>,
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for SystemKeyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemKeyspace")
            .field("node", &self.node)
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

fn stopping() -> StoreError {
    StoreError::Failed {
        reason: "the node is stopping".into(),
    }
}

impl SystemKeyspace {
    /// The system keyspace `keyspace` of node `node`, read from `reader`,
    /// written through `writer`. `applies` counts the versions applied to
    /// system keyspaces on this replica (the coordinator's
    /// `system_applies`); `keyspaces` is the node's keyspace table.
    /// Blocking writes run on the runtime current at construction.
    pub fn new(
        node: NodeId,
        keyspace: &str,
        reader: &Arc<dyn BlockingRead>,
        writer: &Arc<dyn SystemWriter>,
        applies: Arc<AtomicU64>,
        keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
        limits: &Limits,
    ) -> Self {
        SystemKeyspace {
            node,
            keyspace: keyspace.to_owned(),
            reader: Arc::downgrade(reader),
            writer: Arc::downgrade(writer),
            applies,
            keyspaces,
            value_bytes_max: limits.value_bytes_max,
            runtime: tokio::runtime::Handle::try_current().ok(),
            writes: Arc::default(),
        }
    }

    /// The keyspace's name.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Largest value a write may carry.
    pub fn value_bytes_max(&self) -> usize {
        self.value_bytes_max
    }

    /// Moves whenever a version reaches this replica's system keyspaces:
    /// what was decoded at one generation stays valid until it changes.
    pub fn generation(&self) -> u64 {
        self.applies.load(Ordering::Acquire)
    }

    /// The node's user keyspaces and their configuration.
    pub fn keyspaces(&self) -> crate::model::KeyspaceMap {
        self.keyspaces
            .read()
            .iter()
            .filter(|(name, _)| !is_system(name))
            .map(|(name, ks)| (name.clone(), ks.clone()))
            .collect()
    }

    /// This replica's set of `key` (empty when absent). Blocks on the
    /// engine.
    pub fn get(&self, key: &[u8]) -> Result<VersionSet, StoreError> {
        let reader = self.reader.upgrade().ok_or_else(stopping)?;
        reader.get_blocking(&self.keyspace, key)
    }

    /// Every `(key, set)` of this replica's keyspace, in storage order
    /// (by key hash, not by key). Blocks on the engine.
    pub fn scan(&self) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        let reader = self.reader.upgrade().ok_or_else(stopping)?;
        reader.scan_blocking(&self.keyspace)
    }

    /// The `(key, set)` pairs whose key starts with `prefix`, in storage
    /// order; the rest are dropped as the scan meets them. Blocks on the
    /// engine.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
        let reader = self.reader.upgrade().ok_or_else(stopping)?;
        reader.scan_blocking_where(&self.keyspace, &|key| key.starts_with(prefix))
    }

    /// A write id no other write carries: retries are the writer's
    /// business, not this store's.
    fn write_id(&self, key: &[u8]) -> [u8; 16] {
        let mut h = blake3::Hasher::new();
        h.update(self.node.0.as_bytes());
        h.update(&[0]);
        h.update(key);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.update(&nanos.to_le_bytes());
        h.update(&self.writes.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let mut id = [0; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        id
    }

    /// The context a write of `key` supersedes: this replica's set of it,
    /// read on the blocking pool.
    async fn local_context(&self, key: &[u8]) -> Result<Clock, StoreError> {
        let (this, key) = (self.clone(), key.to_vec());
        Ok(tokio::task::spawn_blocking(move || this.get(&key))
            .await
            .map_err(|e| StoreError::Failed {
                reason: format!("reading the system keyspace: {e}"),
            })??
            .lub())
    }

    /// Write `value` under `key`, superseding what this replica holds of
    /// it, at [`SYSTEM_WRITE_LEVEL`].
    pub async fn write(
        &self,
        key: &[u8],
        value: Vec<u8>,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        self.put(key, Some(value), deadline).await
    }

    /// Delete `key` (write a tombstone), superseding what this replica
    /// holds of it, at [`SYSTEM_WRITE_LEVEL`]. A sibling written
    /// concurrently through another node is not superseded: readers
    /// resolve the two by [`latest`].
    pub async fn delete(&self, key: &[u8], deadline: Duration) -> Result<(), CoordinatorError> {
        self.put(key, None, deadline).await
    }

    async fn put(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        let context = self.local_context(key).await?;
        let writer = self.writer.upgrade().ok_or_else(stopping)?;
        let id = self.write_id(key);
        writer
            .write(&self.keyspace, key, value, context, id, deadline)
            .await
    }

    /// [`SystemKeyspace::write`] for a caller that cannot await: the write
    /// runs on the node's runtime while this thread waits. Call it from a
    /// thread that is not one of the runtime's workers (a
    /// `spawn_blocking` task, a plain thread); a current-thread runtime
    /// that blocks in it cannot run the write, which then times out.
    pub fn write_blocking(
        &self,
        key: &[u8],
        value: Vec<u8>,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        self.put_blocking(key, Some(value), deadline)
    }

    /// [`SystemKeyspace::delete`] for a caller that cannot await (see
    /// [`SystemKeyspace::write_blocking`]).
    pub fn delete_blocking(&self, key: &[u8], deadline: Duration) -> Result<(), CoordinatorError> {
        self.put_blocking(key, None, deadline)
    }

    fn put_blocking(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        let runtime = self.runtime.clone().ok_or_else(|| StoreError::Failed {
            reason: "the system keyspace was opened outside a runtime".into(),
        })?;
        let context = self.get(key)?.lub();
        let writer = self.writer.upgrade().ok_or_else(stopping)?;
        let (keyspace, key, id) = (self.keyspace.clone(), key.to_vec(), self.write_id(key));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let result = writer
                .write(&keyspace, &key, value, context, id, deadline)
                .await;
            let _ = tx.send(result);
        });
        rx.recv_timeout(deadline + Duration::from_secs(1))
            .map_err(|_| {
                CoordinatorError::Storage(StoreError::Failed {
                    reason: format!("the system write did not finish within {deadline:?}"),
                })
            })?
    }
}

/// The resolver registry as the node serves it: the binary plugs in the
/// wasm host's registry (core never sees wasmtime), as it does the merge
/// hook.
pub trait RegistryHook: Send + Sync {
    /// The node's registry keyspace. Called once, after the coordinator
    /// exists and before the node serves any request or merges anything.
    fn attach(&self, store: SystemKeyspace);

    /// Serve a client's registry request.
    fn serve<'a>(
        &'a self,
        request: RegistryRequest,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<RegistryResponse, WireError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Placement;

    fn ring(members: &[(&str, &str)]) -> Ring {
        let members: Vec<(NodeId, Placement)> = members
            .iter()
            .map(|(id, dc)| {
                (
                    NodeId((*id).into()),
                    Placement {
                        dc: (*dc).into(),
                        rack: "r".into(),
                    },
                )
            })
            .collect();
        Ring::build(members.iter().map(|(n, p)| (n, p, 8)))
    }

    #[test]
    fn the_registry_spans_every_named_dc_at_its_node_count() {
        let user = BTreeMap::from([(
            "carts".to_owned(),
            KeyspaceConfig {
                replication: BTreeMap::from([("dc2".into(), 3)]),
                ..KeyspaceConfig::default()
            },
        )]);
        // Before gossip: only this node; dc2 unseen still gets factor 1.
        let alone = ring(&[("a", "dc1")]);
        let ks = registry_keyspace(&"dc1".into(), &user, &alone);
        assert_eq!(
            ks.replication,
            BTreeMap::from([("dc1".into(), 1), ("dc2".into(), 1)])
        );
        assert_eq!(ks.consistency, Consistency::LocalQuorum);
        assert!(ks.resolver.is_none());

        let table = RwLock::new(BTreeMap::from([(
            REGISTRY_KEYSPACE.to_owned(),
            Arc::new(ks),
        )]));
        let full = ring(&[
            ("a", "dc1"),
            ("b", "dc1"),
            ("c", "dc1"),
            ("x", "dc2"),
            ("y", "dc2"),
            ("z", "dc3"),
        ]);
        update_replication(&table, &full);
        // dc3 is on the ring but named by no keyspace: not a registry DC.
        assert_eq!(
            table.read()[REGISTRY_KEYSPACE].replication,
            BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 2)])
        );
        // Every node of a datacenter replicates every registry key.
        for h in [0, 1 << 40, u64::MAX] {
            assert_eq!(full.replicas_in_dc(&"dc1".into(), h, 3).len(), 3);
        }
    }

    #[test]
    fn system_names_start_with_an_underscore() {
        assert!(is_system(REGISTRY_KEYSPACE));
        assert!(!is_system("carts"));
    }
}
