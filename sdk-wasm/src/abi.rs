//! The resolver ABI types, shared by host and guest, and their encoding.
//!
//! Both directions are [postcard](https://docs.rs/postcard) encodings of the
//! types below. Postcard is a simple, non-self-describing format; the whole
//! of it that this ABI uses is:
//!
//! - **varint**: an unsigned integer (`u32`, `u64`) as unsigned LEB128: 7
//!   bits per byte, least significant group first, high bit set on every
//!   byte but the last (`0` → `00`, `127` → `7f`, `128` → `80 01`,
//!   `300` → `ac 02`). At most 5 bytes for a `u32`, 10 for a `u64`.
//! - **bytes** / **string**: varint length, then that many raw bytes
//!   (strings are UTF-8).
//! - **sequence**: varint element count, then the elements.
//! - **struct** / **tuple**: the fields in declaration order, nothing
//!   between them (no tags, no lengths).
//! - **enum**: varint variant index (0, 1, …), then the variant's fields.
//!
//! Decoding must consume the whole buffer: the host rejects an output with
//! trailing bytes.
//!
//! ## Input (host → guest): [`MergeInput`]
//!
//! ```text
//! MergeInput   = key:bytes  siblings:seq<Sibling>
//! Sibling      = payload:Payload  timestamp_ms:varint  origin_dc:string  clock:SiblingClock
//! Payload      = 0x00 value:bytes        (a value)
//!              | 0x01                    (a tombstone: the key was deleted)
//! SiblingClock = vector:seq<(actor:varint, counter:varint)>  dots:seq<(actor:varint, counter:varint)>
//! ```
//!
//! Example: key `"k"`, one sibling holding `"hi"` at timestamp 300 from
//! `"dc1"` with clock `{actor 7: 1}` and no dots encodes as
//! `01 6b | 01 | 00 02 68 69 | ac 02 | 03 64 63 31 | 01 07 01 | 00`.
//!
//! ## Output (guest → host): [`MergeOutput`]
//!
//! ```text
//! MergeOutput = 0x00 value:bytes                   (the merged value)
//!             | 0x01                               (the merge is a delete: store a tombstone)
//!             | 0x02 code:varint message:string    (the guest refuses: siblings are kept)
//! ```
//!
//! Example: the merged value `"hi"` is `00 02 68 69`; a delete is `01`.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serialize a byte string as postcard *bytes* (varint length, raw bytes)
/// in one copy. Serde's default for `[u8]` and `Vec<u8>` is a sequence of
/// `u8`, which postcard writes in the same bytes but one element at a
/// time: measurably slower in a metered guest.
fn ser_bytes<T: AsRef<[u8]>, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v.as_ref())
}

/// Deserialize a `Vec<u8>` from postcard bytes in one copy (see
/// [`ser_bytes`]).
fn de_byte_buf<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    d.deserialize_byte_buf(V)
}

/// The ABI version this crate speaks; `isthmus_abi_version` returns it.
pub const ABI_VERSION: u32 = 1;

/// Error code the SDK glue returns when the input does not decode.
pub const ERR_BAD_INPUT: u32 = 0xFFFF_0000;

/// One write event of a node actor (see the store's causal clocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The node actor that coordinated the write.
    pub actor: u64,
    /// The actor's event number, from 1.
    pub counter: u64,
}

/// A sibling's causal clock: a version vector plus detached dots. Most
/// resolvers ignore it; it is there for those that need causality (for
/// instance to tell which replica wrote a counter increment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SiblingClock {
    /// `(actor, counter)`: the actor's events 1..=counter, ascending actor.
    pub vector: Vec<(u64, u64)>,
    /// Single events beyond the vector, ascending.
    pub dots: Vec<Dot>,
}

/// What a sibling holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Payload<'a> {
    /// The value bytes.
    Value(#[serde(serialize_with = "ser_bytes")] &'a [u8]),
    /// A delete marker.
    Tombstone,
}

