//! Structured field dictionaries (RFC 8941 §3.2, parsing per §4.2), strict,
//! borrowed, no allocation.
//!
//! ringcache reads the targeted cache-control fields (RFC 9213) with this.
//! [`Dictionary::parse`] checks the whole field value first; a value that
//! fails anywhere is rejected as a whole (RFC 8941 §4.2: the field is then
//! ignored). Once checked, [`Dictionary::members`] walks it again and
//! cannot fail. Every bare item type is recognised so that a valid field
//! is never rejected, but only integers, booleans, tokens and strings are
//! decoded into values; decimals, byte sequences and inner lists are
//! returned as their raw text.
//!
//! ```text
//!  max-age=60, no-store, private;x=1, note="a \"q\"", l=(a b);p
//!  └ key=Integer  └ Boolean(true) └ params   └ String (escaped)  └ InnerList
//! ```

/// Keys longer than this are refused; no cache directive comes close.
pub const KEY_BYTES_MAX: usize = 64;

/// Why a field value is not a valid dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SfError {
    /// Offset of the first byte that does not fit the grammar.
    pub at: usize,
}

/// A bare item (RFC 8941 §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareItem<'a> {
    /// At most 15 digits (§3.3.1).
    Integer(i64),
    /// As written, e.g. `-1.25` (§3.3.2).
    Decimal(&'a [u8]),
    /// The text between the quotes, escapes still in place (§3.3.3).
    String(&'a [u8]),
    Token(&'a [u8]),
    /// The base64 text between the colons (§3.3.5).
    Bytes(&'a [u8]),
    Boolean(bool),
}

/// A dictionary member's value: an item or an inner list (raw, with the
/// parentheses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Item(BareItem<'a>),
    InnerList(&'a [u8]),
}

/// One dictionary member. A key without `=` has the value `?1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    pub key: &'a [u8],
    pub value: Value<'a>,
    /// The member's parameters, raw (starting with `;`, or empty).
    pub params: Params<'a>,
}

/// Parameters (§3.1.2), iterated as (key, bare item); only produced from
/// checked input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<'a> {
    raw: &'a [u8],
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], BareItem<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut c = Cursor {
            s: self.raw,
            pos: 0,
        };
        let (key, item) = c.parameter().ok()??;
        self.raw = &self.raw[c.pos..];
        Some((key, item))
    }
}

/// A checked dictionary field value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dictionary<'a> {
    raw: &'a [u8],
}

impl<'a> Dictionary<'a> {
    /// Check one field value. An empty value (after removing spaces) is an
    /// empty dictionary.
    pub fn parse(raw: &'a [u8]) -> Result<Dictionary<'a>, SfError> {
        let mut members = Members::new(raw);
        while members.next_member()?.is_some() {}
        Ok(Dictionary { raw })
    }

    /// The members in order; duplicates are all returned, so a caller
    /// that assigns in order ends with the last one, as §3.2 requires.
    pub fn members(&self) -> impl Iterator<Item = Member<'a>> {
        let mut m = Members::new(self.raw);
        std::iter::from_fn(move || m.next_member().ok().flatten())
    }

    /// No members.
    pub fn is_empty(&self) -> bool {
        self.members().next().is_none()
    }
}

struct Members<'a> {
    c: Cursor<'a>,
    first: bool,
}

