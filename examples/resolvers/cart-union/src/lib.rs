//! # cart-union: an example Isthmus resolver for shopping carts
//!
//! A cart maps item ids to quantities. The merge keeps **every item any
//! sibling holds, with the greatest quantity any sibling gives it** (a
//! pointwise max, which is a join: commutative, associative, idempotent).
//! Tombstones are the empty cart: they lose to any live cart, and a set of
//! tombstones merges into a delete.
//!
//! **Removals.** Under a pointwise max a removal cannot win against a
//! concurrent write: writing `apple` with quantity 0 (or dropping `apple`)
//! while another replica concurrently adds apples keeps the apples. A
//! removal wins only *through causality*: a client that read the cart and
//! writes it back without the item supersedes the versions it read, and the
//! store drops those without asking the resolver. That is the usual "add
//! wins" cart; an observed-remove set would let concurrent removals win
//! too, at the cost of tags per item.
//!
//! ## Bytes: the cart format
//!
//! A cart is a compact binary list of items, nothing before or after:
//!
//! ```text
//! cart = item*                                   (until the end of the value)
//! item = len:varint  name:len bytes  quantity:varint
//! ```
//!
//! where `varint` is unsigned LEB128 (7 bits per byte, least significant
//! group first, high bit set on every byte but the last; at most 10 bytes,
//! value at most `u64::MAX`). The empty value is the empty cart.
//!
//! **Canonical form**: items in strictly ascending byte order of their
//! names (so no duplicates), every varint in its shortest encoding. The
//! canonical bytes are a function of the cart's content alone, and this
//! resolver always writes them. It also *accepts* well-formed
//! non-canonical carts (items in any order, duplicates, over-long varints:
//! read as the pointwise max of their items) and canonicalises them, but
//! clients should write canonical carts ([`encode`] does), so that a merge
//! of a cart with itself returns the same bytes. Item names are opaque
//! bytes to the merge; [`parse`] into a [`Cart`] requires them to be UTF-8.
//!
//! Example: `{"apple": 2, "fig": 1}` is
//! `05 61 70 70 6c 65 02 | 03 66 69 67 01`.
//!
//! **Why not JSON**: it used to be JSON; parsing it dominated the merge
//! (about 90 µs natively for 10 KB). Canonical inputs are already sorted,
//! so the merge is a k-way merge of the siblings straight from their bytes
//! into one output buffer: no per-item allocation, no hashing, no tree.
//!
//! What it is not: a cart library; it only merges.
//!
//! ```
//! use isthmus_example_cart_union::{Cart, encode, merge, parse};
//! use isthmus_sdk_wasm::{Merged, Sibling};
//!
//! let cart = |items: &[(&str, u64)]| {
//!     encode(&items.iter().map(|&(i, q)| (i.to_string(), q)).collect::<Cart>())
//! };
//! let (a, b) = (cart(&[("apple", 2)]), cart(&[("apple", 1), ("pear", 3)]));
//! let merged = merge(b"cart:1", &[Sibling::of_value(&a, 1), Sibling::of_value(&b, 2)]).unwrap();
//! assert_eq!(merged, Merged::Value(cart(&[("apple", 2), ("pear", 3)])));
//! let Merged::Value(bytes) = merged else { unreachable!() };
//! assert_eq!(parse(&bytes).unwrap()["pear"], 3);
//! ```
#![cfg_attr(target_arch = "wasm32", no_std)]
#![warn(missing_docs)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;

use isthmus_sdk_wasm::{MergeError, Merged, Sibling, export_merge};

/// A cart: item id → quantity.
pub type Cart = BTreeMap<String, u64>;

/// Error code: a sibling is not a cart (not a well-formed item list).
pub const ERR_NOT_A_CART: u32 = 1;

fn not_a_cart() -> MergeError {
    MergeError::new(ERR_NOT_A_CART, "not a cart: malformed item list")
}

