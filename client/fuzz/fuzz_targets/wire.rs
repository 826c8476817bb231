//! Feeds arbitrary bytes to the guarded decoder of every message a node or
//! client receives. Run: `cd client/fuzz && cargo +nightly fuzz run wire`.
//! Its proptest twin (`wire::tests`) runs in the normal test suite.
#![no_main]

use isthmus_client::wire::{Hello, HelloAck, Request, Response, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = decode::<Request>(bytes) {
        assert_eq!(decode::<Request>(&encode(&r)), Ok(r));
    }
    if let Ok(r) = decode::<Response>(bytes) {
        assert_eq!(decode::<Response>(&encode(&r)), Ok(r));
    }
    let _ = decode::<Hello>(bytes);
    let _ = decode::<HelloAck>(bytes);
});
