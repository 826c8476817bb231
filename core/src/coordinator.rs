//! The coordinator: serves client reads and writes at a consistency level
//! by talking to the key's replicas.
//!
//! Writes. Write dots are issued by a replica of the key, from the key's
//! own history, so each actor's counters for a key stay contiguous and the
//! clock stays small (a node that is not a local replica forwards the write
//! to one). Under a per-key lock the coordinating replica reads its set,
//! returns the stored version if the client's write id is already there (a
//! retry), checks the sibling bound, builds the new version (the client's
//! context plus one new dot), and applies it locally. It then sends the
//! version to every other replica, answers the client when the
//! [`QuorumTracker`] says the level is won (or lost, or the deadline
//! passed), and keeps delivering to the rest in the background. A replica
//! that is down or does not answer gets a durable hint.
//!
//! Quorums are strict: a hint does not count toward the level, so a read
//! at R and a write at W with R + W > N always overlap on a real replica.
//! (DESIGN.md's sloppy quorum trades that guarantee for availability; with
//! RF 3 and local quorums a single failure never needs it, so strictness
//! wins here, as in Cassandra.)
//!
//! Reads ask every replica the level can count (local replicas only for
//! LOCAL_* levels), answer when the level is won with the join of what
//! arrived, and then repair: every replica whose set differs from the
//! join of all answers gets the missing versions. When the keyspace has a
//! resolver and the join holds siblings, the coordinator merges them first,
//! so the client and the repaired replicas see the merged version.
//!
//! The logic of "enough answers?" is [`QuorumTracker`]'s; this module only
//! moves messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_client::ClientError;
use isthmus_client::wire::{AckCount, ErrorCode, WireError};
use parking_lot::RwLock;
use tokio::sync::{Mutex, mpsc, watch};

use crate::bridge::{BoxFuture, Bridge, Deliver, Entries};
use crate::limit::{LimitError, Limits};
use crate::merge::{MergeHook, merge_into};
use crate::model::{
    Actor, Clock, Consistency, DcName, Dot, KeyspaceConfig, Payload, Version, VersionSet, key_hash,
};
use crate::peer::{PeerRequest, PeerResponse};
use crate::quorum::{Outcome, QuorumTracker};
use crate::ring::{NodeId, Ring};
use crate::store::{LocalStore, StoreError};

/// What the coordinator knows of the cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// Placement rings of every datacenter.
    pub ring: Ring,
    /// Nodes the failure detector currently believes alive (self included).
    pub alive: BTreeSet<NodeId>,
    /// The rings once the nodes now joining own their ranges and the
    /// nodes now leaving are gone. Writes also go to the replicas it adds
    /// (pending owners, not counted toward any level), so that a range
    /// being streamed misses no write.
    pub next: Ring,
}

/// Sends peer requests to other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Send `request` to `to` and wait up to `timeout` for the answer.
    fn call(
        &self,
        to: &NodeId,
        request: PeerRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<PeerResponse, ClientError>> + Send;
}

