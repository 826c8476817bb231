//! Feeds arbitrary bytes to the decoder of peer messages: an `Envelope<PeerRequest>` and a `Reply<PeerResponse>`, re-encoded, their versions absorbed, gossip entries judged, repair requests served.
//! Decoding may fail (a typed error); nothing may panic.
//!
//! Run: `cd core/fuzz && cargo +nightly fuzz run peer`. Its proptest twin
//! (`fuzzing::tests` in isthmus-core) runs in the normal test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| isthmus_core::fuzzing::peer_message(bytes));
