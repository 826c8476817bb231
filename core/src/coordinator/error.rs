//! Why a coordinated request could not be served, and its wire form.

use isthmus_client::wire::{AckCount, ErrorCode, WireError};

use crate::limit::LimitError;
use crate::ring::NodeId;
use crate::store::StoreError;

/// Why a request could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordinatorError {
    /// No keyspace of that name is configured.
    #[error("unknown keyspace {name:?}")]
    UnknownKeyspace {
        /// The name asked for.
        name: String,
    },
    /// A request that cannot be valid (for instance an undecodable context).
    #[error("bad request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
    /// A write's context that no read of the key returned (see
    /// [`ErrorCode::InvalidContext`]).
    #[error("invalid context: {reason}")]
    InvalidContext {
        /// What is wrong with it.
        reason: String,
    },
    /// A size or sibling limit refused the write.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Too few replicas are alive to try.
    #[error("{alive} live replicas cannot meet a level needing {required}")]
    Unavailable {
        /// Acknowledgements the level needs.
        required: u32,
        /// Replicas alive where the level looks.
        alive: u32,
    },
    /// The node knows no replica of the key: its ring lacks every
    /// datacenter the keyspace replicates to (it has just started and not
    /// yet heard from its peers, or it is cut off from them).
    #[error(
        "this node knows no replica of the key yet: its ring has no node in {dcs} \
         (it knows {known} node(s); it has just started, or cannot reach its peers)"
    )]
    NoReplicas {
        /// The datacenters the keyspace replicates to.
        dcs: String,
        /// Nodes in this node's ring.
        known: usize,
    },
    /// The deadline passed before the level was met.
    #[error("timed out with {acked} of {required} acknowledgements")]
    Timeout {
        /// Acknowledgements needed.
        required: u32,
        /// Acknowledgements received.
        acked: u32,
    },
    /// The request's deadline passed before the write was issued: nothing
    /// was applied (the client has given up on it and may have retried
    /// it elsewhere).
    #[error("the deadline passed before the write was issued: not applied")]
    Expired,
    /// So many replicas failed that the level cannot be met.
    #[error("only {acked} of {required} acknowledgements possible")]
    QuorumLost {
        /// Acknowledgements needed.
        required: u32,
        /// Acknowledgements received.
        acked: u32,
    },
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A conditional write's condition did not hold at the replica that
    /// checked it; `current` is the key's set there.
    #[error("the write's condition did not hold: the key holds {} live sibling(s)", current.live().count())]
    ConditionFailed {
        /// What the key holds at the checking replica.
        current: crate::model::VersionSet,
    },
    /// The replica a write was forwarded to refused it; its error is kept
    /// whole (code, message, acknowledgement counts), so the client sees
    /// the cause, not a generic failure.
    #[error("{node}: {}", error.message)]
    Peer {
        /// The node that answered.
        node: NodeId,
        /// What it answered.
        error: WireError,
    },
}

impl CoordinatorError {
    /// The error as the wire carries it.
    pub fn to_wire(&self) -> WireError {
        let (code, acks) = match self {
            CoordinatorError::UnknownKeyspace { .. } | CoordinatorError::BadRequest { .. } => {
                (ErrorCode::BadRequest, None)
            }
            CoordinatorError::InvalidContext { .. } => (ErrorCode::InvalidContext, None),
            CoordinatorError::Limit(LimitError::KeyTooLarge { .. }) => {
                (ErrorCode::KeyTooLarge, None)
            }
            CoordinatorError::Limit(LimitError::ValueTooLarge { .. }) => {
                (ErrorCode::ValueTooLarge, None)
            }
            CoordinatorError::Limit(LimitError::TooManySiblings { .. }) => {
                (ErrorCode::TooManySiblings, None)
            }
            CoordinatorError::Limit(LimitError::TimestampAhead { .. }) => {
                (ErrorCode::ClockSkew, None)
            }
            CoordinatorError::Unavailable { required, alive } => (
                ErrorCode::Unavailable,
                Some(AckCount {
                    required: *required,
                    acked: *alive,
                }),
            ),
            CoordinatorError::NoReplicas { .. } => (ErrorCode::Unavailable, None),
            CoordinatorError::Expired => (ErrorCode::Timeout, None),
            CoordinatorError::Timeout { required, acked }
            | CoordinatorError::QuorumLost { required, acked } => (
                ErrorCode::Timeout,
                Some(AckCount {
                    required: *required,
                    acked: *acked,
                }),
            ),
            CoordinatorError::Storage(StoreError::Limit(limit)) => {
                return CoordinatorError::Limit(limit.clone()).to_wire();
            }
            CoordinatorError::Storage(StoreError::Engine(e)) if e.is_disk_full() => {
                (ErrorCode::DiskFull, None)
            }
            CoordinatorError::Storage(_) => (ErrorCode::StorageFailed, None),
            CoordinatorError::ConditionFailed { .. } => (ErrorCode::ConditionFailed, None),
            CoordinatorError::Peer { error, .. } => (error.code, error.acks),
        };
        WireError {
            code,
            message: self.to_string(),
            acks,
            needs: None,
        }
    }

    /// An error `node` reported (for forwarded writes). Unavailability and
    /// timeouts keep their counts as the typed variants; everything else
    /// travels on whole as [`CoordinatorError::Peer`].
    pub fn from_peer(node: &NodeId, e: WireError) -> Self {
        match (e.code, e.acks) {
            (ErrorCode::Unavailable, Some(a)) => CoordinatorError::Unavailable {
                required: a.required,
                alive: a.acked,
            },
            (ErrorCode::Timeout, Some(a)) => CoordinatorError::Timeout {
                required: a.required,
                acked: a.acked,
            },
            _ => CoordinatorError::Peer {
                node: node.clone(),
                error: e,
            },
        }
    }
}
