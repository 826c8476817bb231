//! The wire protocol: frames, handshake, requests and responses.
//!
//! Every connection carries length-prefixed frames (a 4-byte big-endian
//! length, then that many bytes; see [`frame`]). Each frame holds one
//! postcard-encoded message. The first frame each way is the handshake
//! ([`Hello`] / [`HelloAck`]) carrying [`MAGIC`] and [`PROTOCOL_VERSION`];
//! after it, the client sends [`Request`]s and the node answers with
//! [`Response`]s carrying the same `id`, in any order, so requests
//! pipeline on one connection. Request id 0 is reserved: a node uses it
//! for errors about the connection itself (a malformed or oversized frame)
//! just before closing it.
//!
//! Decoding is guarded ([`decode`]): frames are capped in size before any
//! byte is decoded; no message type is recursive, so nesting depth is fixed
//! by the types themselves; every claimed length is checked against the
//! bytes actually present before anything is allocated for it; and trailing
//! bytes after a message are an error.

mod auth;
pub mod connection;
pub mod frame;
mod message;

pub use auth::*;
pub use message::*;

use serde::{Serialize, de::DeserializeOwned};

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a valid message of the expected type.
    #[error("malformed message: {reason}")]
    Malformed {
        /// What postcard reported.
        reason: String,
    },
    /// A valid message was followed by extra bytes.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
}

/// Encode a message (infallible for the protocol's own types).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_allocvec(message).expect("protocol messages always encode")
}

/// Decode exactly one message from `bytes`, refusing trailing bytes.
///
/// Claimed lengths cannot over-allocate: postcard checks a byte string's
/// claimed length against the remaining input before copying, and sequence
/// pre-allocation is capped by serde's cautious size hint, so a frame of
/// `n` bytes never makes the decoder allocate much more than `n`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (message, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| DecodeError::Malformed {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    Ok(message)
}

#[cfg(test)]
mod tests;
