//! Every size limit of a node, in one place, with units in the names, and
//! the relations between them checked at compile time.
//!
//! Limits exist so that no single client, key or file can exhaust a node;
//! each is enforced with a typed [`LimitError`] rather than a panic or a
//! silent truncation.
//!
//! # How the limits relate
//!
//! Every message travels in one frame, so the frame cap
//! ([`FRAME_BYTES_MAX_DEFAULT`], defined by the protocol in
//! `isthmus-client`, which depends on nothing of ours) must exceed the
//! largest message the other limits allow. The largest are answers that
//! carry a whole version set: a client read, a peer `Read`, and a repair
//! message (about [`REPAIR_MESSAGE_BYTES_TARGET`] plus one more key's
//! set). A set holds at most `siblings_max` versions of at most
//! `value_bytes_max` bytes each, plus each version's clock and metadata
//! ([`VERSION_OVERHEAD_BYTES`]). The assertions below hold the defaults to
//! that; [`Limits::validate`] holds an operator's own values to it at
//! start.
//!
//! The default sibling bound is 16, not 64. With 1 MiB values (DESIGN.md)
//! 64 siblings make a 66 MiB set: a frame cap that large lets every
//! connection pin 66 MiB in one read, and a merge input that large costs a
//! resolver as much again. 16 siblings keep the worst set near 17 MiB, so
//! the frame cap is 20 MiB (Cassandra's native frames default to 16 MiB).
//! Keys that really collect siblings are the ones without a resolver
//! (Riak's "too many siblings"), and binding one is the fix the error names.
//!
//! The overhead is a budget, not a proof: a merged version's clock is the
//! least upper bound of its siblings' clocks and may outgrow one client
//! context. Whatever the limits, an answer that still does not fit is
//! replaced by a typed `REPLY_TOO_LARGE` error for that one request (the
//! server's writer), and the connection goes on serving.
//!
//! # Other limits, and where they live
//!
//! - connection layer (`server::ServerConfig`, the config's `[server]`
//!   table): client, peer and handshaking connections at once, requests
//!   in flight and reply bytes queued per connection, handshake, idle,
//!   read, write and request deadlines, drain time; the handshake is read
//!   under `isthmus_client::wire::frame::HANDSHAKE_FRAME_BYTES_MAX`;
//! - hints (`hints::HintConfig`): the time window and the byte bound;
//! - repair (`repair::server`): sessions per node and their idle expiry;
//!   requests name at most `NODES_PER_REQUEST` tree nodes,
//!   `LEAVES_PER_REQUEST` leaves and `HASHES_PER_REQUEST` key hashes;
//! - the bridge (`isthmus-dc-bridge`): outbox bytes, batch bytes (at most
//!   1 MiB, config), the raw size a receiver accepts (4 MiB, asserted
//!   there against a record and the frame cap);
//! - resolvers (`isthmus-resolvers`, `ResolverLimits`): module, memory,
//!   fuel, input and output sizes.

use serde::{Deserialize, Serialize};

/// Largest frame a connection accepts or sends, by default, in bytes (the
/// protocol's, re-exported so that every size limit can be read here).
pub use isthmus_client::wire::frame::FRAME_BYTES_MAX_DEFAULT;

/// Default [`Limits::key_bytes_max`]: 64 KiB (DESIGN.md).
pub const KEY_BYTES_MAX_DEFAULT: usize = 64 * 1024;

/// Default [`Limits::value_bytes_max`]: 1 MiB (DESIGN.md).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;

/// Default [`Limits::siblings_max`]: 16 (see the module docs for why not
/// more).
pub const SIBLINGS_MAX_DEFAULT: usize = 16;

/// Most clock entries accepted in a client's context (a context is the
/// client's copy of a clock; real ones hold a few entries per actor).
pub const CONTEXT_ENTRIES_MAX: usize = 4096;

/// Default of a node's `clock_skew_max_ms`: how far in the future, by the
/// receiving node's clock, a version may be stamped. NTP keeps clocks
/// within milliseconds; a clock off by this much is broken.
pub const CLOCK_SKEW_MAX_MS_DEFAULT: u64 = 30_000;

/// Largest event counter accepted in a client's context. An actor's
/// counter for a key grows by one per write it coordinates for that key,
/// so a real history stays far below (2^53 writes of one key through one
/// node); the bound keeps a forged context from pushing any actor's next
/// counter to overflow.
pub const CONTEXT_COUNTER_MAX: u64 = 1 << 53;

/// Longest datacenter name accepted in a node's configuration, in bytes
/// (every version carries its origin datacenter's name).
pub const DC_NAME_BYTES_MAX: usize = 128;

/// Largest encoding of one clock entry, in bytes: an actor (`u64`) and a
/// counter (`u64`), each a postcard varint of at most 10 bytes.
pub const CLOCK_ENTRY_BYTES_MAX: usize = 20;

