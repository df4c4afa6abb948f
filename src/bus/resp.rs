//! A small RESP2 client: one blocking `TcpStream` per connection, every read
//! and write under a timeout, every reply bounded.
//!
//! ```text
//! request:  *<argc>\r\n $<len>\r\n<arg>\r\n ...        (always arrays of bulk strings)
//! reply:    +simple\r\n   -error\r\n   :int\r\n
//!           $<len>\r\n<bytes>\r\n   $-1\r\n (nil)
//!           *<count>\r\n <count replies>   *-1\r\n (nil)
//! ```
//!
//! Bounds while reading a reply: a header line holds at most
//! [`LINE_BYTES_MAX`] bytes, arrays nest at most [`DEPTH_MAX`] deep, a bulk
//! string larger than the connection's `bulk_bytes_max` is read and thrown
//! away ([`Value::Oversize`]) so that one foreign entry cannot wedge a reader,
//! and the bytes kept for one reply (bulk payloads plus a fixed charge per
//! element) stay under `reply_bytes_max` or the reply is refused and the
//! connection dropped.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Longest header line (`+OK`, `-ERR ...`, `:12`, `$5`, `*3`) we accept, in bytes.
pub const LINE_BYTES_MAX: usize = 4096;
/// Deepest nesting of arrays in one reply (XREAD needs 5).
pub const DEPTH_MAX: usize = 8;
/// What one element costs against `reply_bytes_max` beyond its payload, in bytes.
pub const ELEMENT_CHARGE_BYTES: usize = 16;
/// Read buffer of one connection, in bytes.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// A bulk string of this many bytes, read and discarded (over `bulk_bytes_max`).
    Oversize(usize),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The text of a bulk or simple string, when it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        self.bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
pub enum BusError {
    /// The connection failed (refused, reset, timed out); it must be dropped.
    Io(io::Error),
    /// The server sent something we do not accept; the connection must be dropped.
    Protocol(String),
    /// The server answered with an error reply; the connection is still usable.
    Server(String),
}

impl BusError {
    /// Whether the connection that produced this error must be dropped.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, BusError::Server(_))
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Io(e) => write!(f, "redis connection: {e}"),
            BusError::Protocol(m) => write!(f, "redis protocol: {m}"),
            BusError::Server(m) => write!(f, "redis error: {m}"),
        }
    }
}

impl From<io::Error> for BusError {
    fn from(e: io::Error) -> Self {
        BusError::Io(e)
    }
}

/// Bounds applied to the replies of one connection.
#[derive(Clone, Copy, Debug)]
pub struct ReplyLimits {
    /// Bytes kept for one reply (payloads plus [`ELEMENT_CHARGE_BYTES`] per element).
    pub reply_bytes_max: usize,
    /// Larger bulk strings are discarded ([`Value::Oversize`]).
    pub bulk_bytes_max: usize,
}

/// One connection to a Redis server.
pub struct Conn {
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
    limits: ReplyLimits,
    io_timeout: Duration,
}

