//! Feeds arbitrary bytes to the decoder of gossip exchanges: a digest and entries, each entry judged by `membership::validate` as the receiver does, applied when accepted, and the rings built from the result.
//! Decoding may fail (a typed error); nothing may panic.
//!
//! Run: `cd core/fuzz && cargo +nightly fuzz run gossip`. Its proptest twin
//! (`fuzzing::tests` in isthmus-core) runs in the normal test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| isthmus_core::fuzzing::gossip_exchange(bytes));
