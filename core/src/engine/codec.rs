//! Little-endian integers and LEB128 varints shared by the on-disk formats,
//! with a bounds-checked reader so that a decoder of untrusted bytes fails
//! with an error instead of slicing past the end.

/// Append `v` as an unsigned LEB128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A cursor over untrusted bytes; every read checks bounds.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Why a read from a [`Reader`] failed.
pub(crate) type ReadError = &'static str;

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    pub(crate) fn varint(&mut self) -> Result<u64, ReadError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflows u64");
            }
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("varint too long")
    }

    /// A varint that must fit a `usize` length no longer than what is left.
    pub(crate) fn len(&mut self) -> Result<usize, ReadError> {
        let v = self.varint()?;
        let v = usize::try_from(v).map_err(|_| "length overflows usize")?;
        if v > self.bytes.len() - self.pos {
            return Err("length runs past the end");
        }
        Ok(v)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let out = self.bytes.get(self.pos..end).ok_or("truncated bytes")?;
        self.pos = end;
        Ok(out)
    }

    /// A varint length followed by that many bytes.
    pub(crate) fn slice(&mut self) -> Result<&'a [u8], ReadError> {
        let n = self.len()?;
        self.bytes(n)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ReadError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ReadError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(Reader::new(&b).varint(), Ok(v));
        }
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[5, 1, 2]).slice().is_err());
    }
}