/// Bytes a version takes beyond its value, as budgeted: a clock of a full
/// context plus the write's own dot, the payload's tag and length, the
/// timestamp, the origin datacenter, the resolver hash and the write id.
pub const VERSION_OVERHEAD_BYTES: usize = 2 * 10
    + (CONTEXT_ENTRIES_MAX + 1) * CLOCK_ENTRY_BYTES_MAX
    + (1 + 10)
    + 10
    + (10 + DC_NAME_BYTES_MAX)
    + (1 + 32)
    + (1 + 16);

/// Bytes of framing around a message's variable parts, as budgeted:
/// request id, enum tags, keyspace name and length prefixes.
pub const ENVELOPE_OVERHEAD_BYTES: usize = 4 * 1024;

/// Target size of one repair answer or push, in bytes: large sets travel
/// in several messages, and one message is at most this plus one more
/// key's set.
pub const REPAIR_MESSAGE_BYTES_TARGET: usize = 1 << 20;

/// Largest encoded version set the limits allow, in bytes (saturating:
/// limits too large to add up give `usize::MAX`).
pub const fn set_bytes_max(value_bytes_max: usize, siblings_max: usize) -> usize {
    siblings_max
        .saturating_mul(value_bytes_max.saturating_add(VERSION_OVERHEAD_BYTES))
        .saturating_add(10)
}

/// Largest message the limits allow, in bytes: the greatest of a client
/// read (siblings without clocks, plus the context covering them), a peer
/// read (a whole set) and a repair message (its target plus one key and
/// its set), each with its envelope. Saturating, like [`set_bytes_max`].
pub const fn message_bytes_max(
    key_bytes_max: usize,
    value_bytes_max: usize,
    siblings_max: usize,
) -> usize {
    let set = set_bytes_max(value_bytes_max, siblings_max);
    let client_read = siblings_max
        .saturating_mul(value_bytes_max.saturating_add(10 + 10 + 10 + DC_NAME_BYTES_MAX))
        .saturating_add(10 + CONTEXT_ENTRIES_MAX * CLOCK_ENTRY_BYTES_MAX);
    let peer_read = set;
    let repair = set
        .saturating_add(key_bytes_max)
        .saturating_add(REPAIR_MESSAGE_BYTES_TARGET + 10);
    let mut largest = client_read;
    if peer_read > largest {
        largest = peer_read;
    }
    if repair > largest {
        largest = repair;
    }
    largest.saturating_add(ENVELOPE_OVERHEAD_BYTES)
}

/// The largest message the default limits allow.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = message_bytes_max(
    KEY_BYTES_MAX_DEFAULT,
    VALUE_BYTES_MAX_DEFAULT,
    SIBLINGS_MAX_DEFAULT,
);

// The default frame carries the largest message the default limits allow
// (18.3 MiB of 20 MiB).
const _: () = assert!(MESSAGE_BYTES_MAX_DEFAULT <= FRAME_BYTES_MAX_DEFAULT);
// A write (key, value, context) fits too, with room for its envelope.
const _: () = assert!(
    KEY_BYTES_MAX_DEFAULT
        + VALUE_BYTES_MAX_DEFAULT
        + CONTEXT_ENTRIES_MAX * CLOCK_ENTRY_BYTES_MAX
        + ENVELOPE_OVERHEAD_BYTES
        <= FRAME_BYTES_MAX_DEFAULT
);
// A sibling bound of 1 would make every concurrent write fail.
const _: () = assert!(SIBLINGS_MAX_DEFAULT >= 2);

/// Bytes of keys one scan page gathers before it ends (each key counted
/// with [`SCAN_KEY_OVERHEAD_BYTES`](crate::store::SCAN_KEY_OVERHEAD_BYTES)):
/// a page ends at the first hash past this, so it holds at most this plus
/// the keys of one hash (one key, but for a 64-bit hash collision).
pub const SCAN_PAGE_BYTES_MAX: usize = 4 << 20;

// A full scan page and one more key of the default limit fit a frame.
const _: () = assert!(
    SCAN_PAGE_BYTES_MAX + KEY_BYTES_MAX_DEFAULT + ENVELOPE_OVERHEAD_BYTES
        <= FRAME_BYTES_MAX_DEFAULT
);