impl<'a> Members<'a> {
    fn new(raw: &'a [u8]) -> Members<'a> {
        let mut c = Cursor { s: raw, pos: 0 };
        c.skip_sp();
        Members { c, first: true }
    }

    fn next_member(&mut self) -> Result<Option<Member<'a>>, SfError> {
        let c = &mut self.c;
        if !self.first {
            c.skip_ows();
            if c.at_end() {
                return Ok(None);
            }
            c.expect(b',')?;
            c.skip_ows();
            if c.at_end() {
                return Err(c.err()); // trailing comma
            }
        } else {
            // Trailing spaces of the whole value are discarded (§4.2).
            if c.rest().iter().all(|&b| b == b' ') {
                c.pos = c.s.len();
                return Ok(None);
            }
        }
        self.first = false;
        let key = c.key()?;
        let value = if c.peek() == Some(b'=') {
            c.pos += 1;
            if c.peek() == Some(b'(') {
                Value::InnerList(c.inner_list()?)
            } else {
                Value::Item(c.bare_item()?)
            }
        } else {
            Value::Item(BareItem::Boolean(true))
        };
        let params = c.params()?;
        Ok(Some(Member { key, value, params }))
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self) -> SfError {
        SfError { at: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn rest(&self) -> &'a [u8] {
        &self.s[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn expect(&mut self, b: u8) -> Result<(), SfError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    /// key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
    fn key(&mut self) -> Result<&'a [u8], SfError> {
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => {}
            _ => return Err(self.err()),
        }
        let key =
            self.take_while(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*'));
        if key.len() > KEY_BYTES_MAX {
            return Err(self.err());
        }
        Ok(key)
    }

    fn params(&mut self) -> Result<Params<'a>, SfError> {
        let start = self.pos;
        while self.parameter()?.is_some() {}
        Ok(Params {
            raw: &self.s[start..self.pos],
        })
    }

    /// `;` *SP key [ "=" bare-item ], or `None` when no `;` follows.
    fn parameter(&mut self) -> Result<Option<(&'a [u8], BareItem<'a>)>, SfError> {
        if self.peek() != Some(b';') {
            return Ok(None);
        }
        self.pos += 1;
        self.skip_sp();
        let key = self.key()?;
        let item = if self.peek() == Some(b'=') {
            self.pos += 1;
            self.bare_item()?
        } else {
            BareItem::Boolean(true)
        };
        Ok(Some((key, item)))
    }

    /// inner-list = "(" *SP [ sf-item *( 1*SP sf-item ) *SP ] ")" parameters
    /// (the parameters after `)` are left for the caller).
    fn inner_list(&mut self) -> Result<&'a [u8], SfError> {
        let start = self.pos;
        self.expect(b'(')?;
        loop {
            self.skip_sp();
            if self.peek() == Some(b')') {
                self.pos += 1;
                return Ok(&self.s[start..self.pos]);
            }
            self.bare_item()?;
            self.params()?;
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err(self.err()),
            }
        }
    }

    fn bare_item(&mut self) -> Result<BareItem<'a>, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => {
                self.pos += 1;
                let v = match self.peek() {
                    Some(b'0') => false,
                    Some(b'1') => true,
                    _ => return Err(self.err()),
                };
                self.pos += 1;
                Ok(BareItem::Boolean(v))
            }
            Some(b) if b.is_ascii_alphabetic() || b == b'*' => {
                let t = self.take_while(|b| is_tchar(b) || b == b':' || b == b'/');
                Ok(BareItem::Token(t))
            }
            _ => Err(self.err()),
        }
    }

    /// §4.2.4: integers of at most 15 digits, decimals of at most 12
    /// integer and 1..=3 fraction digits.
    fn number(&mut self) -> Result<BareItem<'a>, SfError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int = self.take_while(|b| b.is_ascii_digit());
        if int.is_empty() {
            return Err(self.err());
        }
        if self.peek() == Some(b'.') {
            if int.len() > 12 {
                return Err(self.err());
            }
            self.pos += 1;
            let frac = self.take_while(|b| b.is_ascii_digit());
            if frac.is_empty() || frac.len() > 3 {
                return Err(self.err());
            }
            return Ok(BareItem::Decimal(&self.s[start..self.pos]));
        }
        if int.len() > 15 {
            return Err(self.err());
        }
        let n = int.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
        Ok(BareItem::Integer(if negative { -n } else { n }))
    }

    /// §4.2.5: printable ASCII, `\` escapes only `"` and `\`.
    fn string(&mut self) -> Result<BareItem<'a>, SfError> {
        self.expect(b'"')?;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'"' | b'\\') => self.pos += 1,
                        _ => return Err(self.err()),
                    }
                }
                Some(b'"') => {
                    let inner = &self.s[start..self.pos];
                    self.pos += 1;
                    return Ok(BareItem::String(inner));
                }
                Some(0x20..=0x7e) => self.pos += 1,
                _ => return Err(self.err()),
            }
        }
    }

    /// §4.2.7: base64 between colons.
    fn bytes(&mut self) -> Result<BareItem<'a>, SfError> {
        self.expect(b':')?;
        let inner =
            self.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        self.expect(b':')?;
        Ok(BareItem::Bytes(inner))
    }
}

