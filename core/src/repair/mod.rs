//! Merkle anti-entropy: replicas compare hash trees over token ranges and
//! exchange only the keys whose sets differ.
//!
//! - [`tree`]: hash ranges, listing entries, Merkle trees, leaf diffs (no IO).
//! - [`exchange`]: the [`RepairRequest`]/[`RepairResponse`] messages and
//!   [`sync`], one range between two [`Replica`]s, both ways.
//! - [`server`]: a replica's side: sessions over a [`RepairData`] source
//!   ([`StoreData`]: a local store, absorbing through the coordinator).
//! - [`plan`]: which ranges a node syncs, and with whom (no IO).
//! - [`Repairer`]: a node's repair: in-DC ranges with their other live
//!   replicas (on a schedule and on demand), cross-DC full-sync with
//!   another datacenter, rebuild from other datacenters, and the serving
//!   of peers' requests.
//! - [`operation`]: the node's long work as operations with ids and live
//!   progress ([`Operations`]).
//!
//! Every version a sync moves is absorbed through the keyspace's merge
//! ([`crate::replica::Replica::apply`] on a node), so repair
//! is idempotent and commutes with every other delivery path.
//!
//! Repair must run on every range more often than compaction's tombstone
//! grace: a replica that still holds a value whose tombstone the others
//! have purged would otherwise hand the value back to them.
//!
//! ```
//! use isthmus_core::repair::tree::{HashRange, MerkleTree, depth_for};
//!
//! let keys: Vec<(u64, Vec<u8>, [u8; 32])> = (0..100u32)
//!     .map(|i| {
//!         let key = i.to_be_bytes().to_vec();
//!         (isthmus_core::model::key_hash(&key), key, [i as u8; 32])
//!     })
//!     .collect();
//! let depth = depth_for(keys.len() as u64);
//! let a = MerkleTree::from_keys(HashRange::FULL, depth, keys.clone());
//! let mut changed = keys;
//! changed[7].2 = [0xff; 32];
//! let b = MerkleTree::from_keys(HashRange::FULL, depth, changed);
//! assert_ne!(a.root(), b.root());
//! ```

mod error;
pub mod exchange;
pub mod operation;
pub mod plan;
pub mod server;
mod stats;
pub mod tree;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::RepairError;
pub use exchange::{RepairRequest, RepairResponse, Replica, SessionId, sync};
pub use operation::{Operation, Operations, Progress};
pub use server::{Absorb, RepairData, RepairServer, StoreData};
pub use stats::RepairStats;
pub use tree::HashRange;

use crate::model::{DcName, KeyspaceConfig};
use crate::peer::{PeerRequest, PeerResponse};
use crate::ring::NodeId;
use crate::transport::Transport;
use crate::view::ClusterView;
use crate::worker::WorkerHandle;
use futures_util::StreamExt;
use isthmus_client::wire::{OperationInfo, OperationKind};

/// Repair knobs of a node.
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// Time between scheduled in-DC repairs (the first one runs one
    /// interval after start); zero disables them.
    pub interval: Duration,
    /// Deadline of each request to a partner (an `Open` scans a range).
    pub call_timeout: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            interval: Duration::from_secs(600),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// A partner node reached through a [`Transport`]; counts the encoded
/// bytes of each request and answer.
pub struct PeerReplica<'a, T> {
    /// How to reach it.
    pub transport: &'a T,
    /// The partner.
    pub node: &'a NodeId,
    /// Deadline of each request.
    pub timeout: Duration,
}

fn encoded_len<M: serde::Serialize>(message: &M) -> u64 {
    postcard::experimental::serialized_size(message).map_or(0, |n| n as u64)
}

impl<T: Transport> Replica for PeerReplica<'_, T> {
    async fn call(&self, request: RepairRequest) -> Result<(RepairResponse, u64), RepairError> {
        let request = PeerRequest::Repair(request);
        let sent = encoded_len(&request);
        let failed = |reason: String| RepairError::Peer {
            node: self.node.clone(),
            reason,
        };
        let response = self
            .transport
            .call(self.node, request, self.timeout)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let bytes = sent + encoded_len(&response);
        match response {
            PeerResponse::Repair(r) => Ok((r, bytes)),
            PeerResponse::Error(e) => Err(failed(format!("{}: {}", e.code.name(), e.message))),
            other => Err(RepairError::Protocol {
                reason: format!("{} answered {other:?}", self.node),
            }),
        }
    }
}

