//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1),
//! used for request bodies and origin responses alike.
//!
//! ```text
//!  chunk       = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//!  last-chunk  = 1*"0" [ chunk-ext ] CRLF
//!  body        = *chunk last-chunk trailer-section CRLF
//!
//!  Size ──hex──▶ Size ──SP/HTAB──▶ SizeWs ──";"──▶ Ext ──CR──▶ SizeLf ──LF──┐
//!    │             └──";"──▶ Ext        └────────────CR──▶ SizeLf         │
//!    └──CR──▶ SizeLf                                                      ▼
//!  size > 0: Data ─▶ DataCr ─▶ DataLf ─▶ Size        size = 0: TrailerStart
//!  TrailerStart ──CR──▶ FinalLf ──LF──▶ Done
//!  TrailerStart ──tchar──▶ TrailerName ──":"──▶ TrailerValue ──CR──▶ TrailerLf ──LF──▶ TrailerStart
//! ```
//!
//! The decoder keeps all progress in its state, so input may be split at
//! any byte. Every line is bounded: size digits, extension bytes and the
//! trailer section each have a named limit. Bare LF is an error everywhere.
//! Trailer fields are checked and dropped; they are never merged into the
//! head. After an error the decoder keeps returning that error.

/// At most 16 hex digits, so a chunk size always fits a `u64`.
pub const CHUNK_SIZE_DIGITS_MAX: u8 = 16;
/// Bytes of chunk extensions on one chunk line, from the first `;`.
pub const CHUNK_EXT_BYTES_MAX: usize = 1024;
/// Bytes of the whole trailer section, excluding the final CRLF.
pub const TRAILER_BYTES_MAX: usize = 8192;

const _: () = assert!(CHUNK_SIZE_DIGITS_MAX as u32 * 4 <= u64::BITS);

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// The chunk size is missing or not hexadecimal.
    InvalidSize,
    /// More than [`CHUNK_SIZE_DIGITS_MAX`] hex digits.
    SizeTooLong,
    /// More than [`CHUNK_EXT_BYTES_MAX`] bytes of chunk extensions.
    ExtensionTooLong,
    /// More than [`TRAILER_BYTES_MAX`] bytes of trailer fields.
    TrailerTooLarge,
    /// Missing CRLF, bare LF, or an invalid extension or trailer byte.
    Malformed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size.
    Size {
        digits: u8,
        size: u64,
    },
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeWs {
        size: u64,
    },
    /// Inside chunk extensions, up to the CR.
    Ext {
        size: u64,
    },
    /// CR of the chunk line seen.
    SizeLf {
        size: u64,
    },
    /// Payload bytes still to come in this chunk.
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line or the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
    Failed(ChunkedError),
}

