//! One stored version of a key: a value or a tombstone, with its causal
//! clock, wall-clock timestamp, origin datacenter and, for versions a
//! resolver produced, the content hash of that resolver, and an optional
//! expiry.
//!
//! # Encoding
//!
//! A version is encoded with postcard (not self-describing), as the
//! fields of [`Version`] in order, except that the expiry travels inside
//! the payload's enum: `0 Value(bytes)`, `1 Tombstone`,
//! `2 ExpiringValue(bytes, expires_ms)`, `3 ExpiringTombstone(expires_ms)`.
//! Variants 0 and 1 are the whole encoding of the releases before
//! expiries existed (storage format versions log 1, table 1 and 2, hint
//! 1, wire protocol 5), so every version they wrote decodes unchanged,
//! with no expiry, and a version without an expiry still encodes (and
//! digests) exactly as it did: Merkle roots of data without expiries do
//! not move across the upgrade. Formats that may now hold variants 2 and
//! 3 carry a bumped format version, so an older release refuses them by
//! version instead of calling them corrupt.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::clock::Clock;

/// Name of a datacenter, as configured (`dc = "dc1"`). Shared, not
/// copied: every version, replica list and outbox entry names one, so a
/// clone is a count, not an allocation. Encoded as the string it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DcName(pub std::sync::Arc<str>);

impl From<&str> for DcName {
    fn from(s: &str) -> Self {
        DcName(s.into())
    }
}

impl From<String> for DcName {
    fn from(s: String) -> Self {
        DcName(s.into())
    }
}

impl DcName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
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
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A delete marker; kept until compaction's tombstone grace has passed
    /// so that replicas still holding older versions learn of the delete.
    Tombstone,
}

/// One version of a key. (Encoded as the module's top says: the expiry
/// inside the payload's variant.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// When the version expires, in wall-clock milliseconds since the
    /// Unix epoch (absolute, so every replica in every DC agrees): from
    /// then on a read treats it as a tombstone, and compaction purges it
    /// as a tombstone stamped at its expiry. `None`: never.
    pub expires_ms: Option<u64>,
}

/// The borrowed encoding of a [`Version`] (see the module's top).
#[derive(Serialize)]
#[serde(rename = "Version")]
struct VersionRef<'a> {
    clock: &'a Clock,
    payload: PayloadRef<'a>,
    timestamp_ms: u64,
    origin_dc: &'a DcName,
    resolver: &'a Option<ContentHash>,
    write_id: &'a Option<[u8; 16]>,
}

