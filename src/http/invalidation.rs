//! Invalidation after writes (RFC 9111 §4.4).
//!
//! When an unsafe request gets a non-error (2xx or 3xx) response, the
//! proxy invalidates the target URI, and also the URIs in `Location` and
//! `Content-Location` when they have the same origin (§4.4 forbids others).
//! URIs come out as (host, path-and-query), the parts ringcache's cache
//! key is made of; the host is as written (the proxy lowercases it).
//!
//! Relative references are resolved against the target (RFC 3986 §5.2)
//! in a fixed stack buffer; a reference that needs dot-segment removal or
//! does not fit is skipped, since invalidating those URIs is optional
//! (§4.4: "MAY").

use httparse::Header;

use super::headers::{get, trim_ows};
use super::request::Method;

/// Longest resolved path ringcache invalidates from a relative reference.
pub const RESOLVED_PATH_BYTES_MAX: usize = 2048;

/// Does this exchange invalidate anything (§4.4)?
pub fn invalidates(method: Method, status: u16) -> bool {
    !method.is_safe() && (200..400).contains(&status)
}

/// The request as the cache key sees it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// `http` or `https`.
    pub scheme: &'a [u8],
    /// Host and optional port, as in the key.
    pub host: &'a [u8],
    /// Origin-form path and query.
    pub path: &'a [u8],
}

/// Call `f(host, path)` for each URI to invalidate: the target, then
/// same-origin `Location` and `Content-Location`.
pub fn for_each_invalidated(
    method: Method,
    status: u16,
    target: &Target<'_>,
    response: &[Header<'_>],
    mut f: impl FnMut(&[u8], &[u8]),
) {
    if !invalidates(method, status) {
        return;
    }
    f(target.host, target.path);
    for name in [&b"location"[..], b"content-location"] {
        let Some(uri) = get(response, name) else {
            continue;
        };
        let uri = trim_ows(uri);
        let uri = uri.split(|&b| b == b'#').next().unwrap_or(uri);
        if let Some((host, path)) = absolute(uri, target) {
            if same_origin(target, host) {
                f(host, path);
            }
        } else if uri.starts_with(b"/") {
            f(target.host, uri);
        } else if !uri.is_empty() && !has_dot_segment(uri) && !uri.contains(&b':') {
            let dir = match target.path.iter().position(|&b| b == b'?') {
                Some(q) => &target.path[..q],
                None => target.path,
            };
            let dir = &dir[..dir.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)];
            let mut buf = [0u8; RESOLVED_PATH_BYTES_MAX];
            let len = dir.len() + uri.len();
            if !dir.starts_with(b"/") || len > buf.len() {
                continue;
            }
            buf[..dir.len()].copy_from_slice(dir);
            buf[dir.len()..len].copy_from_slice(uri);
            f(target.host, &buf[..len]);
        }
    }
}

/// `scheme://host/path` or `//host/path`: (authority, path); the scheme
/// must be the target's.
fn absolute<'a>(uri: &'a [u8], target: &Target<'_>) -> Option<(&'a [u8], &'a [u8])> {
    let rest = if let Some(rest) = uri.strip_prefix(b"//") {
        rest
    } else {
        let colon = uri.iter().position(|&b| b == b':')?;
        let scheme = &uri[..colon];
        if scheme.is_empty()
            || !scheme
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        {
            return None;
        }
        let rest = uri[colon + 1..].strip_prefix(b"//")?;
        if !scheme.eq_ignore_ascii_case(target.scheme) {
            return Some((b"", b"")); // another origin: skipped below
        }
        rest
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let path = if end == rest.len() {
        &b"/"[..]
    } else {
        &rest[end..]
    };
    Some((&rest[..end], path))
}

/// Same scheme (checked in [`absolute`]), host and port (RFC 9110 §4.3.1),
/// the scheme's default port filled in.
fn same_origin(target: &Target<'_>, host: &[u8]) -> bool {
    if host.is_empty() || host.contains(&b'@') {
        return false;
    }
    let default_port: &[u8] = if target.scheme.eq_ignore_ascii_case(b"https") {
        b"443"
    } else {
        b"80"
    };
    host_port(host, default_port) == host_port(target.host, default_port)
}

/// Host and port of an authority; hosts compare case-insensitively.
fn host_port<'a>(authority: &'a [u8], default_port: &'a [u8]) -> HostPort<'a> {
    let (host, port) = match authority.iter().rposition(|&b| b == b':') {
        Some(i) if !authority[i + 1..].contains(&b']') => (&authority[..i], &authority[i + 1..]),
        _ => (authority, &b""[..]),
    };
    HostPort {
        host,
        port: if port.is_empty() { default_port } else { port },
    }
}

struct HostPort<'a> {
    host: &'a [u8],
    port: &'a [u8],
}

impl PartialEq for HostPort<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.host.eq_ignore_ascii_case(other.host) && self.port == other.port
    }
}

fn has_dot_segment(path: &[u8]) -> bool {
    let path = path.split(|&b| b == b'?').next().unwrap_or(path);
    path.split(|&b| b == b'/').any(|s| s == b"." || s == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a [u8]) -> Header<'a> {
        Header { name, value }
    }

    const T: Target<'static> = Target {
        scheme: b"http",
        host: b"Example.com",
        path: b"/a/b?x=1",
    };

    fn all(method: Method, status: u16, resp: &[Header<'_>]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for_each_invalidated(method, status, &T, resp, |h, p| {
            v.push((
                String::from_utf8_lossy(h).into_owned(),
                String::from_utf8_lossy(p).into_owned(),
            ))
        });
        v
    }

    fn pair(h: &str, p: &str) -> (String, String) {
        (h.to_string(), p.to_string())
    }

    #[test]
    fn rfc9111_4_4_unsafe_non_error_invalidates_target() {
        assert_eq!(
            all(Method::Post, 201, &[]),
            [pair("Example.com", "/a/b?x=1")]
        );
        assert_eq!(all(Method::Delete, 302, &[]).len(), 1);
        assert!(all(Method::Put, 404, &[]).is_empty());
        assert!(all(Method::Post, 500, &[]).is_empty());
        assert!(all(Method::Get, 200, &[]).is_empty());
        assert!(all(Method::Head, 200, &[]).is_empty());
        assert!(invalidates(Method::Patch, 204) && invalidates(Method::Other, 200));
    }

    #[test]
    fn rfc9111_4_4_same_origin_location_and_content_location() {
        let resp = [
            h("Location", b"http://EXAMPLE.com:80/new?y#frag"),
            h("Content-Location", b"c/d"),
        ];
        assert_eq!(
            all(Method::Post, 201, &resp),
            [
                pair("Example.com", "/a/b?x=1"),
                pair("EXAMPLE.com:80", "/new?y"),
                pair("Example.com", "/a/c/d"),
            ]
        );
        let resp = [
            h("Location", b"/x"),
            h("Content-Location", b"//example.com"),
        ];
        assert_eq!(
            all(Method::Put, 200, &resp)[1..],
            [pair("Example.com", "/x"), pair("example.com", "/")]
        );
    }

    #[test]
    fn rfc9111_4_4_other_origins_never_invalidated() {
        for loc in [
            &b"http://evil.com/a"[..],
            b"https://example.com/a",
            b"http://example.com:8080/a",
            b"//evil.com/a",
            b"http://user@example.com/a",
            b"mailto:x@example.com",
            b"../up",
            b"./here",
        ] {
            let got = all(Method::Post, 200, &[h("Location", loc)]);
            assert_eq!(got.len(), 1, "{:?}", String::from_utf8_lossy(loc));
        }
    }
}