/// Decodes one chunked body; make a new one (or `reset`) per message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    ext_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    pub const fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size { digits: 0, size: 0 },
            ext_bytes: 0,
            trailer_bytes: 0,
        }
    }

    /// Start over for the next message.
    pub fn reset(&mut self) {
        *self = ChunkedDecoder::new();
    }

    /// The last chunk, trailer section and final CRLF have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `input`, appending payload bytes to `out`. Returns
    /// (bytes of input consumed, done) where done = last-chunk, trailer
    /// section and final CRLF all consumed. May be called with input split
    /// at any byte boundary. Bytes after the end of the body are left
    /// unconsumed: they belong to the next message.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), ChunkedError> {
        self.run(input, Some(out))
    }

    /// Like [`decode`](Self::decode) but only finds the end of the body,
    /// for relaying the coded bytes unchanged.
    pub fn delimit(&mut self, input: &[u8]) -> Result<(usize, bool), ChunkedError> {
        self.run(input, None)
    }

    fn run(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<(usize, bool), ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok((i, true)),
                State::Failed(e) => return Err(e),
                State::Data { remaining } => {
                    let available = input.len() - i;
                    let n = usize::try_from(remaining).map_or(available, |r| r.min(available));
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&input[i..i + n]);
                    }
                    i += n;
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining }
                    };
                }
                _ => {
                    let next = self.step(input[i]);
                    if let Err(e) = next {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                    i += 1;
                }
            }
        }
        match self.state {
            State::Failed(e) => Err(e),
            state => Ok((i, state == State::Done)),
        }
    }

    /// Advance by one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size { digits, size } => match (hex_value(b), b) {
                (Some(_), _) if digits == CHUNK_SIZE_DIGITS_MAX => {
                    return Err(ChunkedError::SizeTooLong)
                }
                (Some(v), _) => State::Size {
                    digits: digits + 1,
                    size: size << 4 | u64::from(v),
                },
                (None, _) if digits == 0 => return Err(ChunkedError::InvalidSize),
                (None, b' ' | b'\t') => State::SizeWs { size },
                (None, b';') => self.start_ext(size),
                (None, b'\r') => State::SizeLf { size },
                (None, b'\n') => return Err(ChunkedError::Malformed),
                (None, _) => return Err(ChunkedError::InvalidSize),
            },
            State::SizeWs { size } => match b {
                b' ' | b'\t' => State::SizeWs { size },
                b';' => self.start_ext(size),
                _ => return Err(ChunkedError::InvalidSize),
            },
            State::Ext { size } => match b {
                b'\r' => State::SizeLf { size },
                _ if is_field_byte(b) => {
                    self.ext_bytes += 1;
                    if self.ext_bytes > CHUNK_EXT_BYTES_MAX {
                        return Err(ChunkedError::ExtensionTooLong);
                    }
                    State::Ext { size }
                }
                _ => return Err(ChunkedError::Malformed),
            },
            State::SizeLf { size } => match b {
                b'\n' if size == 0 => State::TrailerStart,
                b'\n' => State::Data { remaining: size },
                _ => return Err(ChunkedError::Malformed),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkedError::Malformed),
            },
            State::DataLf => match b {
                b'\n' => State::Size { digits: 0, size: 0 },
                _ => return Err(ChunkedError::Malformed),
            },
            State::TrailerStart => match b {
                b'\r' => State::FinalLf,
                _ if super::framing::is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkedError::Malformed),
            },
            State::TrailerName => match b {
                b':' => self.trailer_byte(State::TrailerValue)?,
                _ if super::framing::is_tchar(b) => self.trailer_byte(State::TrailerName)?,
                _ => return Err(ChunkedError::Malformed),
            },
            State::TrailerValue => match b {
                b'\r' => self.trailer_byte(State::TrailerLf)?,
                _ if is_field_byte(b) => self.trailer_byte(State::TrailerValue)?,
                _ => return Err(ChunkedError::Malformed),
            },
            State::TrailerLf => match b {
                b'\n' => self.trailer_byte(State::TrailerStart)?,
                _ => return Err(ChunkedError::Malformed),
            },
            State::FinalLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkedError::Malformed),
            },
            State::Data { .. } | State::Done | State::Failed(_) => {
                unreachable!("handled in run")
            }
        };
        Ok(())
    }

    fn start_ext(&mut self, size: u64) -> State {
        self.ext_bytes = 1;
        State::Ext { size }
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > TRAILER_BYTES_MAX {
            return Err(ChunkedError::TrailerTooLarge);
        }
        Ok(next)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// HTAB, visible ASCII, SP and obs-text: what may appear in a field value
/// or chunk extension (quoted strings included).
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` in one call.
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let (n, done) = d.decode(input, &mut out)?;
        Ok((out, n, done))
    }

    const BODY: &[u8] =
        b"4\r\nWiki\r\n6;name=\"v;a,l\" ; x\r\npedia \r\nD\r\nin\r\n\r\nchunks.\r\n\
        0000;end\r\nX-Sum: abc\r\nY:\r\n\r\n";
    const PAYLOAD: &[u8] = b"Wikipedia in\r\n\r\nchunks.";

    #[test]
    fn decodes_whole_body() {
        let (out, n, done) = decode_all(BODY).unwrap();
        assert_eq!(out, PAYLOAD);
        assert_eq!(n, BODY.len());
        assert!(done);
    }

    #[test]
    fn leaves_following_bytes() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let body_len = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.decode(&input, &mut out), Ok((body_len, true)));
        assert_eq!(out, b"abc");
        assert!(d.is_done());
        assert_eq!(d.decode(&input[body_len..], &mut out), Ok((0, true)));
        d.reset();
        assert!(!d.is_done());
    }

    #[test]
    fn split_at_every_byte() {
        for cut in 0..=BODY.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let (a, done_a) = d.decode(&BODY[..cut], &mut out).unwrap();
            assert_eq!(a, cut);
            assert_eq!(done_a, cut == BODY.len());
            let (b, done_b) = d.decode(&BODY[cut..], &mut out).unwrap();
            assert_eq!(a + b, BODY.len());
            assert!(done_b);
            assert_eq!(out, PAYLOAD, "cut at {cut}");
        }
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for (i, byte) in BODY.iter().enumerate() {
            let (n, done) = d.decode(std::slice::from_ref(byte), &mut out).unwrap();
            assert_eq!(n, 1);
            assert_eq!(done, i == BODY.len() - 1);
        }
        assert_eq!(out, PAYLOAD);
    }

    #[test]
    fn delimit_matches_decode() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.delimit(BODY), Ok((BODY.len(), true)));
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.delimit(b"3\r\nab"), Ok((5, false)));
        assert_eq!(d.delimit(b"c\r\n0\r\n\r\nextra"), Ok((8, true)));
    }

    #[test]
    fn invalid_sizes() {
        for input in [
            &b"0x5\r\n"[..],
            b"-1\r\n",
            b"+1\r\n",
            b"g\r\n",
            b"\r\n",
            b" 5\r\n",
            b";ext\r\n",
            b"5 x\r\n",
            b"5 \r\n",
        ] {
            assert_eq!(
                decode_all(input),
                Err(ChunkedError::InvalidSize),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            decode_all(b"10000000000000000\r\n"),
            Err(ChunkedError::SizeTooLong)
        );
        assert_eq!(
            decode_all(b"00000000000000000\r\n"),
            Err(ChunkedError::SizeTooLong)
        );
        // 16 digits is the largest size accepted; upper and lower case hex.
        assert_eq!(decode_all(b"ffffffffffffFFFF\r\n"), Ok((vec![], 18, false)));
        assert_eq!(decode_all(b"aB\r\n"), Ok((vec![], 4, false)));
    }

    #[test]
    fn extensions() {
        let (out, _, done) = decode_all(b"1 ;a=b\t;c\r\nx\r\n0;last\r\n\r\n").unwrap();
        assert_eq!((out.as_slice(), done), (&b"x"[..], true));
        let mut long = b"1;".to_vec();
        long.resize(1 + CHUNK_EXT_BYTES_MAX, b'a');
        long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(decode_all(&long).unwrap().2);
        let mut too_long = b"1;".to_vec();
        too_long.resize(2 + CHUNK_EXT_BYTES_MAX, b'a');
        assert_eq!(decode_all(&too_long), Err(ChunkedError::ExtensionTooLong));
        assert_eq!(decode_all(b"1;a\x00\r\n"), Err(ChunkedError::Malformed));
        assert_eq!(decode_all(b"1;a\nx"), Err(ChunkedError::Malformed));
    }

    #[test]
    fn trailers() {
        let (_, _, done) = decode_all(b"0\r\nA: 1\r\nB-c:2\r\n\r\n").unwrap();
        assert!(done);
        // No trailers, incomplete final CRLF.
        assert_eq!(decode_all(b"0\r\n\r"), Ok((vec![], 4, false)));
        for input in [
            &b"0\r\nA: 1\r\n folded\r\n\r\n"[..],
            b"0\r\nNoColon\r\n\r\n",
            b"0\r\nA : 1\r\n\r\n",
            b"0\r\nA: 1\x01\r\n\r\n",
            b"0\r\nA: 1\n\r\n",
            b"0\r\n\rX",
            b"0\r\n\n",
        ] {
            assert_eq!(
                decode_all(input),
                Err(ChunkedError::Malformed),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut big = b"0\r\n".to_vec();
        while big.len() < TRAILER_BYTES_MAX + 16 {
            big.extend_from_slice(b"X-Pad: 0123456789abcdef\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&big), Err(ChunkedError::TrailerTooLarge));
    }

    #[test]
    fn missing_crlf_after_data() {
        assert_eq!(decode_all(b"3\r\nabcX\r\n"), Err(ChunkedError::Malformed));
        assert_eq!(decode_all(b"3\r\nabc\rX"), Err(ChunkedError::Malformed));
        assert_eq!(
            decode_all(b"3\r\nabc\n0\r\n\r\n"),
            Err(ChunkedError::Malformed)
        );
        assert_eq!(decode_all(b"3\nabc\r\n"), Err(ChunkedError::Malformed));
        assert_eq!(decode_all(b"3\rabc\r\n"), Err(ChunkedError::Malformed));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"z", &mut out), Err(ChunkedError::InvalidSize));
        assert_eq!(
            d.decode(b"0\r\n\r\n", &mut out),
            Err(ChunkedError::InvalidSize)
        );
        assert!(out.is_empty());
    }
}