/// One sibling handed to a resolver (borrowed from the input buffer).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling<'a> {
    /// Value or tombstone.
    #[serde(borrow)]
    pub payload: Payload<'a>,
    /// Wall-clock milliseconds since the Unix epoch when it was written (for
    /// a sibling a resolver produced: the greatest timestamp it merged).
    pub timestamp_ms: u64,
    /// Name of the datacenter that wrote it.
    pub origin_dc: &'a str,
    /// Its causal clock.
    pub clock: SiblingClock,
}

impl<'a> Sibling<'a> {
    /// A value sibling with an empty clock and origin (handy in tests).
    pub fn of_value(value: &'a [u8], timestamp_ms: u64) -> Self {
        Sibling {
            payload: Payload::Value(value),
            timestamp_ms,
            origin_dc: "",
            clock: SiblingClock::default(),
        }
    }

    /// A tombstone sibling with an empty clock and origin (handy in tests).
    pub fn of_tombstone(timestamp_ms: u64) -> Self {
        Sibling {
            payload: Payload::Tombstone,
            timestamp_ms,
            origin_dc: "",
            clock: SiblingClock::default(),
        }
    }

    /// The same sibling from another datacenter.
    pub fn with_origin(mut self, origin_dc: &'a str) -> Self {
        self.origin_dc = origin_dc;
        self
    }

    /// The same sibling with another clock.
    pub fn with_clock(mut self, clock: SiblingClock) -> Self {
        self.clock = clock;
        self
    }

    /// The value bytes, or `None` for a tombstone.
    pub fn value(&self) -> Option<&'a [u8]> {
        match self.payload {
            Payload::Value(v) => Some(v),
            Payload::Tombstone => None,
        }
    }

    /// Is this a delete marker?
    pub fn is_tombstone(&self) -> bool {
        matches!(self.payload, Payload::Tombstone)
    }
}

/// The encoded input of one merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeInput<'a> {
    /// The key whose siblings are merged.
    #[serde(serialize_with = "ser_bytes")]
    pub key: &'a [u8],
    /// The siblings, in the store's canonical order.
    #[serde(borrow)]
    pub siblings: Vec<Sibling<'a>>,
}

/// What a resolver's merge produces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Merged {
    /// The merged value.
    Value(Vec<u8>),
    /// The merge is a delete: the key's siblings become one tombstone.
    Delete,
}

/// A resolver's refusal to merge: the host keeps the siblings as they were.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MergeError {
    /// Resolver-defined code (`0xFFFF_0000` and above are reserved).
    pub code: u32,
    /// Human-readable reason, logged by the host.
    pub message: String,
}

impl MergeError {
    /// A refusal with a code and a message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        MergeError {
            code,
            message: message.into(),
        }
    }
}

impl core::fmt::Display for MergeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "resolver error {}: {}", self.code, self.message)
    }
}

/// The encoded output of one merge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MergeOutput {
    /// Variant 0: the merged value.
    Value(#[serde(serialize_with = "ser_bytes", deserialize_with = "de_byte_buf")] Vec<u8>),
    /// Variant 1: the merge is a delete.
    Delete,
    /// Variant 2: the guest refuses to merge.
    Error {
        /// Resolver-defined code.
        code: u32,
        /// Human-readable reason.
        message: String,
    },
}

impl From<Result<Merged, MergeError>> for MergeOutput {
    fn from(r: Result<Merged, MergeError>) -> Self {
        match r {
            Ok(Merged::Value(v)) => MergeOutput::Value(v),
            Ok(Merged::Delete) => MergeOutput::Delete,
            Err(MergeError { code, message }) => MergeOutput::Error { code, message },
        }
    }
}

