//! Gossip: who is in the cluster, where, in what state, and who is alive.
//!
//! - [`membership`]: the replicated view (one entry per node, merged by
//!   `(generation, version)`).
//! - [`detector`]: the phi accrual failure detector each node runs locally
//!   over the heartbeats it sees.
//!
//! Both are pure logic with time passed in; the gossip rounds over the
//! network come with the node server.

pub mod detector;
pub mod membership;