/// Range syncs a full sync keeps in flight at once.
const FULL_SYNC_CONCURRENCY: usize = 8;

/// Which live replicas of a range a node syncs it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partners {
    /// Every other live replica (on demand).
    All,
    /// The live replicas after this node in the range's placement order
    /// (the schedule: every node runs it, so each pair of live replicas is
    /// synced once per round, by its earlier member).
    Following,
}

/// Which pieces of the ring a node fully syncs with another datacenter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    /// The pieces on which it is the first live local replica: run on
    /// every node of the datacenter, each piece is synced once (on demand).
    Primary,
    /// Every piece it replicates: what the node alone owes when its own
    /// bridge outbox dropped writes it coordinated (the bridge's fallback).
    Replicated,
    /// Every piece it replicates, each with one live replica of the other
    /// datacenter: a rebuild, which must leave this node holding all it
    /// owns whatever its local peers hold (a datacenter lost whole has
    /// none to repair from).
    Owned,
}

/// A node's repair: serves its peers' syncs and runs its own.
pub struct Repairer<D, T> {
    me: NodeId,
    dc: DcName,
    server: RepairServer<D>,
    transport: Arc<T>,
    keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    view: watch::Receiver<Arc<ClusterView>>,
    config: RepairConfig,
    seed: u64,
    next_session: AtomicU64,
    admin: AdminSlot,
    /// Every range sync's figures since the node started (`/metrics`).
    totals: parking_lot::Mutex<RepairStats>,
    /// The node's long work and its progress.
    operations: Arc<Operations>,
}

/// The node's one slot for administrative work (repair, full sync,
/// decommission): they run one at a time, so requests cannot pile them up.
#[derive(Default)]
struct AdminSlot {
    lock: tokio::sync::Mutex<()>,
    running: parking_lot::Mutex<Option<Running>>,
}

/// The operation holding the slot: what, since when, and how to stop it.
struct Running {
    what: &'static str,
    since: std::time::Instant,
    cancel: CancellationToken,
}

/// Holds the node's administrative slot until dropped.
pub struct AdminTurn<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    slot: &'a AdminSlot,
    what: &'static str,
    cancel: CancellationToken,
}

impl AdminTurn<'_> {
    /// Run `work` until it ends or an operator cancels this turn
    /// ([`Repairer::cancel`]): then `work` is dropped (every step of
    /// repair and streaming is idempotent, so what it did stays) and the
    /// answer is [`RepairError::Cancelled`].
    pub async fn run<R>(
        &self,
        work: impl std::future::Future<Output = Result<R, RepairError>>,
    ) -> Result<R, RepairError> {
        tokio::select! {
            result = work => result,
            _ = self.cancel.cancelled() => Err(RepairError::Cancelled { what: self.what }),
        }
    }
}

impl Drop for AdminTurn<'_> {
    fn drop(&mut self) {
        *self.slot.running.lock() = None;
    }
}

impl AdminSlot {
    fn turn<'a>(
        &'a self,
        guard: tokio::sync::MutexGuard<'a, ()>,
        what: &'static str,
    ) -> AdminTurn<'a> {
        let cancel = CancellationToken::new();
        *self.running.lock() = Some(Running {
            what,
            since: std::time::Instant::now(),
            cancel: cancel.clone(),
        });
        AdminTurn {
            _guard: guard,
            slot: self,
            what,
            cancel,
        }
    }
}

