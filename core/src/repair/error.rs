//! Why a repair, or one repair request, failed; and its wire form.

use isthmus_client::wire::{ErrorCode, WireError};

use crate::ring::NodeId;
use crate::store::StoreError;

/// Why a repair (or one repair request) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RepairError {
    /// No keyspace of that name is configured.
    #[error("unknown keyspace {name:?}")]
    UnknownKeyspace {
        /// The name asked for.
        name: String,
    },
    /// No node of that datacenter is known.
    #[error("unknown datacenter {name:?}")]
    UnknownDc {
        /// The name asked for.
        name: String,
    },
    /// A request that cannot be valid.
    #[error("bad repair request: {reason}")]
    BadRequest {
        /// What is wrong.
        reason: String,
    },
    /// The session was forgotten (expired, evicted, or the node restarted).
    #[error("repair session {session:016x} is unknown")]
    UnknownSession {
        /// The session.
        /// (A [`super::exchange::SessionId`].)
        session: u64,
    },
    /// Another administrative operation (repair, full sync,
    /// decommission) is running on this node: one at a time.
    #[error("{running} is already running on this node (for {for_s} s); wait for it to end")]
    Busy {
        /// What is running.
        running: &'static str,
        /// For how long, in seconds.
        for_s: u64,
    },
    /// An operator cancelled it ([`Repairer::cancel`](super::Repairer::cancel)).
    #[error("{what} was cancelled")]
    Cancelled {
        /// What was cancelled.
        what: &'static str,
    },
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The partner could not be reached or reported an error.
    #[error("repair partner {node}: {reason}")]
    Peer {
        /// The partner.
        node: NodeId,
        /// What went wrong.
        reason: String,
    },
    /// The partner answered something the exchange did not ask for.
    #[error("repair protocol: {reason}")]
    Protocol {
        /// What arrived.
        reason: String,
    },
}

impl RepairError {
    /// The error as the wire carries it.
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            RepairError::UnknownKeyspace { .. }
            | RepairError::UnknownDc { .. }
            | RepairError::BadRequest { .. }
            | RepairError::UnknownSession { .. } => ErrorCode::BadRequest,
            RepairError::Busy { .. } => ErrorCode::Overloaded,
            RepairError::Cancelled { .. } => ErrorCode::Cancelled,
            RepairError::Storage(_) => ErrorCode::StorageFailed,
            RepairError::Peer { .. } => ErrorCode::Unavailable,
            RepairError::Protocol { .. } => ErrorCode::Internal,
        };
        WireError {
            code,
            message: self.to_string(),
            acks: None,
            needs: None,
        }
    }
}
