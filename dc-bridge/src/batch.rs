//! Outbox records and the batch format the bridge ships.
//!
//! A batch carries [`Item`]s: the outbox records of one key, joined (a
//! version another record of the batch dominates is not shipped: the
//! receiver would drop it anyway, since absorb is a join). It is the
//! postcard encoding of a `Vec<Item>`, compressed with lz4 (block format)
//! behind its uncompressed length:
//!
//! ```text
//! [raw length: u32 LE][lz4 block of the postcard bytes]
//! ```
//!
//! The receiver checks the claimed length against [`BATCH_RAW_BYTES_MAX`]
//! before it allocates, and decodes with the wire's guarded decoder
//! (trailing bytes refused).

use isthmus_client::wire::{decode, encode};
use isthmus_core::limit;
use isthmus_core::model::{Version, VersionSet};
use serde::{Deserialize, Serialize};

/// Largest uncompressed batch a receiver accepts (a batch is at most the
/// configured batch size, or one record when a single record is larger).
pub const BATCH_RAW_BYTES_MAX: usize = 4 << 20;

// A batch of the largest configurable size (1 MiB, `bridge.batch_bytes_max`)
// plus the one record that overflowed it stays under the receiver's bound.
const _: () = assert!(
    (1 << 20)
        + limit::KEY_BYTES_MAX_DEFAULT
        + limit::VALUE_BYTES_MAX_DEFAULT
        + limit::VERSION_OVERHEAD_BYTES
        + limit::ENVELOPE_OVERHEAD_BYTES
        <= BATCH_RAW_BYTES_MAX
);
// The largest accepted batch, after lz4's worst-case growth (n/255 + 16)
// and behind its length, fits in one frame with its envelope.
const _: () = assert!(
    BATCH_RAW_BYTES_MAX + BATCH_RAW_BYTES_MAX / 255 + 16 + 4 + limit::ENVELOPE_OVERHEAD_BYTES
        <= limit::FRAME_BYTES_MAX_DEFAULT
);

/// One write as the outbox keeps it and the bridge ships it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the sender's outbox.
    pub seq: u64,
    /// When the write was queued (the local acknowledgement), Unix ms.
    pub enqueued_ms: u64,
    /// Keyspace name.
    pub keyspace: String,
    /// The key.
    pub key: Vec<u8>,
    /// The version, with its original clock.
    pub version: Version,
    /// The one remote datacenter this record is for (a record replayed
    /// from that datacenter's quarantine); `None`: every datacenter the
    /// keyspace replicates to. Not part of the postcard encoding: the
    /// outbox keeps it behind the record (see [`crate::outbox`]).
    #[serde(skip)]
    pub only: Option<isthmus_core::model::DcName>,
}

/// The versions of one key a batch ships.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// When the oldest of its records was queued, Unix ms (lag is
    /// measured from it).
    pub enqueued_ms: u64,
    /// Keyspace name.
    pub keyspace: String,
    /// The key.
    pub key: Vec<u8>,
    /// The join of its records' versions.
    pub versions: Vec<Version>,
}

/// Join records by key, in order of each key's first record.
pub fn coalesce<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<Item> {
    let mut at: std::collections::HashMap<(&str, &[u8]), usize> = Default::default();
    let mut sets: Vec<(u64, &str, &[u8], VersionSet)> = Vec::new();
    for r in records {
        let i = *at
            .entry((r.keyspace.as_str(), r.key.as_slice()))
            .or_insert_with(|| {
                sets.push((r.enqueued_ms, &r.keyspace, &r.key, VersionSet::new()));
                sets.len() - 1
            });
        sets[i].0 = sets[i].0.min(r.enqueued_ms);
        sets[i].3.absorb(r.version.clone());
    }
    sets.into_iter()
        .map(|(enqueued_ms, keyspace, key, set)| Item {
            enqueued_ms,
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            versions: set.into_versions(),
        })
        .collect()
}

/// Why a batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Shorter than its header.
    #[error("batch of {len} bytes has no header")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Claims more uncompressed bytes than accepted.
    #[error("batch claims {claimed} uncompressed bytes; at most {BATCH_RAW_BYTES_MAX} accepted")]
    TooLarge {
        /// The claimed length.
        claimed: usize,
    },
    /// The lz4 block is corrupt or does not match its claimed length.
    #[error("batch does not decompress: {reason}")]
    Compression {
        /// What lz4 reported.
        reason: String,
    },
    /// The records do not decode.
    #[error("batch records do not decode: {reason}")]
    Records {
        /// What the decoder reported.
        reason: String,
    },
}

