//! The `isthmus` binary.
fn main() {}
