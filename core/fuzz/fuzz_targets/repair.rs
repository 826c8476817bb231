//! Feeds arbitrary bytes to the decoder of repair messages: a `RepairRequest` served by a `RepairServer` over keys in memory, and a `RepairResponse` used as the initiator of a sync uses it.
//! Decoding may fail (a typed error); nothing may panic.
//!
//! Run: `cd core/fuzz && cargo +nightly fuzz run repair`. Its proptest twin
//! (`fuzzing::tests` in isthmus-core) runs in the normal test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| isthmus_core::fuzzing::repair_message(bytes));
