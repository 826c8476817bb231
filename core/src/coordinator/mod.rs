//! The coordinator: serves client reads and writes at a consistency level
//! by talking to the key's replicas.
//!
//! Writes. Write dots are issued by a replica of the key, from the key's
//! own history, so each actor's counters for a key stay contiguous and the
//! clock stays small (a node that is not a local replica forwards the write
//! to one: [`target::route`]). Under the key's lock the coordinating
//! replica reads its set, returns the stored version if the client's write
//! id is already there (a retry), builds the new version (the client's
//! context plus one new dot), and applies it locally, where the replica
//! checks the sibling bound.
//! The replica issues its own actor's dots for the key, so it knows all of
//! them: a context naming a later one did not come from a read and is
//! refused (`INVALID_CONTEXT`); other actors' counters in a context are
//! bounded when it is decoded, so no counter can be pushed to overflow.
//! It then sends the version to the level's targets ([`target::targets`]),
//! answers the client when the [`QuorumTracker`] says the level is won (or
//! lost, or the deadline passed), and keeps delivering to the rest in the
//! background. A replica that is down or does not answer gets a durable
//! hint.
//!
//! Quorums are strict: a hint does not count toward the level, so a read
//! at R and a write at W with R + W > N always overlap on a real replica.
//! (DESIGN.md's sloppy quorum trades that guarantee for availability; with
//! RF 3 and local quorums a single failure never needs it, so strictness
//! wins here, as in Cassandra.)
//!
//! Reads ask the level's targets, answer when the level is won with the
//! join of what arrived, and then repair: every replica whose set differs
//! from the join of all answers gets the missing versions. When the
//! keyspace has a resolver and the join holds siblings, the coordinator
//! merges them first, so the client and the repaired replicas see the
//! merged version.
//!
//! Which replicas a request asks and counts is [`target`]'s decision, and
//! "enough answers?" is [`QuorumTracker`]'s: both are pure. This module
//! moves messages between them, the [`Replica`] it coordinates over, the
//! transport, the hints and the bridge.
//!
//! What it is not: the replica. Absorbing versions, key locks and merging
//! on apply are [`crate::replica`]'s.

pub mod error;
pub mod scan;
pub mod target;

use crate::wall_clock::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::ClientError;
use isthmus_client::counter::Counter;
use isthmus_client::wire::{ErrorCode, WireError, WriteMode};
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use error::CoordinatorError;
pub use target::{Operation, Route, Scope, Targets};

use crate::bridge::{BoxFuture, Bridge, Deliver, Entries};
use crate::hints::HintSink;
use crate::limit::Limits;
use crate::merge::pool::MergeConfig;
use crate::merge::{MergeFailure, MergeFailureInfo, MergeHook};
use crate::model::expiry::{self, Expiry};
use crate::model::{
    Actor, Clock, Consistency, DcName, Dot, KeyspaceConfig, Payload, Version, VersionSet, key_hash,
};
use crate::peer::{PeerRequest, PeerResponse};
use crate::quorum::{Outcome, QuorumTracker};
use crate::replica::{Collapsed, MergeDue, Replica, ReplicaBounds};
use crate::ring::NodeId;
use crate::store::{LocalStore, Settle, StoreError};
use crate::system_keyspace::{SYSTEM_WRITE_LEVEL, SystemWriter};
use crate::transport::Transport;
use crate::view::ClusterView;

/// What a read found: the key's set (merged when the keyspace's resolver
/// could merge it) and, when the keyspace has a resolver that did not
/// merge the siblings, why.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadAnswer {
    /// The join of the replicas' answers, merged when it could be.
    pub set: VersionSet,
    /// The failed (or deferred) merge of these siblings; `None` when they
    /// were merged, needed no merge, or the keyspace has no resolver.
    pub merge_failure: Option<MergeFailureInfo>,
}

