//! What `isthmus status` shows of a node: every member it knows with its
//! place, state, load, hints held for it and ownership, and the node's
//! bridge to each remote datacenter.

use std::collections::BTreeMap;

use isthmus_client::wire::{BridgeReport, NodeReport};

use crate::gossip::membership::{Endpoint, NodeStatus};
use crate::gossip::service::{GossipTransport, Gossiper};
use crate::ring::{NodeId, Ring};
use crate::system_keyspace;

/// The members `gossiper` knows, as the status report lists them.
/// `hints` is the bytes of hints held per target; ownership is the
/// largest effective share of the ring a member holds in any user
/// keyspace, on the ring of the members that are `Normal`.
pub fn nodes<T: GossipTransport>(
    gossiper: &Gossiper<T>,
    keyspaces: &crate::model::KeyspaceMap,
    hints: &BTreeMap<NodeId, u64>,
) -> Vec<NodeReport> {
    let membership = gossiper.membership();
    let alive = gossiper.alive();
    let normal: Vec<&Endpoint> = membership
        .endpoints()
        .values()
        .filter(|e| e.status == NodeStatus::Normal)
        .collect();
    let ring = Ring::build(normal.iter().map(|e| (&e.id, &e.placement, e.vnodes)));
    membership
        .endpoints()
        .values()
        .map(|e| {
            let ownership = keyspaces
                .iter()
                .filter(|(name, _)| !system_keyspace::is_system(name))
                .filter_map(|(_, ks)| ks.replication.get(e.dc()))
                .map(|rf| {
                    ring.ownership(e.dc(), *rf as usize)
                        .get(&e.id)
                        .copied()
                        .unwrap_or(0.0)
                })
                .fold(0.0, f64::max);
            NodeReport {
                node_id: e.id.0.clone(),
                addr: e.addr.clone(),
                dc: e.placement.dc.0.to_string(),
                rack: e.placement.rack.clone(),
                vnodes: e.vnodes,
                up: alive.contains(&e.id),
                status: format!("{:?}", e.status),
                load_bytes: e.load_bytes,
                hint_bytes: hints.get(&e.id).copied().unwrap_or(0),
                ownership,
            }
        })
        .collect()
}

/// The status answer: members and bridges.
pub fn report(
    nodes: Vec<NodeReport>,
    bridges: Vec<BridgeReport>,
) -> isthmus_client::wire::ResponseBody {
    isthmus_client::wire::ResponseBody::Status { nodes, bridges }
}
