//! Feeds arbitrary bytes to every decoder of on-disk structures: log
//! segments, table blocks, index, bloom filter, footer and manifest. Each
//! must return `Ok` or a typed error, never panic.
//!
//! Run: `cd core/fuzz && cargo +nightly fuzz run decode`.
#![no_main]

use std::path::Path;

use isthmus_core::engine::block::Block;
use isthmus_core::engine::bloom::KeyFilter;
use isthmus_core::engine::log::decode_segment;
use isthmus_core::engine::manifest::ManifestBody;
use isthmus_core::engine::sstable::{Footer, decode_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_segment(bytes, Path::new("fuzz.log"), true, |_, _| {});
    let _ = decode_segment(bytes, Path::new("fuzz.log"), false, |_, _| {});
    if let Ok(b) = Block::decode(bytes) {
        for i in 0..b.len() {
            let _ = b.entry(i);
        }
    }
    // Past the checksum too, where random bytes would rarely get.
    let _ = Block::decode_verified(bytes);
    let _ = decode_index(bytes, bytes.len() as u64);
    if let Ok(f) = KeyFilter::decode(bytes) {
        let _ = f.may_contain(b"key");
    }
    let _ = Footer::decode(bytes, bytes.len() as u64 + 100);
    let _ = ManifestBody::decode(bytes, Path::new("MANIFEST"));
});
