//! What a node knows of the cluster at one moment: the placement rings,
//! the nodes believed alive, and the rings once the ranges in motion have
//! moved. Gossip publishes it (a `watch` channel); the coordinator, repair,
//! hints and the bridge read it. Plain data, no IO.

use std::collections::BTreeSet;

use crate::ring::{NodeId, Ring};

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
