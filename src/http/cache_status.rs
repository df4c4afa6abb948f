//! The `Cache-Status` field (RFC 9211), written without allocation.
//!
//! ```text
//!  Cache-Status: ringcache; hit; ttl=42
//!  Cache-Status: ringcache; fwd=stale; fwd-status=304; ttl=60; stored
//!  Cache-Status: ringcache; fwd=uri-miss; fwd-status=200; stored; collapsed
//! ```

use super::sf::is_tchar;
use super::sink::{Full, Out};

/// Why the request went to the origin (RFC 9211 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fwd {
    Bypass,
    Method,
    UriMiss,
    VaryMiss,
    Miss,
    Request,
    Stale,
    Partial,
}

impl Fwd {
    pub fn token(self) -> &'static [u8] {
        match self {
            Fwd::Bypass => b"bypass",
            Fwd::Method => b"method",
            Fwd::UriMiss => b"uri-miss",
            Fwd::VaryMiss => b"vary-miss",
            Fwd::Miss => b"miss",
            Fwd::Request => b"request",
            Fwd::Stale => b"stale",
            Fwd::Partial => b"partial",
        }
    }
}

/// One ringcache entry of `Cache-Status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStatus<'a> {
    /// `hit` (§2.1): served from cache without going forward. Written
    /// instead of `fwd` when both are set.
    pub hit: bool,
    pub fwd: Option<Fwd>,
    /// §2.3: the status the origin answered.
    pub fwd_status: Option<u16>,
    /// §2.7: remaining freshness, negative when stale.
    pub ttl_secs: Option<i64>,
    /// §2.5
    pub stored: bool,
    /// §2.6
    pub collapsed: bool,
    /// §2.8: a token when it is one, else a string (bytes outside
    /// printable ASCII are dropped).
    pub detail: Option<&'a [u8]>,
}

impl CacheStatus<'_> {
    /// Write the field value.
    pub fn write_value(&self, out: &mut impl Out) -> Result<(), Full> {
        out.put(b"ringcache")?;
        if self.hit {
            out.put(b"; hit")?;
        } else if let Some(fwd) = self.fwd {
            out.put(b"; fwd=")?;
            out.put(fwd.token())?;
        }
        if let (false, Some(status)) = (self.hit, self.fwd_status) {
            out.put(b"; fwd-status=")?;
            out.put_u64(u64::from(status))?;
        }
        if let Some(ttl) = self.ttl_secs {
            out.put(b"; ttl=")?;
            // RFC 8941 Integers have at most 15 digits.
            out.put_i64(ttl.clamp(-999_999_999_999_999, 999_999_999_999_999))?;
        }
        if self.stored {
            out.put(b"; stored")?;
        }
        if self.collapsed {
            out.put(b"; collapsed")?;
        }
        if let Some(detail) = self.detail {
            out.put(b"; detail=")?;
            let token = detail
                .first()
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'*')
                && detail
                    .iter()
                    .all(|&b| is_tchar(b) || b == b':' || b == b'/');
            if token {
                out.put(detail)?;
            } else {
                out.put(b"\"")?;
                for &b in detail {
                    match b {
                        b'"' | b'\\' => out.put(&[b'\\', b])?,
                        0x20..=0x7e => out.put(&[b])?,
                        _ => {}
                    }
                }
                out.put(b"\"")?;
            }
        }
        Ok(())
    }

    /// Write the whole field line, CRLF included.
    pub fn write_field(&self, out: &mut impl Out) -> Result<(), Full> {
        out.put(b"Cache-Status: ")?;
        self.write_value(out)?;
        out.put(b"\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::sf::Dictionary;
    use crate::http::sink::FixedBuf;

    fn value(cs: &CacheStatus<'_>) -> String {
        let mut raw = [0u8; 256];
        let mut b = FixedBuf::new(&mut raw);
        cs.write_value(&mut b).unwrap();
        String::from_utf8(b.written().to_vec()).unwrap()
    }

    #[test]
    fn rfc9211_2_1_hit_with_ttl() {
        let cs = CacheStatus {
            hit: true,
            fwd_status: Some(200),
            ttl_secs: Some(42),
            ..Default::default()
        };
        assert_eq!(value(&cs), "ringcache; hit; ttl=42");
    }

    #[test]
    fn rfc9211_2_2_fwd_reasons_status_stored_collapsed() {
        for (fwd, t) in [
            (Fwd::UriMiss, "uri-miss"),
            (Fwd::VaryMiss, "vary-miss"),
            (Fwd::Miss, "miss"),
            (Fwd::Stale, "stale"),
            (Fwd::Request, "request"),
            (Fwd::Method, "method"),
            (Fwd::Bypass, "bypass"),
        ] {
            let cs = CacheStatus {
                fwd: Some(fwd),
                fwd_status: Some(304),
                ttl_secs: Some(-5),
                stored: true,
                collapsed: true,
                ..Default::default()
            };
            assert_eq!(
                value(&cs),
                format!("ringcache; fwd={t}; fwd-status=304; ttl=-5; stored; collapsed")
            );
        }
    }

    #[test]
    fn rfc9211_2_8_detail_token_or_string_and_valid_structured_field() {
        let cs = |d: &'static [u8]| CacheStatus {
            fwd: Some(Fwd::Miss),
            detail: Some(d),
            ..Default::default()
        };
        assert_eq!(
            value(&cs(b"no-store")),
            "ringcache; fwd=miss; detail=no-store"
        );
        assert_eq!(
            value(&cs(b"two words \"q\"\x01")),
            "ringcache; fwd=miss; detail=\"two words \\\"q\\\"\""
        );
        assert_eq!(value(&cs(b"")), "ringcache; fwd=miss; detail=\"\"");
        // The value is an RFC 8941 List member; as a one-member dictionary
        // key it parses, which checks the parameter syntax.
        for v in [value(&cs(b"a b\\")), value(&cs(b"x"))] {
            assert!(Dictionary::parse(v.as_bytes()).is_ok(), "{v}");
        }
    }

    #[test]
    fn writes_nothing_past_a_small_buffer() {
        let mut raw = [0u8; 12];
        let mut b = FixedBuf::new(&mut raw);
        let cs = CacheStatus {
            hit: true,
            ..Default::default()
        };
        assert_eq!(cs.write_field(&mut b), Err(Full));
        let mut v = Vec::new();
        cs.write_field(&mut v).unwrap();
        assert_eq!(v, b"Cache-Status: ringcache; hit\r\n");
    }
}
