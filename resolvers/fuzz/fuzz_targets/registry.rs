//! Feeds arbitrary bytes to the decoder of resolver registry records (a
//! resolver version, a keyspace binding, a module; and a replica's set of
//! a registry key), read through the `Registry` and used as a node uses
//! them. Decoding may fail (a typed error); nothing may panic.
//!
//! Run: `cd resolvers/fuzz && cargo +nightly fuzz run registry`. Its
//! proptest twin (`fuzzing::tests` in isthmus-resolvers) runs in the
//! normal test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| isthmus_resolvers::fuzzing::registry_record(bytes));
