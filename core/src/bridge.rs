//! The outbound replication hook: how the coordinator hands writes to the
//! cross-DC bridge, and how batches from other datacenters come in.
//!
//! Core defines the traits; `isthmus-dc-bridge` implements them, so core
//! never depends on the bridge. A node without a bridge (one datacenter,
//! or tests of the single-DC machinery) sends every write to every replica
//! in every DC directly, as before; a node with one sends writes at local
//! levels to its own DC only and leaves the others to the bridge.
//!
//! ```text
//! coordinator ──enqueue──► Bridge (durable outbox) ──ship──► remote node
//!                                                              │ receive
//!                                       Deliver (LOCAL_QUORUM) ◄┘
//! ```

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use isthmus_client::wire::BridgeReport;
use isthmus_client::wire::{ErrorCode, QuarantineRequest, QuarantineResponse, WireError};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::error::CoordinatorError;
use crate::engine::FsyncPolicy;
use crate::model::{DcName, Version};
pub use crate::peer::ShipRefusal;
use crate::ring::NodeId;
use crate::store::StoreError;
use crate::transport::DynTransport;
use crate::view::ClusterView;

/// A boxed future (the hooks are called through trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Keys of one keyspace and the versions each must absorb.
pub type Entries = Vec<(Vec<u8>, Vec<Version>)>;

/// Would a delivery refused with `code` be refused again, whatever is
/// retried, until an operator changes something (a keyspace unknown in
/// the receiving datacenter or not replicated there, a key, value or
/// sibling count over its limits, a version it holds invalid)? Such a
/// record is quarantined by the sender rather than retried. Everything
/// else is transient: unavailability, overload, timeouts, a full or
/// failed disk (space returns), a clock off beyond the skew bound (clocks
/// get fixed), an authentication or protocol problem of the link, and
/// any code this build does not know.
pub fn is_permanent(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadRequest
            | ErrorCode::KeyTooLarge
            | ErrorCode::ValueTooLarge
            | ErrorCode::TooManySiblings
            | ErrorCode::InvalidContext
    )
}

/// Applies versions shipped from another DC in this one, at LOCAL_QUORUM
/// (the coordinator implements it).
pub trait Deliver: Send + Sync {
    /// The checks a delivery of `versions` to `key` would fail whatever
    /// the replicas' state, made on this node alone before any replica is
    /// asked: the keyspace is configured and replicated in this DC, the
    /// key and every value are within this node's limits, and the key
    /// carries no more versions than a set may hold. A refusal here is
    /// permanent (see [`is_permanent`]) and no hint is kept for it.
    fn admit(
        &self,
        keyspace: &str,
        key: &[u8],
        versions: &[Version],
    ) -> Result<(), CoordinatorError>;

    /// Absorb every entry on a local quorum of its key's replicas (hints
    /// for the ones that miss it); `Ok` only when every key reached it.
    fn deliver<'a>(
        &'a self,
        keyspace: &'a str,
        entries: Entries,
        deadline: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>>;
}

/// Runs Merkle full-sync of this node's ranges against another DC (the
/// bridge calls it when its outbox overflowed for that DC).
pub trait FullSync: Send + Sync {
    /// Sync every keyspace replicated to `dc`; `Ok` once all ranges were
    /// compared and the differences exchanged.
    fn full_sync<'a>(&'a self, dc: &'a DcName) -> BoxFuture<'a, Result<(), String>>;
}

/// Upper bounds, in milliseconds, of the buckets of the bridge's lag
/// histograms (`/metrics`): from a few milliseconds (a LAN) to a minute
/// (a DC catching up).
pub const LAG_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// Replication lag from one remote DC into this one (origin
/// acknowledgement to local apply), as a histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LagHistogram {
    /// The DC the writes came from.
    pub from_dc: DcName,
    /// Writes per bucket: `counts[i]` lagged at most `LAG_BUCKETS_MS[i]`
    /// and more than the bound before; the last entry, past the last
    /// bound. Not cumulative.
    pub counts: [u64; LAG_BUCKETS_MS.len() + 1],
    /// The lags' sum, in milliseconds.
    pub sum_ms: u64,
}

