//! What a command answers, and its encoding in RESP2 or RESP3 (with the
//! `redis-protocol` crate's frames and encoders).

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// One reply, independent of the protocol version.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// An error: its first word is the error's code (`ERR`, `NOAUTH`,
    /// `WRONGTYPE`, an Isthmus code such as `UNAVAILABLE`).
    Error(String),
    /// An integer.
    Int(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value (RESP2's null bulk string, RESP3's null).
    Nil,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP3), a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// Text to show as it is (RESP3's verbatim string), a bulk string in
    /// RESP2.
    Text(String),
}

impl Reply {
    /// A bulk string of `bytes`.
    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    /// An `ERR` error.
    pub fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    fn resp2(self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(sanitize(e).into()),
            Reply::Int(n) => Frame2::Integer(n),
            Reply::Bulk(b) => Frame2::BulkString(b),
            Reply::Nil => Frame2::Null,
            Reply::Array(items) => Frame2::Array(items.into_iter().map(Reply::resp2).collect()),
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.resp2(), v.resp2()])
                    .collect(),
            ),
            Reply::Text(t) => Frame2::BulkString(Bytes::from(t)),
        }
    }

    fn resp3(self) -> Frame3 {
        match self {
            Reply::Simple(s) => Frame3::SimpleString {
                data: Bytes::from_static(s.as_bytes()),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: sanitize(e).into(),
                attributes: None,
            },
            Reply::Int(n) => Frame3::Number {
                data: n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b,
                attributes: None,
            },
            Reply::Nil => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.into_iter().map(Reply::resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .into_iter()
                    .map(|(k, v)| (k.resp3(), v.resp3()))
                    .collect(),
                attributes: None,
            },
            Reply::Text(t) => Frame3::VerbatimString {
                data: Bytes::from(t),
                format: redis_protocol::resp3::types::VerbatimStringFormat::Text,
                attributes: None,
            },
        }
    }

    /// Append this reply to `out` in protocol `version` (2 or 3).
    pub fn encode(self, version: u8, out: &mut BytesMut) {
        // The common replies, written directly (the same bytes the
        // encoders write, without building a frame first).
        match &self {
            Reply::Simple(s) if !s.contains(['\r', '\n']) => {
                out.extend_from_slice(b"+");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
                return;
            }
            Reply::Bulk(b) => {
                out.reserve(b.len() + 26);
                out.extend_from_slice(b"$");
                out.extend_from_slice(decimal(b.len(), &mut [0; 20]));
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
                return;
            }
            _ => {}
        }
        let encoded = if version >= 3 {
            redis_protocol::resp3::encode::complete::extend_encode(out, &self.resp3(), false)
        } else {
            redis_protocol::resp2::encode::extend_encode(out, &self.resp2(), false)
        };
        if encoded.is_err() {
            // Frames built here always encode; should one not, the client
            // still gets an answer in its place.
            out.extend_from_slice(b"-ERR reply did not encode\r\n");
        }
    }
}

/// `n` in decimal, in `buf`.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// An error line holds no line breaks.
fn sanitize(message: String) -> String {
    if message.contains(['\r', '\n']) {
        message.replace(['\r', '\n'], " ")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: Reply, version: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(version, &mut out);
        out.to_vec()
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        assert_eq!(encoded(Reply::Simple("OK"), 2), b"+OK\r\n");
        assert_eq!(encoded(Reply::Nil, 2), b"$-1\r\n");
        assert_eq!(encoded(Reply::Nil, 3), b"_\r\n");
        assert_eq!(encoded(Reply::Int(-3), 3), b":-3\r\n");
        assert_eq!(encoded(Reply::bulk(&b"a\r\nb"[..]), 2), b"$4\r\na\r\nb\r\n");
        assert_eq!(
            encoded(Reply::err("bad\r\nthing"), 2),
            b"-ERR bad  thing\r\n"
        );
        let map = Reply::Map(vec![(Reply::bulk("proto"), Reply::Int(3))]);
        assert_eq!(encoded(map.clone(), 3), b"%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(map, 2), b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(encoded(Reply::Simple("OK"), 3), b"+OK\r\n");
        assert_eq!(encoded(Reply::bulk(&b""[..]), 3), b"$0\r\n\r\n");
        let long = Bytes::from(vec![b'x'; 1234]);
        let mut want = b"$1234\r\n".to_vec();
        want.extend_from_slice(&long);
        want.extend_from_slice(b"\r\n");
        assert_eq!(encoded(Reply::Bulk(long.clone()), 2), want);
        assert_eq!(encoded(Reply::Bulk(long), 3), want);
    }
}
