//! # wrong-first-wins: a deliberately WRONG resolver
//!
//! The merged payload is that of the *first* sibling handed in. That
//! depends on the order of the siblings, so it is not commutative (nor
//! associative): replicas that see the siblings in different groupings
//! diverge. It exists only to prove that `isthmus resolver check` catches
//! such a resolver and prints a counterexample. Do not use it.
//!
//! ```
//! use isthmus_example_wrong_first_wins::merge;
//! use isthmus_sdk_wasm::{Merged, Sibling};
//!
//! let (a, b) = (Sibling::of_value(b"a", 1), Sibling::of_value(b"b", 1));
//! assert_ne!(merge(b"k", &[a.clone(), b.clone()]).unwrap(), merge(b"k", &[b, a]).unwrap());
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;

use isthmus_sdk_wasm::{MergeError, Merged, Sibling, export_merge};

/// First sibling wins (wrong on purpose).
pub fn merge(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
    Ok(match siblings.first().and_then(Sibling::value) {
        Some(v) => Merged::Value(v.to_vec()),
        None => Merged::Delete,
    })
}

/// Up to 4 bytes derived from `seed`.
pub fn sample(seed: u64) -> Vec<u8> {
    seed.to_le_bytes()[..(seed % 5) as usize].to_vec()
}

export_merge!(merge, sample = sample);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_really_is_order_dependent() {
        let a = Sibling::of_value(b"a", 1);
        let b = Sibling::of_value(b"b", 2);
        assert_eq!(
            merge(b"k", &[a.clone(), b.clone()]).unwrap(),
            Merged::Value(b"a".to_vec())
        );
        assert_eq!(merge(b"k", &[b, a]).unwrap(), Merged::Value(b"b".to_vec()));
    }
}
