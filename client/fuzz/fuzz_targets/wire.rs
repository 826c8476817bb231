//! Feeds arbitrary bytes to the guarded decoder of every message a node or
//! client receives. Run: `cd client/fuzz && cargo +nightly fuzz run wire`.
//! Its proptest twin (`wire::tests`) runs in the normal test suite.
#![no_main]

use isthmus_client::wire::{Hello, HelloAck, Request, Response, decode, encode};
use libfuzzer_sys::fuzz_target;

/// `message` encodes to bytes that decode to a message with the very same
/// encoding (compared as bytes: a float field may hold NaN).
fn assert_re_encodes<T>(message: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let once = encode(message);
    let again = decode::<T>(&once).expect("a re-encoded message decodes");
    assert_eq!(encode(&again), once);
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = decode::<Request>(bytes) {
        assert_re_encodes(&r);
    }
    if let Ok(r) = decode::<Response>(bytes) {
        assert_re_encodes(&r);
    }
    let _ = decode::<Hello>(bytes);
    let _ = decode::<HelloAck>(bytes);
});
