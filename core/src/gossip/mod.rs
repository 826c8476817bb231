//! Gossip: who is in the cluster, where, in what state, and who is alive.
//!
//! - [`membership`]: the replicated view (one entry per node, merged by
//!   `(generation, version)`).
//! - [`detector`]: the phi accrual failure detector each node runs locally
//!   over the heartbeats it sees.
//!
//! - [`service`]: the worker that runs rounds over the network and
//!   publishes the cluster view.
//! - [`peers`]: the peers a node remembers across restarts, contacted as
//!   extra seeds when it starts.
//!
//! `membership` and `detector` are pure logic with time passed in.

pub mod detector;
pub mod membership;
pub mod peers;
pub mod service;
