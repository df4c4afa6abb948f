//! The primary cache key of a request (RFC 9111 §2: the target URI).
//!
//! ```text
//!  key = host 0x00 path [ "?" query ]        host lowercased; left out
//!                                            (empty) with key_include_host = false
//! ```
//!
//! The scheme is part of the target URI, but ringcache speaks plain
//! HTTP on both sides, so every key has the same one and it is not
//! written. Neither host nor path can hold a NUL byte (the request parser
//! refuses them), so the first NUL ends the host and a second one, when
//! present, starts a `Vary` secondary key (see `variants`).
//!
//! Options from the `[cache]` table, read at start and again at each
//! SIGHUP reload (`Proxy::set_cache`, `Invalidator::set_key_rules`):
//! - `key_ignore_params`: query parameters left out of the key, by exact
//!   name or by a prefix written with a trailing `*` (`utm_*`);
//! - `key_sort_query`: parameters in byte order, so `b=1&a=2` and
//!   `a=2&b=1` share an object;
//! - `key_include_host = false`: one origin serving one site, whatever
//!   Host the clients send.
//!
//! The origin still receives the target as the client wrote it; only the
//! key changes. With no option set the key is written in one pass, as
//! before; with options, parameters are sorted and filtered through a
//! fixed array of `KEY_QUERY_PARAMS_MAX` spans (a query with more is
//! keyed as written). Nothing allocates.

use crate::config::{CacheConfig, KEY_QUERY_PARAMS_MAX};

/// How this proxy turns a request into its primary key.
pub struct KeyRules {
    sort_query: bool,
    include_host: bool,
    /// Ignored parameter names; `true` marks a prefix.
    ignore: Vec<(Box<[u8]>, bool)>,
}

impl KeyRules {
    pub fn new(cache: &CacheConfig) -> KeyRules {
        KeyRules {
            sort_query: cache.key_sort_query,
            include_host: cache.key_include_host,
            ignore: cache
                .key_ignore_params
                .iter()
                .map(|p| match p.strip_suffix('*') {
                    Some(prefix) => (prefix.as_bytes().into(), true),
                    None => (p.as_bytes().into(), false),
                })
                .collect(),
        }
    }

    /// Append the key of `host` and `target` (origin-form: path and query).
    pub fn write(&self, host: &[u8], target: &[u8], out: &mut Vec<u8>) {
        if self.include_host {
            out.extend(host.iter().map(u8::to_ascii_lowercase));
        }
        out.push(0);
        // Without options the query is not even looked for.
        let split = (self.sort_query || !self.ignore.is_empty())
            .then(|| target.iter().position(|&b| b == b'?'))
            .flatten();
        let Some(i) = split else {
            out.extend_from_slice(target);
            return;
        };
        let (path, query) = (&target[..i], &target[i + 1..]);
        out.extend_from_slice(path);
        let mut spans = [(0u32, 0u32); KEY_QUERY_PARAMS_MAX];
        let mut n = 0;
        let mut start = 0;
        for end in query
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'&')
            .map(|(i, _)| i)
            .chain([query.len()])
        {
            let param = &query[start..end];
            if !param.is_empty() && !self.ignored(param) {
                if n == spans.len() || end > u32::MAX as usize {
                    // Too many to sort and filter: keyed as written.
                    out.push(b'?');
                    out.extend_from_slice(query);
                    return;
                }
                spans[n] = (start as u32, end as u32);
                n += 1;
            }
            start = end + 1;
        }
        let spans = &mut spans[..n];
        let text = |&(a, b): &(u32, u32)| &query[a as usize..b as usize];
        if self.sort_query {
            spans.sort_unstable_by(|x, y| text(x).cmp(text(y)));
        }
        for (i, span) in spans.iter().enumerate() {
            out.push(if i == 0 { b'?' } else { b'&' });
            out.extend_from_slice(text(span));
        }
    }

    fn ignored(&self, param: &[u8]) -> bool {
        let name = match param.iter().position(|&b| b == b'=') {
            Some(i) => &param[..i],
            None => param,
        };
        self.ignore.iter().any(|(p, prefix)| {
            if *prefix {
                name.starts_with(p)
            } else {
                name == &p[..]
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cache: &CacheConfig, host: &str, target: &str) -> String {
        let mut out = Vec::new();
        KeyRules::new(cache).write(host.as_bytes(), target.as_bytes(), &mut out);
        String::from_utf8(out).unwrap().replace('\0', "|")
    }

    #[test]
    fn default_key_is_host_path_and_query_as_written() {
        let c = CacheConfig::default();
        assert_eq!(
            key(&c, "API.Example", "/a?b=1&a=2"),
            "api.example|/a?b=1&a=2"
        );
        assert_eq!(key(&c, "h", "/a"), "h|/a");
    }

    #[test]
    fn sorted_and_filtered_query() {
        let c = CacheConfig {
            key_sort_query: true,
            key_ignore_params: vec!["utm_*".into(), "fbclid".into()],
            ..CacheConfig::default()
        };
        assert_eq!(
            key(&c, "h", "/a?utm_source=x&b=1&fbclid=9&a=2&fbclidx=1"),
            "h|/a?a=2&b=1&fbclidx=1"
        );
        assert_eq!(key(&c, "h", "/a?utm_medium=1&&utm_x"), "h|/a");
        assert_eq!(key(&c, "h", "/a?"), "h|/a");
        let filter_only = CacheConfig {
            key_ignore_params: vec!["utm_*".into()],
            ..CacheConfig::default()
        };
        assert_eq!(key(&filter_only, "h", "/a?b=1&utm_a=1&a=2"), "h|/a?b=1&a=2");
    }

    #[test]
    fn too_many_params_keyed_as_written() {
        let c = CacheConfig {
            key_sort_query: true,
            ..CacheConfig::default()
        };
        let q: Vec<String> = (0..=KEY_QUERY_PARAMS_MAX)
            .rev()
            .map(|i| format!("p{i}=1"))
            .collect();
        let target = format!("/a?{}", q.join("&"));
        assert_eq!(key(&c, "h", &target), format!("h|{target}"));
    }

    #[test]
    fn host_left_out() {
        let c = CacheConfig {
            key_include_host: false,
            ..CacheConfig::default()
        };
        assert_eq!(key(&c, "a.example", "/x"), "|/x");
        assert_eq!(key(&c, "b.example", "/x"), "|/x");
    }
}
