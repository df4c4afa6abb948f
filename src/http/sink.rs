//! Where composed bytes go: a caller's fixed slice, a pooled `Vec`, or a
//! comparison against bytes already stored.
//!
//! Every writer in `http` takes `&mut impl Out`, so the proxy can write
//! into a buffer it already owns (no allocation when the `Vec` has room)
//! and tests can use a fixed array. [`FixedBuf`] never grows: a write that
//! does not fit returns [`Full`] and leaves the bytes written so far.

/// The destination ran out of room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A byte destination.
pub trait Out {
    /// Append `bytes`, all or nothing.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full>;

    /// Append `n` in decimal.
    fn put_u64(&mut self, n: u64) -> Result<(), Full> {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.put(&digits[i..])
    }

    /// Append `n` in decimal, with a leading `-` when negative.
    fn put_i64(&mut self, n: i64) -> Result<(), Full> {
        if n < 0 {
            self.put(b"-")?;
        }
        self.put_u64(n.unsigned_abs())
    }

    /// Append one field line: `name: value` CRLF.
    fn put_field(&mut self, name: &[u8], value: &[u8]) -> Result<(), Full> {
        self.put(name)?;
        self.put(b": ")?;
        self.put(value)?;
        self.put(b"\r\n")
    }
}

/// A `Vec` grows: it never reports [`Full`]. The proxy passes its pooled
/// buffers, which already have the capacity a head needs.
impl Out for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// Writes into a borrowed slice, never past its end.
#[derive(Debug)]
pub struct FixedBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> FixedBuf<'a> {
    pub fn new(buf: &'a mut [u8]) -> FixedBuf<'a> {
        FixedBuf { buf, len: 0 }
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Out for FixedBuf<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self.len.checked_add(bytes.len()).ok_or(Full)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(Full)?;
        dst.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// Compares what would be written with `expected`, without storing it:
/// lets a stored secondary key be checked against a request with no
/// buffer at all.
#[derive(Debug)]
pub struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
    equal: bool,
}

impl<'a> Compare<'a> {
    pub fn new(expected: &'a [u8]) -> Compare<'a> {
        Compare {
            expected,
            pos: 0,
            equal: true,
        }
    }

    /// Everything written so far equals all of `expected`.
    pub fn matched(&self) -> bool {
        self.equal && self.pos == self.expected.len()
    }
}

impl Out for Compare<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self.pos.saturating_add(bytes.len());
        match self.expected.get(self.pos..end) {
            Some(want) if self.equal && want == bytes => self.pos = end,
            // A mismatch can never turn back into a match: stop early.
            _ => {
                self.equal = false;
                return Err(Full);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buf_all_or_nothing() {
        let mut raw = [0u8; 8];
        let mut b = FixedBuf::new(&mut raw);
        b.put(b"abc").unwrap();
        assert_eq!(b.put(b"123456"), Err(Full));
        assert_eq!(b.written(), b"abc");
        b.put_u64(12345).unwrap();
        assert_eq!(b.written(), b"abc12345");
        assert_eq!(b.put(b""), Ok(()));
        assert_eq!(b.put(b"x"), Err(Full));
    }

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        v.put_u64(0).unwrap();
        v.put(b" ").unwrap();
        v.put_u64(u64::MAX).unwrap();
        v.put(b" ").unwrap();
        v.put_i64(-42).unwrap();
        v.put(b" ").unwrap();
        v.put_i64(i64::MIN).unwrap();
        assert_eq!(v, b"0 18446744073709551615 -42 -9223372036854775808");
    }

    #[test]
    fn compare() {
        let mut c = Compare::new(b"abcd");
        c.put(b"ab").unwrap();
        assert!(!c.matched());
        c.put(b"cd").unwrap();
        assert!(c.matched());
        assert!(c.put(b"e").is_err());
        assert!(!c.matched());
        let mut c = Compare::new(b"abcd");
        assert!(c.put(b"ax").is_err());
        assert!(!c.matched());
    }
}

/// Counts bytes instead of writing them: the length of a composed body
/// (for `Content-Length`) from the same code that writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub bytes: u64,
}

impl Out for Count {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.bytes = self.bytes.saturating_add(bytes.len() as u64);
        Ok(())
    }
}
