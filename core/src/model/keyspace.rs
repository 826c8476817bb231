//! Keyspaces (buckets) and their configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::version::DcName;

pub use isthmus_client::wire::Consistency;

/// Replicas per datacenter, e.g. `{dc1: 3, dc2: 3}`.
pub type Replication = BTreeMap<DcName, u32>;

/// Every keyspace a node serves, by name, as the node's parts share it
/// (behind a lock: replication follows the ring). Each config is behind
/// an `Arc`, so a request takes its keyspace's without copying it.
pub type KeyspaceMap = BTreeMap<String, std::sync::Arc<KeyspaceConfig>>;

/// A [`KeyspaceMap`] of `keyspaces`.
pub fn keyspace_map(keyspaces: impl IntoIterator<Item = (String, KeyspaceConfig)>) -> KeyspaceMap {
    keyspaces
        .into_iter()
        .map(|(name, ks)| (name, std::sync::Arc::new(ks)))
        .collect()
}

/// The configuration of one keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceConfig {
    /// Replication factor per datacenter.
    pub replication: Replication,
    /// Consistency used when a request names none.
    pub consistency: Consistency,
    /// Resolver bound to this keyspace: `(name, version)`; `None` keeps
    /// concurrent siblings for the client to resolve.
    pub resolver: Option<(String, u32)>,
    /// Optional time to live of written values, in seconds.
    pub ttl_s: Option<u64>,
    /// Whether the keyspace's values are counters (`isthmus_client::counter`),
    /// changed by adding to them ([`isthmus_client::wire::WriteMode::Add`]).
    pub counter: bool,
    /// Whether writes take a sloppy quorum by default: with replicas
    /// down, live nodes further along the ring take their copies as hints
    /// and count toward the level in their place.
    pub sloppy_quorum: bool,
    /// Percent of reads that ask every replica of the level's scope (and
    /// repair the stale ones); the rest ask just enough to win it.
    pub read_repair_percent: u8,
}

impl Default for KeyspaceConfig {
    fn default() -> Self {
        KeyspaceConfig {
            replication: BTreeMap::from([(DcName::from("dc1"), 3)]),
            consistency: Consistency::LocalQuorum,
            resolver: None,
            ttl_s: None,
            counter: false,
            sloppy_quorum: false,
            read_repair_percent: 100,
        }
    }
}
