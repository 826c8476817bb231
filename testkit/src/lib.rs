//! # isthmus-testkit
//!
//! The harness Isthmus's tests, benches and demo share, so it is written
//! once:
//!
//! - [`cluster`]: an in-process cluster of one or more datacenters on
//!   loopback, with real data directories, nodes composed as
//!   `isthmus server` composes them (or core's node alone), joined by the
//!   cross-DC bridge over a userspace WAN with simulated latency; nodes
//!   stop and restart with their data.
//! - [`config`]: node configurations, keyspaces and gossip timing for
//!   tests, with defaults meant for loopback.
//! - [`version`]: `Version` and `Clock` builders.
//! - [`module`]: where the example resolvers' wasm32 builds are
//!   (`scripts/build-resolvers.sh`), and their bytes.
//!
//! What it is not: part of any server. It is never published and the
//! server build of the `isthmus` binary does not link it (its `demo`
//! feature does: `isthmus demo`, `bench`, `bench-bridge`). Its errors
//! are `anyhow` and its waits have fixed, generous deadlines: it is for
//! code that may panic or report on failure, not for code that must
//! recover.
//!
//! A crate that this one depends on (core, the resolvers, the bridge)
//! can use it in its integration tests and benches (`tests/`,
//! `benches/`) as a dev-dependency, but not in its unit tests: there the
//! crate under test is a second instance of itself, whose types are not
//! the testkit's.
//!
//! ```
//! use isthmus_testkit::version::covering;
//!
//! let old = covering(1, 1).value(b"old");
//! let new = covering(1, 2).at(20).dc("dc2").value(b"new");
//! assert!(old.clock.is_dominated_by(&new.clock));
//! assert_eq!(new.timestamp_ms, 20);
//! ```
#![warn(missing_docs)]

pub mod cluster;
pub mod config;
pub mod module;
pub mod operation;
pub mod version;

pub use cluster::{ClusterSpec, LocalCluster, NodeKind, Root};
pub use module::{built_module, example_module};
