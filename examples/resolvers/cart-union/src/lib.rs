//! # cart-union: an example Isthmus resolver for shopping carts
//!
//! A cart is a JSON object from item id to quantity, for instance
//! `{"apple":2,"pear":1}`. The merge keeps **every item any sibling holds,
//! with the greatest quantity any sibling gives it** (a pointwise max, which
//! is a join: commutative, associative, idempotent). Tombstones are the
//! empty cart: they lose to any live cart, and a set of tombstones merges
//! into a delete.
//!
//! **Removals.** Under a pointwise max a removal cannot win against a
//! concurrent write: writing `{"apple":0}` (or dropping `apple`) while
//! another replica concurrently adds apples keeps the apples. A removal
//! wins only *through causality*: a client that read the cart and writes
//! it back without the item supersedes the versions it read, and the store
//! drops those without asking the resolver. That is the usual "add wins"
//! cart; an observed-remove set would let concurrent removals win too, at
//! the cost of tags per item.
//!
//! **Bytes.** Output is compact JSON with keys sorted (a `BTreeMap`), so it
//! is a function of the merged content alone. Clients should write carts in
//! the same canonical form, so that a merge of a cart with itself returns
//! the same bytes.
//!
//! What it is not: a cart library; it only merges.
//!
//! ```
//! use isthmus_example_cart_union::merge;
//! use isthmus_sdk_wasm::{Merged, Sibling};
//!
//! let a = Sibling::of_value(br#"{"apple":2}"#, 1);
//! let b = Sibling::of_value(br#"{"apple":1,"pear":3}"#, 2);
//! let merged = merge(b"cart:1", &[a, b]).unwrap();
//! assert_eq!(merged, Merged::Value(br#"{"apple":2,"pear":3}"#.to_vec()));
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use isthmus_sdk_wasm::{MergeError, Merged, Sibling, export_merge};

/// A cart: item id → quantity.
pub type Cart = BTreeMap<String, u64>;

/// Error code: a sibling is not a cart (not a JSON object of quantities).
pub const ERR_NOT_A_CART: u32 = 1;

/// Parse a cart.
pub fn parse(bytes: &[u8]) -> Result<Cart, MergeError> {
    serde_json::from_slice(bytes)
        .map_err(|e| MergeError::new(ERR_NOT_A_CART, alloc::format!("not a cart: {e}")))
}

/// Encode a cart canonically (compact JSON, sorted keys).
pub fn encode(cart: &Cart) -> Vec<u8> {
    serde_json::to_vec(cart).unwrap_or_default()
}

/// Merge carts: every item, greatest quantity; all tombstones → delete.
pub fn merge(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
    let mut out: Option<Cart> = None;
    for value in siblings.iter().filter_map(Sibling::value) {
        let cart = parse(value)?;
        let acc = out.get_or_insert_with(Cart::new);
        for (item, qty) in cart {
            let slot = acc.entry(item).or_insert(0);
            *slot = (*slot).max(qty);
        }
    }
    Ok(match out {
        Some(cart) => Merged::Value(encode(&cart)),
        None => Merged::Delete,
    })
}

/// A cart derived from `seed`: a few items from a small catalogue (so that
/// generated carts overlap), quantities 0 to 4.
pub fn sample(seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    const ITEMS: [&str; 6] = ["apple", "pear", "plum", "fig", "kiwi", "lime"];
    let mut cart = Cart::new();
    for _ in 0..next() % 4 {
        let item = ITEMS[(next() % ITEMS.len() as u64) as usize];
        cart.insert(item.into(), next() % 5);
    }
    encode(&cart)
}

export_merge!(merge, sample = sample);

#[cfg(test)]
mod tests {
    use super::*;

    fn m(values: &[&[u8]]) -> Merged {
        let siblings: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Sibling::of_value(v, i as u64))
            .collect();
        merge(b"k", &siblings).unwrap()
    }

    #[test]
    fn union_keeps_every_item_with_max_quantity() {
        assert_eq!(
            m(&[br#"{"a":1,"b":5}"#, br#"{"b":2,"c":1}"#, br#"{}"#]),
            Merged::Value(br#"{"a":1,"b":5,"c":1}"#.to_vec())
        );
    }

    #[test]
    fn order_does_not_matter_and_output_is_sorted() {
        let x: &[u8] = br#"{"z":1,"a":2}"#;
        let y: &[u8] = br#"{"m":3}"#;
        assert_eq!(m(&[x, y]), m(&[y, x]));
        assert_eq!(
            m(&[x, y]),
            Merged::Value(br#"{"a":2,"m":3,"z":1}"#.to_vec())
        );
    }

    #[test]
    fn tombstones_are_the_empty_cart() {
        let t = Sibling::of_tombstone(9);
        let v = Sibling::of_value(br#"{"a":1}"#, 1);
        assert_eq!(
            merge(b"k", &[t.clone(), v]).unwrap(),
            Merged::Value(br#"{"a":1}"#.to_vec())
        );
        assert_eq!(merge(b"k", &[t.clone(), t]).unwrap(), Merged::Delete);
    }

    #[test]
    fn a_non_cart_is_refused_with_a_code() {
        let err = merge(b"k", &[Sibling::of_value(b"[1,2]", 1)]).unwrap_err();
        assert_eq!(err.code, ERR_NOT_A_CART);
    }

    #[test]
    fn samples_are_canonical_carts() {
        for seed in 0..100 {
            let s = sample(seed);
            assert_eq!(encode(&parse(&s).unwrap()), s);
        }
    }
}