impl ReadAnswer {
    fn new(set: VersionSet, failure: Option<MergeFailure>) -> Self {
        ReadAnswer {
            set,
            merge_failure: failure.map(|f| f.info()),
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
    /// How far in the future, by this node's clock, a version received
    /// from elsewhere may be stamped (the node's `clock_skew_max_ms`).
    pub clock_skew_max_ms: u64,
    /// Where and within what budget the replica's merges run (the node's
    /// `[merge]` table).
    pub merge: MergeConfig,
}

/// Serves client requests for one node, over its [`Replica`].
pub struct Coordinator<S, T, H> {
    config: CoordinatorConfig,
    replica: Arc<Replica<S>>,
    transport: Arc<T>,
    hints: Arc<H>,
    keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    view: watch::Receiver<Arc<ClusterView>>,
    bridge: Option<Arc<dyn Bridge>>,
    /// Versions the replica made by collapsing two coordinations of one
    /// write, until [`Coordinator::spread_collapsed`] takes them.
    collapsed: parking_lot::Mutex<Option<mpsc::Receiver<Collapsed>>>,
    /// Reads coordinated so far: the first `read_repair_percent` of every
    /// 100 ask every replica (deterministic, so a simulation replays
    /// alike).
    reads: std::sync::atomic::AtomicU64,
}

/// How many collapsed versions wait to be spread (more are left to
/// repair).
const COLLAPSED_QUEUE: usize = 1024;

/// How long spreading a collapsed version waits for its replicas (those
/// that miss it get hints).
const SPREAD_DEADLINE: Duration = Duration::from_secs(5);

/// A write's sends under way ([`Coordinator::send_versions`]): the
/// targets' answers as they arrive, counted toward the level.
struct Sent {
    tracker: QuorumTracker,
    answers: Option<mpsc::Receiver<Answer>>,
}

/// A target's answer to a write: delivered, or missed (with its refusal,
/// when it refused).
type Answer = (NodeId, Result<(), Option<WireError>>);

impl Sent {
    /// Wait up to `deadline` for the level to be won or lost.
    async fn level(self, deadline: Duration) -> Result<(), CoordinatorError> {
        let Sent {
            mut tracker,
            mut answers,
        } = self;
        // A replica's refusal for a clock off beyond the bound is what the
        // client should hear when the level is lost, not a bare count.
        let mut skew: Option<(NodeId, WireError)> = None;
        let outcome = tokio::time::timeout(deadline, async {
            let mut outcome = tracker.outcome();
            while outcome == Outcome::Pending {
                let Some(rx) = answers.as_mut() else { break };
                let Some((node, delivered)) = rx.recv().await else {
                    break;
                };
                outcome = match delivered {
                    Ok(()) => tracker.ack(&node),
                    Err(refusal) => {
                        if let Some(e) = refusal.filter(|e| e.code == ErrorCode::ClockSkew) {
                            skew = Some((node.clone(), e));
                        }
                        tracker.fail(&node)
                    }
                };
            }
            outcome
        })
        .await;
        let (required, acked) = (tracker.required() as u32, tracker.acked() as u32);
        match (outcome, skew) {
            (Ok(Outcome::Won), _) => Ok(()),
            (Ok(_), Some((node, error))) => Err(CoordinatorError::Peer { node, error }),
            (Ok(_), None) => Err(CoordinatorError::QuorumLost { required, acked }),
            (Err(_), _) => Err(CoordinatorError::Timeout { required, acked }),
        }
    }
}

/// One write as the coordinator handles it ([`Coordinator::write_request`]).
#[derive(Clone, Debug)]
pub struct Write<'a> {
    /// The keyspace.
    pub keyspace: &'a str,
    /// The key.
    pub key: &'a [u8],
    /// The value, or `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// What the client saw.
    pub context: Clock,
    /// The client's id for this write (retries carry the same).
    pub write_id: [u8; 16],
    /// The level to write at.
    pub level: Consistency,
    /// Over the context, an overwrite, or conditional.
    pub mode: WriteMode,
    /// A sloppy quorum (stand-ins count for replicas that cannot take
    /// the write), strict, or `None`: the keyspace's default.
    pub sloppy: Option<bool>,
    /// When the value expires ([`expiry::resolve`]d by the first node
    /// the write reaches).
    pub expiry: Expiry,
}

/// A peer request that failed here, as the peer's answer.
fn peer_failure(error: CoordinatorError) -> PeerResponse {
    tracing::warn!(%error, "a peer request failed here");
    PeerResponse::Error(error.to_wire())
}

impl<S: LocalStore, T: Transport, H: HintSink> Coordinator<S, T, H> {
    /// A coordinator over a replica of `store` that merges with `merge`.
    pub fn new(
        config: CoordinatorConfig,
        store: S,
        transport: Arc<T>,
        hints: Arc<H>,
        merge: Arc<dyn MergeHook>,
        keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
        view: watch::Receiver<Arc<ClusterView>>,
    ) -> Self {
        let bounds = ReplicaBounds {
            siblings_max: config.limits.siblings_max,
            clock_skew_max_ms: config.clock_skew_max_ms,
        };
        let replica = Replica::new(
            store,
            merge,
            config.merge.clone(),
            keyspaces.clone(),
            bounds,
        );
        let (spread, collapsed) = mpsc::channel(COLLAPSED_QUEUE);
        replica.on_collapse(spread);
        Coordinator {
            config,
            replica: Arc::new(replica),
            transport,
            hints,
            keyspaces,
            view,
            bridge: None,
            collapsed: parking_lot::Mutex::new(Some(collapsed)),
            reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The worker that spreads what the replica collapsed: each version
    /// goes to every replica of its key in this DC (hints for those it
    /// misses) and into the bridge's outbox for the others (or, without a
    /// bridge, straight to every replica), as a write would. A replica
    /// where a later write had replaced one copy of the write before the
    /// other arrived cannot collapse them itself; this version is what
    /// makes it agree. Runs until `stop` (once: a second call returns).
    pub async fn spread_collapsed(&self, mut stop: watch::Receiver<bool>) {
        let Some(mut collapsed) = self.collapsed.lock().take() else {
            return;
        };
        loop {
            let next = tokio::select! {
                next = collapsed.recv() => next,
                _ = stop.changed() => return,
            };
            let Some(Collapsed {
                keyspace,
                key,
                version,
            }) = next
            else {
                return;
            };
            if let Err(e) = self.spread(&keyspace, &key, version).await {
                tracing::debug!(error = %e, "a collapsed version was not spread everywhere; repair carries it");
            }
        }
    }

    async fn spread(
        &self,
        keyspace: &str,
        key: &[u8],
        version: Version,
    ) -> Result<(), CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        if let Some(bridge) = &self.bridge {
            bridge.enqueue(keyspace, key, &version).await?;
        }
        let level = if self.bridge.is_some() {
            Consistency::LocalOne
        } else {
            Consistency::One
        };
        let view = self.view.borrow().clone();
        let scope = self.scope(&ks, level);
        let mut targets = target::targets(Operation::Write, &scope, &view, key_hash(key));
        targets.tracker.ack(&self.config.node);
        self.send_versions(
            keyspace,
            key,
            std::slice::from_ref(&version),
            targets,
            BTreeMap::new(),
            &view,
            SPREAD_DEADLINE,
        )
        .level(SPREAD_DEADLINE)
        .await
    }

    /// The replica this node coordinates over: the one path by which
    /// versions reach this node's store.
    pub fn replica(&self) -> &Arc<Replica<S>> {
        &self.replica
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

    fn keyspace(&self, name: &str) -> Result<Arc<KeyspaceConfig>, CoordinatorError> {
        self.keyspaces
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CoordinatorError::UnknownKeyspace {
                name: name.to_owned(),
            })
    }

    /// Refuse, saying why, a request for a key of which this node's ring
    /// knows no replica at all (rather than "0 live replicas cannot meet a
    /// level needing 0").
    fn check_known(
        view: &ClusterView,
        ks: &KeyspaceConfig,
        replicas: &[(NodeId, DcName)],
    ) -> Result<(), CoordinatorError> {
        if !replicas.is_empty() {
            return Ok(());
        }
        let dcs: Vec<&str> = ks.replication.keys().map(|dc| dc.as_str()).collect();
        Err(CoordinatorError::NoReplicas {
            dcs: dcs.join(", "),
            known: view.ring.dcs().map(|dc| view.ring.node_count(dc)).sum(),
        })
    }

    fn scope<'a>(&'a self, ks: &'a KeyspaceConfig, level: Consistency) -> Scope<'a> {
        Scope {
            level,
            replication: &ks.replication,
            local_dc: &self.config.dc,
            bridged: self.bridge.is_some(),
        }
    }

    /// Serve a request from another node. Gossip, repair and bridge
    /// batches are not the coordinator's: the node answers them.
    ///
    /// A request naming a keyspace this node does not know is refused
    /// (`UnknownKeyspace`): no peer can make a node store data outside its
    /// keyspaces.
    pub async fn serve_peer(&self, request: PeerRequest, deadline: Duration) -> PeerResponse {
        let named = match &request {
            PeerRequest::Apply { keyspace, .. }
            | PeerRequest::ApplyBatch { keyspace, .. }
            | PeerRequest::Read { keyspace, .. }
            | PeerRequest::Coordinate { keyspace, .. }
            | PeerRequest::Scan { keyspace, .. } => Some(keyspace),
            _ => None,
        };
        if let Some(Err(e)) = named.map(|ks| self.keyspace(ks)) {
            return peer_failure(e);
        }
        let replica = &self.replica;
        let applied = |result: Result<(), StoreError>| match result {
            Ok(()) => PeerResponse::Applied,
            Err(e) => peer_failure(e.into()),
        };
        match request {
            PeerRequest::Apply {
                keyspace,
                key,
                versions,
                hint_for: None,
            } => applied(replica.apply(&keyspace, &key, versions).await),
            PeerRequest::Apply {
                keyspace,
                key,
                versions,
                hint_for: Some(target),
            } => {
                // Hints are bounded per target: only nodes of the ring get
                // a file, so no peer can open unbounded ones.
                let view = self.view.borrow().clone();
                let member = view
                    .ring
                    .dcs()
                    .any(|dc| view.ring.nodes_in(dc).any(|n| *n == target));
                if !member {
                    return peer_failure(CoordinatorError::BadRequest {
                        reason: format!("no node {target} in the ring to keep hints for"),
                    });
                }
                applied(self.hints.add(&target, &keyspace, &key, versions).await)
            }
            PeerRequest::ApplyBatch { keyspace, entries } => {
                applied(replica.apply_many(&keyspace, entries).await)
            }
            PeerRequest::Read { keyspace, key } => match replica.read(&keyspace, &key).await {
                Ok(set) => PeerResponse::Versions(set),
                Err(e) => peer_failure(e.into()),
            },
            PeerRequest::Coordinate {
                keyspace,
                key,
                value,
                context,
                write_id,
                consistency,
                mode,
                sloppy,
                expiry,
            } => {
                let write = Write {
                    keyspace: &keyspace,
                    key: &key,
                    value,
                    context,
                    write_id,
                    level: consistency,
                    mode,
                    sloppy,
                    expiry,
                };
                match self.write_inner(write, deadline, false).await {
                    Ok(None) => PeerResponse::Written,
                    Ok(Some(value)) => PeerResponse::Counted(value),
                    Err(CoordinatorError::ConditionFailed { current }) => {
                        PeerResponse::ConditionFailed(current)
                    }
                    Err(e) => PeerResponse::Error(e.to_wire()),
                }
            }
            PeerRequest::Scan {
                keyspace,
                from,
                to,
                count,
                bytes_max,
            } => match self.serve_scan(&keyspace, from, to, count, bytes_max).await {
                Ok(part) => PeerResponse::ScanPart {
                    keys: part.keys,
                    next: part.next,
                },
                Err(e) => peer_failure(e),
            },
            PeerRequest::Gossip { .. } | PeerRequest::Ship { .. } | PeerRequest::Repair(_) => {
                peer_failure(CoordinatorError::BadRequest {
                    reason: "gossip, repair and bridge batches are served by the node".into(),
                })
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
        self.write_with(
            keyspace,
            key,
            value,
            context,
            write_id,
            level,
            WriteMode::Context,
            deadline,
        )
        .await
        .map(|_| ())
    }

    /// [`Self::write`] in `mode`: an overwrite, a conditional write
    /// whose condition is checked where its dot is issued, under the
    /// key's lock (a failed condition is
    /// [`CoordinatorError::ConditionFailed`], with the key's set there),
    /// or an addition to a counter, answered with the counter's value
    /// where it was added (`Some`; `None` for every other mode).
    #[allow(clippy::too_many_arguments)]
    pub async fn write_with(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        level: Consistency,
        mode: WriteMode,
        deadline: Duration,
    ) -> Result<Option<i64>, CoordinatorError> {
        self.write_expiring(
            keyspace,
            key,
            value,
            context,
            write_id,
            level,
            mode,
            Expiry::KeyspaceDefault,
            deadline,
        )
        .await
    }

    /// [`Self::write_with`] with an expiry for the value: relative ones
    /// and the keyspace's default are made absolute here, on this node's
    /// clock, before the write is forwarded or issued.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_expiring(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        level: Consistency,
        mode: WriteMode,
        expiry: Expiry,
        deadline: Duration,
    ) -> Result<Option<i64>, CoordinatorError> {
        let write = Write {
            keyspace,
            key,
            value,
            context,
            write_id,
            level,
            mode,
            sloppy: None,
            expiry,
        };
        self.write_request(write, deadline).await
    }

    /// A write with every choice spelled out (the client protocol's
    /// `Put` and `Delete`, which may ask for a sloppy or a strict quorum
    /// against the keyspace's default).
    pub async fn write_request(
        &self,
        write: Write<'_>,
        deadline: Duration,
    ) -> Result<Option<i64>, CoordinatorError> {
        self.write_inner(write, deadline, true).await
    }

    /// Route, issue, send to the other replicas, queue for the bridge,
    /// settle, wait for the level; a counter's value
    /// after an addition.
    async fn write_inner(
        &self,
        write: Write<'_>,
        deadline: Duration,
        may_forward: bool,
    ) -> Result<Option<i64>, CoordinatorError> {
        let expires = Instant::now() + deadline;
        let ks = self.keyspace(write.keyspace)?;
        if let WriteMode::Add(_) = write.mode {
            self.check_counter(write.keyspace, &ks, &write)?;
        }
        let write = Write {
            expiry: expiry::resolve(write.expiry, ks.ttl_s, now_ms()),
            ..write
        };
        self.config
            .limits
            .check(write.key, write.value.as_deref())?;
        let view = self.view.borrow().clone();
        let scope = self.scope(&ks, write.level);
        let hash = key_hash(write.key);
        let all = target::replicas(&view, &ks.replication, hash);
        Self::check_known(&view, &ks, &all)?;
        let me = &self.config.node;
        // A checked write is decided at one replica: the first live local
        // one in placement order. A node it was forwarded to takes it if
        // it is a replica at all (views may briefly disagree on who is
        // first; the two then issue concurrent versions: siblings).
        let route = if write.mode.is_checked() && may_forward {
            target::route_checked_of(&scope, &view, &all, me)
        } else {
            target::route_of(&scope, &view, &all, me)
        };
        match route {
            Route::Here => {}
            // Views disagree about placement: refuse rather than bounce.
            _ if !may_forward => {
                return Err(CoordinatorError::BadRequest {
                    reason: format!("{me} is not a replica of this key"),
                });
            }
            Route::Forward(node) => {
                // What is left of the client's wait, not all of it again.
                let left = expires.saturating_duration_since(Instant::now());
                // Boxed: the call to a peer is most of this future's size,
                // which every write (and every layer above) would
                // otherwise carry and copy.
                return Box::pin(self.forward(&node, write, &scope, left)).await;
            }
            Route::Unavailable { required } => {
                return Err(CoordinatorError::Unavailable { required, alive: 0 });
            }
        }
        let (version, due, settle) = self.issue(&write, expires).await?;
        let counted = match write.mode {
            WriteMode::Add(_) => Some(counter_value(&version)),
            _ => None,
        };
        // The version is in this replica's store from here on. Its sends
        // to the other replicas (hints for those that miss it) start
        // before the next await, and the bridge's enqueue is under way
        // from its first poll: when the request's deadline drops this
        // future at any later await, the write still reaches every
        // replica, as it would have had the request lived.
        //
        // This node is the key's one replica, nothing is moving here, and
        // its own apply wins the level: nothing to send, nothing to track.
        let alone = matches!(all.as_slice(), [(only, dc)] if only == me && dc == scope.local_dc)
            && view.next.same_in_dc(&view.ring, scope.local_dc)
            && QuorumTracker::one_ack_wins(
                write.level,
                scope.local_dc,
                scope.replication,
                scope.local_dc,
            );
        let sent = (!alone).then(|| {
            let mut targets = target::targets_of(Operation::Write, &scope, &view, hash, all);
            targets.tracker.ack(me);
            let stand_ins = if write.sloppy.unwrap_or(ks.sloppy_quorum) {
                target::fallbacks(&view, hash, &targets.replicas, me)
            } else {
                BTreeMap::new()
            };
            self.send_versions(
                write.keyspace,
                write.key,
                std::slice::from_ref(&version),
                targets,
                stand_ins,
                &view,
                deadline,
            )
        });
        let enqueued = match &self.bridge {
            // The bridge decides from the keyspace's replication, not from
            // this node's view of the ring: a node that just restarted may
            // not know the remote DC's nodes yet, and its writes are owed
            // there all the same.
            Some(bridge) => bridge.enqueue(write.keyspace, write.key, &version).await,
            None => Ok(()),
        };
        // Handed to the OS and merged on the merge pool, the key's lock
        // released.
        let settled = settle.settle().await;
        self.replica.merge_due(due).await;
        settled?;
        enqueued?;
        if let Some(sent) = sent {
            sent.level(deadline).await?;
        }
        counted.transpose()
    }

    /// An addition goes to a keyspace of counters whose siblings merge,
    /// and carries no value of its own.
    fn check_counter(
        &self,
        name: &str,
        ks: &KeyspaceConfig,
        write: &Write<'_>,
    ) -> Result<(), CoordinatorError> {
        let refuse = |reason: String| Err(CoordinatorError::BadRequest { reason });
        if !ks.counter {
            return refuse(format!(
                "keyspace {name:?} does not hold counters (its config has no `counter = true`)"
            ));
        }
        if !self.replica.has_resolver(name) {
            return refuse(format!(
                "keyspace {name:?} has no resolver bound: counters changed in two places \
                 need one that merges them, such as the pn-counter example"
            ));
        }
        if write.value.as_ref().is_some_and(|v| !v.is_empty()) {
            return refuse("an addition to a counter carries no value".into());
        }
        Ok(())
    }

    /// The write's version, applied to this replica under the key's lock:
    /// the client's context plus a new dot from the key's history, or the
    /// version already stored under the write's id (a retry). A new dot is
    /// issued only before `expires`: past it the client has given up, and
    /// its retry elsewhere must not be joined by this one, late (the node
    /// may have been paused, or waited for the lock or the disk). Returns
    /// the siblings left to merge and the write to settle, for the caller
    /// to finish once the version's sends are under way.
    async fn issue(
        &self,
        write: &Write<'_>,
        expires: Instant,
    ) -> Result<(Version, Option<MergeDue>, Settle), CoordinatorError> {
        match self.issue_locked(write, expires).await {
            // A hot key of a merging keyspace past its sibling bound: as a
            // replica's apply does, merge what it holds first (on the
            // merge pool, no lock held), then issue once more.
            Err(CoordinatorError::Limit(crate::limit::LimitError::TooManySiblings { .. }))
                if self.replica.has_resolver(write.keyspace) =>
            {
                self.replica.merge_held(write.keyspace, write.key).await;
                self.issue_locked(write, expires).await
            }
            issued => issued,
        }
    }

    /// [`Self::issue`]'s part under the key's lock; returns the siblings
    /// left to merge and the write to settle.
    async fn issue_locked(
        &self,
        write: &Write<'_>,
        expires: Instant,
    ) -> Result<(Version, Option<MergeDue>, Settle), CoordinatorError> {
        let locked = self.replica.lock(write.key).await;
        let (current, mark) = locked.read(write.keyspace).await?;
        if let Some(stored) = current
            .versions()
            .iter()
            .find(|v| v.write_id == Some(write.write_id))
        {
            // A retry of a write this replica already holds: deliver the
            // stored version again rather than adding a sibling.
            return Ok((stored.clone(), None, Settle::default()));
        }
        if Instant::now() >= expires {
            return Err(CoordinatorError::Expired);
        }
        let held = current.lub();
        let dot = next_dot(self.config.actor, &held, &write.context)?;
        let holds = match write.mode {
            WriteMode::Context | WriteMode::Overwrite | WriteMode::Add(_) => true,
            // The context saw every version held here: nothing was
            // written since the read (a context ahead of this replica,
            // which saw a version not here yet, still holds: the new
            // version supersedes that one too).
            WriteMode::IfMatch => held.is_covered_by(&write.context),
            // An expired value is absent.
            WriteMode::IfAbsent => current.live_at(now_ms()).next().is_none(),
        };
        if !holds {
            return Err(CoordinatorError::ConditionFailed { current });
        }
        let mut clock = write.context.clone();
        if matches!(
            write.mode,
            WriteMode::Overwrite | WriteMode::IfAbsent | WriteMode::Add(_)
        ) {
            // Supersede everything held here (tombstones, for IfAbsent;
            // the counters joined into the new one, for Add).
            clock.join(&held);
        }
        clock.add_dot(dot);
        let now = now_ms();
        let payload = match write.mode {
            WriteMode::Add(delta) => Payload::Value(self.counter_after(&current, delta)?),
            _ => write
                .value
                .clone()
                .map_or(Payload::Tombstone, Payload::Value),
        };
        let version = Version {
            clock,
            payload,
            timestamp_ms: now,
            origin_dc: self.config.dc.clone(),
            resolver: None,
            write_id: Some(write.write_id),
            // Resolved at the coordinator: the keyspace's default plays no
            // part here, and `Keep` reads the set held under the lock.
            expires_ms: expiry::stamp(write.expiry, None, write.value.is_some(), &current, now),
        };
        // The replica keeps the sibling bound, whatever the resolver's
        // state, over the set read above.
        let (due, settle) = locked
            .apply_over(write.keyspace, current, mark, vec![version.clone()])
            .await
            .map_err(|e| match e {
                StoreError::Limit(limit) => CoordinatorError::Limit(limit),
                other => other.into(),
            })?;
        Ok((version, due, settle))
    }

    /// The counter a [`WriteMode::Add`] writes: every counter `current`
    /// holds, joined, with `delta` added on behalf of this node's actor.
    fn counter_after(&self, current: &VersionSet, delta: i64) -> Result<Vec<u8>, CoordinatorError> {
        let mut counter = Counter::join_all(current.live().filter_map(Version::value_bytes))
            .map_err(|e| CoordinatorError::BadRequest {
                reason: e.to_string(),
            })?;
        counter.add(&counter_actor(self.config.actor), delta);
        if i64::try_from(counter.value()).is_err() {
            return Err(CoordinatorError::BadRequest {
                reason: "increment or decrement would overflow".into(),
            });
        }
        Ok(counter.encode())
    }

    /// Absorb versions shipped from another DC on a local quorum of each
    /// key's replicas in this DC (this node need not be one of them), and
    /// on the key's pending owners: one [`PeerRequest::ApplyBatch`] per
    /// node, whatever the number of keys. A replica that misses its part
    /// gets hints for it.
    pub async fn deliver_local(
        &self,
        keyspace: &str,
        entries: Entries,
        deadline: Duration,
    ) -> Result<(), CoordinatorError> {
        let ks = self.delivery_keyspace(keyspace)?;
        let view = self.view.borrow().clone();
        // A delivery is a write at LOCAL_QUORUM: the bridge it came from
        // carries it to the other DCs.
        let scope = Scope {
            bridged: true,
            ..self.scope(&ks, Consistency::LocalQuorum)
        };
        let mut per_node: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
        let mut trackers: Vec<QuorumTracker> = Vec::with_capacity(entries.len());
        for (i, (key, _)) in entries.iter().enumerate() {
            let targets = target::targets(Operation::Write, &scope, &view, key_hash(key));
            for node in targets
                .replicas
                .iter()
                .map(|(n, _)| n)
                .chain(&targets.pending)
            {
                per_node.entry(node.clone()).or_default().push(i);
            }
            trackers.push(targets.tracker);
        }
        let entries = Arc::new(entries);
        let calls = per_node.into_iter().map(|(node, idx)| {
            let part: Entries = idx.iter().map(|&i| entries[i].clone()).collect();
            self.deliver_part(keyspace, node, part, &view, deadline)
        });
        let answers: BTreeMap<NodeId, Result<(), Option<WireError>>> =
            futures_util::future::join_all(calls)
                .await
                .into_iter()
                .collect();
        let mut worst: Option<QuorumTracker> = None;
        for mut tracker in trackers {
            for (node, answer) in &answers {
                if answer.is_ok() {
                    tracker.ack(node);
                } else {
                    tracker.fail(node);
                }
            }
            if tracker.outcome() != Outcome::Won
                && worst.as_ref().is_none_or(|w| tracker.acked() < w.acked())
            {
                worst = Some(tracker);
            }
        }
        let Some(t) = worst else { return Ok(()) };
        // A replica's refusal that retrying cannot change is what the
        // bridge must hear (it then finds the keys refused and quarantines
        // them), not a bare count.
        let refusal = answers.into_iter().find_map(|(node, answer)| match answer {
            Err(Some(e)) if crate::bridge::is_permanent(e.code) => Some((node, e)),
            _ => None,
        });
        Err(match refusal {
            Some((node, error)) => CoordinatorError::Peer { node, error },
            None => CoordinatorError::QuorumLost {
                required: t.required() as u32,
                acked: t.acked() as u32,
            },
        })
    }

    /// The keyspace a delivery from another DC writes to: configured here
    /// and replicated in this DC.
    fn delivery_keyspace(&self, keyspace: &str) -> Result<Arc<KeyspaceConfig>, CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        if ks.replication.get(&self.config.dc).copied().unwrap_or(0) == 0 {
            return Err(CoordinatorError::BadRequest {
                reason: format!(
                    "keyspace {keyspace:?} has no replicas in {}",
                    self.config.dc
                ),
            });
        }
        Ok(ks)
    }

    /// [`Deliver::admit`]: what this node can tell of a delivery before
    /// any replica is asked.
    pub fn admit_delivery(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: &[Version],
    ) -> Result<(), CoordinatorError> {
        // Per item of a batch: look, do not clone the keyspace's config.
        let replicated_here = self
            .keyspaces
            .read()
            .get(keyspace)
            .map(|ks| ks.replication.get(&self.config.dc).copied().unwrap_or(0) > 0);
        match replicated_here {
            Some(true) => {}
            // The same refusals, worded once, as a delivery meets them.
            _ => {
                self.delivery_keyspace(keyspace)?;
            }
        }
        let limits = &self.config.limits;
        limits.check(key, None)?;
        for v in versions {
            if let Payload::Value(value) = &v.payload {
                limits.check(key, Some(value))?;
            }
        }
        if versions.len() > limits.siblings_max {
            return Err(crate::limit::LimitError::TooManySiblings {
                count: versions.len(),
                max: limits.siblings_max,
            }
            .into());
        }
        Ok(())
    }

    /// One node's part of a delivery; hints for it when it misses it.
    async fn deliver_part(
        &self,
        keyspace: &str,
        node: NodeId,
        part: Entries,
        view: &ClusterView,
        deadline: Duration,
    ) -> (NodeId, Result<(), Option<WireError>>) {
        if node == self.config.node {
            let answer = match self.replica.apply_many(keyspace, part).await {
                Ok(()) => Ok(()),
                Err(e) => Err(Some(CoordinatorError::from(e).to_wire())),
            };
            return (node, answer);
        }
        let answer = if view.alive.contains(&node) {
            let request = PeerRequest::ApplyBatch {
                keyspace: keyspace.to_owned(),
                entries: part.clone(),
            };
            match self.transport.call(&node, request, deadline).await {
                Ok(PeerResponse::Applied) => Ok(()),
                Ok(PeerResponse::Error(refusal)) => Err(Some(refusal)),
                _ => Err(None),
            }
        } else {
            Err(None)
        };
        if answer.is_err() {
            for (key, versions) in part {
                if let Err(e) = self.hints.add(&node, keyspace, &key, versions).await {
                    tracing::error!(%node, error = %e, "could not store a hint");
                }
            }
        }
        (node, answer)
    }

    /// Start sending `versions` to the targets other than this node, a
    /// task per target. A target in this DC that misses them gets a hint;
    /// one in another DC does not when a bridge runs (the bridge carries
    /// the write there). Nothing here awaits: once this returns, the sends
    /// and hints go on whether or not anyone waits for their answers.
    #[allow(clippy::too_many_arguments)]
    fn send_versions(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: &[Version],
        targets: Targets,
        stand_ins: BTreeMap<NodeId, NodeId>,
        view: &ClusterView,
        deadline: Duration,
    ) -> Sent {
        let Targets {
            replicas,
            pending,
            tracker,
        } = targets;
        let local = self.config.dc.clone();
        let sends: Vec<(NodeId, DcName)> = replicas
            .into_iter()
            .chain(pending.into_iter().map(|n| (n, local.clone())))
            .filter(|(n, _)| *n != self.config.node)
            .collect();
        if sends.is_empty() {
            // No other replica and no pending owner (one replica, here):
            // decided by the acknowledgement already counted.
            return Sent {
                tracker,
                answers: None,
            };
        }
        let (tx, rx) = mpsc::channel::<Answer>(sends.len().max(1));
        for (node, dc) in sends {
            let tx = tx.clone();
            let (transport, hints) = (self.transport.clone(), self.hints.clone());
            let (keyspace, key, versions) = (keyspace.to_owned(), key.to_vec(), versions.to_vec());
            let alive = view.alive.contains(&node);
            let hint = self.bridge.is_none() || dc == self.config.dc;
            let stand_in = stand_ins.get(&node).cloned();
            tokio::spawn(async move {
                let mut delivered = if alive {
                    let request = PeerRequest::Apply {
                        keyspace: keyspace.clone(),
                        key: key.clone(),
                        versions: versions.clone(),
                        hint_for: None,
                    };
                    match transport.call(&node, request, deadline).await {
                        Ok(PeerResponse::Applied) => Ok(()),
                        Ok(PeerResponse::Error(refusal)) => {
                            tracing::debug!(%node, refusal = %refusal.message, "a replica refused a write");
                            Err(Some(refusal))
                        }
                        other => {
                            tracing::debug!(%node, answer = ?other, "a replica missed a write");
                            Err(None)
                        }
                    }
                } else {
                    Err(None)
                };
                if let (Err(_), Some(stand_in)) = (&delivered, stand_in) {
                    // A sloppy quorum: the stand-in keeps the copy as a
                    // durable hint for `node`, delivered when it returns,
                    // and answers for it toward the level.
                    let request = PeerRequest::Apply {
                        keyspace: keyspace.clone(),
                        key: key.clone(),
                        versions: versions.clone(),
                        hint_for: Some(node.clone()),
                    };
                    match transport.call(&stand_in, request, deadline).await {
                        Ok(PeerResponse::Applied) => {
                            tracing::debug!(%node, %stand_in, "a stand-in took a write as a hint");
                            delivered = Ok(());
                        }
                        other => {
                            tracing::debug!(%node, %stand_in, answer = ?other, "a stand-in missed a write");
                        }
                    }
                }
                if delivered.is_err()
                    && hint
                    && let Err(e) = hints.add(&node, &keyspace, &key, versions).await
                {
                    tracing::error!(%node, error = %e, "could not store a hint");
                }
                let _ = tx.send((node, delivered)).await;
            });
        }
        Sent {
            tracker,
            answers: Some(rx),
        }
    }

    /// Hand a write to `node`, a live replica of its key, to coordinate.
    async fn forward(
        &self,
        node: &NodeId,
        write: Write<'_>,
        scope: &Scope<'_>,
        deadline: Duration,
    ) -> Result<Option<i64>, CoordinatorError> {
        let request = PeerRequest::Coordinate {
            keyspace: write.keyspace.to_owned(),
            key: write.key.to_vec(),
            value: write.value,
            context: write.context,
            write_id: write.write_id,
            consistency: write.level,
            mode: write.mode,
            sloppy: write.sloppy,
            expiry: write.expiry,
        };
        match self.transport.call(node, request, deadline).await {
            Ok(PeerResponse::Written) => Ok(None),
            Ok(PeerResponse::Counted(value)) => Ok(Some(value)),
            Ok(PeerResponse::ConditionFailed(current)) => {
                Err(CoordinatorError::ConditionFailed { current })
            }
            Ok(PeerResponse::Error(e)) | Err(ClientError::Server(e)) => {
                Err(CoordinatorError::from_peer(node, e))
            }
            Ok(other) => Err(CoordinatorError::Peer {
                node: node.clone(),
                error: WireError {
                    code: ErrorCode::Internal,
                    message: format!("unexpected answer to a forwarded write: {other:?}"),
                    acks: None,
                    needs: None,
                },
            }),
            Err(e) => {
                tracing::debug!(%node, error = %e, "forwarding a write failed");
                let view = self.view.borrow().clone();
                let all = target::replicas(&view, scope.replication, key_hash(write.key));
                let required = QuorumTracker::for_replication(
                    scope.level,
                    &all,
                    scope.local_dc,
                    scope.replication,
                )
                .required() as u32;
                Err(CoordinatorError::Timeout { required, acked: 0 })
            }
        }
    }

    /// Read the key's live siblings at `level`: ask the level's targets,
    /// answer with the join of what arrived once the level is won (merged
    /// when the keyspace has a resolver; a merge that failed is named in
    /// the answer), and repair stale replicas in the background.
    pub async fn read(
        self: &Arc<Self>,
        keyspace: &str,
        key: &[u8],
        level: Consistency,
        deadline: Duration,
    ) -> Result<ReadAnswer, CoordinatorError> {
        let ks = self.keyspace(keyspace)?;
        self.config.limits.check(key, None)?;
        let view = self.view.borrow().clone();
        let hash = key_hash(key);
        let all = target::replicas(&view, &ks.replication, hash);
        Self::check_known(&view, &ks, &all)?;
        // Most reads ask just enough replicas to win the level (this
        // node's own copy first), and the rest only when one of those
        // fails or is slow; `read_repair_percent` of them ask every
        // replica and repair the stale ones.
        let n = self
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let repairing = n % 100 < u64::from(ks.read_repair_percent);
        let me = &self.config.node;
        let scope = self.scope(&ks, level);
        // This node's own copy wins the level alone (`ONE`, `LOCAL_ONE`,
        // or one replica here): answered inline, with no targets,
        // channel, timer or task; on a failure, the other replicas are
        // asked below.
        let mut failed_here = false;
        if !repairing
            && all
                .iter()
                .any(|(node, dc)| node == me && dc == scope.local_dc)
            && QuorumTracker::one_ack_wins(level, scope.local_dc, &ks.replication, scope.local_dc)
        {
            match self.replica.read(keyspace, key).await {
                Ok(set) => {
                    let (set, failure) = self.replica.merged(keyspace, key, set).await;
                    return Ok(ReadAnswer::new(set, failure));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reading this node's copy failed");
                    failed_here = true;
                }
            }
        }
        let Targets {
            replicas, tracker, ..
        } = target::targets_of(Operation::Read, &scope, &view, hash, all);
        if tracker.outcome() == Outcome::Lost {
            let alive = replicas
                .iter()
                .filter(|(n, _)| view.alive.contains(n))
                .count() as u32;
            return Err(CoordinatorError::Unavailable {
                required: tracker.required() as u32,
                alive,
            });
        }
        let (first, mut spares) = if repairing {
            (replicas.clone(), Vec::new())
        } else {
            enough_to_win(&replicas, &tracker, &view, me)
        };
        let (tx, rx) = mpsc::channel(replicas.len().max(1));
        let mut asked = first.len();
        if failed_here {
            let _ = tx.send((me.clone(), None)).await;
        } else {
            self.ask(keyspace, key, &first, &view, deadline, &tx).await;
        }
        let mut gathered = Gathered {
            tracker,
            joined: VersionSet::new(),
            answers: Vec::new(),
            rx,
        };
        let speculate = tokio::time::sleep(READ_SPECULATE_AFTER.min(deadline));
        tokio::pin!(speculate);
        let decided = tokio::time::timeout(deadline, async {
            let mut outcome = gathered.tracker.outcome();
            while outcome == Outcome::Pending {
                tokio::select! {
                    answer = gathered.rx.recv() => {
                        let Some((node, answer)) = answer else { break };
                        let failed = answer.is_none();
                        outcome = gathered.take(node, answer);
                        if failed && outcome == Outcome::Pending && !spares.is_empty() {
                            // One asked replica failed: ask the next.
                            let next = spares.remove(0);
                            asked += 1;
                            self.ask(keyspace, key, std::slice::from_ref(&next), &view, deadline, &tx).await;
                        }
                    }
                    () = &mut speculate, if !spares.is_empty() => {
                        // Slow: ask every replica left (a speculative
                        // retry, as Cassandra's).
                        asked += spares.len();
                        let rest = std::mem::take(&mut spares);
                        self.ask(keyspace, key, &rest, &view, deadline, &tx).await;
                    }
                }
            }
            outcome
        })
        .await;
        // No more asks: the channel closes once the asked have answered.
        drop(tx);
        gathered.decided(decided)?;
        if gathered.answers.len() == asked
            && gathered
                .answers
                .iter()
                .all(|(_, seen)| *seen == gathered.joined)
        {
            // Every replica asked answered, and each holds all of it:
            // nothing to wait for and nothing to repair (a read of just
            // enough replicas in agreement, the common case), so no task
            // for it.
            let (set, failure) = self.replica.merged(keyspace, key, gathered.joined).await;
            return Ok(ReadAnswer::new(set, failure));
        }
        // Merged on the merge pool; siblings returned when the merge fails
        // or is deferred, with the failure.
        let (set, failure) = self
            .replica
            .merged(keyspace, key, gathered.joined.clone())
            .await;
        self.repair_in_background(keyspace, key, gathered, deadline);
        Ok(ReadAnswer::new(set, failure))
    }

    /// Send a read to every replica in `replicas` (this node's own copy
    /// read inline, the others as tasks); each answer, or `None` for a
    /// failure, arrives on `tx`, one per replica.
    async fn ask(
        self: &Arc<Self>,
        keyspace: &str,
        key: &[u8],
        replicas: &[(NodeId, DcName)],
        view: &ClusterView,
        deadline: Duration,
        tx: &mpsc::Sender<(NodeId, Option<VersionSet>)>,
    ) {
        let mut local = false;
        for (node, _) in replicas {
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
            let answer = self.replica.read(keyspace, key).await.ok();
            let _ = tx.send((self.config.node.clone(), answer)).await;
        }
    }

    /// Wait for the stragglers of a read, then give every replica that
    /// answered what it lacks, as a task of its own.
    fn repair_in_background(
        self: &Arc<Self>,
        keyspace: &str,
        key: &[u8],
        mut gathered: Gathered,
        deadline: Duration,
    ) {
        let this = self.clone();
        let (keyspace, key) = (keyspace.to_owned(), key.to_vec());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline, gathered.rest()).await;
            let Gathered {
                joined, answers, ..
            } = gathered;
            this.read_repair(&keyspace, &key, joined, answers, deadline)
                .await;
        });
    }

    /// Give every replica that answered a read the versions of `full` it
    /// lacks.
    async fn read_repair(
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
                if let Err(e) = self.replica.apply(keyspace, key, missing).await {
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

/// How long a read waits for the replicas it asked before asking the
/// rest of the level's replicas too (a speculative retry: a replica that
/// hangs, or is merely slow, costs a read this much at most).
pub const READ_SPECULATE_AFTER: Duration = Duration::from_millis(20);

/// Replicas, each with its datacenter.
type Replicas = Vec<(NodeId, DcName)>;

/// Split a read's `replicas` into the fewest that can win `tracker`'s
/// level when they all answer, asked first (`me` first when it is a
/// replica, then the live ones in placement order, then the ones held
/// down), and the rest, asked only if needed.
fn enough_to_win(
    replicas: &[(NodeId, DcName)],
    tracker: &QuorumTracker,
    view: &ClusterView,
    me: &NodeId,
) -> (Replicas, Replicas) {
    let mut ordered: Replicas = replicas.to_vec();
    // Stable: placement order within each rank.
    ordered.sort_by_key(|(n, _)| match (n == me, view.alive.contains(n)) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 2,
    });
    let mut trial = tracker.clone();
    let mut first = Vec::new();
    let mut rest = ordered.into_iter();
    for replica in rest.by_ref() {
        let outcome = trial.ack(&replica.0);
        first.push(replica);
        if outcome == Outcome::Won {
            break;
        }
    }
    (first, rest.collect())
}

/// The answers of a read as they arrive.
struct Gathered {
    tracker: QuorumTracker,
    /// The join of every answer so far.
    joined: VersionSet,
    /// Each answering replica's set.
    answers: Vec<(NodeId, VersionSet)>,
    rx: mpsc::Receiver<(NodeId, Option<VersionSet>)>,
}

impl Gathered {
    fn take(&mut self, node: NodeId, answer: Option<VersionSet>) -> Outcome {
        match answer {
            Some(set) => {
                self.joined.join(set.clone());
                self.answers.push((node.clone(), set));
                self.tracker.ack(&node)
            }
            None => self.tracker.fail(&node),
        }
    }

    /// The read's result from how waiting for the level ended: won
    /// (`Ok`), lost, or past the deadline.
    fn decided(
        &self,
        outcome: Result<Outcome, tokio::time::error::Elapsed>,
    ) -> Result<(), CoordinatorError> {
        let (required, acked) = (self.tracker.required() as u32, self.tracker.acked() as u32);
        match outcome {
            Ok(Outcome::Won) => Ok(()),
            Ok(_) => Err(CoordinatorError::QuorumLost { required, acked }),
            Err(_) => Err(CoordinatorError::Timeout { required, acked }),
        }
    }

    /// Take every answer still to come.
    async fn rest(&mut self) {
        while let Some((node, answer)) = self.rx.recv().await {
            self.take(node, answer);
        }
    }
}

impl<S: LocalStore, T: Transport, H: HintSink> Deliver for Coordinator<S, T, H> {
    fn deliver<'a>(
        &'a self,
        keyspace: &'a str,
        entries: Entries,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(self.deliver_local(keyspace, entries, deadline))
    }

    fn admit(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: &[Version],
    ) -> Result<(), CoordinatorError> {
        self.admit_delivery(keyspace, key, versions)
    }
}

