//! Several stored responses per URL, chosen by the request fields their
//! `Vary` names (RFC 9111 §4.1), on a store that knows keys and bytes only.
//!
//! ```text
//!  primary key   host 0x00 path?query ──▶ a response (no Vary): served as today
//!                                     └─▶ a marker item:
//!      head:  0x00 "vary" 0x00 names 0x00 { len:u16be secondary-key }*   body: empty
//!             names: the Vary field names, lowercased, joined by ","
//!             the list: the variants stored, oldest first
//!  variant key   primary 0x00 secondary-key ──▶ the response of that variant
//! ```
//!
//! A stored response head starts with `HTTP/`, a marker with a NUL byte:
//! the hit path tells them apart by one byte of what it copied anyway, so
//! a URL whose responses do not vary costs exactly what it did before (one
//! lookup, no allocation). On a marker, the request's secondary key is
//! written after the primary key in the proxy's key buffer (normalised as
//! `http::vary` says: field-name case, whitespace, combined field lines),
//! checked against the marker's list and looked up: two lookups for a URL
//! that varies. A request whose variant is not listed, or gone, is a
//! `fwd=vary-miss` (RFC 9211); its fetch carries the variant key, so
//! concurrent requests for the same variant coalesce, and its answer is
//! stored as one more variant.
//!
//! Storing a variant rewrites the marker: the list keeps at most
//! `cache.variants_per_key_max` variants, the oldest gives way (removed
//! from the store too). When the origin changes the names its `Vary`
//! lists, the old variants are removed. The marker lives as long as its
//! longest-lived variant. `Vary: *` is never stored.
//!
//! Invalidation (RFC 9111 §4.4), a URL purge (admin API, `PURGE`) and
//! its soft form all go through [`purge_primary`]: it finds the marker and
//! acts on every variant it lists (a hard purge removes the marker too; a
//! soft one keeps it, so each stale variant is still found and
//! revalidated). Bans and tags see a variant as its own object: a ban
//! matches the URL part of its key, the tag index holds the variant key.
//!
//! Two workers storing variants of one URL at the same moment may each
//! rewrite the marker from the same old list, and one variant then
//! drops out of the list: it is unreachable from then on (the hit path
//! only looks up listed variants) and is replaced by the next fetch of that
//! variant or evicted. A miss, never a wrong answer. The same holds when
//! eviction takes the marker before its variants (unlikely: every lookup
//! of the URL references the marker): the variants wait, unreachable, for
//! their own eviction, and the next fetch writes a new marker.

use std::time::{SystemTime, UNIX_EPOCH};

use httparse::Header;

use crate::http::vary::write_secondary_key;
use crate::invalidate::fields::last_field_len;
use crate::invalidate::Mode;
use crate::store::item::Hit;
use crate::store::{key_hash, ItemMeta, Reader};

use super::key::KeyRules;
use super::Proxy;

/// The first bytes of a marker's head.
const MARKER_MAGIC: &[u8] = b"\0vary\0";

/// What the lookup of a request found about `Vary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Varied {
    /// No marker: the primary key's own item (or nothing).
    No,
    /// A marker: the proxy's key buffer now holds the variant key.
    Listed,
    /// A marker that does not list this request's variant (the key buffer
    /// holds the variant key it would have).
    NotListed,
}

/// Names and variants of a stored marker.
pub(super) struct Marker<'a> {
    pub names: &'a [u8],
    list: &'a [u8],
}

