//! The client's typed errors.

use std::time::Duration;

use crate::wire::{AckCount, Context, ErrorCode, Permission, Sibling, WireError};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection to the node could be made or kept.
    #[error("cannot reach {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The node refused or garbled the handshake.
    #[error("handshake failed: {reason}")]
    Handshake {
        /// What went wrong.
        reason: String,
    },
    /// The TLS handshake failed: the node's certificate is not from a
    /// trusted CA, expired, or names no node (or not the node dialled), or
    /// the node refused this side's certificate. Not retryable: the same
    /// certificates meet the same refusal.
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The connection closed while the request was in flight.
    #[error("connection closed before the answer arrived")]
    ConnectionClosed,
    /// No answer within the deadline; `acks` says how far a write got when
    /// the node reported it.
    #[error("no answer within {after:?}")]
    Timeout {
        /// The deadline that passed.
        after: Duration,
        /// Acknowledgements required and received, when known.
        acks: Option<AckCount>,
    },
    /// The node does not know who this is: no credentials where it
    /// requires them, a wrong user or password, a user since removed, or
    /// a peer handshake without a node certificate. Not retryable.
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// What the node said.
        reason: String,
    },
    /// The user lacks `permission` for this request. Not retryable.
    #[error("forbidden: needs {permission} ({reason})")]
    Forbidden {
        /// The permission the request needed.
        permission: Permission,
        /// What the node said.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{}: {}", .0.code.name(), .0.message)]
    Server(WireError),
    /// A conditional put ([`Client::put_if`](crate::Client::put_if),
    /// [`Client::put_if_absent`](crate::Client::put_if_absent)) was not
    /// applied: the key holds these live siblings now, under `context`.
    /// Decide again from them and retry over `context`. Not retryable as
    /// it was sent.
    #[error("CONDITION_FAILED: the key holds {} live sibling(s)", siblings.len())]
    ConditionFailed {
        /// The key's live siblings at the replica that checked.
        siblings: Vec<Sibling>,
        /// The context covering them (what to write over next).
        context: Context,
    },
    /// A value read as a counter is not one ([`crate::counter`]).
    #[error(transparent)]
    NotACounter(#[from] crate::counter::NotACounter),
    /// The request encodes to more than the frame cap (or does not encode),
    /// so it was not sent; the connection stays open.
    #[error("request not sent: {reason}")]
    RequestTooLarge {
        /// What the connection reported.
        reason: String,
    },
    /// A client or request option is out of range (`field` names it);
    /// nothing was sent.
    #[error("invalid option {field}: {reason}")]
    InvalidOption {
        /// The option, as its builder method is named.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The request's overall deadline
    /// ([`RequestOptions::deadline`](crate::RequestOptions::deadline))
    /// passed before any attempt succeeded; `last` is the last attempt's
    /// failure. Retryable: a write may have been applied, and sending it
    /// again with the same write id takes effect at most once.
    #[error("deadline of {after:?} passed; last attempt: {last}")]
    DeadlineExceeded {
        /// The deadline.
        after: Duration,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
    /// A typed value did not serialize, or a stored value did not
    /// deserialize as the type asked for.
    #[cfg(feature = "serde-json")]
    #[error("value does not convert: {reason}")]
    Value {
        /// What serde_json reported.
        reason: String,
    },
}

impl ClientError {
    /// May sending the same request again (with the same write id) succeed?
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionClosed
            | ClientError::Timeout { .. }
            | ClientError::DeadlineExceeded { .. } => true,
            ClientError::Handshake { .. }
            | ClientError::Tls { .. }
            | ClientError::Unauthenticated { .. }
            | ClientError::Forbidden { .. }
            | ClientError::RequestTooLarge { .. }
            | ClientError::ConditionFailed { .. }
            | ClientError::InvalidOption { .. }
            | ClientError::NotACounter(_) => false,
            #[cfg(feature = "serde-json")]
            ClientError::Value { .. } => false,
            ClientError::Server(e) => e.code.is_retryable(),
        }
    }

    /// The error a node answered with, typed: authentication and
    /// permission refusals get their own variants.
    pub fn from_wire(e: WireError) -> Self {
        match (e.code, e.needs) {
            (ErrorCode::Unauthenticated, _) => ClientError::Unauthenticated { reason: e.message },
            (ErrorCode::Forbidden, Some(permission)) => ClientError::Forbidden {
                permission,
                reason: e.message,
            },
            (code, needs) => ClientError::Server(WireError {
                code,
                message: e.message,
                acks: e.acks,
                needs,
            }),
        }
    }

    /// The node's error code, when the node answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Unauthenticated { .. } => Some(ErrorCode::Unauthenticated),
            ClientError::Forbidden { .. } => Some(ErrorCode::Forbidden),
            ClientError::ConditionFailed { .. } => Some(ErrorCode::ConditionFailed),
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}