impl<D: RepairData, T: Transport> Repairer<D, T> {
    /// The repair of node `me` of datacenter `dc`.
    pub fn new(
        me: NodeId,
        dc: DcName,
        data: D,
        transport: Arc<T>,
        keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
        view: watch::Receiver<Arc<ClusterView>>,
        config: RepairConfig,
    ) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = xxhash_rust::xxh3::xxh3_64_with_seed(me.0.as_bytes(), now);
        Repairer {
            me,
            dc,
            server: RepairServer::new(data),
            transport,
            keyspaces,
            view,
            config,
            seed,
            next_session: AtomicU64::new(0),
            admin: AdminSlot::default(),
            totals: parking_lot::Mutex::default(),
            operations: Arc::new(Operations::default()),
        }
    }

    /// The node's table of operations (its long work and their progress).
    pub fn operations(&self) -> &Arc<Operations> {
        &self.operations
    }

    /// Every other datacenter the node's keyspaces replicate to (what a
    /// rebuild pulls from when not told one).
    pub fn other_dcs(&self) -> Vec<DcName> {
        let mut dcs: Vec<DcName> = self
            .keyspaces
            .read()
            .values()
            .flat_map(|k| k.replication.keys().cloned())
            .filter(|dc| *dc != self.dc)
            .collect();
        dcs.sort();
        dcs.dedup();
        dcs
    }

    /// The figures of every range sync this node ran since it started
    /// (repair, full sync, streaming), for `/metrics`.
    pub fn totals(&self) -> RepairStats {
        *self.totals.lock()
    }

    /// This node's side of syncs (its data source and sessions).
    pub fn server(&self) -> &RepairServer<D> {
        &self.server
    }

    /// The node it repairs for.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The node's datacenter.
    pub fn dc(&self) -> &DcName {
        &self.dc
    }

    /// The cluster as the node sees it.
    pub fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// The knobs.
    pub fn config(&self) -> &RepairConfig {
        &self.config
    }

    /// Take the node's administrative slot for `what`, or say what holds
    /// it ([`RepairError::Busy`]).
    pub fn try_admin(&self, what: &'static str) -> Result<AdminTurn<'_>, RepairError> {
        match self.admin.lock.try_lock() {
            Ok(guard) => Ok(self.admin.turn(guard, what)),
            Err(_) => {
                let (running, since) = self
                    .admin
                    .running
                    .lock()
                    .as_ref()
                    .map_or(("another operation", std::time::Instant::now()), |r| {
                        (r.what, r.since)
                    });
                Err(RepairError::Busy {
                    running,
                    for_s: since.elapsed().as_secs(),
                })
            }
        }
    }

    /// Cancel the administrative operation holding the slot, if any, and
    /// say what it was. It stops at its next step; the slot frees once it
    /// has.
    pub fn cancel(&self) -> Option<&'static str> {
        let running = self.admin.running.lock();
        let running = running.as_ref()?;
        running.cancel.cancel();
        tracing::info!(operation = running.what, "cancelled by an operator");
        Some(running.what)
    }

    /// Wait for the node's administrative slot, then hold it for `what`.
    pub async fn admin(&self, what: &'static str) -> AdminTurn<'_> {
        let guard = self.admin.lock.lock().await;
        self.admin.turn(guard, what)
    }

    /// Answer `from`'s repair request.
    pub async fn serve(&self, from: &NodeId, request: RepairRequest) -> PeerResponse {
        match self.server.serve_peer(from, request).await {
            Ok(r) => PeerResponse::Repair(r),
            Err(e) => PeerResponse::Error(e.to_wire()),
        }
    }

    /// Repair on demand: with `remote_dc`, a full sync with that
    /// datacenter of the pieces this node is primary for
    /// ([`Self::full_sync`], [`Share::Primary`]: run it on every node of
    /// the datacenter to cover the ring); without, this node's in-DC ranges
    /// with every other live replica ([`Self::repair_dc`]). `keyspace`
    /// limits it to one keyspace. One administrative operation runs at a
    /// time on a node: while another runs, this one is refused
    /// ([`RepairError::Busy`]).
    /// It runs as an operation ([`Self::operations`]); this waits for it
    /// to end, where [`Self::start_repair`] returns once it has begun.
    pub async fn repair(
        &self,
        keyspace: Option<&str>,
        remote_dc: Option<&DcName>,
    ) -> Result<RepairStats, RepairError> {
        let (what, kind, dc) = self.repair_kind(remote_dc);
        let turn = self.try_admin(what)?;
        let op = self.operations.start(kind, keyspace.map(str::to_owned), dc);
        let result = turn
            .run(self.repair_work(keyspace, remote_dc, op.progress()))
            .await;
        op.finish_with(&result);
        result
    }

    fn repair_kind(
        &self,
        remote_dc: Option<&DcName>,
    ) -> (&'static str, OperationKind, Option<String>) {
        match remote_dc {
            Some(dc) if *dc != self.dc => (
                "a full sync",
                OperationKind::FullSync,
                Some(dc.0.to_string()),
            ),
            _ => ("a repair", OperationKind::Repair, None),
        }
    }

    async fn repair_work(
        &self,
        keyspace: Option<&str>,
        remote_dc: Option<&DcName>,
        progress: &Progress,
    ) -> Result<RepairStats, RepairError> {
        match remote_dc {
            Some(dc) if *dc != self.dc => {
                self.full_sync_with(keyspace, dc, Share::Primary, progress)
                    .await
            }
            _ => self.repair_dc_with(keyspace, Partners::All, progress).await,
        }
    }

    /// [`Self::repair`] in the background: it takes the administrative
    /// slot (or is refused, [`RepairError::Busy`]), starts the operation
    /// and returns it at once; the work goes on until it ends, an operator
    /// cancels it, or `stop` (the node stops).
    pub async fn start_repair(
        self: &Arc<Self>,
        keyspace: Option<String>,
        remote_dc: Option<DcName>,
        stop: watch::Receiver<bool>,
    ) -> Result<OperationInfo, RepairError> {
        // Refuse bad names at once, not in an operation that fails.
        self.keyspaces(keyspace.as_deref())?;
        if let Some(dc) = &remote_dc
            && self.view.borrow().ring.node_count(dc) == 0
        {
            return Err(RepairError::UnknownDc {
                name: dc.0.to_string(),
            });
        }
        let (what, kind, dc) = self.repair_kind(remote_dc.as_ref());
        self.start_admin(
            what,
            kind,
            keyspace.clone(),
            dc,
            stop,
            move |me, progress| {
                Box::pin(async move {
                    let result = me
                        .repair_work(keyspace.as_deref(), remote_dc.as_ref(), progress)
                        .await;
                    match &result {
                        Ok(stats) => tracing::info!(
                            keyspace = keyspace.as_deref().unwrap_or("*"),
                            remote_dc = remote_dc.as_ref().map_or("", |d| d.as_str()),
                            %stats,
                            "repair done"
                        ),
                        Err(e) => tracing::warn!(error = %e, "repair failed"),
                    }
                    result.map(|_| ())
                })
            },
        )
        .await
    }

    /// Rebuild this node's replicas from `from` (or every other
    /// datacenter, [`Self::other_dcs`]): each range it owns pulled from a
    /// live replica there ([`Share::Owned`]), as an operation of kind
    /// rebuild, started in the background like [`Self::start_repair`].
    /// For the fresh nodes of a datacenter lost for good: they have no
    /// local peer with data to repair from.
    pub async fn start_rebuild(
        self: &Arc<Self>,
        from: Option<DcName>,
        stop: watch::Receiver<bool>,
    ) -> Result<OperationInfo, RepairError> {
        let sources = match &from {
            Some(dc) if *dc == self.dc => {
                return Err(RepairError::BadRequest {
                    reason: format!("a node cannot rebuild from its own datacenter {dc}"),
                });
            }
            Some(dc) => vec![dc.clone()],
            None => self.other_dcs(),
        };
        if sources.is_empty() {
            return Err(RepairError::BadRequest {
                reason: "no other datacenter replicates this node's keyspaces".into(),
            });
        }
        let view = self.view.borrow().clone();
        if let Some(dc) = sources.iter().find(|dc| view.ring.node_count(dc) == 0) {
            return Err(RepairError::UnknownDc {
                name: dc.0.to_string(),
            });
        }
        let dc = from.map(|d| d.0.to_string());
        self.start_admin(
            "a rebuild",
            OperationKind::Rebuild,
            None,
            dc,
            stop,
            move |me, progress| {
                Box::pin(async move {
                    let stats = me.rebuild_from(&sources, progress).await?;
                    tracing::info!(%stats, "rebuild done");
                    match stats.ranges_failed {
                        0 => Ok(()),
                        n => Err(RepairError::Peer {
                            node: me.me.clone(),
                            reason: format!(
                                "{n} ranges could not be pulled; run the rebuild again"
                            ),
                        }),
                    }
                })
            },
        )
        .await
    }

    /// Pull every range this node owns from each of `sources`.
    pub async fn rebuild_from(
        &self,
        sources: &[DcName],
        progress: &Progress,
    ) -> Result<RepairStats, RepairError> {
        let mut stats = RepairStats::default();
        for dc in sources {
            stats += self
                .full_sync_with(None, dc, Share::Owned, progress)
                .await?;
        }
        Ok(stats)
    }

    /// Take the administrative slot for `what` (or say what holds it),
    /// start an operation of `kind`, and run `work` on it in a task of
    /// its own until it ends, is cancelled, or `stop`.
    async fn start_admin<F>(
        self: &Arc<Self>,
        what: &'static str,
        kind: OperationKind,
        keyspace: Option<String>,
        dc: Option<String>,
        mut stop: watch::Receiver<bool>,
        work: F,
    ) -> Result<OperationInfo, RepairError>
    where
        F: for<'a> FnOnce(
                &'a Self,
                &'a Progress,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<(), RepairError>> + Send + 'a>,
            > + Send
            + 'static,
    {
        let (started, answer) = tokio::sync::oneshot::channel();
        let me = self.clone();
        tokio::spawn(async move {
            let turn = match me.try_admin(what) {
                Ok(turn) => turn,
                Err(e) => {
                    let _ = started.send(Err(e));
                    return;
                }
            };
            let op = me.operations.start(kind, keyspace, dc);
            let _ = started.send(Ok(op.info()));
            tokio::select! {
                result = turn.run(work(&me, op.progress())) => op.finish_with(&result),
                // Dropped unfinished: recorded as failed, the node stopping.
                _ = stop.changed() => {}
            }
        });
        answer.await.unwrap_or_else(|_| {
            Err(RepairError::Protocol {
                reason: "the operation's task ended before it started".into(),
            })
        })
    }

    fn session(&self) -> SessionId {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed)
    }

    fn keyspaces(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(String, Arc<KeyspaceConfig>)>, RepairError> {
        let keyspaces = self.keyspaces.read();
        match only {
            Some(name) => keyspaces
                .get(name)
                .map(|k| vec![(name.to_owned(), k.clone())])
                .ok_or_else(|| RepairError::UnknownKeyspace {
                    name: name.to_owned(),
                }),
            None => Ok(keyspaces
                .iter()
                .map(|(n, k)| (n.clone(), k.clone()))
                .collect()),
        }
    }

    /// Sync one range with one partner, counting a failure rather than
    /// returning it (the other ranges still run).
    /// Sync each `(range, partner)` of `keyspace`, a few at a time: how a
    /// joining node pulls the ranges it will own from their owners, and a
    /// leaving node hands its ranges to their next owners.
    pub async fn stream(&self, keyspace: &str, jobs: Vec<(HashRange, NodeId)>) -> RepairStats {
        self.stream_with(keyspace, jobs, &Progress::default()).await
    }

    /// [`Self::stream`], counting each range sync in `progress` (whose
    /// plan the caller has made).
    pub async fn stream_with(
        &self,
        keyspace: &str,
        jobs: Vec<(HashRange, NodeId)>,
        progress: &Progress,
    ) -> RepairStats {
        let mut stats = RepairStats::default();
        let mut runs = futures_util::stream::iter(jobs)
            .map(|(range, partner)| async move {
                self.sync_one(keyspace, range, &partner, progress).await
            })
            .buffer_unordered(FULL_SYNC_CONCURRENCY);
        while let Some(s) = runs.next().await {
            stats += s;
        }
        stats
    }

    /// [`Self::sync_range`] returning its own figures (for syncs run
    /// concurrently).
    async fn sync_one(
        &self,
        keyspace: &str,
        range: HashRange,
        partner: &NodeId,
        progress: &Progress,
    ) -> RepairStats {
        let mut stats = RepairStats::default();
        self.sync_range(keyspace, range, partner, &mut stats, progress)
            .await;
        stats
    }

    /// Sync one range with `partner`, adding its figures to `stats`, to
    /// its operation's `progress` and to the node's totals.
    async fn sync_range(
        &self,
        keyspace: &str,
        range: HashRange,
        partner: &NodeId,
        stats: &mut RepairStats,
        progress: &Progress,
    ) {
        let mut this = RepairStats::default();
        self.sync_range_alone(keyspace, range, partner, &mut this)
            .await;
        *stats += this;
        progress.add(&this);
        *self.totals.lock() += this;
    }

    async fn sync_range_alone(
        &self,
        keyspace: &str,
        range: HashRange,
        partner: &NodeId,
        stats: &mut RepairStats,
    ) {
        let remote = PeerReplica {
            transport: self.transport.as_ref(),
            node: partner,
            timeout: self.config.call_timeout,
        };
        match sync(&self.server, &remote, keyspace, range, self.session()).await {
            Ok(s) => {
                if s.keys_differing > 0 {
                    tracing::debug!(keyspace, %range, %partner, differing = s.keys_differing, "range repaired");
                }
                *stats += s;
            }
            Err(e) => {
                stats.ranges_failed += 1;
                tracing::warn!(keyspace, %range, %partner, error = %e, "range repair failed");
            }
        }
    }

    /// Sync every range this node replicates in its datacenter with the
    /// `partners` among its other live replicas.
    pub async fn repair_dc(
        &self,
        keyspace: Option<&str>,
        partners: Partners,
    ) -> Result<RepairStats, RepairError> {
        self.repair_dc_with(keyspace, partners, &Progress::default())
            .await
    }

    /// [`Self::repair_dc`], planning and counting its range syncs in
    /// `progress`.
    pub async fn repair_dc_with(
        &self,
        keyspace: Option<&str>,
        partners: Partners,
        progress: &Progress,
    ) -> Result<RepairStats, RepairError> {
        let mut stats = RepairStats::default();
        // Plan every keyspace first, so the total is known from the start.
        let view = self.view.borrow().clone();
        let mut jobs: Vec<(String, HashRange, NodeId)> = Vec::new();
        for (name, ks) in self.keyspaces(keyspace)? {
            let Some(&rf) = ks.replication.get(&self.dc) else {
                continue;
            };
            for (range, replicas) in plan::local_ranges(&view.ring, &self.dc, rf as usize, &self.me)
            {
                let position = replicas.iter().position(|n| *n == self.me).unwrap_or(0);
                let candidates = match partners {
                    Partners::All => &replicas[..],
                    Partners::Following => &replicas[position + 1..],
                };
                for partner in candidates.iter().filter(|p| **p != self.me) {
                    if view.alive.contains(partner) {
                        jobs.push((name.clone(), range, partner.clone()));
                    } else {
                        stats.ranges_failed += 1;
                        tracing::debug!(keyspace = name, %range, %partner, "partner down; range not repaired");
                    }
                }
            }
        }
        progress.plan(jobs.len() as u64 + stats.ranges_failed);
        progress.add(&stats);
        for (name, range, partner) in jobs {
            self.sync_range(&name, range, &partner, &mut stats, progress)
                .await;
        }
        Ok(stats)
    }

    /// Full sync with datacenter `remote`: the pieces of the ring (cut at
    /// the tokens of both rings) in this node's `share`. With
    /// [`Share::Primary`] each piece is synced with the first live replica
    /// of `remote`: what it pulls reaches the other local replicas through
    /// their in-DC repair, and what it pushes reaches the other remote
    /// replicas through theirs. With [`Share::Replicated`] (the cross-DC
    /// bridge's fallback when its outbox overflows) each piece is synced
    /// with every live replica of `remote`, so what this node owes that DC
    /// reaches all of its replicas at once.
    pub async fn full_sync(
        &self,
        keyspace: Option<&str>,
        remote: &DcName,
        share: Share,
    ) -> Result<RepairStats, RepairError> {
        self.full_sync_with(keyspace, remote, share, &Progress::default())
            .await
    }

    /// [`Self::full_sync`], planning and counting its range syncs in
    /// `progress`.
    pub async fn full_sync_with(
        &self,
        keyspace: Option<&str>,
        remote: &DcName,
        share: Share,
        progress: &Progress,
    ) -> Result<RepairStats, RepairError> {
        let view = self.view.borrow().clone();
        if view.ring.node_count(remote) == 0 {
            return Err(RepairError::UnknownDc {
                name: remote.0.to_string(),
            });
        }
        let mut stats = RepairStats::default();
        let mut planned: Vec<(String, Vec<(HashRange, NodeId)>)> = Vec::new();
        for (name, ks) in self.keyspaces(keyspace)? {
            let (Some(&local_rf), Some(&remote_rf)) =
                (ks.replication.get(&self.dc), ks.replication.get(remote))
            else {
                continue;
            };
            let view = self.view.borrow().clone();
            let ranges = plan::remote_ranges(
                &view.ring,
                &self.dc,
                local_rf as usize,
                remote,
                remote_rf as usize,
                &view.alive,
                &self.me,
                share,
            );
            let mut jobs: Vec<(HashRange, NodeId)> = Vec::new();
            for (range, partner) in ranges {
                let partners: Vec<NodeId> = match share {
                    Share::Primary | Share::Owned => partner.into_iter().collect(),
                    // The writes this node owes the remote DC must reach
                    // every replica there, not wait for the remote DC's
                    // own repair round.
                    Share::Replicated => view
                        .ring
                        .replicas_in_dc(remote, range.last, remote_rf as usize)
                        .into_iter()
                        .filter(|n| view.alive.contains(n))
                        .collect(),
                };
                if partners.is_empty() {
                    stats.ranges_failed += 1;
                    tracing::debug!(keyspace = name, %range, %remote, "no live replica in the remote datacenter");
                }
                jobs.extend(partners.into_iter().map(|p| (range, p)));
            }
            planned.push((name, jobs));
        }
        progress
            .plan(planned.iter().map(|(_, j)| j.len() as u64).sum::<u64>() + stats.ranges_failed);
        progress.add(&stats);
        for (name, jobs) in planned {
            // Over a WAN each range costs several round trips: keep a few
            // in flight rather than paying them one after another.
            stats += self.stream_with(&name, jobs, progress).await;
        }
        Ok(stats)
    }

    /// The scheduled worker: every [`RepairConfig::interval`], an in-DC
    /// repair of every keyspace ([`Partners::Following`]), until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, worker: WorkerHandle) {
        let period = self.config.interval;
        if period.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
            }
            // An operator's repair or a decommission holds the slot: this
            // round is skipped, the next one runs.
            let turn = match self.try_admin("the scheduled repair") {
                Ok(turn) => turn,
                Err(e) => {
                    tracing::info!(reason = %e, "scheduled repair skipped this round");
                    continue;
                }
            };
            worker.busy();
            let op = self.operations.start(OperationKind::Repair, None, None);
            tokio::select! {
                result = turn.run(self.repair_dc_with(None, Partners::Following, op.progress())) => {
                    op.finish_with(&result);
                    match result {
                    Ok(s) => {
                        tracing::info!(stats = %s, "scheduled repair done");
                        match s.ranges_failed {
                            0 => worker.idle(),
                            n => worker.failed(format!("{n} ranges could not be synced")),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduled repair failed");
                        worker.failed(e);
                    }
                }},
                _ = stop.changed() => return,
            }
            drop(turn);
        }
    }
}
