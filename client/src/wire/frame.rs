//! Frame codec: 4-byte big-endian length prefix, capped size.

use tokio_util::codec::LengthDelimitedCodec;

/// Default largest frame accepted or sent: a 1 MiB value plus its key,
/// context and envelope fit with room to spare.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 2 * 1024 * 1024 + 128 * 1024;

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
