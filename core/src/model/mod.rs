//! The data model: keys, values, causal clocks, versions and version sets.
//!
//! - [`Clock`]: causal history with dominance and concurrency tests.
//! - [`Version`]: value or tombstone + clock + timestamp + origin DC.
//! - [`expiry`]: when a written version expires (pure, time as an argument).
//! - [`VersionSet`]: the live siblings of a key; absorbing a version is a
//!   semilattice join (commutative, associative, idempotent).
//!
//! Not here: where keys live (ring), how versions are stored (engine), or
//! how siblings are merged by user code (resolvers).

mod clock;
pub mod expiry;
mod keyspace;
mod set;
mod version;

pub use clock::{Actor, Causality, Clock, Dot};
pub use expiry::Expiry;
pub use keyspace::{Consistency, KeyspaceConfig, KeyspaceMap, Replication, keyspace_map};
pub use set::{Absorbed, VersionSet};
pub use version::{ContentHash, DcName, Payload, Version};

/// A key's 64-bit hash: the ring position and the order of hash-range
/// scans (defined in the client crate, which routes by it too).
pub use isthmus_client::placement::key_hash;
