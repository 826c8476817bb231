//! The check over `Ship` batches (bytes from another datacenter), shared
//! by the cargo-fuzz target in `dc-bridge/fuzz` and its proptest twin
//! (this module's tests, in the normal test run).
//!
//! Not part of the API: hidden from the docs, and free to change.

use std::collections::BTreeMap;

use isthmus_client::wire::encode;
use isthmus_core::model::VersionSet;

use crate::batch::{BATCH_RAW_BYTES_MAX, BatchError, Item, decode_batch, encode_batch};

/// A `Ship` batch: `bytes` as the batch itself (header, lz4 block,
/// records), and as the uncompressed records behind a valid header and
/// lz4 block (which random bytes rarely form), so both the decompression
/// and the per-record decoding see arbitrary input. What decodes is
/// re-encoded and decoded again unchanged, grouped by keyspace and
/// absorbed per key as the receiver does.
pub fn ship_batch(bytes: &[u8]) {
    check(decode_batch(bytes));
    if bytes.len() <= BATCH_RAW_BYTES_MAX {
        check(decode_batch(&lz4_flex::block::compress_prepend_size(bytes)));
    }
}

fn check(decoded: Result<Vec<Item>, BatchError>) {
    let items = match decoded {
        Ok(items) => items,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let (batch, raw) = encode_batch(&items);
    assert_eq!(raw, encode(&items).len());
    let again = decode_batch(&batch).expect("a re-encoded batch decodes");
    assert_eq!(
        encode(&again),
        encode(&items),
        "a round trip changed the batch"
    );
    // The receiver delivers per keyspace; each key's versions are absorbed
    // into its set, whose encoding the storage engine must read back.
    let mut by_keyspace: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in &items {
        by_keyspace.entry(&item.keyspace).or_default().push(item);
    }
    assert_eq!(
        by_keyspace.values().map(Vec::len).sum::<usize>(),
        items.len()
    );
    for item in items {
        let set = VersionSet::from_versions(item.versions);
        let decoded = VersionSet::decode(&set.encode()).expect("an absorbed set decodes");
        assert_eq!(decoded, set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Record, coalesce};
    use isthmus_core::fuzzing::mutate;
    use isthmus_core::model::{Actor, Clock, Dot, Version};
    use proptest::prelude::*;

    fn records() -> Vec<Record> {
        (1..=6u64)
            .map(|seq| {
                let mut clock = Clock::new();
                clock.add_dot(Dot {
                    actor: Actor(seq % 3),
                    counter: seq,
                });
                Record {
                    seq,
                    enqueued_ms: 1_700_000_000_000 + seq,
                    keyspace: if seq % 2 == 0 { "carts" } else { "users" }.into(),
                    key: format!("key-{}", seq % 4).into_bytes(),
                    version: Version::value(clock, vec![b'v'; seq as usize], seq, "dc1".into()),
                    only: None,
                }
            })
            .collect()
    }

    /// A valid batch and its uncompressed records.
    fn samples() -> [Vec<u8>; 2] {
        let items = coalesce(&records());
        [encode_batch(&items).0, encode(&items)]
    }

    #[test]
    fn a_valid_batch_passes_the_check() {
        let [batch, raw] = samples();
        assert_eq!(decode_batch(&batch).unwrap(), coalesce(&records()));
        ship_batch(&batch);
        ship_batch(&raw);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x1571_00b7),
            ..ProptestConfig::default()
        })]

        /// Twin of the `batch` fuzz target over random bytes.
        #[test]
        fn arbitrary_bytes_pass_the_batch_check(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            ship_batch(&bytes);
        }

        /// Twin of the `batch` fuzz target over a valid batch (compressed
        /// or not) with a byte flipped, inserted or cut.
        #[test]
        fn mutated_batches_pass_the_batch_check(
            compressed in any::<bool>(),
            how in any::<u8>(),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let [batch, raw] = samples();
            let bytes = mutate(if compressed { batch } else { raw }, how, at, byte);
            ship_batch(&bytes);
        }
    }
}
