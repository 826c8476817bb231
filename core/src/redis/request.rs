//! The shape every Redis client sends a command in, RESP2's array of bulk
//! strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), read straight off the
//! connection's buffer: the arguments are slices of one shared buffer,
//! with no frame built in between. Anything else (inline commands, other
//! frame types, malformed input) is left to the general decoder.

use bytes::{Bytes, BytesMut};

/// What the front of a connection's input holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    /// A whole command, taken off the input: its arguments.
    Command(Vec<Bytes>),
    /// The start of an array of bulk strings, not all of it read yet.
    Partial,
    /// Anything else: the general decoder's to read (or refuse).
    Other,
}

/// The most elements of an array read here; longer ones are the general
/// decoder's.
const ELEMENTS_MAX: usize = 1024;

/// The most digits of a length read here (a bulk string of up to 1 GB).
const DIGITS_MAX: usize = 10;

/// Take the command at the front of `input` if it is an array of bulk
/// strings.
pub(super) fn take(input: &mut BytesMut) -> Taken {
    let buf = &input[..];
    if buf.first() != Some(&b'*') {
        return Taken::Other;
    }
    let (count, mut at) = match length(buf, 1) {
        Length::Read(n, next) if (1..=ELEMENTS_MAX).contains(&n) => (n, next),
        Length::Short => return Taken::Partial,
        _ => return Taken::Other,
    };
    let mut spans = Vec::with_capacity(count);
    for _ in 0..count {
        match buf.get(at) {
            None => return Taken::Partial,
            Some(b'$') => {}
            Some(_) => return Taken::Other,
        }
        let (len, start) = match length(buf, at + 1) {
            Length::Read(n, next) => (n, next),
            Length::Short => return Taken::Partial,
            Length::Bad => return Taken::Other,
        };
        let end = start + len;
        match buf.get(end..end + 2) {
            None => return Taken::Partial,
            Some(b"\r\n") => {}
            Some(_) => return Taken::Other,
        }
        spans.push((start, end));
        at = end + 2;
    }
    let frame = input.split_to(at).freeze();
    Taken::Command(spans.into_iter().map(|(a, b)| frame.slice(a..b)).collect())
}

enum Length {
    /// The number, and where what follows its `\r\n` starts.
    Read(usize, usize),
    /// The input ends before the `\r\n`.
    Short,
    /// Not a decimal number of at most [`DIGITS_MAX`] digits and `\r\n`.
    Bad,
}

/// The decimal number at `at`, ended by `\r\n`.
fn length(buf: &[u8], at: usize) -> Length {
    let mut n = 0usize;
    let mut i = at;
    loop {
        match buf.get(i) {
            None => return Length::Short,
            Some(b'\r') => break,
            Some(d @ b'0'..=b'9') if i - at < DIGITS_MAX => {
                n = n * 10 + usize::from(d - b'0');
            }
            Some(_) => return Length::Bad,
        }
        i += 1;
    }
    if i == at {
        return Length::Bad;
    }
    match buf.get(i + 1) {
        None => Length::Short,
        Some(b'\n') => Length::Read(n, i + 2),
        Some(_) => Length::Bad,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use redis_protocol::resp2::decode::decode_bytes_mut;

    use super::*;

    fn encoded(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// What the general decoder makes of `bytes`: the arguments of each
    /// whole command, then whether it stopped at an error.
    fn general(bytes: &[u8]) -> (Vec<Vec<Bytes>>, bool) {
        let mut input = BytesMut::from(bytes);
        let mut commands = Vec::new();
        loop {
            match decode_bytes_mut(&mut input) {
                Ok(Some((frame, _, _))) => match super::super::command::arguments(frame) {
                    Ok(args) => commands.push(args),
                    Err(_) => return (commands, true),
                },
                Ok(None) => return (commands, false),
                Err(_) => return (commands, true),
            }
        }
    }

    /// This reader's commands off `bytes`, and what it left (the general
    /// decoder's part).
    fn fast(bytes: &[u8]) -> (Vec<Vec<Bytes>>, BytesMut, Taken) {
        let mut input = BytesMut::from(bytes);
        let mut commands = Vec::new();
        loop {
            match take(&mut input) {
                Taken::Command(args) => commands.push(args),
                stop => return (commands, input, stop),
            }
        }
    }

    #[test]
    fn reads_commands_and_leaves_the_rest_to_the_general_decoder() {
        let set = encoded(&[b"SET".to_vec(), b"k".to_vec(), b"v\r\n".to_vec()]);
        let mut two = set.clone();
        two.extend_from_slice(&encoded(&[b"GET".to_vec(), b"k".to_vec()]));
        let (commands, rest, stop) = fast(&two);
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0][2], Bytes::from_static(b"v\r\n"));
        assert_eq!(commands[1][0], Bytes::from_static(b"GET"));
        assert!(rest.is_empty());
        assert_eq!(stop, Taken::Other, "an empty input is not an array");

        for partial in 1..set.len() {
            let (commands, rest, stop) = fast(&set[..partial]);
            assert!(commands.is_empty());
            assert_eq!(stop, Taken::Partial, "{:?}", &set[..partial]);
            assert_eq!(&rest[..], &set[..partial], "nothing is taken off");
        }

        for other in [
            &b"PING\r\n"[..],
            b"*0\r\n",
            b"*-1\r\n",
            b"*2\r\n:5\r\n$1\r\nk\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$3\r\nGETX\r\n",
            b"*1\r\n$3\r\rGET\r\n",
            b"*x\r\n",
            b"*\r\n",
            b"*1\r\n$99999999999\r\n",
            b"*1025\r\n",
        ] {
            let (commands, rest, stop) = fast(other);
            assert!(commands.is_empty(), "{other:?}");
            assert_eq!(stop, Taken::Other, "{other:?}");
            assert_eq!(&rest[..], other);
        }
    }

    fn arg() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'$')], 0..4),
        ]
    }

    proptest! {
        /// Over any cut of any run of commands, this reader takes the
        /// commands the general decoder reads, and stops where the input
        /// ends or stops being arrays of bulk strings; corrupting a byte
        /// never makes it read what the general decoder would not.
        #[test]
        fn agrees_with_the_general_decoder(
            commands in proptest::collection::vec(proptest::collection::vec(arg(), 1..5), 1..4),
            cut in any::<prop::sample::Index>(),
            flip in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
        ) {
            let mut bytes: Vec<u8> = commands.iter().flat_map(|c| encoded(c)).collect();
            if let Some((at, byte)) = flip {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let bytes = &bytes[..cut.index(bytes.len() + 1)];
            let (ours, rest, stop) = fast(bytes);
            let (theirs, _) = general(bytes);
            prop_assert!(ours.len() <= theirs.len());
            prop_assert_eq!(&ours[..], &theirs[..ours.len()]);
            // What is left, the general decoder reads as it would have.
            let (after, _) = general(&rest);
            prop_assert_eq!(&after[..], &theirs[ours.len()..]);
            if flip.is_none() {
                prop_assert_eq!(ours.len(), theirs.len());
                prop_assert_eq!(stop == Taken::Partial, !rest.is_empty());
            }
        }
    }
}