impl LagHistogram {
    /// Count one lag of `lag_ms`.
    pub fn record(&mut self, lag_ms: u64) {
        let bucket = LAG_BUCKETS_MS
            .iter()
            .position(|&bound| lag_ms <= bound)
            .unwrap_or(LAG_BUCKETS_MS.len());
        self.counts[bucket] += 1;
        self.sum_ms = self.sum_ms.saturating_add(lag_ms);
    }

    /// Writes counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What a bridge counts beyond its [`BridgeReport`]s.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeFigures {
    /// Lag into this DC, per origin DC.
    pub lag_in: Vec<LagHistogram>,
    /// Per remote DC: batches also sent to another of its nodes because
    /// the first did not answer in time.
    pub failovers: Vec<(DcName, u64)>,
    /// Per remote DC: full syncs run since the node started.
    pub full_syncs: Vec<(DcName, u64)>,
}

/// The bridge as the node sees it.
pub trait Bridge: Send + Sync + 'static {
    /// Durably queue `version` of the key for every other DC that
    /// replicates `keyspace`. Returns once the outbox holds it per the
    /// node's fsync policy; never waits for a remote DC. Once polled, the
    /// append goes on even if the future is then dropped (a request's
    /// deadline drops its write wherever it waits, and the version is
    /// already in the coordinator's store).
    fn enqueue<'a>(
        &'a self,
        keyspace: &'a str,
        key: &'a [u8],
        version: &'a Version,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A batch shipped by a node of `from_dc`: apply every version in it
    /// through `deliver`. `Ok` when every item reached a local quorum or
    /// was refused for good (those are listed, and the sender quarantines
    /// them before it advances its cursor); `Err` when any item failed
    /// for a transient reason (the sender ships the batch again).
    fn receive<'a>(
        &'a self,
        from_dc: &'a DcName,
        batch: &'a [u8],
        deliver: &'a dyn Deliver,
    ) -> BoxFuture<'a, Result<Vec<ShipRefusal>, WireError>>;

    /// Figures for `isthmus status`.
    fn report(&self) -> Vec<BridgeReport>;

    /// Figures for `/metrics` that `isthmus status` does not show: lag
    /// histograms, failovers, full syncs run. The default has none.
    fn figures(&self) -> BridgeFigures {
        BridgeFigures::default()
    }

    /// List or replay this node's quarantined records (the operator's
    /// `isthmus bridge quarantine`).
    fn quarantine(
        &self,
        request: QuarantineRequest,
    ) -> BoxFuture<'_, Result<QuarantineResponse, WireError>>;
}

/// What a bridge needs of its node.
pub struct BridgeParts {
    /// This node.
    pub node: NodeId,
    /// Its datacenter.
    pub dc: DcName,
    /// Where the bridge keeps its outbox and cursors.
    pub dir: PathBuf,
    /// The node's fsync policy (the outbox follows it).
    pub fsync: FsyncPolicy,
    /// Peer connections (reach nodes of other DCs).
    pub transport: Arc<dyn DynTransport>,
    /// Membership and rings, as gossip publishes them.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Keyspace configurations (which DCs replicate what).
    pub keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    /// Set to `true` when the node stops.
    pub stop: watch::Receiver<bool>,
    /// Merkle full-sync against a remote DC.
    pub full_sync: Arc<dyn FullSync>,
}

/// A started bridge and its background tasks.
pub struct StartedBridge {
    /// The bridge.
    pub bridge: Arc<dyn Bridge>,
    /// Its workers; the node awaits them at shutdown.
    pub tasks: Vec<(&'static str, JoinHandle<()>)>,
}

/// Builds a node's bridge at start.
pub trait BridgeFactory: Send + Sync {
    /// Open the outbox and start the shippers.
    fn start(&self, parts: BridgeParts) -> Result<StartedBridge, StoreError>;
}