impl Conn {
    /// Connect to `addr` (`host:port`, resolved now) within `connect_timeout`;
    /// every later read and write gets `io_timeout`.
    pub fn connect(
        addr: &str,
        connect_timeout: Duration,
        io_timeout: Duration,
        limits: ReplyLimits,
    ) -> Result<Conn, BusError> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "resolves to no address");
        for sa in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&sa, connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(io_timeout))?;
                    stream.set_write_timeout(Some(io_timeout))?;
                    return Ok(Conn {
                        reader: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
                        out: Vec::with_capacity(1024),
                        limits,
                        io_timeout,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(BusError::Io(last))
    }

    /// Send one command and read its reply. An error reply is `Err(Server)`.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Value, BusError> {
        self.command_within(args, self.io_timeout)
    }

    /// Like [`Conn::command`], with a longer read timeout for a blocking
    /// command (`XREAD BLOCK`).
    pub fn command_within(
        &mut self,
        args: &[&[u8]],
        read_timeout: Duration,
    ) -> Result<Value, BusError> {
        self.out.clear();
        encode(&mut self.out, args);
        self.flush()?;
        if read_timeout != self.io_timeout {
            self.reader.get_ref().set_read_timeout(Some(read_timeout))?;
        }
        let reply = self.read_reply();
        if read_timeout != self.io_timeout {
            self.reader
                .get_ref()
                .set_read_timeout(Some(self.io_timeout))?;
        }
        match reply? {
            Value::Error(m) => Err(BusError::Server(m)),
            v => Ok(v),
        }
    }

    /// Send several commands in one write, then read their replies in order.
    /// Error replies stay in the result as [`Value::Error`].
    pub fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<Vec<Value>, BusError> {
        self.out.clear();
        for c in commands {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode(&mut self.out, &args);
        }
        self.flush()?;
        commands.iter().map(|_| self.read_reply()).collect()
    }

    fn flush(&mut self) -> Result<(), BusError> {
        let stream = self.reader.get_mut();
        stream.write_all(&self.out)?;
        Ok(())
    }

    fn read_reply(&mut self) -> Result<Value, BusError> {
        let mut budget = self.limits.reply_bytes_max;
        read_value(&mut self.reader, self.limits, &mut budget, 0)
    }
}

/// Append one command (an array of bulk strings) to `out`.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn charge(budget: &mut usize, bytes: usize) -> Result<(), BusError> {
    match budget.checked_sub(bytes.saturating_add(ELEMENT_CHARGE_BYTES)) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        None => Err(BusError::Protocol(
            "reply larger than reply_bytes_max".into(),
        )),
    }
}