/// Read one unsigned LEB128 varint at `*pos` (at most 10 bytes, no
/// overflow past `u64::MAX`).
#[inline(always)]
fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *bytes.get(*pos)?;
    *pos += 1;
    if first < 0x80 {
        return Some(u64::from(first));
    }
    let mut value = u64::from(first & 0x7f);
    let mut shift = 7;
    loop {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// Append `value` as a shortest unsigned LEB128 varint.
#[inline(always)]
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Read the item at `*pos`: its name and quantity.
#[inline(always)]
fn read_item<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<(&'a [u8], u64)> {
    let len = usize::try_from(read_varint(bytes, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let name = bytes.get(*pos..end)?;
    *pos = end;
    let qty = read_varint(bytes, pos)?;
    Some((name, qty))
}

/// Append one item.
#[inline(always)]
fn write_item(out: &mut Vec<u8>, name: &[u8], qty: u64) {
    write_varint(out, name.len() as u64);
    out.extend_from_slice(name);
    write_varint(out, qty);
}

/// Parse a cart (any well-formed item list; duplicates keep the greatest
/// quantity). Item names must be UTF-8.
pub fn parse(bytes: &[u8]) -> Result<Cart, MergeError> {
    let mut cart = Cart::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (name, qty) = read_item(bytes, &mut pos).ok_or_else(not_a_cart)?;
        let name = core::str::from_utf8(name)
            .map_err(|_| MergeError::new(ERR_NOT_A_CART, "not a cart: item name is not UTF-8"))?;
        match cart.get_mut(name) {
            Some(q) => *q = (*q).max(qty),
            None => {
                cart.insert(name.into(), qty);
            }
        }
    }
    Ok(cart)
}

/// Encode a cart canonically (items in ascending byte order of their
/// names, which is a `BTreeMap<String, _>`'s order; shortest varints).
pub fn encode(cart: &Cart) -> Vec<u8> {
    let mut out = Vec::with_capacity(cart.keys().map(|k| k.len() + 3).sum());
    for (name, &qty) in cart {
        write_item(&mut out, name.as_bytes(), qty);
    }
    out
}

/// Bytes `at..at + 8` of `s` as a big-endian integer, zero-padded past the
/// end: comparing these compares names 8 bytes at a time (a byte-wise
/// `memcmp` loop is the hot spot in wasm otherwise).
#[inline(always)]
fn chunk(s: &[u8], at: usize) -> u64 {
    match s.get(at..at + 8) {
        Some(b) => u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => {
            let mut v = 0u64;
            let mut shift = 56;
            for &b in s.get(at..).unwrap_or_default() {
                v |= u64::from(b) << shift;
                shift -= 8;
            }
            v
        }
    }
}

/// Byte-wise order of two names whose first `at` bytes (zero-padded) are
/// equal, 8 bytes at a time. Where the padded bytes are equal up to the
/// end of the shorter name, that name is a prefix of the other: the
/// lengths decide.
#[inline(always)]
fn cmp_names_from(a: &[u8], b: &[u8], mut at: usize) -> Ordering {
    while at < a.len() && at < b.len() {
        let (x, y) = (chunk(a, at), chunk(b, at));
        if x != y {
            return x.cmp(&y);
        }
        at += 8;
    }
    a.len().cmp(&b.len())
}

/// Bytes `at..at + 8` of the name at `start..start + len` of `buf`, as a
/// big-endian integer zero-padded past the name's end. Reads 8 bytes of
/// `buf` at once and masks off what lies past the name (the next item's
/// bytes), falling back to a byte loop only at the very end of `buf`.
#[inline(always)]
fn chunk_in(buf: &[u8], start: usize, len: usize, at: usize) -> u64 {
    if at >= len {
        return 0;
    }
    let valid = len - at;
    let from = start + at;
    match buf.get(from..from + 8) {
        Some(b) => {
            let v = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            if valid >= 8 {
                v
            } else {
                v & !(u64::MAX >> (8 * valid))
            }
        }
        None => chunk(&buf[start..start + len], at),
    }
}

/// One sibling being merged: its bytes, the position after its head item,
/// and the head item (its first 16 name bytes cached in `k0`, `k1`).
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    k0: u64,
    k1: u64,
    start: usize,
    len: usize,
    qty: u64,
}

impl<'a> Cursor<'a> {
    /// The cursor on the first item of a non-empty cart.
    #[inline(always)]
    fn new(bytes: &'a [u8]) -> Result<Self, bool> {
        let mut c = Cursor {
            bytes,
            pos: 0,
            k0: 0,
            k1: 0,
            start: 0,
            len: 0,
            qty: 0,
        };
        let (start, len, qty) = c.read().ok_or(false)?;
        c.set(start, len, qty);
        Ok(c)
    }

    /// The head item's name.
    #[inline(always)]
    fn name(&self) -> &'a [u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    /// Read the item at `pos`: where its name is, and its quantity.
    #[inline(always)]
    fn read(&mut self) -> Option<(usize, usize, u64)> {
        // A local position, stored once: the cursor lives in memory, and
        // every store to it lengthens the chain of loads the next item's
        // bytes wait on.
        let mut pos = self.pos;
        let len = usize::try_from(read_varint(self.bytes, &mut pos)?).ok()?;
        let start = pos;
        let end = start.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        pos = end;
        let qty = read_varint(self.bytes, &mut pos)?;
        self.pos = pos;
        Some((start, len, qty))
    }

    #[inline(always)]
    fn set(&mut self, start: usize, len: usize, qty: u64) {
        self.k0 = chunk_in(self.bytes, start, len, 0);
        self.k1 = chunk_in(self.bytes, start, len, 8);
        self.start = start;
        self.len = len;
        self.qty = qty;
    }

    /// Append the head item with quantity `qty`. A name of up to 16 bytes
    /// is written from the keys (two 8-byte stores, then the surplus cut
    /// off): in wasm a `memory.copy` of a few bytes is a call out of the
    /// guest.
    #[inline(always)]
    fn write_head(&self, out: &mut Vec<u8>, qty: u64) {
        write_varint(out, self.len as u64);
        if self.len <= 16 {
            let end = out.len() + self.len;
            out.extend_from_slice(&self.k0.to_be_bytes());
            if self.len > 8 {
                out.extend_from_slice(&self.k1.to_be_bytes());
            }
            out.truncate(end);
        } else {
            out.extend_from_slice(self.name());
        }
        write_varint(out, qty);
    }

    /// Advance to the next item. `Ok(false)` at the end; `Err(true)` if the
    /// next item is not strictly greater (not canonical: take the slow
    /// path); `Err(false)` if malformed.
    #[inline(always)]
    fn advance(&mut self) -> Result<bool, bool> {
        if self.pos >= self.bytes.len() {
            return Ok(false);
        }
        let (start, len, qty) = self.read().ok_or(false)?;
        let (k0, k1) = (self.k0, self.k1);
        let (old_start, old_len) = (self.start, self.len);
        self.set(start, len, qty);
        let order = if self.k0 != k0 {
            self.k0.cmp(&k0)
        } else if self.k1 != k1 {
            self.k1.cmp(&k1)
        } else if len <= 16 || old_len <= 16 {
            len.cmp(&old_len)
        } else {
            cmp_names_from(
                &self.bytes[start..start + len],
                &self.bytes[old_start..old_start + old_len],
                16,
            )
        };
        if order.is_le() {
            return Err(true);
        }
        Ok(true)
    }
}

/// Heads compared per iteration of the scan of a round over more than 16
/// cursors. In wasm every loop iteration pays fuel and epoch checks, and two
/// heads per iteration made a 100-sibling merge about 15% faster; natively
/// the plain loop is faster.
const SCAN_STEP: usize = if cfg!(target_arch = "wasm32") { 2 } else { 1 };

/// The least head name of a round so far: which cursor, its keys and
/// length, and the greatest quantity among the cursors that hold it.
struct Least {
    at: usize,
    k0: u64,
    k1: u64,
    len: usize,
    qty: u64,
}

impl Least {
    /// Compare cursor `i`'s head with the least so far; `ties` lists the
    /// cursors holding the least name.
    #[inline(always)]
    fn offer(&mut self, cursors: &[Cursor<'_>], i: usize, ties: &mut impl Ties) {
        let c = &cursors[i];
        // Most heads are greater than the least so far: rule those out with
        // two integer compares (no three-way `Ordering` match, which wasm
        // compiles to an indirect jump).
        if c.k0 > self.k0 || (c.k0 == self.k0 && c.k1 > self.k1) {
            return;
        }
        let less = if c.k0 != self.k0 || c.k1 != self.k1 {
            true
        } else if c.len > 16 && self.len > 16 {
            match cmp_names_from(c.name(), cursors[self.at].name(), 16) {
                Ordering::Less => true,
                Ordering::Equal => false,
                Ordering::Greater => return,
            }
        } else if c.len < self.len {
            true
        } else if c.len == self.len {
            false
        } else {
            return;
        };
        if less {
            *self = Least {
                at: i,
                k0: c.k0,
                k1: c.k1,
                len: c.len,
                qty: c.qty,
            };
            ties.clear();
        } else {
            self.qty = self.qty.max(c.qty);
        }
        ties.push(i);
    }
}

/// Merge carts: every item, greatest quantity; all tombstones → delete.
pub fn merge(_key: &[u8], siblings: &[Sibling<'_>]) -> Result<Merged, MergeError> {
    let mut values = siblings.iter().filter_map(Sibling::value).peekable();
    if values.peek().is_none() {
        return Ok(Merged::Delete);
    }
    match merge_sorted(values.clone()) {
        Ok(out) => Ok(Merged::Value(out)),
        Err(true) => merge_any_order(values).map(Merged::Value),
        Err(false) => Err(not_a_cart()),
    }
}

/// The fast path: a k-way merge of canonical (sorted) carts from their
/// bytes. `Err(true)` if some input is not sorted, `Err(false)` if one is
/// malformed.
fn merge_sorted<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<u8>, bool> {
    let mut capacity = 0usize;
    let mut cursors: Vec<Cursor<'a>> = Vec::new();
    for bytes in values {
        capacity = capacity.max(bytes.len());
        if !bytes.is_empty() {
            cursors.push(Cursor::new(bytes)?);
        }
    }
    // `out` is allocated last and starts at the largest input's size: with
    // the guest's bump allocator it then grows in place, and a merge of
    // overlapping carts stays within the memory the module starts with
    // (growing linear memory costs the host far more than the merge).
    if cursors.len() <= 64 {
        let out = Vec::with_capacity(capacity);
        k_way(cursors, 0u64, out)
    } else {
        let ties = Vec::with_capacity(cursors.len());
        let out = Vec::with_capacity(capacity);
        k_way(cursors, ties, out)
    }
}

/// The cursors whose head holds a round's least name.
trait Ties {
    /// Forget every cursor.
    fn clear(&mut self);
    /// Add cursor `i`, greater than every cursor added since the last clear.
    fn push(&mut self, i: usize);
    /// Remove and return the greatest cursor.
    fn pop(&mut self) -> Option<usize>;
}

/// Up to 64 cursors: a bit per cursor, held in a register (a `Vec` of
/// indices costs loads and stores on every push: 10 siblings, natively 10.0
/// against 8.6 µs).
impl Ties for u64 {
    #[inline(always)]
    fn clear(&mut self) {
        *self = 0;
    }
    #[inline(always)]
    fn push(&mut self, i: usize) {
        *self |= 1 << i;
    }
    #[inline(always)]
    fn pop(&mut self) -> Option<usize> {
        if *self == 0 {
            return None;
        }
        let i = 63 - self.leading_zeros() as usize;
        *self &= !(1 << i);
        Some(i)
    }
}

/// Any number of cursors, in ascending order.
impl Ties for Vec<usize> {
    #[inline(always)]
    fn clear(&mut self) {
        Vec::clear(self);
    }
    #[inline(always)]
    fn push(&mut self, i: usize) {
        Vec::push(self, i);
    }
    #[inline(always)]
    fn pop(&mut self) -> Option<usize> {
        Vec::pop(self)
    }
}

/// The k-way merge itself. Each round: one scan finds the least head
/// name, its greatest quantity and the cursors that hold it (`ties`);
/// those are advanced, exhausted ones dropped (in descending order, so
/// that `swap_remove` only moves cursors already dealt with). Kept out of
/// line: its two copies (one per kind of `Ties`) inlined into the caller
/// made both builds slower.
#[inline(never)]
fn k_way(
    mut cursors: Vec<Cursor<'_>>,
    mut ties: impl Ties,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, bool> {
    while !cursors.is_empty() {
        ties.clear();
        ties.push(0);
        let mut least = Least {
            at: 0,
            k0: cursors[0].k0,
            k1: cursors[0].k1,
            len: cursors[0].len,
            qty: cursors[0].qty,
        };
        // Up to 16 cursors (the usual case), the scan is straight-line
        // code: no loop, so no per-iteration fuel and epoch checks in wasm
        // (10 siblings: 26 to 24.6 µs), and slightly faster natively too.
        if cursors.len() <= 16 {
            macro_rules! offer_each {
                ($($j:literal)*) => {$(
                    if $j < cursors.len() {
                        least.offer(&cursors, $j, &mut ties);
                    }
                )*};
            }
            offer_each!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        } else {
            let mut i = 1;
            while i < cursors.len() {
                least.offer(&cursors, i, &mut ties);
                if SCAN_STEP == 2 && i + 1 < cursors.len() {
                    least.offer(&cursors, i + 1, &mut ties);
                }
                i += SCAN_STEP;
            }
        }
        cursors[least.at].write_head(&mut out, least.qty);
        while let Some(i) = ties.pop() {
            if !cursors[i].advance()? {
                cursors.swap_remove(i);
            }
        }
    }
    Ok(out)
}

/// The slow path for non-canonical inputs: collect every item in a map.
fn merge_any_order<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Vec<u8>, MergeError> {
    let mut acc: BTreeMap<&'a [u8], u64> = BTreeMap::new();
    for bytes in values {
        let mut pos = 0;
        while pos < bytes.len() {
            let (name, qty) = read_item(bytes, &mut pos).ok_or_else(not_a_cart)?;
            let slot = acc.entry(name).or_insert(qty);
            *slot = (*slot).max(qty);
        }
    }
    let mut out = Vec::new();
    for (name, qty) in acc {
        write_item(&mut out, name, qty);
    }
    Ok(out)
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

    fn cart(items: &[(&str, u64)]) -> Vec<u8> {
        encode(&items.iter().map(|&(i, q)| (i.into(), q)).collect())
    }

    fn m(values: &[&[u8]]) -> Merged {
        let siblings: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Sibling::of_value(v, i as u64))
            .collect();
        merge(b"k", &siblings).unwrap()
    }

    #[test]
    fn documented_example_is_exact() {
        assert_eq!(
            cart(&[("fig", 1), ("apple", 2)]),
            [5, b'a', b'p', b'p', b'l', b'e', 2, 3, b'f', b'i', b'g', 1]
        );
    }

    #[test]
    fn union_keeps_every_item_with_max_quantity() {
        assert_eq!(
            m(&[
                &cart(&[("a", 1), ("b", 5)]),
                &cart(&[("b", 2), ("c", 1)]),
                &[]
            ]),
            Merged::Value(cart(&[("a", 1), ("b", 5), ("c", 1)]))
        );
    }

    #[test]
    fn order_does_not_matter_and_output_is_sorted() {
        let x = cart(&[("z", 1), ("a", 2), ("ab", 7)]);
        let y = cart(&[("m", 3), ("aa", 300)]);
        assert_eq!(m(&[&x, &y]), m(&[&y, &x]));
        assert_eq!(
            m(&[&x, &y]),
            Merged::Value(cart(&[
                ("a", 2),
                ("aa", 300),
                ("ab", 7),
                ("m", 3),
                ("z", 1)
            ]))
        );
    }

    #[test]
    fn tombstones_are_the_empty_cart() {
        let a = cart(&[("a", 1)]);
        let t = Sibling::of_tombstone(9);
        let v = Sibling::of_value(&a, 1);
        assert_eq!(
            merge(b"k", &[t.clone(), v]).unwrap(),
            Merged::Value(a.clone())
        );
        assert_eq!(merge(b"k", &[t.clone(), t]).unwrap(), Merged::Delete);
        assert_eq!(m(&[&[], &[]]), Merged::Value(Vec::new()));
    }

    #[test]
    fn a_non_cart_is_refused_with_a_code() {
        for bad in [
            &b"\x05ab"[..],
            b"\x01a",
            b"\x01a\x80",
            b"\x01a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",
        ] {
            let err = merge(b"k", &[Sibling::of_value(bad, 1)]).unwrap_err();
            assert_eq!(err.code, ERR_NOT_A_CART);
            assert!(parse(bad).is_err());
        }
        assert!(parse(b"\x01\xff\x01").is_err(), "names must be UTF-8");
    }

    #[test]
    fn non_canonical_carts_are_accepted_and_canonicalised() {
        // Unsorted, with a duplicate and an over-long varint.
        let messy = [1, b'z', 1, 1, b'a', 0x82, 0x00, 1, b'a', 5];
        assert_eq!(m(&[&messy]), Merged::Value(cart(&[("a", 5), ("z", 1)])));
        let other = cart(&[("b", 9)]);
        assert_eq!(m(&[&other, &messy]), m(&[&messy, &other]));
        assert_eq!(
            m(&[&other, &messy]),
            Merged::Value(cart(&[("a", 5), ("b", 9), ("z", 1)]))
        );
        assert_eq!(encode(&parse(&messy).unwrap()), cart(&[("a", 5), ("z", 1)]));
    }

    #[test]
    fn names_compare_byte_wise_across_chunk_boundaries() {
        let names: [&[u8]; 12] = [
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"abcdefg",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"abcdefghij\xff",
            b"abcdefgi",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ];
        for a in names {
            for b in names {
                let (ca, cb) = (chunk(a, 0), chunk(b, 0));
                let got = ca.cmp(&cb).then_with(|| cmp_names_from(a, b, 8));
                assert_eq!(got, a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn merging_carts_of_awkward_names_matches_the_slow_path() {
        // Names of 0 to 21 bytes ending in {0, 'a', 0xff}: zero bytes that look
        // like padding, prefixes of one another, and ends on either side of
        // the 8- and 16-byte keys, with other items' bytes right after them.
        let mut s = 7u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..300 {
            let carts: Vec<Vec<u8>> = (0..next() % 4 + 1)
                .map(|_| {
                    let mut names = BTreeMap::new();
                    for _ in 0..next() % 12 {
                        // A shared prefix ending around a key boundary,
                        // then a short random tail.
                        let mut name = vec![b'p'; [0, 7, 8, 9, 15, 16, 17][(next() % 7) as usize]];
                        for _ in 0..next() % 5 {
                            name.push([0u8, b'a', 0xff][(next() % 3) as usize]);
                        }
                        names.insert(name, next() % 300);
                    }
                    let mut out = Vec::new();
                    for (name, qty) in names {
                        write_item(&mut out, &name, qty);
                    }
                    out
                })
                .collect();
            let refs: Vec<&[u8]> = carts.iter().map(Vec::as_slice).collect();
            let fast = merge_sorted(refs.iter().copied()).unwrap();
            let slow = merge_any_order(refs.iter().copied()).unwrap();
            assert_eq!(fast, slow, "{carts:?}");
        }
    }

    #[test]
    fn big_quantities_round_trip() {
        let c = cart(&[("x", u64::MAX), ("y", 128), ("z", 0)]);
        assert_eq!(parse(&c).unwrap()["x"], u64::MAX);
        assert_eq!(m(&[&c, &c]), Merged::Value(c.clone()));
    }

    #[test]
    fn fast_path_agrees_with_slow_path() {
        for seed in 0..200u64 {
            let carts: Vec<Vec<u8>> = (0..(seed % 5 + 1)).map(|i| sample(seed * 7 + i)).collect();
            let refs: Vec<&[u8]> = carts.iter().map(Vec::as_slice).collect();
            let fast = merge_sorted(refs.iter().copied()).unwrap();
            let slow = merge_any_order(refs.iter().copied()).unwrap();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn samples_are_canonical_carts() {
        for seed in 0..100 {
            let s = sample(seed);
            assert_eq!(encode(&parse(&s).unwrap()), s);
        }
    }
}
