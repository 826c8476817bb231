//! # isthmus-core
//!
//! The heart of an Isthmus node: the data model (causal clocks, versions,
//! version sets), the limits every layer enforces, the per-node storage
//! engine, and the cluster machinery: placement rings, gossip, the
//! coordinator, hints, Merkle repair ([`repair`]) and the node server,
//! behind traits that keep this crate free of wasmtime and of the cross-DC
//! bridge.
//!
//! What it is not: a client library (that is `isthmus-client`) or a Wasm
//! host (that is `isthmus-resolvers`).
//!
//! ```
//! use isthmus_core::model::{Actor, Clock, Dot, Version, VersionSet};
//!
//! let ctx = Clock::new();
//! let mut a = ctx.clone();
//! a.add_dot(Dot { actor: Actor(1), counter: 1 });
//! let mut b = ctx.clone();
//! b.add_dot(Dot { actor: Actor(2), counter: 1 });
//! let mut set = VersionSet::new();
//! set.absorb(Version::value(a, b"x".to_vec(), 1, "dc1".into()));
//! set.absorb(Version::value(b, b"y".to_vec(), 2, "dc1".into()));
//! assert_eq!(set.len(), 2); // concurrent writes stay siblings
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod bridge;
pub mod config;
pub mod coordinator;
pub mod engine;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
pub mod gossip;
pub mod hints;
pub mod limit;
pub mod merge;
pub mod model;
pub mod node;
pub mod ops;
pub mod peer;
pub mod quorum;
pub mod redis;
pub mod repair;
pub mod replica;
pub mod ring;
pub mod server;
pub mod store;
pub mod system_keyspace;
pub mod transport;
pub mod view;
pub mod wall_clock;
pub mod worker;