/// tchar (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row<'a> = (Vec<u8>, Value<'a>, Vec<(&'a [u8], BareItem<'a>)>);

    fn members(s: &[u8]) -> Vec<Row<'_>> {
        Dictionary::parse(s)
            .unwrap()
            .members()
            .map(|m| (m.key.to_vec(), m.value, m.params.collect()))
            .collect()
    }

    #[test]
    fn rfc8941_3_2_dictionary_items_and_booleans() {
        let m = members(b"max-age=60, no-store, private;x=1, s=\"a \\\"q\\\"\", t=tok/1:2");
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].1, Value::Item(BareItem::Integer(60)));
        assert_eq!(m[1].1, Value::Item(BareItem::Boolean(true)));
        assert_eq!(m[2].2, vec![(&b"x"[..], BareItem::Integer(1))]);
        assert_eq!(m[3].1, Value::Item(BareItem::String(b"a \\\"q\\\"")));
        assert_eq!(m[4].1, Value::Item(BareItem::Token(b"tok/1:2")));
    }

    #[test]
    fn rfc8941_3_3_other_bare_items() {
        let m = members(b"a=?0, b=-1.25, c=:aGk=:, d=(1 \"x\" y;p);q, e=-999999999999999, f=*x");
        assert_eq!(m[0].1, Value::Item(BareItem::Boolean(false)));
        assert_eq!(m[1].1, Value::Item(BareItem::Decimal(b"-1.25")));
        assert_eq!(m[2].1, Value::Item(BareItem::Bytes(b"aGk=")));
        assert_eq!(m[3].1, Value::InnerList(b"(1 \"x\" y;p)"));
        assert_eq!(m[3].2, vec![(&b"q"[..], BareItem::Boolean(true))]);
        assert_eq!(m[4].1, Value::Item(BareItem::Integer(-999_999_999_999_999)));
        assert_eq!(m[5].1, Value::Item(BareItem::Token(b"*x")));
    }

    #[test]
    fn rfc8941_4_2_whitespace_and_empty() {
        assert!(Dictionary::parse(b"").unwrap().is_empty());
        assert!(Dictionary::parse(b"   ").unwrap().is_empty());
        assert_eq!(members(b"  a=1 ,\tb  ").len(), 2);
        assert_eq!(members(b"a;  p=1").len(), 1);
    }

    #[test]
    fn rfc8941_4_2_duplicate_keys_all_returned_last_wins_for_caller() {
        let m = members(b"a=1, a=2");
        assert_eq!(m[1].1, Value::Item(BareItem::Integer(2)));
    }

    #[test]
    fn rfc8941_strict_failures() {
        for bad in [
            &b"Max-Age=1"[..], // keys are lowercase
            b"a=1,",           // trailing comma
            b"a=1,,b",
            b",a",
            b"\ta", // leading HTAB is not SP
            b"a=1 b=2",
            b"a=1234567890123456", // 16 digits
            b"a=1.",
            b"a=1.2345",
            b"a=1234567890123.1",
            b"a=\"unterminated",
            b"a=\"bad\\escape\"",
            b"a=\"\x01\"",
            b"a=?2",
            b"a=:abc",
            b"a=(1 2",
            b"a=(1,2)",
            b"a=",
            b"a=-",
            b"a;P=1",
            b"1a",
            b"a=\xff",
        ] {
            assert!(
                Dictionary::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b'k'; KEY_BYTES_MAX + 1];
        assert!(Dictionary::parse(&long).is_err());
    }
}