/// Encode and compress items; returns the batch and its uncompressed size.
pub fn encode_batch(items: &[Item]) -> (Vec<u8>, usize) {
    let raw = encode(&items);
    (lz4_flex::block::compress_prepend_size(&raw), raw.len())
}

/// Check, decompress and decode a batch.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<Item>, BatchError> {
    let header: [u8; 4] = batch
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or(BatchError::Truncated { len: batch.len() })?;
    let claimed = u32::from_le_bytes(header) as usize;
    if claimed > BATCH_RAW_BYTES_MAX {
        return Err(BatchError::TooLarge { claimed });
    }
    let raw =
        lz4_flex::block::decompress(&batch[4..], claimed).map_err(|e| BatchError::Compression {
            reason: e.to_string(),
        })?;
    if raw.len() != claimed {
        return Err(BatchError::Compression {
            reason: format!("{} bytes, header said {claimed}", raw.len()),
        });
    }
    decode(&raw).map_err(|e| BatchError::Records {
        reason: e.to_string(),
    })
}

/// Encoded size of one record (what the outbox stores and batches count).
pub fn record_bytes(record: &Record) -> usize {
    encode(record).len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_core::model::{Actor, Clock, Dot};

    fn record(seq: u64, value: &[u8]) -> Record {
        let mut clock = Clock::new();
        clock.add_dot(Dot {
            actor: Actor(7),
            counter: seq,
        });
        Record {
            seq,
            enqueued_ms: 1_700_000_000_000 + seq,
            keyspace: "carts".into(),
            key: format!("cart-{seq}").into_bytes(),
            version: Version::value(clock, value.to_vec(), 5, "dc1".into()),
            only: None,
        }
    }

    #[test]
    fn batches_round_trip_and_compress_repetitive_values() {
        let value = br#"{"items":[{"sku":"book-1","qty":1},{"sku":"book-2","qty":3}]}"#;
        let records: Vec<Record> = (1..=200).map(|s| record(s, value)).collect();
        let items = coalesce(&records);
        assert_eq!(items.len(), 200, "distinct keys stay apart");
        let (batch, raw) = encode_batch(&items);
        assert!(batch.len() * 2 < raw, "{} of {raw}", batch.len());
        assert_eq!(decode_batch(&batch).unwrap(), items);
    }

    #[test]
    fn records_of_one_key_ship_as_their_join() {
        // Three writes to one key: the second supersedes the first, the
        // third is concurrent with both.
        let mut first = record(1, b"a");
        let mut second = record(2, b"b");
        let mut third = record(3, b"c");
        for r in [&mut first, &mut second, &mut third] {
            r.key = b"cart".to_vec();
        }
        second.version.clock = {
            let mut c = first.version.clock.clone();
            c.add_dot(Dot {
                actor: Actor(8),
                counter: 1,
            });
            c
        };
        let items = coalesce(&[first.clone(), second.clone(), third.clone()]);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].enqueued_ms, first.enqueued_ms);
        let mut expected = VersionSet::new();
        for r in [first, second, third] {
            expected.absorb(r.version);
        }
        assert_eq!(items[0].versions, expected.into_versions());
        assert_eq!(items[0].versions.len(), 2);
    }

    #[test]
    fn hostile_batches_are_typed_errors() {
        let (batch, _) = encode_batch(&coalesce(&[record(1, b"v")]));
        assert!(matches!(
            decode_batch(&batch[..2]),
            Err(BatchError::Truncated { .. })
        ));
        let mut huge = batch.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_batch(&huge),
            Err(BatchError::TooLarge { .. })
        ));
        let mut lying = batch.clone();
        lying[..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(decode_batch(&lying).is_err());
        for i in 4..batch.len() {
            let mut flipped = batch.clone();
            flipped[i] ^= 0x5a;
            // Any outcome but a panic: a flip may still decode to records.
            let _ = decode_batch(&flipped);
        }
        let garbage = lz4_flex::block::compress_prepend_size(&[0xff; 64]);
        assert!(matches!(
            decode_batch(&garbage),
            Err(BatchError::Records { .. })
        ));
    }
}
