//! A node's operations surface: what an operator's tools read of it over
//! HTTP, on a port apart from the data port (the `[ops]` table).
//!
//! - `metrics`: the node's Prometheus registry. Request counts and
//!   latencies are counted where requests are served
//!   ([`RequestMetrics`], atomics in the handler); everything else
//!   (engine, hints, bridge, repair, gossip, connections, workers) is read
//!   at scrape time from the counters its component already keeps, through
//!   a [`Probe`], so nothing is counted twice.
//! - `http`: the axum router: `/metrics` (OpenMetrics text), `/healthz`
//!   (the process answers) and `/readyz` (the node would serve requests).
//!
//! One [`Registry`](prometheus_client::registry::Registry) per node value:
//! several nodes run in one process (tests, the demo), so there is no
//! global registry. Every metric is listed in `docs/metrics.md`; a test
//! holds that table to what is registered.
//!
//! What it is not: authenticated. It serves figures and health, never
//! data, and its address is its access control (see the README's `[ops]`).

pub mod api;
pub mod http;
pub mod metrics;

pub use metrics::{RequestMetrics, registry};

use crate::bridge::BridgeFigures;
use crate::engine::EngineStats;
use crate::merge::tally::TallyFigures;
use crate::repair::RepairStats;
use crate::worker::WorkerStatus;
use isthmus_client::wire::BridgeReport;

/// Everything `/metrics` reads at scrape time, as plain data.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// The storage engine's counters (`None`: a store without one).
    pub engine: Option<EngineStats>,
    /// Siblings created, merges and merge failures (the replica's tally).
    pub conflicts: TallyFigures,
    /// Hints.
    pub hints: HintFigures,
    /// The bridge, one report per remote DC (empty without a bridge).
    pub bridges: Vec<BridgeReport>,
    /// The bridge's histograms and counts beyond its reports.
    pub bridge: BridgeFigures,
    /// This node's id.
    pub node: String,
    /// This node's DC (the `to_dc` of lag histograms).
    pub dc: String,
    /// Every range sync since start.
    pub repair: RepairStats,
    /// Gossip's members.
    pub members: Vec<Member>,
    /// The failure detector's phi per peer.
    pub phis: Vec<(String, f64)>,
    /// Connections.
    pub server: ServerFigures,
    /// Background workers.
    pub workers: Vec<WorkerStatus>,
    /// Whether the node is ready (see [`Probe::readiness`]).
    pub ready: bool,
}

/// Hint counters.
#[derive(Clone, Debug, Default)]
pub struct HintFigures {
    /// Hints written.
    pub stored: u64,
    /// Hints delivered by replay.
    pub delivered: u64,
    /// Hints dropped past the hint window.
    pub expired: u64,
    /// Hints refused (a target's file full).
    pub refused: u64,
    /// Bytes of hints waiting, per target node.
    pub queued_bytes: Vec<(String, u64)>,
}

/// One member as gossip knows it.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its datacenter.
    pub dc: String,
    /// `joining`, `normal`, `leaving` or `left`.
    pub status: &'static str,
    /// Believed alive.
    pub up: bool,
}

/// The connection layer's counters.
#[derive(Clone, Debug, Default)]
pub struct ServerFigures {
    /// Client connections open.
    pub clients_open: usize,
    /// Peer connections open.
    pub peers_open: usize,
    /// Connections refused for want of a slot.
    pub connections_refused: u64,
    /// Requests answered TIMEOUT unstarted.
    pub requests_expired: u64,
}

/// Why a node is not ready, as `/readyz` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    /// A short reason, e.g. `"no ring yet"`.
    pub reason: String,
}

/// What the operations listener asks of its node.
pub trait Probe: Send + Sync + 'static {
    /// The node's figures now.
    fn figures(&self) -> Figures;

    /// Whether the node would serve requests: its engine open and not
    /// poisoned, joined (it heard from a peer, or is alone), a ring known,
    /// its own status `Normal` (not joining, leaving or gone), and not
    /// stopping. A node that would answer UNAVAILABLE is not ready.
    fn readiness(&self) -> Result<(), NotReady>;

    /// Every member the node knows, as `isthmus status` lists them.
    fn nodes(&self) -> Vec<isthmus_client::wire::NodeReport>;
}
