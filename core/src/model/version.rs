//! One stored version of a key: a value or a tombstone, with its causal
//! clock, wall-clock timestamp, origin datacenter and, for versions a
//! resolver produced, the content hash of that resolver.

use serde::{Deserialize, Serialize};

use super::clock::Clock;

/// Name of a datacenter, as configured (`dc = "dc1"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DcName(pub String);

impl From<&str> for DcName {
    fn from(s: &str) -> Self {
        DcName(s.to_owned())
    }
}

impl std::fmt::Display for DcName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 32-byte blake3 content hash (of a resolver module or a version).
pub type ContentHash = [u8; 32];

/// What a version holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload {
    /// Opaque user bytes.
    Value(Vec<u8>),
    /// A delete marker; kept until compaction's tombstone grace has passed
    /// so that replicas still holding older versions learn of the delete.
    Tombstone,
}

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// The causal history this version carries.
    pub clock: Clock,
    /// Value or tombstone.
    pub payload: Payload,
    /// Wall-clock milliseconds since the Unix epoch at the coordinator.
    /// Informational (LWW resolvers and tombstone grace use it); never used
    /// for causality.
    pub timestamp_ms: u64,
    /// Datacenter whose coordinator produced this version.
    pub origin_dc: DcName,
    /// Content hash of the resolver module that merged this version, if a
    /// resolver produced it.
    pub resolver: Option<ContentHash>,
    /// The client's identity for the write that created this version
    /// (reused on every retry of it), so a coordinator that finds it already
    /// stored re-sends the stored version instead of adding a sibling.
    /// `None` for merged versions.
    pub write_id: Option<[u8; 16]>,
}

impl Version {
    /// A plain value version.
    pub fn value(clock: Clock, value: Vec<u8>, timestamp_ms: u64, origin_dc: DcName) -> Self {
        Version {
            clock,
            payload: Payload::Value(value),
            timestamp_ms,
            origin_dc,
            resolver: None,
            write_id: None,
        }
    }

    /// A tombstone version.
    pub fn tombstone(clock: Clock, timestamp_ms: u64, origin_dc: DcName) -> Self {
        Version {
            clock,
            payload: Payload::Tombstone,
            timestamp_ms,
            origin_dc,
            resolver: None,
            write_id: None,
        }
    }

    /// Is this a delete marker?
    pub fn is_tombstone(&self) -> bool {
        matches!(self.payload, Payload::Tombstone)
    }

    /// The value bytes, if not a tombstone.
    pub fn value_bytes(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Value(v) => Some(v),
            Payload::Tombstone => None,
        }
    }

    /// Canonical encoding (postcard); equal versions encode identically
    /// because clocks are normalised and use ordered maps.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding a Version into a Vec cannot fail")
    }

    /// Content digest over the canonical encoding: the tie-break between
    /// versions with equal clocks and different bytes (DESIGN.md), and the
    /// second key of the canonical sibling order.
    pub fn digest(&self) -> ContentHash {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Approximate in-memory size, for memtable accounting.
    pub fn approx_bytes(&self) -> usize {
        let payload = self.value_bytes().map_or(0, <[u8]>::len);
        64 + payload + self.origin_dc.0.len() + 16 * self.clock.entry_count()
    }
}
