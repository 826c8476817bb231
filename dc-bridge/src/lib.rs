//! # isthmus-dc-bridge
//!
//! The asynchronous bridge between datacenters: writes coordinated in one
//! datacenter enter a durable outbox; shippers batch, compress and send them
//! over framed TCP to live nodes of each remote datacenter, which apply them
//! with their original versions (idempotently, since absorbing a version
//! twice changes nothing); acknowledgements advance a persisted cursor per
//! remote datacenter, and an outbox past its bound falls back to Merkle
//! full-sync.
//!
//! Nothing is implemented here yet: the bridge needs the single-datacenter
//! cluster (ring, coordinator, node server) first. What it will build on is
//! already in `isthmus-core`: versions carry their full causal clock and
//! origin datacenter, and `VersionSet::absorb` is an idempotent join, which
//! is what makes re-shipping a batch after a crash harmless.
