//! Secondary cache keys (RFC 9111 §4.1).
//!
//! A stored response's `Vary` names request fields; the values the
//! original request had for them form the secondary key, stored with the
//! variant. A later request matches when its values, normalised the same
//! way, give the same bytes. Normalisation (§4.1 allows it): field names
//! lowercased; all lines of a field combined as one list (RFC 9110 §5.3);
//! each element trimmed and its runs of whitespace outside quoted strings
//! cut to one space, none around `;`, `=` and `,`. An absent field and an
//! empty one differ.
//!
//! ```text
//!  per nominated field:  name 0x00 ( 0x01 | 0x02 element *( "," element ) ) 0x00
//!                                    absent  present
//! ```

use httparse::Header;

use super::headers::{list_elements, values};
use super::sink::{Compare, Full, Out};

/// Why no secondary key can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VaryError {
    /// `Vary: *`: no request matches (the response is not stored).
    Star,
    Full,
}

impl From<Full> for VaryError {
    fn from(_: Full) -> VaryError {
        VaryError::Full
    }
}

/// Does the response vary at all? (A hit without `Vary` skips the rest.)
pub fn has_vary(response: &[Header<'_>]) -> bool {
    values(response, b"vary")
        .flat_map(list_elements)
        .next()
        .is_some()
}

/// Write the field names a response's `Vary` nominates, normalised:
/// lowercased, in order, joined by `,` (all `Vary` lines as one list).
/// Read back as a `Vary` value by [`write_secondary_key`], so a cache can
/// keep the names alone and key later requests by them.
pub fn write_vary_names(response: &[Header<'_>], out: &mut impl Out) -> Result<(), VaryError> {
    let mut first = true;
    for name in values(response, b"vary").flat_map(list_elements) {
        if name == b"*" {
            return Err(VaryError::Star);
        }
        if !first {
            out.put(b",")?;
        }
        first = false;
        for &b in name {
            out.put(&[b.to_ascii_lowercase()])?;
        }
    }
    Ok(())
}

/// Write the secondary key of `request` for a response with these fields
/// (its `Vary`); nothing when it has no `Vary`. The proxy appends it to
/// the primary key when it stores a variant.
pub fn write_secondary_key(
    response: &[Header<'_>],
    request: &[Header<'_>],
    out: &mut impl Out,
) -> Result<(), VaryError> {
    for name in values(response, b"vary").flat_map(list_elements) {
        if name == b"*" {
            return Err(VaryError::Star);
        }
        for &b in name {
            out.put(&[b.to_ascii_lowercase()])?;
        }
        out.put(b"\0")?;
        let mut lines = values(request, name).peekable();
        if lines.peek().is_none() {
            out.put(b"\x01\0")?;
            continue;
        }
        out.put(b"\x02")?;
        let mut first = true;
        for element in lines.flat_map(list_elements) {
            if !first {
                out.put(b",")?;
            }
            first = false;
            put_normalised(element, out)?;
        }
        out.put(b"\0")?;
    }
    Ok(())
}

/// Does a stored variant (its response fields and the secondary key stored
/// with it) answer this request? No buffer: the key is compared as it is
/// produced.
pub fn variant_matches(response: &[Header<'_>], stored_key: &[u8], request: &[Header<'_>]) -> bool {
    let mut cmp = Compare::new(stored_key);
    write_secondary_key(response, request, &mut cmp).is_ok() && cmp.matched()
}

/// One list element with its whitespace normalised.
fn put_normalised(element: &[u8], out: &mut impl Out) -> Result<(), Full> {
    let mut quoted = false;
    let mut escaped = false;
    let mut pending_space = false;
    let mut prev = 0u8;
    for &b in element {
        if quoted {
            out.put(&[b])?;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
            prev = b;
            continue;
        }
        if b == b' ' || b == b'\t' {
            pending_space = true;
            continue;
        }
        let separator = |c: u8| c == b';' || c == b'=';
        if pending_space && !separator(b) && !separator(prev) {
            out.put(b" ")?;
        }
        pending_space = false;
        if b == b'"' {
            quoted = true;
        }
        out.put(&[b])?;
        prev = b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    fn key(resp: &[Header<'_>], req: &[Header<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        write_secondary_key(resp, req, &mut out).unwrap();
        out
    }

    #[test]
    fn rfc9111_4_1_key_from_nominated_fields() {
        let resp = [h("Vary", b"Accept-Encoding, ACCEPT")];
        let req = [h("accept", b"text/html"), h("Accept-Encoding", b"gzip")];
        assert_eq!(
            key(&resp, &req),
            b"accept-encoding\0\x02gzip\0accept\0\x02text/html\0"
        );
        assert!(key(&[], &req).is_empty());
        assert!(!has_vary(&[h("Vary", b" , ")]) && has_vary(&resp));
    }

    #[test]
    fn rfc9111_4_1_normalisation_case_whitespace_and_combined_lines() {
        let resp = [h("Vary", b"accept-encoding")];
        let a = key(&resp, &[h("Accept-Encoding", b"gzip ;  q=1.0,br")]);
        let b = key(
            &resp,
            &[
                h("accept-encoding", b"gzip;q=1.0"),
                h("ACCEPT-ENCODING", b" br "),
            ],
        );
        assert_eq!(a, b);
        let c = key(&resp, &[h("Accept-Encoding", b"gzip;q=1.0, br")]);
        assert_eq!(a, c);
        // Quoted strings keep their spaces.
        let q1 = key(&resp, &[h("Accept-Encoding", b"x;p=\"a  b\"")]);
        let q2 = key(&resp, &[h("Accept-Encoding", b"x;p=\"a b\"")]);
        assert_ne!(q1, q2);
        // Absent differs from empty.
        assert_ne!(key(&resp, &[]), key(&resp, &[h("Accept-Encoding", b"")]));
        // Order of elements is significant.
        assert_ne!(a, key(&resp, &[h("Accept-Encoding", b"br, gzip;q=1.0")]));
    }

    #[test]
    fn rfc9111_4_1_variant_matching() {
        let resp = [h("Vary", b"Accept-Language"), h("Vary", b"Origin")];
        let stored = key(
            &resp,
            &[h("Accept-Language", b"en"), h("Origin", b"https://a")],
        );
        assert!(variant_matches(
            &resp,
            &stored,
            &[h("origin", b"https://a"), h("accept-language", b" en")]
        ));
        assert!(!variant_matches(
            &resp,
            &stored,
            &[h("Accept-Language", b"en")]
        ));
        assert!(!variant_matches(
            &resp,
            &stored,
            &[h("Accept-Language", b"fr"), h("Origin", b"https://a")]
        ));
        assert!(!variant_matches(
            &resp,
            &stored[..stored.len() - 1],
            &[h("Accept-Language", b"en"), h("Origin", b"https://a")]
        ));
        assert!(variant_matches(&[], b"", &[]));
    }

    #[test]
    fn rfc9111_4_1_names_read_back_as_vary() {
        let resp = [h("Vary", b"Accept-Encoding , ACCEPT"), h("vary", b"Origin")];
        let mut names = Vec::new();
        write_vary_names(&resp, &mut names).unwrap();
        assert_eq!(names, b"accept-encoding,accept,origin");
        let req = [h("accept", b"a"), h("Origin", b"o")];
        let as_vary = [h("vary", &names)];
        assert_eq!(key(&resp, &req), key(&as_vary, &req));
        assert_eq!(
            write_vary_names(&[h("Vary", b"*")], &mut Vec::new()),
            Err(VaryError::Star)
        );
    }

    #[test]
    fn rfc9111_4_1_vary_star_never_matches() {
        let resp = [h("Vary", b"Accept, *")];
        let mut out = Vec::new();
        assert_eq!(
            write_secondary_key(&resp, &[], &mut out),
            Err(VaryError::Star)
        );
        assert!(!variant_matches(&resp, b"", &[]));
    }
}