/// Size limits enforced by the data path and the storage engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest key accepted (default [`KEY_BYTES_MAX_DEFAULT`]).
    pub key_bytes_max: usize,
    /// Longest value accepted (default [`VALUE_BYTES_MAX_DEFAULT`]).
    pub value_bytes_max: usize,
    /// Most siblings kept for one key before writes are refused: bounds
    /// Riak's "too many siblings" on keys without a resolver, and with
    /// `value_bytes_max` the largest set a frame must carry (default
    /// [`SIBLINGS_MAX_DEFAULT`]).
    pub siblings_max: usize,
    /// Memtable size that triggers a flush to an SSTable.
    pub memtable_bytes_max: usize,
    /// Immutable memtables waiting for flush before writers are stalled.
    pub immutable_memtables_max: usize,
    /// SSTable files held open at once (the rest are reopened on demand).
    pub open_files_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            siblings_max: SIBLINGS_MAX_DEFAULT,
            memtable_bytes_max: 64 * 1024 * 1024,
            immutable_memtables_max: 4,
            open_files_max: 512,
        }
    }
}

/// Limits that cannot work together (checked when a node starts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct LimitsInvalid {
    /// The setting to change, as the configuration names it.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// A request that exceeds a configured limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key is longer than `key_bytes_max`.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the offending key.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The value is longer than `value_bytes_max`.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the offending value.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The key already holds `siblings_max` siblings.
    #[error(
        "key holds {count} siblings, the limit is {max}; bind a resolver to the keyspace to merge them"
    )]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A version is stamped further in the future than the node's
    /// `clock_skew_max_ms` allows: it would win last-writer-wins against
    /// every concurrent write until the clocks caught up.
    #[error(
        "a version is stamped {ahead_ms} ms ahead of this node's clock, more than the {max_ms} ms \
         clock_skew_max_ms allows: a node's clock is off"
    )]
    TimestampAhead {
        /// How far ahead of the receiver's clock.
        ahead_ms: u64,
        /// The node's bound.
        max_ms: u64,
    },
}

impl Limits {
    /// The largest message these limits allow, in bytes (see
    /// [`message_bytes_max`]).
    pub fn message_bytes_max(&self) -> usize {
        message_bytes_max(self.key_bytes_max, self.value_bytes_max, self.siblings_max)
    }

    /// Check that the limits can work together under a frame cap of
    /// `frame_bytes_max`: none is zero, and the largest message they allow
    /// fits in one frame. The error names the field to change.
    pub fn validate(&self, frame_bytes_max: usize) -> Result<(), LimitsInvalid> {
        for (field, value) in [
            ("tuning.limits.key_bytes_max", self.key_bytes_max),
            ("tuning.limits.value_bytes_max", self.value_bytes_max),
            ("tuning.limits.siblings_max", self.siblings_max),
        ] {
            if value == 0 {
                return Err(LimitsInvalid {
                    field: field.into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        let largest = self.message_bytes_max();
        if largest > frame_bytes_max {
            return Err(LimitsInvalid {
                field: "tuning.limits.siblings_max".into(),
                reason: format!(
                    "{} siblings of up to {} bytes (each with up to {VERSION_OVERHEAD_BYTES} bytes \
                     of clock and metadata) make answers of up to {largest} bytes, over the frame \
                     cap of {frame_bytes_max} bytes; lower siblings_max or value_bytes_max",
                    self.siblings_max, self.value_bytes_max,
                ),
            });
        }
        Ok(())
    }

    /// Check a key and an optional value against the limits.
    pub fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), LimitError> {
        if key.len() > self.key_bytes_max {
            return Err(LimitError::KeyTooLarge {
                len: key.len(),
                max: self.key_bytes_max,
            });
        }
        if let Some(v) = value
            && v.len() > self.value_bytes_max
        {
            return Err(LimitError::ValueTooLarge {
                len: v.len(),
                max: self.value_bytes_max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_the_default_frame() {
        assert_eq!(Limits::default().validate(FRAME_BYTES_MAX_DEFAULT), Ok(()));
        // Three 1 MiB siblings, the process test's case, are far inside.
        assert!(set_bytes_max(VALUE_BYTES_MAX_DEFAULT, 3) < FRAME_BYTES_MAX_DEFAULT / 4);
    }

    #[test]
    fn inconsistent_limits_name_the_field() {
        let old = Limits {
            siblings_max: 64,
            ..Limits::default()
        };
        let err = old.validate(FRAME_BYTES_MAX_DEFAULT).unwrap_err();
        assert_eq!(err.field, "tuning.limits.siblings_max");
        assert!(err.reason.contains("frame cap"), "{err}");
        let huge = Limits {
            value_bytes_max: usize::MAX / 2,
            ..Limits::default()
        };
        assert_eq!(
            huge.validate(FRAME_BYTES_MAX_DEFAULT).unwrap_err().field,
            "tuning.limits.siblings_max"
        );
        let zero = Limits {
            value_bytes_max: 0,
            ..Limits::default()
        };
        assert_eq!(
            zero.validate(FRAME_BYTES_MAX_DEFAULT).unwrap_err().field,
            "tuning.limits.value_bytes_max"
        );
    }
}
