//! Glue behind [`export_merge!`](crate::export_merge): not a stable API.

use alloc::vec::Vec;

use crate::abi::{self, MergeError, MergeOutput, Merged, Sibling};

/// Decode `input`, run `merge`, encode its result (or a decode error).
/// Pure: this is what the wasm export runs, and it runs natively too.
pub fn run_merge(
    input: &[u8],
    merge: fn(&[u8], &[Sibling<'_>]) -> Result<Merged, MergeError>,
) -> Vec<u8> {
    let output = match abi::decode_input(input) {
        Ok(input) => MergeOutput::from(merge(input.key, &input.siblings)),
        Err(e) => MergeOutput::Error {
            code: abi::ERR_BAD_INPUT,
            message: alloc::format!("input does not decode: {e}"),
        },
    };
    abi::encode_output(&output)
}

/// Pack a guest pointer and length into the ABI's `u64` return value.
pub fn pack(ptr: u32, len: u32) -> u64 {
    (u64::from(ptr) << 32) | u64::from(len)
}

/// Leak `bytes` (the instance is dropped after the call) and return their
/// packed location.
pub fn leak_packed(bytes: Vec<u8>) -> u64 {
    let bytes = bytes.leak();
    // Pointers and lengths are 32-bit on wasm32, the only target this runs on.
    pack(bytes.as_ptr() as usize as u32, bytes.len() as u32)
}

/// Allocate `len` bytes for the host; 0 on failure.
pub fn alloc(len: u32) -> u32 {
    let mut buf = Vec::<u8>::new();
    if buf.try_reserve_exact(len as usize).is_err() {
        return 0;
    }
    let ptr = buf.as_mut_ptr();
    core::mem::forget(buf);
    ptr as usize as u32
}

/// Free a buffer from [`alloc`].
///
/// # Safety
/// `ptr` and `len` must come from one [`alloc`] call, freed once.
pub unsafe fn dealloc(ptr: u32, len: u32) {
    if ptr != 0 {
        // SAFETY: per the contract, this is the buffer `alloc` reserved.
        drop(unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, 0, len as usize) });
    }
}

/// Take ownership of the input buffer the host wrote.
///
/// # Safety
/// `ptr` must come from [`alloc`]`(len)` and hold `len` initialised bytes.
pub unsafe fn take_input(ptr: u32, len: u32) -> Vec<u8> {
    if ptr == 0 || len == 0 {
        return Vec::new();
    }
    // SAFETY: per the contract, `alloc` reserved exactly `len` bytes here and
    // the host initialised them.
    unsafe { Vec::from_raw_parts(ptr as usize as *mut u8, len as usize, len as usize) }
}