impl<S: LocalStore, T: Transport, H: HintSink> SystemWriter for Coordinator<S, T, H> {
    fn write<'a>(
        &'a self,
        keyspace: &'a str,
        key: &'a [u8],
        value: Option<Vec<u8>>,
        context: Clock,
        write_id: [u8; 16],
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(Coordinator::write(
            self,
            keyspace,
            key,
            value,
            context,
            write_id,
            SYSTEM_WRITE_LEVEL,
            deadline,
        ))
    }
}

/// The name a node's actor adds to counters under: its actor id in hex,
/// random per data directory, so a node whose disk was wiped starts a
/// total of its own rather than counting again from an old one.
fn counter_actor(actor: Actor) -> String {
    format!("{:016x}", actor.0)
}

/// A counter's value, from the version an addition wrote (or, for a
/// retried addition, the one it wrote before).
fn counter_value(version: &Version) -> Result<i64, CoordinatorError> {
    let bad = |reason: String| CoordinatorError::BadRequest { reason };
    let bytes = version
        .value_bytes()
        .ok_or_else(|| bad("the write named by this write id was a delete".into()))?;
    let counter = Counter::parse(bytes).map_err(|e| bad(e.to_string()))?;
    i64::try_from(counter.value()).map_err(|_| bad("the counter is beyond 64 bits".into()))
}

/// The dot a write coordinated by `actor` takes: one past the greatest
/// event of `actor` in the key's history (`current`, the lub of its
/// stored set), so each actor's counters for a key stay contiguous.
///
/// The replica issues its actor's events for the key, so it knows every
/// one of them: a `context` naming a later one did not come from a read
/// of the key and is refused (`InvalidContext`), and so is a history
/// already at `u64::MAX`, where the next counter would wrap to 0. (Events
/// of other actors may not have reached this replica yet; their counters
/// are only bounded, by `decode_context`.)
pub fn next_dot(actor: Actor, current: &Clock, context: &Clock) -> Result<Dot, CoordinatorError> {
    let issued = current.max_counter(actor);
    let claimed = context.max_counter(actor);
    if claimed > issued {
        return Err(CoordinatorError::InvalidContext {
            reason: format!(
                "it names event {claimed} of actor {} for this key, which has issued {issued}; \
                 write over a context a read of the key returned",
                actor.0
            ),
        });
    }
    issued
        .checked_add(1)
        .map(|counter| Dot { actor, counter })
        .ok_or_else(|| CoordinatorError::InvalidContext {
            reason: format!(
                "actor {}'s event counter for this key is exhausted",
                actor.0
            ),
        })
}