impl<'a> Marker<'a> {
    /// The marker in a stored head, if it is one.
    pub fn parse(head: &'a [u8]) -> Option<Marker<'a>> {
        let rest = head.strip_prefix(MARKER_MAGIC)?;
        let end = rest.iter().position(|&b| b == 0)?;
        let m = Marker {
            names: &rest[..end],
            list: &rest[end + 1..],
        };
        // A list that does not parse to its end is not a marker we wrote.
        let mut len = 0;
        for v in m.variants() {
            len += 2 + v.len();
        }
        (len == m.list.len()).then_some(m)
    }

    /// Stored secondary keys, oldest first.
    pub fn variants(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = self.list;
        std::iter::from_fn(move || {
            let n = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            let v = rest.get(2..2 + n)?;
            rest = &rest[2 + n..];
            Some(v)
        })
    }

    fn lists(&self, secondary: &[u8]) -> bool {
        self.variants().any(|v| v == secondary)
    }
}

/// Write a marker head.
fn write_marker<'a>(names: &[u8], variants: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    out.extend_from_slice(MARKER_MAGIC);
    out.extend_from_slice(names);
    out.push(0);
    for v in variants {
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
}

/// The primary key of a key that may be a variant key (up to its second NUL).
pub(super) fn primary_of(key: &[u8]) -> &[u8] {
    let first = key
        .iter()
        .position(|&b| b == 0)
        .map_or(key.len(), |i| i + 1);
    match key[first..].iter().position(|&b| b == 0) {
        Some(i) => &key[..first + i],
        None => key,
    }
}

/// Append the request fields a variant was selected by, from its
/// secondary key (see `http::vary`): `name: value` for each field present,
/// nothing for an absent one. The values are the normalised ones, which
/// select the same variant again. `false` when the key does not parse or a
/// value could not be a field value; `out` may then hold part of them.
pub(super) fn put_variant_fields(secondary: &[u8], out: &mut Vec<u8>) -> bool {
    let mut rest = secondary;
    while !rest.is_empty() {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return false;
        };
        let name = &rest[..end];
        rest = &rest[end + 1..];
        let Some((&presence, after)) = rest.split_first() else {
            return false;
        };
        let Some(end) = after.iter().position(|&b| b == 0) else {
            return false;
        };
        let value = &after[..end];
        rest = &after[end + 1..];
        let name_ok = !name.is_empty()
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(b));
        match presence {
            1 if value.is_empty() => {}
            2 if name_ok
                && value
                    .iter()
                    .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) =>
            {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            _ => return false,
        }
    }
    true
}

/// Is the head that a lookup just appended (its last `hit.head_len`
/// bytes before the body) a marker?
#[inline]
fn is_marker_head(buf: &[u8], hit: &Hit) -> bool {
    buf.len() >= hit.head_len && hit.head_len > 0 && buf[buf.len() - hit.head_len] == 0
}

/// A response to store as a variant: the normalised names of its `Vary`
/// and the secondary key of the request that fetched it.
pub(super) struct Variant {
    pub names: Vec<u8>,
    pub secondary: Vec<u8>,
}