fn read_line<R: BufRead>(r: &mut R) -> Result<Vec<u8>, BusError> {
    let mut line = Vec::with_capacity(32);
    let n = r
        .take(LINE_BYTES_MAX as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(BusError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(BusError::Protocol(if n > LINE_BYTES_MAX {
            "reply line too long".into()
        } else {
            "reply line without CRLF".into()
        }));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(b: &[u8]) -> Result<i64, BusError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BusError::Protocol(format!("bad integer {:?}", String::from_utf8_lossy(b))))
}

/// Read one reply, charging what it keeps against `budget`.
pub fn read_value<R: BufRead>(
    r: &mut R,
    limits: ReplyLimits,
    budget: &mut usize,
    depth: usize,
) -> Result<Value, BusError> {
    if depth > DEPTH_MAX {
        return Err(BusError::Protocol("reply nested too deep".into()));
    }
    let line = read_line(r)?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| BusError::Protocol("empty reply line".into()))?;
    charge(budget, rest.len())?;
    match kind {
        b'+' => Ok(Value::Simple(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Ok(Value::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => Ok(Value::Int(parse_int(rest)?)),
        b'$' => {
            let n = parse_int(rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let n = usize::try_from(n).map_err(|_| BusError::Protocol("bulk length".into()))?;
            if n > limits.bulk_bytes_max {
                let skipped = io::copy(&mut r.take(n as u64 + 2), &mut io::sink())?;
                if skipped != n as u64 + 2 {
                    return Err(BusError::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                return Ok(Value::Oversize(n));
            }
            charge(budget, n)?;
            let mut buf = vec![0u8; n + 2];
            r.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(BusError::Protocol("bulk string without CRLF".into()));
            }
            buf.truncate(n);
            Ok(Value::Bulk(buf))
        }
        b'*' => {
            let n = parse_int(rest)?;
            if n < 0 {
                return Ok(Value::Nil);
            }
            let n = usize::try_from(n).map_err(|_| BusError::Protocol("array length".into()))?;
            // Every element costs at least its charge: refuse early rather
            // than allocate for a count the budget cannot hold.
            if n > *budget / ELEMENT_CHARGE_BYTES {
                return Err(BusError::Protocol(
                    "reply larger than reply_bytes_max".into(),
                ));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(r, limits, budget, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        other => Err(BusError::Protocol(format!(
            "unknown reply type {:?}",
            other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ReplyLimits = ReplyLimits {
        reply_bytes_max: 1024,
        bulk_bytes_max: 16,
    };

    fn parse(bytes: &[u8]) -> Result<Value, BusError> {
        let mut budget = LIMITS.reply_bytes_max;
        read_value(&mut &bytes[..], LIMITS, &mut budget, 0)
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Value::Simple("OK".into()));
        assert_eq!(
            parse(b"-ERR no\r\n").unwrap(),
            Value::Error("ERR no".into())
        );
        assert_eq!(parse(b":-12\r\n").unwrap(), Value::Int(-12));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Value::Nil);
        assert_eq!(parse(b"*-1\r\n").unwrap(), Value::Nil);
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").unwrap(),
            Value::Bulk(b"a\r\n".to_vec())
        );
        assert_eq!(
            parse(b"*2\r\n$1\r\nx\r\n*1\r\n:1\r\n").unwrap(),
            Value::Array(vec![
                Value::Bulk(b"x".to_vec()),
                Value::Array(vec![Value::Int(1)])
            ])
        );
    }

    #[test]
    fn oversize_bulk_is_skipped_and_the_reply_continues() {
        let reply = b"*2\r\n$20\r\n01234567890123456789\r\n$1\r\ny\r\n";
        assert_eq!(
            parse(reply).unwrap(),
            Value::Array(vec![Value::Oversize(20), Value::Bulk(b"y".to_vec())])
        );
    }

    #[test]
    fn refuses_what_breaks_a_bound() {
        assert!(matches!(parse(b"*1000\r\n"), Err(BusError::Protocol(_))));
        let deep = b"*1\r\n".repeat(DEPTH_MAX + 2);
        assert!(matches!(parse(&deep), Err(BusError::Protocol(_))));
        let long = [
            b"+".to_vec(),
            vec![b'a'; LINE_BYTES_MAX + 10],
            b"\r\n".to_vec(),
        ]
        .concat();
        assert!(matches!(parse(&long), Err(BusError::Protocol(_))));
        assert!(matches!(parse(b"?x\r\n"), Err(BusError::Protocol(_))));
        assert!(matches!(
            parse(b"$3\r\nabcd\r\n"),
            Err(BusError::Protocol(_))
        ));
        assert!(matches!(parse(b":x\r\n"), Err(BusError::Protocol(_))));
        assert!(matches!(parse(b"+OK"), Err(BusError::Protocol(_))));
        assert!(matches!(parse(b""), Err(BusError::Io(_))));
        // Many small elements exhaust the budget too.
        let many = [b"*60\r\n".to_vec(), b"$10\r\n0123456789\r\n".repeat(60)].concat();
        assert!(matches!(parse(&many), Err(BusError::Protocol(_))));
    }

    /// RESP2 bytes of `v` (what a server would send).
    fn wire(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
            Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
            Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Value::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Oversize(_) | Value::Nil => out.extend_from_slice(b"$-1\r\n"),
            Value::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    wire(i, out);
                }
            }
        }
    }

    fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Simple),
            "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Error),
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bulk),
            Just(Value::Nil),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Value::Array)
        })
    }

    proptest::proptest! {
        #[test]
        fn replies_parse_back_to_what_was_sent(v in value()) {
            let mut bytes = Vec::new();
            wire(&v, &mut bytes);
            let mut budget = 1 << 20;
            let limits = ReplyLimits { reply_bytes_max: 1 << 20, bulk_bytes_max: 1 << 10 };
            let got = read_value(&mut &bytes[..], limits, &mut budget, 0).unwrap();
            proptest::prop_assert_eq!(got, v);
        }

        #[test]
        fn any_bytes_give_a_value_or_an_error_never_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_replies_never_panic(v in value(), at in 0usize..512, byte in 0u8..=255) {
            let mut bytes = Vec::new();
            wire(&v, &mut bytes);
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            let _ = parse(&bytes);
        }
    }
}
