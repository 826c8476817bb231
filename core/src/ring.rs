//! Placement: per-datacenter consistent-hash rings with rack-aware replica
//! walks.
//!
//! Each node owns `vnodes` tokens on the ring of its datacenter, derived
//! from its id so that every node computes the same ring from the same
//! membership without exchanging tokens. A key's replicas in a datacenter
//! are found by hashing the key ([`key_hash`](crate::model::key_hash)) and
//! walking clockwise from that point, taking distinct nodes, and nodes on
//! racks not yet used first (as Cassandra's NetworkTopologyStrategy does),
//! so that losing a rack loses at most one replica while racks outnumber
//! the replication factor.
//!
//! This module is pure logic: it knows nothing of liveness (the coordinator
//! skips down nodes) or of the network.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{DcName, Replication};

/// A node's stable identity, as configured (`node_id`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a node sits: datacenter and rack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node's datacenter.
    pub dc: DcName,
    /// The node's rack within it.
    pub rack: String,
}

/// The token positions a node takes on its datacenter's ring.
///
/// Tokens are `xxh3(node_id, i)` for `i in 0..vnodes`: deterministic, so
/// every member derives the same ring, and spread uniformly, so with 64 or
/// more vnodes each node owns close to `1/n` of the ring.
pub fn tokens_for(node: &NodeId, vnodes: u32) -> Vec<u64> {
    isthmus_client::placement::tokens_for(&node.0, vnodes)
}

/// The ring of one datacenter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DcRing {
    /// (token, node index into `nodes`), sorted by token.
    tokens: Vec<(u64, usize)>,
    nodes: Vec<(NodeId, String)>,
    /// Distinct racks among `nodes`.
    racks: usize,
}

/// Rings for every datacenter, built from a membership snapshot.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// Shared, so that a ring built equal to another can take the
    /// other's copy ([`Ring::share_equal`]) and compare by pointer.
    dcs: BTreeMap<DcName, Arc<DcRing>>,
}

