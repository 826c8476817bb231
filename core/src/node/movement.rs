//! Range movement: a joining node pulls the ranges it will own, a leaving
//! node pushes the ranges it owns, both over Merkle sync (which moves only
//! what the other side lacks, both ways). While a range moves,
//! coordinators also send writes to its pending owners, so it misses none.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::gossip::membership::NodeStatus;
use crate::gossip::service::{GossipTransport, Gossiper};
use crate::model::DcName;
use crate::repair::{Progress, RepairData, RepairError, RepairStats, Repairer};
use crate::system_keyspace;
use crate::transport::Transport;
use crate::view::ClusterView;
use crate::worker::WorkerHandle;
use isthmus_client::wire::{OperationInfo, OperationKind};

/// The data directory's mark of a node that has not yet taken its place
/// on the ring (written when a node whose `bootstrap` is unset starts on a
/// new data directory, removed once it is `Normal`): a node that restarts
/// with it decides again, rather than taking a place it never filled.
pub const JOINING_FILE: &str = "JOINING";

/// Gossip rounds a joining node lets pass, once it knows its cluster,
/// before it decides or streams: its status must have reached the owners.
const SETTLE_ROUNDS: u32 = 6;

/// What range movement needs of its node.
pub(super) struct Movement<D, T: GossipTransport> {
    pub(super) gossiper: Arc<Gossiper<T>>,
    pub(super) repairer: Arc<Repairer<D, T>>,
    pub(super) keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    pub(super) view: watch::Receiver<Arc<ClusterView>>,
    pub(super) dc: DcName,
    /// How long a status change takes to reach every node.
    pub(super) spread: Duration,
}

impl<D, T: GossipTransport> Clone for Movement<D, T> {
    fn clone(&self) -> Self {
        Movement {
            gossiper: self.gossiper.clone(),
            repairer: self.repairer.clone(),
            keyspaces: self.keyspaces.clone(),
            view: self.view.clone(),
            dc: self.dc.clone(),
            spread: self.spread,
        }
    }
}

/// How a decommission ended.
pub(super) enum Left {
    /// Every range was handed over; the node announced `Left`.
    Done(RepairStats),
    /// Some ranges could not be handed over (a next owner is down); the
    /// node is `Normal` again and gave nothing up.
    Incomplete(RepairStats),
}

