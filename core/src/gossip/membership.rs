//! Membership state as gossip spreads it: one [`Endpoint`] per node, and
//! the rule for merging two views of it.
//!
//! Each node owns its own entry and is the only one that changes it. A node
//! bumps `generation` at every start (it is the start time in milliseconds,
//! so it grows across restarts without any stored state) and `heartbeat` on
//! every gossip round. Between two entries for the same node, the one with
//! the greater `(generation, version)` is newer, where `version` grows with
//! every change a node makes to its entry (heartbeat or status). Merging
//! views is therefore a join, like everything else that replicates here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::DcName;
use crate::ring::{NodeId, Placement};

/// A node's lifecycle status as it announces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Streaming in the ranges it will own; not yet a read replica.
    Joining,
    /// Owns its ranges.
    Normal,
    /// Streaming its ranges out before leaving the ring.
    Leaving,
    /// Has left; kept so that the departure spreads.
    Left,
}

/// What gossip knows of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The node.
    pub id: NodeId,
    /// `host:port` it serves on.
    pub addr: String,
    /// Datacenter and rack.
    pub placement: Placement,
    /// Tokens it takes on its datacenter's ring.
    pub vnodes: u32,
    /// Start time of the incarnation, in Unix milliseconds.
    pub generation: u64,
    /// Grows with every change the node makes to this entry.
    pub version: u64,
    /// Lifecycle status.
    pub status: NodeStatus,
    /// Bytes of data on its disk, refreshed every round.
    pub load_bytes: u64,
}

impl Endpoint {
    /// Is `self` a newer view of the same node than `other`?
    pub fn supersedes(&self, other: &Endpoint) -> bool {
        (self.generation, self.version) > (other.generation, other.version)
    }

    /// The node's datacenter.
    pub fn dc(&self) -> &DcName {
        &self.placement.dc
    }
}

/// One node's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    endpoints: BTreeMap<NodeId, Endpoint>,
}

impl Membership {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every known endpoint, by node id.
    pub fn endpoints(&self) -> &BTreeMap<NodeId, Endpoint> {
        &self.endpoints
    }

    /// The entry for `id`, if known.
    pub fn get(&self, id: &NodeId) -> Option<&Endpoint> {
        self.endpoints.get(id)
    }

    /// Take `entry` if it is newer than what is known; returns whether the
    /// view changed.
    pub fn observe(&mut self, entry: Endpoint) -> bool {
        match self.endpoints.get(&entry.id) {
            Some(known) if !entry.supersedes(known) => false,
            _ => {
                self.endpoints.insert(entry.id.clone(), entry);
                true
            }
        }
    }

    /// Join another view into this one; returns the ids whose entry changed.
    pub fn merge(&mut self, other: &Membership) -> Vec<NodeId> {
        other
            .endpoints
            .values()
            .filter(|e| self.observe((*e).clone()))
            .map(|e| e.id.clone())
            .collect()
    }

    /// A digest of the view: `(id, generation, version)` per node, what a
    /// gossip round sends first so that only newer entries travel.
    pub fn digest(&self) -> Vec<(NodeId, u64, u64)> {
        self.endpoints
            .values()
            .map(|e| (e.id.clone(), e.generation, e.version))
            .collect()
    }

    /// Entries of ours newer than what `digest` says the peer has.
    pub fn newer_than(&self, digest: &[(NodeId, u64, u64)]) -> Vec<Endpoint> {
        let theirs: BTreeMap<&NodeId, (u64, u64)> =
            digest.iter().map(|(id, g, v)| (id, (*g, *v))).collect();
        self.endpoints
            .values()
            .filter(|e| {
                theirs
                    .get(&e.id)
                    .is_none_or(|&gv| (e.generation, e.version) > gv)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, generation: u64, version: u64, status: NodeStatus) -> Endpoint {
        Endpoint {
            id: NodeId(id.into()),
            addr: format!("127.0.0.1:{}", 7000 + id.len()),
            placement: Placement {
                dc: "dc1".into(),
                rack: "r1".into(),
            },
            vnodes: 16,
            generation,
            version,
            status,
            load_bytes: 0,
        }
    }

    #[test]
    fn newer_generation_wins_over_higher_version() {
        let mut m = Membership::new();
        assert!(m.observe(ep("a", 1, 50, NodeStatus::Normal)));
        assert!(!m.observe(ep("a", 1, 49, NodeStatus::Leaving)));
        assert!(m.observe(ep("a", 2, 1, NodeStatus::Joining)));
        assert_eq!(
            m.get(&NodeId("a".into())).unwrap().status,
            NodeStatus::Joining
        );
    }

    #[test]
    fn merge_is_order_insensitive_and_digests_select_newer_entries() {
        let x = [
            ep("a", 1, 3, NodeStatus::Normal),
            ep("b", 1, 1, NodeStatus::Normal),
        ];
        let y = [
            ep("a", 1, 2, NodeStatus::Normal),
            ep("b", 2, 1, NodeStatus::Normal),
            ep("c", 1, 1, NodeStatus::Joining),
        ];
        let (mut m1, mut m2) = (Membership::new(), Membership::new());
        x.iter().chain(y.iter()).for_each(|e| {
            m1.observe(e.clone());
        });
        y.iter().chain(x.iter()).rev().for_each(|e| {
            m2.observe(e.clone());
        });
        assert_eq!(m1, m2);
        let mut old = Membership::new();
        x.iter().for_each(|e| {
            old.observe(e.clone());
        });
        let newer: Vec<_> = m1
            .newer_than(&old.digest())
            .into_iter()
            .map(|e| e.id.0)
            .collect();
        assert_eq!(newer, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(old.merge(&m1), vec![NodeId("b".into()), NodeId("c".into())]);
        assert_eq!(old, m1);
    }
}