impl Proxy {
    /// Look up `self.key` (hash `hash`) for a request with these fields; on
    /// a marker, extend `self.key` with the request's secondary key and
    /// look the variant up. `between` is the store's callback (fields
    /// between head and body; returns whether the body is wanted); it is
    /// never called for a marker. Returns the hit, the hash of the key
    /// `self.key` now holds, and what was found about `Vary`.
    ///
    /// This is the lookup of every answer served straight from the store
    /// (fresh hit, range, coalesced waiter), so it applies what
    /// invalidation asks of them: an object a ban matches is removed and
    /// reported as not found (before `between` sees it), and with
    /// `invalidation.tag_header_strip` the tag field, stored as the last
    /// line of the head, is cut before `between` appends to it: the
    /// returned hit's `head_len` counts what is left. With no ban active
    /// and no tag field stored, this costs one atomic load.
    pub(super) fn lookup_varied<F>(
        &mut self,
        hash: u64,
        request: &[Header<'_>],
        buf: &mut Vec<u8>,
        between: F,
    ) -> (Option<Hit>, u64, Varied)
    where
        F: FnOnce(&mut Vec<u8>, &Hit) -> bool + Copy,
    {
        let start = buf.len();
        let (hit, banned) = self.lookup_served(hash, buf, between);
        if banned {
            buf.truncate(start);
            self.drop_banned(hash);
            return (None, hash, Varied::No);
        }
        let Some(h) = hit else {
            return (None, hash, Varied::No);
        };
        if buf.get(start) != Some(&0) {
            return (hit, hash, Varied::No);
        }
        let primary_len = self.key.len();
        let listed = match Marker::parse(&buf[start..start + h.head_len]) {
            Some(m) => {
                self.key.push(0);
                let names = [Header {
                    name: "vary",
                    value: m.names,
                }];
                write_secondary_key(&names, request, &mut self.key).is_ok()
                    && m.lists(&self.key[primary_len + 1..])
            }
            None => false,
        };
        buf.truncate(start);
        if self.key.len() == primary_len {
            return (None, hash, Varied::No); // not a marker ringcache wrote
        }
        let vhash = key_hash(&self.key);
        if !listed {
            return (None, vhash, Varied::NotListed);
        }
        let (hit, banned) = self.lookup_served(vhash, buf, between);
        if banned {
            buf.truncate(start);
            // The marker still lists it: the next request is a vary-miss
            // that stores the variant again.
            self.drop_banned(vhash);
            return (None, vhash, Varied::NotListed);
        }
        if hit.is_some() && buf.get(start) == Some(&0) {
            buf.truncate(start);
            return (None, vhash, Varied::NotListed);
        }
        let found = if hit.is_some() {
            Varied::Listed
        } else {
            Varied::NotListed
        };
        (hit, vhash, found)
    }

    /// One lookup of `self.key` for [`Proxy::lookup_varied`]: markers pass
    /// untouched; a response is checked against the bans (`true` when one
    /// matches: nothing is appended for it) and loses its tag field when
    /// the configuration strips it.
    #[inline]
    fn lookup_served<F>(&self, hash: u64, buf: &mut Vec<u8>, between: F) -> (Option<Hit>, bool)
    where
        F: FnOnce(&mut Vec<u8>, &Hit) -> bool,
    {
        let inv = &*self.invalidator;
        // The whole cost of bans when there are none: this load.
        let bans_on = inv.bans.active() > 0;
        let strip = inv
            .config
            .tag_header_strip
            .then_some(inv.config.tag_header.as_bytes());
        let now_secs = self.clock.unix_secs;
        let key = &self.key;
        let mut banned = false;
        let mut cut = 0;
        let hit = self.reader.lookup(hash, key, buf, |b, h| {
            if is_marker_head(b, h) {
                return false;
            }
            let head = &b[b.len() - h.head_len..];
            let born = u64::from(h.meta.born_secs);
            if bans_on && inv.bans.check(key, head, born, now_secs) {
                banned = true;
                return false; // rolled back by the caller
            }
            if let Some(name) = strip {
                cut = last_field_len(head, name);
                b.truncate(b.len() - cut);
            }
            let served = Hit {
                head_len: h.head_len - cut,
                ..*h
            };
            between(b, &served)
        });
        (
            hit.map(|h| Hit {
                head_len: h.head_len - cut,
                ..h
            }),
            banned,
        )
    }

    /// A ban matched the object under `self.key` (hash `hash`): it goes.
    fn drop_banned(&mut self, hash: u64) {
        self.store.remove(hash, &self.key);
        self.invalidator.note_banned();
    }

    /// Store a response under `key` (a primary or a variant key). Without
    /// `variant` it goes under the primary key, replacing a marker and its
    /// variants; with one it is stored as a variant and listed in the
    /// marker. `stale_secs`: see [`Proxy::insert_response`]. Returns
    /// whether it was stored.
    pub(super) fn store_response(
        &mut self,
        key: &[u8],
        variant: Option<&Variant>,
        head: &[u8],
        body: &[u8],
        meta: ItemMeta,
        stale_secs: u64,
    ) -> bool {
        let primary = primary_of(key);
        let Some(v) = variant else {
            if primary.len() != key.len() {
                // A marker was there when the request looked: its variants go.
                let mut scratch = self.take_buffer();
                purge_primary(&self.reader, primary, Mode::Hard, &mut scratch);
                self.give_buffer(scratch);
            }
            let phash = key_hash(primary);
            return self.insert_response(phash, primary, head, body, meta, stale_secs);
        };
        let phash = key_hash(primary);
        let mut old = self.take_buffer();
        let old_hit = self.reader.lookup(phash, primary, &mut old, |_, _| false);
        let old_marker = old_hit.and_then(|h| Marker::parse(&old[..h.head_len]));
        let mut keep: Vec<&[u8]> = Vec::new();
        let mut vkey = Vec::with_capacity(primary.len() + 1 + v.secondary.len());
        vkey.extend_from_slice(primary);
        vkey.push(0);
        if let Some(m) = &old_marker {
            for s in m.variants() {
                if m.names != &v.names[..] {
                    self.remove_key(&mut vkey, primary.len() + 1, s); // the origin changed its Vary
                } else if s != &v.secondary[..] {
                    keep.push(s);
                }
            }
        }
        let max = self.variants_per_key_max;
        while keep.len() >= max {
            let oldest = keep.remove(0);
            self.remove_key(&mut vkey, primary.len() + 1, oldest);
        }
        vkey.truncate(primary.len() + 1);
        vkey.extend_from_slice(&v.secondary);
        // The variant's tags are indexed under the variant key.
        if !self.insert_response(key_hash(&vkey), &vkey, head, body, meta, stale_secs) {
            self.give_buffer(old);
            return false;
        }
        keep.push(&v.secondary);
        let mut marker = self.take_buffer();
        write_marker(&v.names, keep.into_iter(), &mut marker);
        let expires = old_hit
            .filter(|_| old_marker.is_some())
            .map_or(0, |h| h.meta.expires_secs())
            .max(meta.expires_secs());
        let now = u64::from(meta.now_secs);
        let marker_meta = ItemMeta::new(now, 0, expires.saturating_sub(now));
        let listed = self.store.insert(phash, primary, &marker, b"", marker_meta);
        if !listed {
            self.store.remove(key_hash(&vkey), &vkey);
        }
        self.give_buffer(marker);
        self.give_buffer(old);
        listed
    }

    /// Remove `prefix[..keep] + secondary` from the store.
    fn remove_key(&self, prefix: &mut Vec<u8>, keep: usize, secondary: &[u8]) {
        prefix.truncate(keep);
        prefix.extend_from_slice(secondary);
        self.store.remove(key_hash(prefix), prefix);
    }
}

/// Invalidate what the store holds for the URL (`host`, `target`): the
/// key is built by the proxy's own [`KeyRules`], then [`purge_primary`].
/// Returns the objects invalidated.
pub fn purge_url(
    reader: &Reader,
    rules: &KeyRules,
    host: &[u8],
    target: &[u8],
    mode: Mode,
    scratch: &mut Vec<u8>,
) -> u64 {
    purge_url_each(reader, rules, (host, target), mode, scratch, &mut |_, _| {})
}

/// [`purge_url`], telling `each` the hash and key of every object
/// invalidated (a response, or each variant): what a refresh queues.
pub fn purge_url_each(
    reader: &Reader,
    rules: &KeyRules,
    (host, target): (&[u8], &[u8]),
    mode: Mode,
    scratch: &mut Vec<u8>,
    each: &mut dyn FnMut(u64, &[u8]),
) -> u64 {
    let mut key = Vec::with_capacity(host.len() + 1 + target.len());
    rules.write(host, target, &mut key);
    purge_primary_each(reader, &key, mode, scratch, each)
}

/// Invalidate what is stored under the primary key `primary`: its
/// response, or every variant its marker lists. `Hard` removes them and
/// the marker; `Soft` makes each stale in place and keeps the marker, so
/// every variant is still found and revalidated. The one place a URL is
/// purged: the admin API and `PURGE` ([`purge_url`]), and invalidation
/// after unsafe requests (RFC 9111 §4.4). It needs a read handle only, so
/// the admin thread calls it as the workers do. Returns the objects
/// (responses, not markers) invalidated.
pub fn purge_primary(reader: &Reader, primary: &[u8], mode: Mode, scratch: &mut Vec<u8>) -> u64 {
    purge_primary_each(reader, primary, mode, scratch, &mut |_, _| {})
}

/// [`purge_primary`], telling `each` about every object invalidated.
fn purge_primary_each(
    reader: &Reader,
    primary: &[u8],
    mode: Mode,
    scratch: &mut Vec<u8>,
    each: &mut dyn FnMut(u64, &[u8]),
) -> u64 {
    let phash = key_hash(primary);
    scratch.clear();
    // The head only: a marker's list is all that is needed.
    let Some(h) = reader.lookup(phash, primary, scratch, |_, _| false) else {
        return 0;
    };
    let Some(marker) = Marker::parse(&scratch[..h.head_len]) else {
        let found = purge_key(reader, phash, primary, mode, scratch);
        if found {
            each(phash, primary);
        }
        return u64::from(found);
    };
    let vkeys: Vec<Vec<u8>> = marker
        .variants()
        .map(|secondary| {
            let mut vkey = Vec::with_capacity(primary.len() + 1 + secondary.len());
            vkey.extend_from_slice(primary);
            vkey.push(0);
            vkey.extend_from_slice(secondary);
            vkey
        })
        .collect();
    let mut n = 0;
    for vkey in &vkeys {
        let vhash = key_hash(vkey);
        if purge_key(reader, vhash, vkey, mode, scratch) {
            each(vhash, vkey);
            n += 1;
        }
    }
    if mode == Mode::Hard {
        reader.store().remove(phash, primary);
    }
    n
}

/// Invalidate the one object under `key` (a primary key holding a
/// response, or a variant key). `Hard` removes it; `Soft` stores the same
/// bytes again with a lifetime that ends now (birth kept, so bans still
/// see it as the old object). Returns whether an object was there.
pub fn purge_key(
    reader: &Reader,
    hash: u64,
    key: &[u8],
    mode: Mode,
    scratch: &mut Vec<u8>,
) -> bool {
    let store = reader.store();
    match mode {
        Mode::Hard => store.remove(hash, key),
        Mode::Soft | Mode::Refresh => {
            scratch.clear();
            let Some(hit) = reader.lookup_into(hash, key, scratch) else {
                return false;
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if !hit.meta.is_fresh(now) {
                return true; // already stale
            }
            let meta = ItemMeta {
                born_secs: hit.meta.born_secs,
                lifetime_secs: u32::try_from(hit.meta.age_secs(now)).unwrap_or(u32::MAX),
                now_secs: u32::try_from(now).unwrap_or(u32::MAX),
            };
            let (head, body) = scratch.split_at(hit.head_len);
            store.insert(hash, key, head, body, meta) || store.remove(hash, key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let mut m = Vec::new();
        let vs: [&[u8]; 2] = [b"accept\0\x02a\0", b"accept\0\x01\0"];
        write_marker(b"accept", vs.iter().copied(), &mut m);
        assert_eq!(m[0], 0);
        let p = Marker::parse(&m).unwrap();
        assert_eq!(p.names, b"accept");
        assert_eq!(p.variants().collect::<Vec<_>>(), vs);
        assert!(p.lists(b"accept\0\x01\0") && !p.lists(b"accept\0"));
        assert!(Marker::parse(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(Marker::parse(&m[..m.len() - 1]).is_none());
    }

    #[test]
    fn variant_fields_come_back_from_the_secondary_key() {
        let request = [
            Header {
                name: "Accept-Language",
                value: b" de ,  en",
            },
            Header {
                name: "X-Other",
                value: b"1",
            },
        ];
        let response = [Header {
            name: "Vary",
            value: b"accept-language, x-absent",
        }];
        let mut secondary = Vec::new();
        write_secondary_key(&response, &request, &mut secondary).unwrap();
        let mut fields = Vec::new();
        assert!(put_variant_fields(&secondary, &mut fields));
        assert_eq!(fields, b"accept-language: de,en\r\n");
        // The fields sent again select the same variant.
        let text = [&fields[..], b"\r\n"].concat();
        let mut parsed = [httparse::EMPTY_HEADER; 4];
        let httparse::Status::Complete((_, parsed)) =
            httparse::parse_headers(&text, &mut parsed).unwrap()
        else {
            panic!("whole fields")
        };
        let mut again = Vec::new();
        write_secondary_key(&response, parsed, &mut again).unwrap();
        assert_eq!(again, secondary);
        for bad in [&b"accept"[..], b"a\0\x02x", b"a\0\x03\0", b"a b\0\x02x\0"] {
            assert!(!put_variant_fields(bad, &mut Vec::new()), "{bad:?}");
        }
    }

    #[test]
    fn primary_of_variant_keys() {
        assert_eq!(primary_of(b"h\0/a"), b"h\0/a");
        assert_eq!(primary_of(b"h\0/a\0accept\0\x01\0"), b"h\0/a");
        assert_eq!(primary_of(b"\0/a\0x"), b"\0/a");
        assert_eq!(primary_of(b"\0/a"), b"\0/a");
    }
}