#[derive(Serialize)]
#[serde(rename = "Payload")]
enum PayloadRef<'a> {
    Value(#[serde(with = "serde_bytes")] &'a [u8]),
    Tombstone,
    ExpiringValue(#[serde(with = "serde_bytes")] &'a [u8], u64),
    ExpiringTombstone(u64),
}

/// The owned encoding of a [`Version`], for decoding.
#[derive(Deserialize)]
#[serde(rename = "Version")]
struct VersionRepr {
    clock: Clock,
    payload: PayloadRepr,
    timestamp_ms: u64,
    origin_dc: DcName,
    resolver: Option<ContentHash>,
    write_id: Option<[u8; 16]>,
}

#[derive(Deserialize)]
#[serde(rename = "Payload")]
enum PayloadRepr {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Tombstone,
    ExpiringValue(#[serde(with = "serde_bytes")] Vec<u8>, u64),
    ExpiringTombstone(u64),
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let payload = match (&self.payload, self.expires_ms) {
            (Payload::Value(v), None) => PayloadRef::Value(v),
            (Payload::Tombstone, None) => PayloadRef::Tombstone,
            (Payload::Value(v), Some(at)) => PayloadRef::ExpiringValue(v, at),
            (Payload::Tombstone, Some(at)) => PayloadRef::ExpiringTombstone(at),
        };
        VersionRef {
            clock: &self.clock,
            payload,
            timestamp_ms: self.timestamp_ms,
            origin_dc: &self.origin_dc,
            resolver: &self.resolver,
            write_id: &self.write_id,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let r = VersionRepr::deserialize(deserializer)?;
        let (payload, expires_ms) = match r.payload {
            PayloadRepr::Value(v) => (Payload::Value(v), None),
            PayloadRepr::Tombstone => (Payload::Tombstone, None),
            PayloadRepr::ExpiringValue(v, at) => (Payload::Value(v), Some(at)),
            PayloadRepr::ExpiringTombstone(at) => (Payload::Tombstone, Some(at)),
        };
        Ok(Version {
            clock: r.clock,
            payload,
            timestamp_ms: r.timestamp_ms,
            origin_dc: r.origin_dc,
            resolver: r.resolver,
            write_id: r.write_id,
            expires_ms,
        })
    }
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
            expires_ms: None,
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
            expires_ms: None,
        }
    }

    /// Is this a delete marker?
    pub fn is_tombstone(&self) -> bool {
        matches!(self.payload, Payload::Tombstone)
    }

    /// Has the version expired at `now_ms` (Unix milliseconds)? An
    /// expiry is exclusive: at `expires_ms` the version is gone.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|at| at <= now_ms)
    }

    /// Is this a value a read at `now_ms` returns: not a tombstone, not
    /// expired?
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && !self.is_expired_at(now_ms)
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
        postcard::to_extend(self, Vec::with_capacity(self.approx_bytes()))
            .expect("encoding a Version into a Vec cannot fail")
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
        72 + payload + self.origin_dc.0.len() + 16 * self.clock.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::Actor;
    use super::*;

    #[test]
    fn a_dc_name_encodes_as_the_string_it_replaced() {
        /// The definition before names were shared.
        #[derive(Serialize)]
        struct OldDcName(String);
        for name in ["", "dc1", "eu-west-ä-long-datacenter-name"] {
            let new = postcard::to_allocvec(&DcName::from(name)).unwrap();
            assert_eq!(new, postcard::to_allocvec(&OldDcName(name.into())).unwrap());
            let back: DcName = postcard::from_bytes(&new).unwrap();
            assert_eq!(back.as_str(), name);
            assert_eq!(
                serde_json::to_string(&DcName::from(name)).unwrap(),
                serde_json::to_string(&OldDcName(name.into())).unwrap()
            );
        }
    }

    /// The definition before expiries existed: its encoding is the fixture
    /// of what older releases wrote and sent.
    #[derive(Serialize)]
    struct LegacyVersion {
        clock: Clock,
        payload: Payload,
        timestamp_ms: u64,
        origin_dc: DcName,
        resolver: Option<ContentHash>,
        write_id: Option<[u8; 16]>,
    }

    #[test]
    fn old_encodings_decode_and_versions_without_expiry_encode_as_before() {
        for payload in [Payload::Value(b"x".to_vec()), Payload::Tombstone] {
            let legacy = LegacyVersion {
                clock: Clock::from_parts([(Actor(4), 2)], []),
                payload: payload.clone(),
                timestamp_ms: 99,
                origin_dc: "dc2".into(),
                resolver: Some([1; 32]),
                write_id: Some([2; 16]),
            };
            let old = postcard::to_allocvec(&legacy).unwrap();
            let v: Version = postcard::from_bytes(&old).expect("an old version decodes");
            assert_eq!(v.payload, payload);
            assert_eq!(v.expires_ms, None);
            assert_eq!(v.encode(), old, "no expiry: the old bytes, the old digest");
            // With an expiry: a round trip, and bytes an old decoder
            // would not take for a version without one.
            let expiring = Version {
                expires_ms: Some(1_234),
                ..v.clone()
            };
            let bytes = expiring.encode();
            assert_ne!(bytes, old);
            assert_eq!(postcard::from_bytes::<Version>(&bytes).unwrap(), expiring);
            assert_ne!(expiring.digest(), v.digest());
        }
    }

    /// Values are written as byte strings (`serde_bytes`): postcard gives
    /// them exactly the bytes it gave a sequence of `u8`, so what is on
    /// disk and on the wire reads as before, and digests are unchanged.
    #[test]
    fn values_encode_as_the_sequence_of_bytes_they_were() {
        #[derive(Serialize)]
        #[serde(rename = "Payload")]
        enum SeqPayload {
            Value(Vec<u8>),
            #[allow(dead_code)]
            Tombstone,
            ExpiringValue(Vec<u8>, u64),
        }
        #[derive(Serialize)]
        struct SeqVersion {
            clock: Clock,
            payload: SeqPayload,
            timestamp_ms: u64,
            origin_dc: DcName,
            resolver: Option<ContentHash>,
            write_id: Option<[u8; 16]>,
        }
        let long: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for (value, expires_ms) in [(Vec::new(), None), (long.clone(), None), (long, Some(5))] {
            let v = Version {
                clock: Clock::from_parts([(Actor(3), 9)], []),
                payload: Payload::Value(value.clone()),
                timestamp_ms: 42,
                origin_dc: "dc1".into(),
                resolver: None,
                write_id: Some([7; 16]),
                expires_ms,
            };
            let seq = SeqVersion {
                clock: v.clock.clone(),
                payload: match expires_ms {
                    None => SeqPayload::Value(value),
                    Some(at) => SeqPayload::ExpiringValue(value, at),
                },
                timestamp_ms: 42,
                origin_dc: "dc1".into(),
                resolver: None,
                write_id: Some([7; 16]),
            };
            let bytes = postcard::to_allocvec(&seq).unwrap();
            assert_eq!(v.encode(), bytes);
            assert_eq!(postcard::from_bytes::<Version>(&bytes).unwrap(), v);
        }
    }

    #[test]
    fn expiry_is_exclusive_and_tombstones_are_never_live() {
        let v = Version {
            expires_ms: Some(10),
            ..Version::value(Clock::new(), b"x".to_vec(), 1, "dc1".into())
        };
        assert!(v.is_live_at(9));
        assert!(!v.is_live_at(10));
        assert!(v.is_expired_at(10));
        let t = Version::tombstone(Clock::new(), 1, "dc1".into());
        assert!(!t.is_live_at(0));
        assert!(!t.is_expired_at(u64::MAX));
    }
}
