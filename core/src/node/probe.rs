//! The node's [`Probe`]: its figures and readiness for the operations
//! listener, read from the components that keep them.

use std::sync::Arc;

use tokio::sync::watch;

use super::{NodeRepairer, NodeStatus};
use crate::bridge::Bridge;
use crate::gossip::service::{GossipTransport, Gossiper};
use crate::hints::HintQueue;
use crate::ops::{Figures, HintFigures, Member, NotReady, Probe, ServerFigures};
use crate::replica::Replica;
use crate::ring::NodeId;
use crate::server::ServerStats;
use crate::store::LocalStore;
use crate::view::ClusterView;
use crate::worker::Workers;

/// Narrow handles on the parts of one node that count.
pub(super) struct NodeProbe<S, T: GossipTransport, H> {
    pub me: NodeId,
    pub dc: String,
    pub store: S,
    pub keyspaces: Arc<parking_lot::RwLock<crate::model::KeyspaceMap>>,
    pub replica: Arc<Replica<S>>,
    pub hints: Arc<H>,
    pub gossiper: Arc<Gossiper<T>>,
    pub bridge: Option<Arc<dyn Bridge>>,
    pub repairer: Arc<NodeRepairer<S, T>>,
    pub server: Arc<ServerStats>,
    pub workers: Arc<Workers>,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub stop: watch::Receiver<bool>,
}

fn status_label(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Joining => "joining",
        NodeStatus::Normal => "normal",
        NodeStatus::Leaving => "leaving",
        NodeStatus::Left => "left",
    }
}

impl<S, T, H> Probe for NodeProbe<S, T, H>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue,
{
    fn figures(&self) -> Figures {
        let alive = self.gossiper.alive();
        let members = self
            .gossiper
            .membership()
            .endpoints()
            .values()
            .map(|e| Member {
                dc: e.placement.dc.0.to_string(),
                status: status_label(e.status),
                up: alive.contains(&e.id),
            })
            .collect();
        let counters = self.hints.counters();
        let load = |f: fn(&crate::hints::HintStats) -> &std::sync::atomic::AtomicU64| {
            counters
                .as_ref()
                .map_or(0, |s| f(s).load(std::sync::atomic::Ordering::Relaxed))
        };
        let hints = HintFigures {
            stored: load(|s| &s.stored),
            delivered: load(|s| &s.delivered),
            expired: load(|s| &s.expired),
            refused: load(|s| &s.refused),
            queued_bytes: self
                .hints
                .pending()
                .into_iter()
                .map(|(n, b)| (n.0, b))
                .collect(),
        };
        Figures {
            engine: self.store.engine_stats(),
            conflicts: self.replica.merge_pool().tally().figures(),
            hints,
            bridges: self.bridge.as_ref().map(|b| b.report()).unwrap_or_default(),
            bridge: self
                .bridge
                .as_ref()
                .map(|b| b.figures())
                .unwrap_or_default(),
            node: self.me.0.clone(),
            dc: self.dc.clone(),
            repair: self.repairer.totals(),
            members,
            phis: self
                .gossiper
                .phis()
                .into_iter()
                .map(|(n, phi)| (n.0, phi))
                .collect(),
            server: ServerFigures {
                clients_open: self.server.clients_open(),
                peers_open: self.server.peers_open(),
                connections_refused: self.server.connections_refused(),
                requests_expired: self.server.requests_expired(),
            },
            workers: self.workers.statuses(),
            ready: self.readiness().is_ok(),
        }
    }

    fn readiness(&self) -> Result<(), NotReady> {
        let not = |reason: &str| {
            Err(NotReady {
                reason: reason.to_owned(),
            })
        };
        if *self.stop.borrow() {
            return not("stopping");
        }
        if self.store.engine_stats().is_some_and(|e| e.poisoned) {
            return not("storage engine poisoned (a failed fsync): writes are refused");
        }
        match self.gossiper.membership().get(&self.me).map(|e| e.status) {
            Some(NodeStatus::Normal) => {}
            Some(NodeStatus::Joining) => return not("joining: streaming its ranges in"),
            Some(NodeStatus::Leaving) => return not("decommissioning"),
            Some(NodeStatus::Left) => return not("decommissioned"),
            None => return not("not a member of its own view"),
        }
        // Its replicas are being pulled from other datacenters: a LOCAL
        // read it coordinates would miss what has not arrived yet.
        if self
            .repairer
            .operations()
            .running(isthmus_client::wire::OperationKind::Rebuild)
            > 0
        {
            return not("rebuilding: pulling its ranges from other datacenters");
        }
        if !self.gossiper.joined() {
            return not("not joined: no peer heard from yet");
        }
        let view = self.view.borrow();
        if !view
            .ring
            .nodes_in(&crate::model::DcName::from(self.dc.as_str()))
            .any(|n| *n == self.me)
        {
            return not("no ring yet");
        }
        Ok(())
    }

    fn nodes(&self) -> Vec<isthmus_client::wire::NodeReport> {
        let keyspaces = self.keyspaces.read().clone();
        let hints = self.hints.pending().into_iter().collect();
        super::status::nodes(&self.gossiper, &keyspaces, &hints)
    }

    fn operations(&self) -> Vec<isthmus_client::wire::OperationInfo> {
        self.repairer.operations().list()
    }
}

/// Logs the node's lifecycle at info as it happens: not ready (with the
/// reason, each time it changes), ready, and each datacenter of the ring
/// going down (no live node) or up again. Looks twice a second.
pub(super) async fn lifecycle(
    probe: Arc<dyn Probe>,
    view: watch::Receiver<Arc<ClusterView>>,
    mut stop: watch::Receiver<bool>,
    worker: crate::worker::WorkerHandle,
) {
    let mut said: Option<Result<(), NotReady>> = None;
    let mut dcs_up: std::collections::BTreeMap<crate::model::DcName, bool> = Default::default();
    loop {
        worker.busy();
        let now = probe.readiness();
        if said.as_ref() != Some(&now) {
            match &now {
                Ok(()) => tracing::info!("node ready"),
                Err(not) => tracing::info!(reason = %not.reason, "node not ready"),
            }
            said = Some(now);
        }
        {
            let view = view.borrow();
            for dc in view.ring.dcs() {
                let up = view.ring.nodes_in(dc).any(|n| view.alive.contains(n));
                if dcs_up.insert(dc.clone(), up) != Some(up) {
                    if up {
                        tracing::info!(%dc, "datacenter up");
                    } else {
                        tracing::info!(%dc, "datacenter down");
                    }
                }
            }
        }
        worker.idle();
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}
