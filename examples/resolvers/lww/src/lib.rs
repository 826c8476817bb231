//! # lww: an example Isthmus resolver, last writer wins
//!
//! The merged payload is that of the sibling with the greatest
//! `timestamp_ms`; ties are broken deterministically, a value beating a
//! tombstone and greater value bytes beating smaller ones. That is the
//! maximum under a total order, hence a join; because the store gives the
//! merged version the greatest timestamp it merged, merging a merge with
//! more siblings agrees with merging everything at once. A winning
//! tombstone makes the merge a delete.
//!
//! What it is not: safe for data that must not lose concurrent writes. LWW
//! drops the losers silently by design (the store still counts the
//! conflict); use it where the latest write is really what you want.
//!
//! ```
//! use isthmus_example_lww::merge;
//! use isthmus_sdk_wasm::{Merged, Sibling};
//!
//! let old = Sibling::of_value(b"old", 10);
//! let new = Sibling::of_value(b"new", 20);
//! assert_eq!(merge(b"k", &[new, old]).unwrap(), Merged::Value(b"new".to_vec()));
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;

use isthmus_sdk_wasm::{MergeError, Merged, Sibling, export_merge};

/// Last writer wins; ties: value over tombstone, then greater bytes.
pub fn merge(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
    let winner = siblings
        .iter()
        .max_by(|a, b| (a.timestamp_ms, a.value()).cmp(&(b.timestamp_ms, b.value())));
    Ok(match winner.and_then(Sibling::value) {
        Some(v) => Merged::Value(v.to_vec()),
        None => Merged::Delete,
    })
}

/// Up to 8 arbitrary bytes derived from `seed` (LWW accepts any value).
pub fn sample(seed: u64) -> Vec<u8> {
    let bytes = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
    bytes[..(seed % 9) as usize].to_vec()
}

export_merge!(merge, sample = sample);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_timestamp_wins() {
        let s = [
            Sibling::of_value(b"a", 3),
            Sibling::of_value(b"b", 7),
            Sibling::of_value(b"c", 5),
        ];
        assert_eq!(merge(b"k", &s).unwrap(), Merged::Value(b"b".to_vec()));
    }

    #[test]
    fn ties_are_broken_by_bytes_in_any_order() {
        let x = Sibling::of_value(b"x", 5);
        let y = Sibling::of_value(b"y", 5);
        assert_eq!(
            merge(b"k", &[x.clone(), y.clone()]).unwrap(),
            Merged::Value(b"y".to_vec())
        );
        assert_eq!(merge(b"k", &[y, x]).unwrap(), Merged::Value(b"y".to_vec()));
    }

    #[test]
    fn a_later_tombstone_deletes_and_a_value_beats_a_tied_tombstone() {
        let v = Sibling::of_value(b"v", 5);
        assert_eq!(
            merge(b"k", &[v.clone(), Sibling::of_tombstone(6)]).unwrap(),
            Merged::Delete
        );
        assert_eq!(
            merge(b"k", &[Sibling::of_tombstone(5), v]).unwrap(),
            Merged::Value(b"v".to_vec())
        );
    }
}