/// Keeps versions for a replica that could not take them.
pub trait HintSink: Send + Sync + 'static {
    /// Store durably that `target` must still receive `versions` of the key.
    fn add(
        &self,
        target: &NodeId,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Why a request could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordinatorError {
    /// No keyspace of that name is configured.
    #[error("unknown keyspace {name:?}")]
    UnknownKeyspace {
        /// The name asked for.
        name: String,
    },
    /// A request that cannot be valid (for instance an undecodable context).
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
    /// A size or sibling limit refused the write.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Too few replicas are alive to try.
    #[error("{alive} live replicas cannot meet a level needing {required}")]
    Unavailable {
        /// Acknowledgements the level needs.
        required: u32,
        /// Replicas alive where the level looks.
        alive: u32,
    },
    /// The deadline passed before the level was met.
    #[error("timed out with {acked} of {required} acknowledgements")]
    Timeout {
        /// Acknowledgements needed.
        required: u32,
        /// Acknowledgements received.
        acked: u32,
    },
    /// So many replicas failed that the level cannot be met.
    #[error("only {acked} of {required} acknowledgements possible")]
    QuorumLost {
        /// Acknowledgements needed.
        required: u32,
        /// Acknowledgements received.
        acked: u32,
    },
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl CoordinatorError {
    /// The error as the wire carries it.
    pub fn to_wire(&self) -> WireError {
        let (code, acks) = match self {
            CoordinatorError::UnknownKeyspace { .. } | CoordinatorError::BadRequest { .. } => {
                (ErrorCode::BadRequest, None)
            }
            CoordinatorError::Limit(LimitError::KeyTooLarge { .. }) => {
                (ErrorCode::KeyTooLarge, None)
            }
            CoordinatorError::Limit(LimitError::ValueTooLarge { .. }) => {
                (ErrorCode::ValueTooLarge, None)
            }
            CoordinatorError::Limit(LimitError::TooManySiblings { .. }) => {
                (ErrorCode::TooManySiblings, None)
            }
            CoordinatorError::Unavailable { required, alive } => (
                ErrorCode::Unavailable,
                Some(AckCount {
                    required: *required,
                    acked: *alive,
                }),
            ),
            CoordinatorError::Timeout { required, acked }
            | CoordinatorError::QuorumLost { required, acked } => (
                ErrorCode::Timeout,
                Some(AckCount {
                    required: *required,
                    acked: *acked,
                }),
            ),
            CoordinatorError::Storage(StoreError::Limit(_)) => (ErrorCode::BadRequest, None),
            CoordinatorError::Storage(_) => (ErrorCode::StorageFailed, None),
        };
        WireError {
            code,
            message: self.to_string(),
            acks,
        }
    }

    /// Rebuild an error a peer reported (for forwarded writes).
    fn from_wire(e: WireError) -> Self {
        match (e.code, e.acks) {
            (ErrorCode::Unavailable, Some(a)) => CoordinatorError::Unavailable {
                required: a.required,
                alive: a.acked,
            },
            (ErrorCode::Timeout, Some(a)) => CoordinatorError::Timeout {
                required: a.required,
                acked: a.acked,
            },
            (ErrorCode::TooManySiblings, _)
            | (ErrorCode::KeyTooLarge, _)
            | (ErrorCode::ValueTooLarge, _) => CoordinatorError::BadRequest { reason: e.message },
            _ => CoordinatorError::Storage(StoreError::Failed { reason: e.message }),
        }
    }
}

/// Per-node identity and knobs of the coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// This node.
    pub node: NodeId,
    /// Its datacenter.
    pub dc: DcName,
    /// The actor its write dots carry (random per data directory, so a node
    /// whose disk was wiped never reissues a dot it issued before).
    pub actor: Actor,
    /// Size and sibling limits.
    pub limits: Limits,
}

/// Key locks: writes to one key serialise their read-issue-apply step.
const KEY_LOCK_STRIPES: usize = 1024;

/// Serves client requests for one node.
pub struct Coordinator<S, T, H> {
    config: CoordinatorConfig,
    store: S,
    transport: Arc<T>,
    hints: Arc<H>,
    merge: Arc<dyn MergeHook>,
    keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
    view: watch::Receiver<Arc<ClusterView>>,
    key_locks: Vec<Mutex<()>>,
    bridge: Option<Arc<dyn Bridge>>,
    system_applies: Arc<AtomicU64>,
}

/// The replicas of a key: `(node, dc)` in placement order per DC.
type Replicas = Vec<(NodeId, DcName)>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<S: LocalStore + Clone, T: Transport, H: HintSink> Coordinator<S, T, H> {
    /// A coordinator over the given parts.
    pub fn new(
        config: CoordinatorConfig,
        store: S,
        transport: Arc<T>,
        hints: Arc<H>,
        merge: Arc<dyn MergeHook>,
        keyspaces: Arc<RwLock<BTreeMap<String, KeyspaceConfig>>>,
        view: watch::Receiver<Arc<ClusterView>>,
    ) -> Self {
        let key_locks = (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        Coordinator {
            config,
            store,
            transport,
            hints,
            merge,
            keyspaces,
            view,
            key_locks,
            bridge: None,
            system_applies: Arc::default(),
        }
    }

    /// Counts the versions applied to this replica's system keyspaces
    /// (bumped after each apply), so readers of those keyspaces can cache
    /// what they decoded until it moves.
    pub fn system_applies(&self) -> &Arc<AtomicU64> {
        &self.system_applies
    }

    /// Whether siblings of `keyspace` are merged: the merge hook decides
    /// when it knows (run-time bindings), else the keyspace's configured
    /// resolver. System keyspaces never merge.
    fn has_resolver(&self, keyspace: &str) -> bool {
        if crate::system::is_system(keyspace) {
            return false;
        }
        self.merge.bound(keyspace).unwrap_or_else(|| {
            self.keyspaces
                .read()
                .get(keyspace)
                .is_some_and(|k| k.resolver.is_some())
        })
    }

    fn applied(&self, keyspace: &str) {
        if crate::system::is_system(keyspace) {
            self.system_applies.fetch_add(1, Ordering::Release);
        }
    }

    /// Hand writes bound for other DCs to `bridge`: writes at local levels
    /// then go to this DC's replicas only, and the bridge ships them on.
    pub fn with_bridge(mut self, bridge: Arc<dyn Bridge>) -> Self {
        self.bridge = Some(bridge);
        self
    }

    /// The bridge, when the node runs one.
    pub fn bridge(&self) -> Option<&Arc<dyn Bridge>> {
        self.bridge.as_ref()
    }

    /// This node's identity.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    fn keyspace(&self, name: &str) -> Result<KeyspaceConfig, CoordinatorError> {
        self.keyspaces
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CoordinatorError::UnknownKeyspace {
                name: name.to_owned(),
            })
    }

    fn replicas(&self, ks: &KeyspaceConfig, key: &[u8]) -> (Replicas, Arc<ClusterView>) {
        let view = self.view.borrow().clone();
        let replicas = view
            .ring
            .replicas(&ks.replication, key_hash(key))
            .into_iter()
            .flat_map(|(dc, nodes)| nodes.into_iter().map(move |n| (n, dc.clone())))
            .collect();
        (replicas, view)
    }

    /// Absorb versions into this replica's copy of the key, then let the
    /// keyspace's resolver merge any siblings. Every path that brings
    /// versions to a replica (coordinated writes, peer applies, hint
    /// replay, read repair, the bridge) comes through here. A failed merge
    /// keeps the siblings (and is counted by the hook).
    ///
    /// Holds the key's lock, so concurrent deliveries to one key merge one
    /// after another and the last merge sees every sibling.
    pub async fn apply_local(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        let _guard = self.key_lock(key).lock().await;
        self.apply_local_locked(keyspace, key, versions).await
    }

    fn key_lock(&self, key: &[u8]) -> &Mutex<()> {
        &self.key_locks[(key_hash(key) as usize) % KEY_LOCK_STRIPES]
    }

    /// [`Self::apply_local`] for a caller that holds the key's lock.
    async fn apply_local_locked(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
    ) -> Result<(), StoreError> {
        self.store.apply(keyspace, key, versions).await?;
        self.applied(keyspace);
        if self.has_resolver(keyspace) {
            let mut set = self.store.get(keyspace, key).await?;
            if set.len() > 1 {
                match merge_into(self.merge.as_ref(), keyspace, key, &mut set) {
                    Ok(crate::model::Absorbed::Changed) => {
                        self.store.apply(keyspace, key, set.into_versions()).await?;
                    }
                    Ok(crate::model::Absorbed::Unchanged) => {}
                    Err(failure) => tracing::warn!(%failure, "merge failed; siblings kept"),
                }
            }
        }
        Ok(())
    }

    /// This replica's copy of a key.
    pub async fn read_local(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
        self.store.get(keyspace, key).await
    }

    /// Serve a request from another node. Gossip is not the
    /// coordinator's: the node answers it before calling this.
    pub async fn serve_peer(&self, request: PeerRequest, deadline: Duration) -> PeerResponse {
        let failed = |e: &dyn std::fmt::Display, code| {
            tracing::warn!(error = %e, ?code, "a peer request failed here");
            PeerResponse::Error(WireError {
                code,
                message: e.to_string(),
                acks: None,
            })
        };
        match request {
            PeerRequest::Apply {
                keyspace,
                key,
                versions,
                hint_for: None,
            } => match self.apply_local(&keyspace, &key, versions).await {
                Ok(()) => PeerResponse::Applied,
                Err(e) => failed(&e, ErrorCode::StorageFailed),
            },
            PeerRequest::Apply {
                keyspace,
                key,
                versions,
                hint_for: Some(target),
            } => match self.hints.add(&target, &keyspace, &key, versions).await {
                Ok(()) => PeerResponse::Applied,
                Err(e) => failed(&e, ErrorCode::StorageFailed),
            },
            PeerRequest::ApplyBatch { keyspace, entries } => {
                match self.apply_many_local(&keyspace, entries).await {
                    Ok(()) => PeerResponse::Applied,
                    Err(e) => failed(&e, ErrorCode::StorageFailed),
                }
            }
            PeerRequest::Read { keyspace, key } => match self.read_local(&keyspace, &key).await {
                Ok(set) => PeerResponse::Versions(set),
                Err(e) => failed(&e, ErrorCode::StorageFailed),
            },
            PeerRequest::Coordinate {
                keyspace,
                key,
                value,
                context,
                write_id,
                consistency,
            } => {
                let result = self
                    .write_inner(
                        &keyspace,
                        &key,
                        value,
                        context,
                        write_id,
                        consistency,
                        deadline,
                        false,
                    )
                    .await;
                match result {
                    Ok(()) => PeerResponse::Written,
                    Err(e) => PeerResponse::Error(e.to_wire()),
                }
            }
            PeerRequest::Gossip { .. } | PeerRequest::Ship { .. } => failed(
                &"gossip and bridge batches are served by the node",
                ErrorCode::BadRequest,
            ),
            PeerRequest::Repair(_) => {
                failed(&"repair is served by the node", ErrorCode::BadRequest)
            }
        }
    }

    /// Write `value` (or delete when `None`) over `context` at `level`.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        level: Consistency,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        self.write_inner(
            keyspace, key, value, context, write_id, level, deadline, true,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_inner(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        level: Consistency,
        deadline: Duration,
        may_forward: bool,
    ) -> Result<(), CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        self.config.limits.check(key, value.as_deref())?;
        let (replicas, view) = self.replicas(&ks, key);
        let me = &self.config.node;
        if !replicas
            .iter()
            .any(|(n, dc)| n == me && *dc == self.config.dc)
        {
            if !may_forward {
                // Views disagree about placement: refuse rather than bounce.
                return Err(CoordinatorError::BadRequest {
                    reason: format!("{me} is not a replica of this key"),
                });
            }
            return self
                .forward(
                    keyspace, key, value, context, write_id, level, deadline, &replicas, &view,
                )
                .await;
        }
        let version = {
            let _guard = self.key_lock(key).lock().await;
            let current = self.store.get(keyspace, key).await?;
            if let Some(stored) = current
                .versions()
                .iter()
                .find(|v| v.write_id == Some(write_id))
            {
                // A retry of a write this replica already holds: deliver the
                // stored version again rather than adding a sibling.
                stored.clone()
            } else {
                let actor = self.config.actor;
                let counter = current
                    .lub()
                    .max_counter(actor)
                    .max(context.max_counter(actor))
                    + 1;
                let mut clock = context;
                clock.add_dot(Dot { actor, counter });
                let remaining = current
                    .versions()
                    .iter()
                    .filter(|v| !v.clock.is_covered_by(&clock))
                    .count();
                if !self.has_resolver(keyspace) && remaining + 1 > self.config.limits.siblings_max {
                    return Err(LimitError::TooManySiblings {
                        count: remaining + 1,
                        max: self.config.limits.siblings_max,
                    }
                    .into());
                }
                let payload = value.map_or(Payload::Tombstone, Payload::Value);
                let version = Version {
                    clock,
                    payload,
                    timestamp_ms: now_ms(),
                    origin_dc: self.config.dc.clone(),
                    resolver: None,
                    write_id: Some(write_id),
                };
                self.apply_local_locked(keyspace, key, vec![version.clone()])
                    .await?;
                version
            }
        };
        let mut tracker =
            QuorumTracker::for_replication(level, &replicas, &self.config.dc, &ks.replication);
        tracker.ack(me);
        let mut targets = replicas;
        if let Some(bridge) = &self.bridge {
            // The bridge decides from the keyspace's replication, not from
            // this node's view of the ring: a node that just restarted may
            // not know the remote DC's nodes yet, and its writes are owed
            // there all the same.
            bridge.enqueue(keyspace, key, &version).await?;
            if matches!(
                level,
                Consistency::One | Consistency::LocalOne | Consistency::LocalQuorum
            ) {
                // The bridge carries the write to the other DCs.
                targets.retain(|(_, dc)| *dc == self.config.dc);
            }
        }
        // Pending owners in this DC (a node joining, or taking over from a
        // node leaving) get the write too; their acks count for nothing.
        let local_rf = ks.replication.get(&self.config.dc).copied().unwrap_or(0) as usize;
        for pending in view
            .next
            .replicas_in_dc(&self.config.dc, key_hash(key), local_rf)
        {
            if !targets.iter().any(|(n, _)| *n == pending) {
                targets.push((pending, self.config.dc.clone()));
            }
        }
        targets.retain(|(n, _)| n != me);
        self.replicate(
            keyspace,
            key,
            vec![version],
            &targets,
            &view,
            tracker,
            deadline,
        )
        .await
    }

    /// Absorb many keys' versions in this replica's store: one engine
    /// batch, or key by key (each merged) when the keyspace has a resolver.
    pub async fn apply_many_local(
        &self,
        keyspace: &str,
        entries: Entries,
    ) -> Result<(), StoreError> {
        if self.has_resolver(keyspace) {
            for (key, versions) in entries {
                self.apply_local(keyspace, &key, versions).await?;
            }
            Ok(())
        } else {
            self.store.apply_many(keyspace, entries).await?;
            self.applied(keyspace);
            Ok(())
        }
    }

    /// Absorb versions shipped from another DC on a local quorum of each
    /// key's replicas in this DC (this node need not be one of them): one
    /// [`PeerRequest::ApplyBatch`] per replica, whatever the number of
    /// keys. A replica that misses its part gets hints for it.
    pub async fn deliver_local(
        &self,
        keyspace: &str,
        entries: Entries,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        let rf = ks.replication.get(&self.config.dc).copied().unwrap_or(0) as usize;
        if rf == 0 {
            return Err(CoordinatorError::BadRequest {
                reason: format!(
                    "keyspace {keyspace:?} has no replicas in {}",
                    self.config.dc
                ),
            });
        }
        let view = self.view.borrow().clone();
        let mut per_node: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        let mut owners: Vec<Vec<NodeId>> = Vec::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            let nodes = view.ring.replicas_in_dc(&self.config.dc, key_hash(key), rf);
            for n in &nodes {
                per_node.entry(n.clone()).or_default().push(i);
            }
            owners.push(nodes);
        }
        let entries = Arc::new(entries);
        let pick = |idx: &[usize]| -> Entries { idx.iter().map(|&i| entries[i].clone()).collect() };
        let mut calls = Vec::new();
        for (node, idx) in &per_node {
            let part = pick(idx);
            let node = node.clone();
            let alive = view.alive.contains(&node);
            let me = node == self.config.node;
            let keyspace = keyspace.to_owned();
            calls.push(async move {
                let ok = if me {
                    self.apply_many_local(&keyspace, part.clone()).await.is_ok()
                } else if alive {
                    let request = PeerRequest::ApplyBatch {
                        keyspace: keyspace.clone(),
                        entries: part.clone(),
                    };
                    matches!(
                        self.transport.call(&node, request, deadline).await,
                        Ok(PeerResponse::Applied)
                    )
                } else {
                    false
                };
                if !ok && !me {
                    for (key, versions) in part {
                        if let Err(e) = self.hints.add(&node, &keyspace, &key, versions).await {
                            tracing::error!(%node, error = %e, "could not store a hint");
                        }
                    }
                }
                (node, ok)
            });
        }
        let answers: BTreeMap<NodeId, bool> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect();
        let need = crate::quorum::majority(rf);
        let worst = owners
            .iter()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| answers.get(*n) == Some(&true))
                    .count()
            })
            .min()
            .unwrap_or(need);
        if worst < need {
            return Err(CoordinatorError::QuorumLost {
                required: need as u32,
                acked: worst as u32,
            });
        }
        Ok(())
    }

    /// Send `versions` to `targets` and wait for the level. A target in
    /// this DC that misses them gets a hint; one in another DC does not
    /// when a bridge runs (the bridge carries the write there).
    #[allow(clippy::too_many_arguments)]
    async fn replicate(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: Vec<Version>,
        targets: &Replicas,
        view: &ClusterView,
        mut tracker: QuorumTracker,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        let (tx, mut rx) = mpsc::channel::<(NodeId, bool)>(targets.len().max(1));
        for (node, dc) in targets {
            let (node, tx) = (node.clone(), tx.clone());
            let (transport, hints) = (self.transport.clone(), self.hints.clone());
            let (keyspace, key, versions) = (keyspace.to_owned(), key.to_vec(), versions.clone());
            let alive = view.alive.contains(&node);
            let hint = self.bridge.is_none() || *dc == self.config.dc;
            tokio::spawn(async move {
                let delivered = alive && {
                    let request = PeerRequest::Apply {
                        keyspace: keyspace.clone(),
                        key: key.clone(),
                        versions: versions.clone(),
                        hint_for: None,
                    };
                    match transport.call(&node, request, deadline).await {
                        Ok(PeerResponse::Applied) => true,
                        other => {
                            tracing::debug!(%node, answer = ?other, "a replica missed a write");
                            false
                        }
                    }
                };
                if !delivered
                    && hint
                    && let Err(e) = hints.add(&node, &keyspace, &key, versions).await
                {
                    tracing::error!(%node, error = %e, "could not store a hint");
                }
                let _ = tx.send((node, delivered)).await;
            });
        }
        drop(tx);
        let outcome = tokio::time::timeout(deadline, async {
            let mut outcome = tracker.outcome();
            while outcome == Outcome::Pending {
                let Some((node, ok)) = rx.recv().await else {
                    break;
                };
                outcome = if ok {
                    tracker.ack(&node)
                } else {
                    tracker.fail(&node)
                };
            }
            outcome
        })
        .await;
        let (required, acked) = (tracker.required() as u32, tracker.acked() as u32);
        match outcome {
            Ok(Outcome::Won) => Ok(()),
            Ok(_) => Err(CoordinatorError::QuorumLost { required, acked }),
            Err(_) => Err(CoordinatorError::Timeout { required, acked }),
        }
    }

    /// Hand a write to a live replica of the key (local DC first).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        level: Consistency,
        deadline: Duration,
        replicas: &Replicas,
        view: &ClusterView,
    ) -> Result<(), CoordinatorError> {
        let mut candidates: Vec<&NodeId> = replicas
            .iter()
            .filter(|(n, dc)| *dc == self.config.dc && view.alive.contains(n))
            .map(|(n, _)| n)
            .collect();
        if candidates.is_empty() {
            candidates = replicas
                .iter()
                .filter(|(n, _)| view.alive.contains(n))
                .map(|(n, _)| n)
                .collect();
        }
        let Some(target) = candidates.first() else {
            let required = QuorumTracker::new(level, replicas, &self.config.dc).required() as u32;
            return Err(CoordinatorError::Unavailable { required, alive: 0 });
        };
        let request = PeerRequest::Coordinate {
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            value,
            context,
            write_id,
            consistency: level,
        };
        match self.transport.call(target, request, deadline).await {
            Ok(PeerResponse::Written) => Ok(()),
            Ok(PeerResponse::Error(e)) | Err(ClientError::Server(e)) => {
                Err(CoordinatorError::from_wire(e))
            }
            Ok(other) => Err(CoordinatorError::BadRequest {
                reason: format!("unexpected answer {other:?}"),
            }),
            Err(e) => {
                let required =
                    QuorumTracker::new(level, replicas, &self.config.dc).required() as u32;
                tracing::debug!(error = %e, "forwarding a write failed");
                Err(CoordinatorError::Timeout { required, acked: 0 })
            }
        }
    }

    /// Read the key's live siblings at `level`.
    pub async fn read(
        self: &Arc<Self>,
        keyspace: &str,
        key: &[u8],
        level: Consistency,
        deadline: Duration,
    ) -> Result<VersionSet, CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        self.config.limits.check(key, None)?;
        let (mut replicas, view) = self.replicas(&ks, key);
        if matches!(level, Consistency::LocalOne | Consistency::LocalQuorum) {
            // Local levels read local replicas only: no WAN round trip per
            // read. Remote replicas converge through writes and repair.
            replicas.retain(|(_, dc)| *dc == self.config.dc);
        }
        let mut tracker =
            QuorumTracker::for_replication(level, &replicas, &self.config.dc, &ks.replication);
        let alive = replicas
            .iter()
            .filter(|(n, _)| view.alive.contains(n))
            .count() as u32;
        if tracker.outcome() == Outcome::Lost {
            return Err(CoordinatorError::Unavailable {
                required: tracker.required() as u32,
                alive,
            });
        }
        let (tx, mut rx) = mpsc::channel::<(NodeId, Option<VersionSet>)>(replicas.len().max(1));
        let mut local = false;
        for (node, _) in &replicas {
            if *node == self.config.node {
                local = true;
                continue;
            }
            let (node, tx, this) = (node.clone(), tx.clone(), self.clone());
            let (keyspace, key) = (keyspace.to_owned(), key.to_vec());
            let alive = view.alive.contains(&node);
            tokio::spawn(async move {
                let answer = if alive {
                    let request = PeerRequest::Read { keyspace, key };
                    match this.transport.call(&node, request, deadline).await {
                        Ok(PeerResponse::Versions(set)) => Some(set),
                        _ => None,
                    }
                } else {
                    None
                };
                let _ = tx.send((node, answer)).await;
            });
        }
        if local {
            // This node's own copy, read while the others are on their
            // way (no task of its own: most reads are answered from
            // memory). The channel holds one answer per replica.
            let answer = self.read_local(keyspace, key).await.ok();
            let _ = tx.send((self.config.node.clone(), answer)).await;
        }
        drop(tx);
        let mut joined = VersionSet::new();
        let mut answers: Vec<(NodeId, VersionSet)> = Vec::new();
        let outcome = tokio::time::timeout(deadline, async {
            let mut outcome = tracker.outcome();
            while outcome == Outcome::Pending {
                let Some((node, answer)) = rx.recv().await else {
                    break;
                };
                outcome = match answer {
                    Some(set) => {
                        joined.join(set.clone());
                        answers.push((node.clone(), set));
                        tracker.ack(&node)
                    }
                    None => tracker.fail(&node),
                };
            }
            outcome
        })
        .await;
        let (required, acked) = (tracker.required() as u32, tracker.acked() as u32);
        match outcome {
            Ok(Outcome::Won) => {}
            Ok(_) => return Err(CoordinatorError::QuorumLost { required, acked }),
            Err(_) => return Err(CoordinatorError::Timeout { required, acked }),
        }
        if joined.len() > 1
            && self.has_resolver(keyspace)
            && let Err(failure) = merge_into(self.merge.as_ref(), keyspace, key, &mut joined)
        {
            tracing::warn!(%failure, "merge at read failed; siblings returned");
        }
        // Repair in the background: wait for the stragglers, then give
        // every replica that answered what it lacks.
        let this = self.clone();
        let (keyspace, key, result) = (keyspace.to_owned(), key.to_vec(), joined.clone());
        tokio::spawn(async move {
            let mut full = joined;
            let _ = tokio::time::timeout(deadline, async {
                while let Some((node, answer)) = rx.recv().await {
                    if let Some(set) = answer {
                        full.join(set.clone());
                        answers.push((node, set));
                    }
                }
            })
            .await;
            this.repair(&keyspace, &key, full, answers, deadline).await;
        });
        Ok(result)
    }

    async fn repair(
        &self,
        keyspace: &str,
        key: &[u8],
        full: VersionSet,
        answers: Vec<(NodeId, VersionSet)>,
        deadline: Duration,
    ) {
        for (node, seen) in answers {
            if seen == full {
                continue;
            }
            let missing: Vec<Version> = full
                .versions()
                .iter()
                .filter(|v| !seen.versions().contains(v))
                .cloned()
                .collect();
            if node == self.config.node {
                if let Err(e) = self.apply_local(keyspace, key, missing).await {
                    tracing::warn!(error = %e, "local read repair failed");
                }
                continue;
            }
            let request = PeerRequest::Apply {
                keyspace: keyspace.to_owned(),
                key: key.to_vec(),
                versions: missing,
                hint_for: None,
            };
            if let Err(e) = self.transport.call(&node, request, deadline).await {
                tracing::debug!(%node, error = %e, "read repair not delivered; anti-entropy will");
            }
        }
    }
}

impl<S: LocalStore + Clone, T: Transport, H: HintSink> Deliver for Coordinator<S, T, H> {
    fn deliver<'a>(
        &'a self,
        keyspace: &'a str,
        entries: Entries,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(self.deliver_local(keyspace, entries, deadline))
    }
}