impl<D: RepairData, T: GossipTransport + Transport> Movement<D, T> {
    /// Stream the ranges whose owners change in this DC between the view's
    /// ring and its next ring: a joining node pulls what it will own from
    /// the current owners; a leaving node pushes what it owns to the next
    /// owners.
    /// Each range sync is planned and counted in `progress`.
    pub(super) async fn move_ranges(&self, joining: bool, progress: &Progress) -> RepairStats {
        let view = self.view.borrow().clone();
        let me = self.repairer.me().clone();
        let keyspaces = self.keyspaces.read().clone();
        let dc = &self.dc;
        let mut stats = RepairStats::default();
        let mut planned = Vec::new();
        for (name, ks) in keyspaces {
            let Some(&rf) = ks.replication.get(dc) else {
                continue;
            };
            // Every node holds all of a system keyspace: its factor follows
            // the current ring, so a joining node takes the next ring's.
            let rf = if system_keyspace::is_system(&name) {
                rf.max(system_keyspace::factor(&view.next, dc))
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
            planned.push((name, jobs));
        }
        progress
            .plan(planned.iter().map(|(_, j)| j.len() as u64).sum::<u64>() + stats.ranges_failed);
        progress.add(&stats);
        for (name, jobs) in planned {
            stats += self.repairer.stream_with(&name, jobs, progress).await;
        }
        stats
    }

    /// Join a running cluster: learn it through gossip, pull the ranges
    /// this node will own, then announce `Normal` (writes already reach it
    /// as a pending owner while it streams). Retries until every range
    /// came in.
    ///
    /// With `auto` (the configuration leaves `bootstrap` unset and the
    /// node is new), it first decides whether there is a cluster to join:
    /// once it has heard from a peer (or its only seeds are itself) and a
    /// few rounds have passed, a datacenter ring with members means a
    /// running cluster (stream, as above); an empty one means this node
    /// is among those forming it (announce `Normal` at once, nothing to
    /// stream). A node whose seeds never answer keeps waiting: it never
    /// forms a second cluster beside one it could not reach. Either way
    /// `marker` (the data directory's [`JOINING_FILE`]) is removed once
    /// the node is `Normal`.
    pub(super) async fn bootstrap(
        self,
        auto: bool,
        interval: Duration,
        marker: Option<std::path::PathBuf>,
        mut stop: watch::Receiver<bool>,
        worker: WorkerHandle,
    ) {
        let mut rounds_seen = 0;
        let mut deciding = auto;
        let mut waiting = false;
        let normal = |why: &str| {
            // The mark goes first: once anyone can see this node `Normal`,
            // its data directory no longer says it is joining (a crash in
            // between restarts it as a member, which it was about to be).
            if let Some(marker) = &marker
                && let Err(e) = std::fs::remove_file(marker)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, path = %marker.display(), "cannot remove the joining mark");
            }
            self.gossiper.set_status(NodeStatus::Normal);
            tracing::info!("{why}; joining the ring");
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            if deciding {
                if !self.gossiper.joined() {
                    if !waiting {
                        waiting = true;
                        worker.failed("no seed has answered yet; waiting to learn the cluster");
                    }
                    continue;
                }
                rounds_seen += 1;
                if rounds_seen < SETTLE_ROUNDS {
                    continue;
                }
                if self.view.borrow().ring.node_count(&self.dc) == 0 {
                    normal("no member on this datacenter's ring: forming it");
                    worker.idle();
                    return;
                }
                tracing::info!("this datacenter's ring has members: bootstrapping into it");
                deciding = false;
            }
            // Let gossip settle: the owners must know this node is joining
            // (so they send it writes) before it copies their data.
            if self.view.borrow().ring.node_count(&self.dc) == 0 {
                continue;
            }
            rounds_seen += 1;
            if rounds_seen < SETTLE_ROUNDS {
                continue;
            }
            worker.busy();
            // Each pass is an operation of its own: a failed pass is
            // recorded as such, and the next pass starts again.
            let op = self
                .repairer
                .operations()
                .start(OperationKind::Join, None, None);
            let stats = tokio::select! {
                s = self.move_ranges(true, op.progress()) => s,
                _ = stop.changed() => return,
            };
            if stats.ranges_failed == 0 {
                op.done();
                tracing::info!(
                    ranges = stats.ranges,
                    pulled = stats.keys_pulled,
                    bytes = stats.bytes,
                    "bootstrap streamed"
                );
                normal("bootstrap done");
                worker.idle();
                return;
            }
            op.failed(format!(
                "{} ranges failed; the join retries",
                stats.ranges_failed
            ));
            worker.failed(format!("{} ranges failed; retrying", stats.ranges_failed));
            tracing::warn!(
                failed = stats.ranges_failed,
                "bootstrap incomplete; retrying"
            );
        }
    }

    /// Leave the ring: announce `Leaving` (coordinators start sending
    /// writes to the next owners too), hand every range to its next
    /// owners, then announce `Left`. On a failed range the node goes back
    /// to `Normal`; nothing has been given up.
    /// Cancelled ([`Repairer::cancel`](crate::repair::Repairer::cancel))
    /// before it announces `Left`, it goes back to `Normal` too.
    ///
    /// It runs as an operation of kind decommission; `started` hears of
    /// it (or of the refusal, when another operation holds the slot) as
    /// soon as it begins.
    pub(super) async fn leave(
        &self,
        started: tokio::sync::oneshot::Sender<Result<OperationInfo, RepairError>>,
    ) -> Result<Left, RepairError> {
        let turn = match self.repairer.try_admin("a decommission") {
            Ok(turn) => turn,
            Err(e) => {
                let _ = started.send(Err(e.clone()));
                return Err(e);
            }
        };
        let op = self
            .repairer
            .operations()
            .start(OperationKind::Decommission, None, None);
        let _ = started.send(Ok(op.info()));
        self.gossiper.set_status(NodeStatus::Leaving);
        let moved = turn
            .run(async {
                tokio::time::sleep(self.spread).await;
                Ok(self.move_ranges(false, op.progress()).await)
            })
            .await;
        let stats = match moved {
            Ok(stats) => stats,
            Err(cancelled) => {
                self.gossiper.set_status(NodeStatus::Normal);
                op.finish_with::<()>(&Err(cancelled.clone()));
                return Err(cancelled);
            }
        };
        if stats.ranges_failed > 0 {
            self.gossiper.set_status(NodeStatus::Normal);
            op.failed(format!(
                "{} ranges could not be handed over (a next owner is down); still a member",
                stats.ranges_failed
            ));
            return Ok(Left::Incomplete(stats));
        }
        self.gossiper.set_status(NodeStatus::Left);
        tokio::time::sleep(self.spread).await;
        op.done();
        tracing::info!(
            pushed = stats.keys_pushed,
            bytes = stats.bytes,
            "decommissioned"
        );
        Ok(Left::Done(stats))
    }
}
