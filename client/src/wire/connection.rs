//! A framed connection carrying protocol messages, used by both ends.
//!
//! [`Connection::read`] returns `Ok(None)` on a clean end of stream (the
//! peer closed between frames), and a typed [`ConnectionError`] for
//! everything else: a frame over the size cap, bytes that do not decode, an
//! end of stream in the middle of a frame, or an IO error.
//!
//! Writes check the message before any byte reaches the stream: a message
//! that does not encode, or whose encoding exceeds the frame cap, is
//! refused with [`ConnectionError::MessageTooLarge`] or
//! [`ConnectionError::Encode`] and the connection stays usable, so the
//! sender can answer that one request with an error instead.
//!
//! A server reads under two deadlines ([`ReadHalf::read_within`]): one for
//! the next frame to begin, one for a begun frame to end, so a peer that
//! trickles a frame a byte at a time loses its connection at the second.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

use super::{DecodeError, decode, frame};

/// Why a connection could not carry a message.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer announced a frame larger than the cap.
    #[error("frame exceeds the limit of {frame_bytes_max} bytes")]
    FrameTooLarge {
        /// The cap in force.
        frame_bytes_max: usize,
    },
    /// A message to send encodes to more bytes than the cap; nothing was
    /// sent and the connection is still usable.
    #[error("message of {bytes} bytes exceeds the frame limit of {frame_bytes_max} bytes")]
    MessageTooLarge {
        /// The encoded message's length.
        bytes: usize,
        /// The cap in force.
        frame_bytes_max: usize,
    },
    /// A message to send could not be encoded; nothing was sent and the
    /// connection is still usable.
    #[error("message does not encode: {reason}")]
    Encode {
        /// What postcard reported.
        reason: String,
    },
    /// A frame arrived whole but did not decode.
    #[error("undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended inside a frame, or the socket failed.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Length-delimited, postcard-encoded messages over any byte stream.
pub struct Connection<T> {
    framed: Framed<T, LengthDelimitedCodec>,
    frame_bytes_max: usize,
}

impl<T> std::fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// Wrap a stream, refusing frames larger than `frame_bytes_max`.
    pub fn new(stream: T, frame_bytes_max: usize) -> Self {
        Connection {
            framed: Framed::new(stream, frame::codec(frame_bytes_max)),
            frame_bytes_max,
        }
    }

    /// Change the cap on frames read and written from now on (a server
    /// reads the handshake under a small cap, then raises it).
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: usize) {
        self.framed
            .codec_mut()
            .set_max_frame_length(frame_bytes_max);
        self.frame_bytes_max = frame_bytes_max;
    }

    /// Read the next message; `Ok(None)` when the peer closed cleanly.
    pub async fn read<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ConnectionError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(decode(&bytes)?)),
            Some(Err(e)) => Err(self.classify(e)),
        }
    }

    /// Send one message and flush it.
    pub async fn write<M: Serialize>(&mut self, message: &M) -> Result<(), ConnectionError> {
        let bytes = to_frame(message, self.frame_bytes_max)?;
        self.framed.send(bytes).await.map_err(|e| self.classify(e))
    }

    /// Split into independently usable read and write halves.
    pub fn split(self) -> (ReadHalf<T>, WriteHalf<T>) {
        let parts = self.framed.into_parts();
        let (read, write) = tokio::io::split(parts.io);
        // Bytes read past the last frame belong to the next one.
        let mut stream = FramedRead::new(read, parts.codec.clone());
        stream.read_buffer_mut().extend_from_slice(&parts.read_buf);
        let mut sink = FramedWrite::new(write, parts.codec);
        sink.write_buffer_mut().extend_from_slice(&parts.write_buf);
        let cap = self.frame_bytes_max;
        (
            ReadHalf {
                stream,
                frame_bytes_max: cap,
            },
            WriteHalf {
                sink,
                frame_bytes_max: cap,
            },
        )
    }

    fn classify(&self, e: std::io::Error) -> ConnectionError {
        classify(e, self.frame_bytes_max)
    }
}

/// Encode `message` as one frame's body, refusing what the cap would not
/// carry before any byte is written (for [`WriteHalf::feed_frame`]).
pub fn encode_frame<M: Serialize>(
    message: &M,
    frame_bytes_max: usize,
) -> Result<Bytes, ConnectionError> {
    to_frame(message, frame_bytes_max)
}

fn to_frame<M: Serialize>(message: &M, frame_bytes_max: usize) -> Result<Bytes, ConnectionError> {
    let bytes = postcard::to_allocvec(message).map_err(|e| ConnectionError::Encode {
        reason: e.to_string(),
    })?;
    if bytes.len() > frame_bytes_max {
        return Err(ConnectionError::MessageTooLarge {
            bytes: bytes.len(),
            frame_bytes_max,
        });
    }
    Ok(Bytes::from(bytes))
}

