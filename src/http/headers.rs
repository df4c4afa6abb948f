//! Field lookups over a parsed head: borrowed slices, no allocation.
//!
//! Field names compare case-insensitively (RFC 9110 §5.1). List-valued
//! fields are split with [`list_elements`], which honours quoted strings
//! and skips empty elements (RFC 9110 §5.6.1).

use httparse::Header;

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"trailer",
];

/// True for the fixed hop-by-hop field names, case-insensitive.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// True when a Connection field (any line, comma list, case-insensitive)
/// lists `name` — such fields are hop-by-hop too.
pub fn connection_lists(headers: &[Header<'_>], name: &[u8]) -> bool {
    values(headers, b"connection")
        .flat_map(list_elements)
        .any(|e| e.eq_ignore_ascii_case(name))
}

/// The value of the first field called `name`, case-insensitive.
pub fn get<'b>(headers: &[Header<'b>], name: &[u8]) -> Option<&'b [u8]> {
    values(headers, name).next()
}

/// The values of every field called `name`, in order, case-insensitive.
pub fn values<'a, 'b>(
    headers: &'a [Header<'b>],
    name: &'a [u8],
) -> impl Iterator<Item = &'b [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.as_bytes().eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// How many fields are called `name`.
pub fn count(headers: &[Header<'_>], name: &[u8]) -> usize {
    values(headers, name).count()
}

/// `v` without leading and trailing SP/HTAB (optional whitespace).
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// The elements of one comma-separated field value, OWS-trimmed, empty
/// elements skipped. Commas inside a quoted string do not split.
pub fn list_elements(value: &[u8]) -> ListElements<'_> {
    ListElements { rest: value }
}

/// Iterator returned by [`list_elements`].
#[derive(Clone, Debug)]
pub struct ListElements<'v> {
    rest: &'v [u8],
}

impl<'v> Iterator for ListElements<'v> {
    type Item = &'v [u8];

    fn next(&mut self) -> Option<&'v [u8]> {
        while !self.rest.is_empty() {
            let mut quoted = false;
            let mut escaped = false;
            let mut end = self.rest.len();
            for (i, &b) in self.rest.iter().enumerate() {
                if escaped {
                    escaped = false;
                } else if quoted && b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = !quoted;
                } else if b == b',' && !quoted {
                    end = i;
                    break;
                }
            }
            let element = trim_ows(&self.rest[..end]);
            self.rest = self.rest.get(end + 1..).unwrap_or(&[]);
            if !element.is_empty() {
                return Some(element);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    #[test]
    fn hop_by_hop_names() {
        for n in [
            &b"Connection"[..],
            b"PROXY-CONNECTION",
            b"keep-alive",
            b"TE",
            b"Transfer-Encoding",
            b"upgrade",
            b"Trailer",
        ] {
            assert!(is_hop_by_hop(n), "{:?}", n);
        }
        assert!(!is_hop_by_hop(b"Content-Length"));
        assert!(!is_hop_by_hop(b"Trailers"));
        assert!(!is_hop_by_hop(b""));
    }

    #[test]
    fn connection_lists_over_lines_and_lists() {
        let hs = [
            h("Connection", b"keep-alive"),
            h("X", b"y"),
            h("connection", b" close ,X-Secret"),
        ];
        assert!(connection_lists(&hs, b"x-secret"));
        assert!(connection_lists(&hs, b"CLOSE"));
        assert!(connection_lists(&hs, b"Keep-Alive"));
        assert!(!connection_lists(&hs, b"x"));
        assert!(!connection_lists(&[], b"close"));
    }

    #[test]
    fn get_first_case_insensitive() {
        let hs = [h("Host", b"a"), h("HOST", b"b")];
        assert_eq!(get(&hs, b"host"), Some(&b"a"[..]));
        assert_eq!(get(&hs, b"hos"), None);
        assert_eq!(count(&hs, b"Host"), 2);
        let all: Vec<_> = values(&hs, b"host").collect();
        assert_eq!(all, [&b"a"[..], b"b"]);
    }

    #[test]
    fn trim() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b"x"), b"x");
    }

    #[test]
    fn list_splitting() {
        let v: Vec<_> = list_elements(b" a, ,b ,, c=\"x, y\" ,d=\"q\\\",\",").collect();
        assert_eq!(v, [&b"a"[..], b"b", b"c=\"x, y\"", b"d=\"q\\\",\""]);
        assert_eq!(list_elements(b" , ,").count(), 0);
        assert_eq!(list_elements(b"").count(), 0);
    }
}
