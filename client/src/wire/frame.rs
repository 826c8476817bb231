//! Frame codec: 4-byte big-endian length prefix, capped size.

use tokio_util::codec::LengthDelimitedCodec;

/// Default largest frame accepted or sent, in bytes (20 MiB).
///
/// Why this number: a frame must carry the largest reply the default
/// limits allow, a read of a key holding the most siblings of the largest
/// value (`isthmus_core::limit` asserts at compile time that 16 siblings of
/// 1 MiB, with their clocks, the key, the context and the envelope, fit,
/// and so does a repair message of one full set on top of its 1 MiB
/// target). It was 2.1 MiB while a key could hold 64 siblings of 1 MiB, so
/// three concurrent 1 MiB writes made a set no reply could carry. A larger
/// cap costs memory only where a frame that large arrives: a connection's
/// read buffer grows with the frame it holds, and the handshake is read
/// under [`HANDSHAKE_FRAME_BYTES_MAX`].
pub const FRAME_BYTES_MAX_DEFAULT: usize = 20 * 1024 * 1024;

/// Largest frame accepted before a connection's handshake completes, in
/// bytes: a [`Hello`](super::Hello) is a few dozen bytes, so a flood of
/// connections that never finish their handshake cannot make a node hold
/// frame-cap-sized buffers.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 4 * 1024;

/// The frame codec every Isthmus connection uses. A frame longer than
/// `frame_bytes_max` is refused before its body is read (tokio-util reports
/// it as `InvalidData`), and the connection is closed with
/// [`ErrorCode::FrameTooLarge`](super::ErrorCode::FrameTooLarge).
pub fn codec(frame_bytes_max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(frame_bytes_max)
        .new_codec()
}