/// tokio-util reports an over-long frame as `InvalidData` when reading (and
/// `InvalidInput` when writing, which [`to_frame`] already prevents);
/// nothing else in the codec uses those kinds.
fn classify(e: std::io::Error, frame_bytes_max: usize) -> ConnectionError {
    use std::io::ErrorKind::{InvalidData, InvalidInput};
    if matches!(e.kind(), InvalidData | InvalidInput) {
        ConnectionError::FrameTooLarge { frame_bytes_max }
    } else {
        ConnectionError::Io(e)
    }
}

/// The reading half of a split [`Connection`].
pub struct ReadHalf<T> {
    stream: FramedRead<tokio::io::ReadHalf<T>, LengthDelimitedCodec>,
    frame_bytes_max: usize,
}

impl<T> std::fmt::Debug for ReadHalf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHalf")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

/// Which deadline of [`ReadHalf::read_within`] passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadDeadline {
    /// No byte of a next frame arrived in time.
    Idle,
    /// A frame began but did not end in time.
    Frame,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ReadHalf<T> {
    /// Read the next message; `Ok(None)` when the peer closed cleanly.
    pub async fn read<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ConnectionError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(decode(&bytes)?)),
            Some(Err(e)) => Err(classify(e, self.frame_bytes_max)),
        }
    }

    /// Read the next message under two deadlines: its first byte must
    /// arrive within `idle`, and once it has (or when it was already
    /// buffered), the whole frame within `frame` of that moment. The outer
    /// error says which deadline passed; the inner result is
    /// [`ReadHalf::read`]'s.
    pub async fn read_within<M: DeserializeOwned>(
        &mut self,
        idle: Duration,
        frame: Duration,
    ) -> Result<Result<Option<M>, ConnectionError>, ReadDeadline> {
        let mut deadline = pin!(tokio::time::sleep(idle));
        let mut begun = false;
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(next) = self.stream.poll_next_unpin(cx) {
                return Poll::Ready(Ok(next));
            }
            // The codec keeps the part of a frame read so far: bytes there
            // mean the frame has begun, and from now on it has `frame`.
            if !begun && !self.stream.read_buffer().is_empty() {
                begun = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + frame);
            }
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) if begun => Poll::Ready(Err(ReadDeadline::Frame)),
                Poll::Ready(()) => Poll::Ready(Err(ReadDeadline::Idle)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        Ok(match next {
            None => Ok(None),
            Some(Ok(bytes)) => decode(&bytes).map(Some).map_err(ConnectionError::from),
            Some(Err(e)) => Err(classify(e, self.frame_bytes_max)),
        })
    }
}

/// The writing half of a split [`Connection`].
pub struct WriteHalf<T> {
    sink: FramedWrite<tokio::io::WriteHalf<T>, LengthDelimitedCodec>,
    frame_bytes_max: usize,
}

impl<T> std::fmt::Debug for WriteHalf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> WriteHalf<T> {
    /// Send one message and flush it.
    pub async fn write<M: Serialize>(&mut self, message: &M) -> Result<(), ConnectionError> {
        let cap = self.frame_bytes_max;
        let bytes = to_frame(message, cap)?;
        self.sink.send(bytes).await.map_err(|e| classify(e, cap))
    }

    /// Queue one message without flushing (for writers draining a queue).
    pub async fn feed<M: Serialize>(&mut self, message: &M) -> Result<(), ConnectionError> {
        let cap = self.frame_bytes_max;
        let bytes = to_frame(message, cap)?;
        self.sink.feed(bytes).await.map_err(|e| classify(e, cap))
    }

    /// Queue one frame encoded by [`encode_frame`] without flushing; the
    /// caller checked it against the frame cap.
    pub async fn feed_frame(&mut self, frame: Bytes) -> Result<(), ConnectionError> {
        let cap = self.frame_bytes_max;
        self.sink.feed(frame).await.map_err(|e| classify(e, cap))
    }

    /// Flush queued messages.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        let cap = self.frame_bytes_max;
        SinkExt::<Bytes>::flush(&mut self.sink)
            .await
            .map_err(|e| classify(e, cap))
    }

    /// Flush and close the write side.
    pub async fn close(&mut self) -> Result<(), ConnectionError> {
        let cap = self.frame_bytes_max;
        SinkExt::<Bytes>::close(&mut self.sink)
            .await
            .map_err(|e| classify(e, cap))
    }
}
