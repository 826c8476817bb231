//! Outbox records and the batch format the bridge ships.
//!
//! A batch is the postcard encoding of a `Vec<Record>`, compressed with
//! lz4 (block format) behind its uncompressed length:
//!
//! ```text
//! [raw length: u32 LE][lz4 block of the postcard bytes]
//! ```
//!
//! The receiver checks the claimed length against [`BATCH_RAW_BYTES_MAX`]
//! before it allocates, and decodes with the wire's guarded decoder
//! (trailing bytes refused).

use isthmus_client::wire::{decode, encode};
use isthmus_core::model::Version;
use serde::{Deserialize, Serialize};

/// Largest uncompressed batch a receiver accepts (a batch is at most the
/// configured batch size, or one record when a single record is larger).
pub const BATCH_RAW_BYTES_MAX: usize = 4 << 20;

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

/// Encode and compress records; returns the batch and its uncompressed size.
pub fn encode_batch(records: &[Record]) -> (Vec<u8>, usize) {
    let raw = encode(&records);
    (lz4_flex::block::compress_prepend_size(&raw), raw.len())
}

/// Check, decompress and decode a batch.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<Record>, BatchError> {
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
        }
    }

    #[test]
    fn batches_round_trip_and_compress_repetitive_values() {
        let value = br#"{"items":[{"sku":"book-1","qty":1},{"sku":"book-2","qty":3}]}"#;
        let records: Vec<Record> = (1..=200).map(|s| record(s, value)).collect();
        let (batch, raw) = encode_batch(&records);
        assert!(batch.len() * 2 < raw, "{} of {raw}", batch.len());
        assert_eq!(decode_batch(&batch).unwrap(), records);
    }

    #[test]
    fn hostile_batches_are_typed_errors() {
        let (batch, _) = encode_batch(&[record(1, b"v")]);
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