impl From<MergeOutput> for Result<Merged, MergeError> {
    fn from(o: MergeOutput) -> Self {
        match o {
            MergeOutput::Value(v) => Ok(Merged::Value(v)),
            MergeOutput::Delete => Ok(Merged::Delete),
            MergeOutput::Error { code, message } => Err(MergeError { code, message }),
        }
    }
}

/// A postcard output flavor that appends byte strings with one
/// `extend_from_slice` (a `memory.copy` in wasm). Postcard's own `Vec`
/// flavor (`to_extend`) appends them byte by byte, which cost a metered
/// guest about 2 µs per 4 KB of merged value.
struct VecFlavor(Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor {
    type Output = Vec<u8>;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Serialize into a new `Vec` of the given starting capacity (writing to a
/// `Vec` cannot fail; types here have no failing `Serialize`).
fn to_vec<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Vec<u8> {
    postcard::serialize_with_flavor(value, VecFlavor(Vec::with_capacity(capacity)))
        .unwrap_or_default()
}

/// A merge input borrowed from the caller's key and siblings: what
/// [`MergeInput`] decodes.
#[derive(Serialize)]
struct InputRef<'s, 'a> {
    #[serde(serialize_with = "ser_bytes")]
    key: &'s [u8],
    siblings: &'s [Sibling<'a>],
}

/// Encode a merge input (what the host writes into guest memory).
pub fn encode_input(key: &[u8], siblings: &[Sibling<'_>]) -> Vec<u8> {
    to_vec(
        &InputRef { key, siblings },
        encoded_input_len(key, siblings),
    )
}

/// The exact length of [`encode_input`]'s output, computed without
/// encoding: a host sizes the guest's buffer with it and then encodes
/// straight into guest memory with [`encode_input_into`].
pub fn encoded_input_len(key: &[u8], siblings: &[Sibling<'_>]) -> usize {
    postcard::serialize_with_flavor(
        &InputRef { key, siblings },
        postcard::ser_flavors::Size::default(),
    )
    .unwrap_or_default()
}

/// Encode a merge input into `buf`; returns the length written, or
/// `SerializeBufferFull` if `buf` is shorter than [`encoded_input_len`].
pub fn encode_input_into(
    key: &[u8],
    siblings: &[Sibling<'_>],
    buf: &mut [u8],
) -> Result<usize, postcard::Error> {
    postcard::to_slice(&InputRef { key, siblings }, buf).map(|written| written.len())
}

/// Decode a merge input; the whole buffer must be consumed.
pub fn decode_input(bytes: &[u8]) -> Result<MergeInput<'_>, postcard::Error> {
    let (input, rest) = postcard::take_from_bytes::<MergeInput<'_>>(bytes)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(input)
}

/// Encode a merge output (what the guest returns).
pub fn encode_output(output: &MergeOutput) -> Vec<u8> {
    let capacity = match output {
        MergeOutput::Value(v) => v.len() + 11,
        MergeOutput::Delete => 1,
        MergeOutput::Error { message, .. } => message.len() + 11,
    };
    to_vec(output, capacity)
}

/// Decode a merge output; the whole buffer must be consumed.
pub fn decode_output(bytes: &[u8]) -> Result<MergeOutput, postcard::Error> {
    let (output, rest) = postcard::take_from_bytes::<MergeOutput>(bytes)?;
    if !rest.is_empty() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_input_example_is_exact() {
        let s = Sibling::of_value(b"hi", 300)
            .with_origin("dc1")
            .with_clock(SiblingClock {
                vector: alloc::vec![(7, 1)],
                dots: Vec::new(),
            });
        let bytes = encode_input(b"k", core::slice::from_ref(&s));
        assert_eq!(
            bytes,
            [
                0x01, 0x6b, 0x01, 0x00, 0x02, 0x68, 0x69, 0xac, 0x02, 0x03, 0x64, 0x63, 0x31, 0x01,
                0x07, 0x01, 0x00
            ]
        );
        let back = decode_input(&bytes).unwrap();
        assert_eq!(back.key, b"k");
        assert_eq!(back.siblings, [s]);
    }

    #[test]
    fn documented_output_examples_are_exact() {
        assert_eq!(
            encode_output(&MergeOutput::Value(b"hi".to_vec())),
            [0x00, 0x02, 0x68, 0x69]
        );
        assert_eq!(encode_output(&MergeOutput::Delete), [0x01]);
        let err = MergeOutput::Error {
            code: 3,
            message: "no".into(),
        };
        assert_eq!(encode_output(&err), [0x02, 0x03, 0x02, b'n', b'o']);
        assert_eq!(decode_output(&[0x02, 0x03, 0x02, b'n', b'o']).unwrap(), err);
    }

    #[test]
    fn input_length_and_in_place_encoding_match_encode_input() {
        let value: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let siblings = [
            Sibling::of_value(&value, 1_700_000_000_000)
                .with_origin("dc1")
                .with_clock(SiblingClock {
                    vector: alloc::vec![(7, 1), (u64::MAX, 300)],
                    dots: alloc::vec![Dot {
                        actor: 9,
                        counter: 2,
                    }],
                }),
            Sibling::of_tombstone(u64::MAX),
        ];
        for n in 0..=siblings.len() {
            let expected = encode_input(b"key", &siblings[..n]);
            assert_eq!(encoded_input_len(b"key", &siblings[..n]), expected.len());
            let mut buf = alloc::vec![0xaa; expected.len()];
            assert_eq!(
                encode_input_into(b"key", &siblings[..n], &mut buf),
                Ok(expected.len())
            );
            assert_eq!(buf, expected);
            let mut short = alloc::vec![0; expected.len() - 1];
            assert_eq!(
                encode_input_into(b"key", &siblings[..n], &mut short),
                Err(postcard::Error::SerializeBufferFull)
            );
        }
    }

    #[test]
    fn a_value_output_is_what_postcard_writes() {
        // The hand-written `Value` encoding around each varint length boundary.
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let out = MergeOutput::Value((0..len).map(|i| (i * 7) as u8).collect());
            let bytes = encode_output(&out);
            assert_eq!(bytes, postcard::to_allocvec(&out).unwrap(), "length {len}");
            assert_eq!(decode_output(&bytes).unwrap(), out);
        }
    }

    #[test]
    fn bytes_encode_as_postcard_sequences_of_u8_did() {
        // The byte-string fields keep the wire format of serde's default
        // (a sequence of u8): varint length, then the raw bytes.
        let value: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let s = Sibling::of_value(&value, 1);
        // Serde's default for byte slices: a sequence of u8.
        type Legacy<'a> = (&'a [u8], [(u8, &'a [u8], u64, &'a str, u8, u8); 1]);
        let legacy: Legacy<'_> = (b"key", [(0, &value, 1, "", 0, 0)]);
        let expected = postcard::to_allocvec(&legacy).unwrap();
        // A fixed-size array has no length; the sibling list has one (1).
        assert_eq!(expected[4..7], [0, 0xac, 0x02]);
        let mut expected_seq = expected[..4].to_vec();
        expected_seq.push(1);
        expected_seq.extend(&expected[4..]);
        assert_eq!(
            encode_input(b"key", core::slice::from_ref(&s)),
            expected_seq
        );
        let out = MergeOutput::Value(value.clone());
        let mut expected = alloc::vec![0u8];
        expected.extend(postcard::to_allocvec(&value).unwrap());
        assert_eq!(encode_output(&out), expected);
        assert_eq!(decode_output(&expected).unwrap(), out);
    }

    #[test]
    fn trailing_or_truncated_bytes_are_rejected() {
        assert!(decode_output(&[0x01, 0x00]).is_err());
        assert!(decode_output(&[0x00, 0x05, 0x01]).is_err());
        assert!(decode_output(&[0x07]).is_err());
        assert!(decode_input(&[0x01]).is_err());
    }
}
