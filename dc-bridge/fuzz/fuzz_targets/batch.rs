//! Feeds arbitrary bytes to the decoder of `Ship` batches (header, lz4
//! block, records), and, behind a valid header and lz4 block, to the
//! per-record decoder; what decodes is re-encoded and absorbed per key.
//! Decoding may fail (a typed error); nothing may panic.
//!
//! Run: `cd dc-bridge/fuzz && cargo +nightly fuzz run batch`. Its proptest
//! twin (`fuzzing::tests` in isthmus-dc-bridge) runs in the normal test
//! suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| isthmus_dc_bridge::fuzzing::ship_batch(bytes));