impl Ring {
    /// Build the rings from `(node, placement, vnodes)` for every member
    /// that owns ranges (joining and leaving nodes are the caller's call).
    pub fn build<'a>(members: impl IntoIterator<Item = (&'a NodeId, &'a Placement, u32)>) -> Ring {
        let mut dcs: BTreeMap<DcName, DcRing> = BTreeMap::new();
        for (node, placement, vnodes) in members {
            let ring = dcs.entry(placement.dc.clone()).or_default();
            let index = ring.nodes.len();
            ring.nodes.push((node.clone(), placement.rack.clone()));
            ring.tokens
                .extend(tokens_for(node, vnodes).into_iter().map(|t| (t, index)));
        }
        for ring in dcs.values_mut() {
            // Ties between nodes' tokens (astronomically rare) break by node
            // id so every member still orders them alike.
            let nodes = ring.nodes.clone();
            ring.tokens
                .sort_by(|a, b| a.0.cmp(&b.0).then_with(|| nodes[a.1].0.cmp(&nodes[b.1].0)));
            ring.racks =
                isthmus_client::placement::rack_count(nodes.iter().map(|(_, rack)| rack.as_str()));
        }
        Ring {
            dcs: dcs.into_iter().map(|(dc, r)| (dc, Arc::new(r))).collect(),
        }
    }

    /// Take `other`'s copy of every datacenter ring equal to this one's,
    /// so that [`Ring::same_in_dc`] answers by pointer.
    pub fn share_equal(&mut self, other: &Ring) {
        for (dc, ring) in &mut self.dcs {
            if let Some(theirs) = other.dcs.get(dc)
                && theirs == ring
            {
                *ring = theirs.clone();
            }
        }
    }

    /// Datacenters that have at least one node.
    pub fn dcs(&self) -> impl Iterator<Item = &DcName> {
        self.dcs.keys()
    }

    /// The distinct tokens of a datacenter's ring, ascending. Each ends the
    /// range of hashes placed like it: `(previous token, token]`, the
    /// first one wrapping around from the last.
    pub fn tokens(&self, dc: &DcName) -> Vec<u64> {
        let mut tokens: Vec<u64> = self
            .dcs
            .get(dc)
            .map_or_else(Vec::new, |r| r.tokens.iter().map(|&(t, _)| t).collect());
        tokens.dedup();
        tokens
    }

    /// The nodes on a datacenter's ring.
    pub fn nodes_in(&self, dc: &DcName) -> impl Iterator<Item = &NodeId> {
        self.dcs
            .get(dc)
            .into_iter()
            .flat_map(|r| r.nodes.iter().map(|(n, _)| n))
    }

    /// Number of nodes on a datacenter's ring.
    pub fn node_count(&self, dc: &DcName) -> usize {
        self.dcs.get(dc).map_or(0, |r| r.nodes.len())
    }

    /// The first `rf` replicas of the position `hash` in datacenter `dc`:
    /// distinct nodes, unused racks first, in walk order. Fewer when the
    /// datacenter has fewer nodes.
    pub fn replicas_in_dc(&self, dc: &DcName, hash: u64, rf: usize) -> Vec<NodeId> {
        self.walk(dc, hash, rf).cloned().collect()
    }

    /// The first `rf` nodes of `hash`'s walk in `dc`. The walk is the
    /// client's, so clients list replicas in this order.
    fn walk<'s>(
        &'s self,
        dc: &DcName,
        hash: u64,
        rf: usize,
    ) -> impl Iterator<Item = &'s NodeId> + use<'s> {
        let ring = self
            .dcs
            .get(dc)
            .filter(|ring| !ring.tokens.is_empty() && rf > 0);
        let chosen = ring.map_or_else(Vec::new, |ring| {
            isthmus_client::placement::replica_walk(
                &ring.tokens,
                ring.nodes.len(),
                ring.racks,
                |i| ring.nodes[i].1.as_str(),
                hash,
                rf,
            )
        });
        chosen
            .into_iter()
            .filter_map(move |i| ring.map(|ring| &ring.nodes[i].0))
    }

    /// Whether `other` places keys in datacenter `dc` exactly as this
    /// ring does (same nodes, racks and tokens): then its replicas of
    /// every key there are this ring's.
    pub fn same_in_dc(&self, other: &Ring, dc: &DcName) -> bool {
        match (self.dcs.get(dc), other.dcs.get(dc)) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (a, b) => a.is_none() && b.is_none(),
        }
    }

    /// [`Ring::replicas`] as one list, each replica with its datacenter,
    /// appended to `out`.
    pub fn replicas_flat(
        &self,
        replication: &Replication,
        hash: u64,
        out: &mut Vec<(NodeId, DcName)>,
    ) {
        for (dc, &rf) in replication {
            out.extend(
                self.walk(dc, hash, rf as usize)
                    .map(|node| (node.clone(), dc.clone())),
            );
        }
    }

    /// Replicas of `hash` in every datacenter named by `replication`.
    pub fn replicas(&self, replication: &Replication, hash: u64) -> Vec<(DcName, Vec<NodeId>)> {
        replication
            .iter()
            .map(|(dc, &rf)| (dc.clone(), self.replicas_in_dc(dc, hash, rf as usize)))
            .collect()
    }

    /// The fraction of the ring (0..=1) for which each node of `dc` is a
    /// replica at replication factor `rf` ("effective ownership").
    pub fn ownership(&self, dc: &DcName, rf: usize) -> BTreeMap<NodeId, f64> {
        let mut owned: BTreeMap<NodeId, f64> = BTreeMap::new();
        let Some(ring) = self.dcs.get(dc) else {
            return owned;
        };
        let n = ring.tokens.len();
        for i in 0..n {
            // The range (tokens[i-1], tokens[i]] is placed like tokens[i].
            let end = ring.tokens[i].0;
            let prev = ring.tokens[(i + n - 1) % n].0;
            let width = if n == 1 {
                u64::MAX
            } else {
                end.wrapping_sub(prev)
            };
            let share = width as f64 / u64::MAX as f64;
            for node in self.replicas_in_dc(dc, end, rf) {
                *owned.entry(node).or_insert(0.0) += share;
            }
        }
        owned
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn member(id: &str, dc: &str, rack: &str) -> (NodeId, Placement) {
        (
            NodeId(id.into()),
            Placement {
                dc: dc.into(),
                rack: rack.into(),
            },
        )
    }

    fn ring(members: &[(NodeId, Placement)], vnodes: u32) -> Ring {
        Ring::build(members.iter().map(|(n, p)| (n, p, vnodes)))
    }

    #[test]
    fn replicas_are_distinct_and_cover_racks_first() {
        let members = vec![
            member("a1", "dc1", "r1"),
            member("a2", "dc1", "r1"),
            member("a3", "dc1", "r1"),
            member("b1", "dc1", "r2"),
            member("c1", "dc1", "r3"),
        ];
        let rack_of = |n: &NodeId| members.iter().find(|(m, _)| m == n).unwrap().1.rack.clone();
        let r = ring(&members, 16);
        for h in (0..1000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            let reps = r.replicas_in_dc(&"dc1".into(), h, 3);
            assert_eq!(reps.len(), 3);
            let distinct: BTreeSet<_> = reps.iter().collect();
            assert_eq!(distinct.len(), 3);
            let racks: BTreeSet<_> = reps.iter().map(rack_of).collect();
            assert_eq!(
                racks.len(),
                3,
                "three racks must hold the three replicas: {reps:?}"
            );
            // More replicas than racks: all five nodes, still distinct.
            let five = r.replicas_in_dc(&"dc1".into(), h, 5);
            assert_eq!(five.iter().collect::<BTreeSet<_>>().len(), 5);
            assert_eq!(five[..3], reps[..]);
        }
    }

    #[test]
    fn placement_is_deterministic_and_per_dc() {
        let members = vec![
            member("n1", "dc1", "r1"),
            member("n2", "dc1", "r2"),
            member("n3", "dc2", "r1"),
            member("n4", "dc2", "r2"),
        ];
        let mut shuffled = members.clone();
        shuffled.reverse();
        let (r1, r2) = (ring(&members, 32), ring(&shuffled, 32));
        let replication = Replication::from([("dc1".into(), 2), ("dc2".into(), 1)]);
        for h in [0u64, 1, u64::MAX, 1 << 63, 12345] {
            assert_eq!(r1.replicas(&replication, h), r2.replicas(&replication, h));
            let by_dc = r1.replicas(&replication, h);
            assert_eq!(by_dc[0].1.len(), 2);
            assert_eq!(by_dc[1].1.len(), 1);
            assert!(by_dc[1].1[0].0 == "n3" || by_dc[1].1[0].0 == "n4");
        }
    }

    #[test]
    fn ownership_is_balanced_and_sums_to_rf() {
        // Two nodes per rack: rack-awareness gives each rack one replica,
        // so each node should own about half the ring at RF 3.
        let members: Vec<_> = (0..6)
            .map(|i| member(&format!("n{i}"), "dc1", &format!("r{}", i % 3)))
            .collect();
        let r = ring(&members, 128);
        let own = r.ownership(&"dc1".into(), 3);
        let total: f64 = own.values().sum();
        assert!((total - 3.0).abs() < 1e-6, "total ownership {total}");
        for (node, share) in &own {
            assert!((0.4..0.6).contains(share), "{node} owns {share}");
        }
    }

    #[test]
    fn adding_a_node_moves_only_ranges_it_takes() {
        let mut members: Vec<_> = (0..4)
            .map(|i| member(&format!("n{i}"), "dc1", "r1"))
            .collect();
        let before = ring(&members, 64);
        members.push(member("n4", "dc1", "r1"));
        let after = ring(&members, 64);
        let mut moved = 0;
        for h in (0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            let (b, a) = (
                before.replicas_in_dc(&"dc1".into(), h, 1),
                after.replicas_in_dc(&"dc1".into(), h, 1),
            );
            if a != b {
                assert_eq!(a[0].0, "n4", "a key moved between old nodes");
                moved += 1;
            }
        }
        assert!((200..700).contains(&moved), "moved {moved} of 2000");
    }
}
