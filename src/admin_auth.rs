//! Signed invalidation requests (`admin.hmac_key`).
//!
//! With a key configured (`admin.hmac_key` or `RINGCACHE_ADMIN_HMAC_KEY`),
//! every `POST /invalidate` and `POST /invalidate/all` carries, beside the
//! bearer token:
//!
//! ```text
//!  Ringcache-Timestamp: 1765000000              Unix seconds, decimal
//!  Ringcache-Signature: sha256=<64 hex digits>  HMAC-SHA256(key, "<timestamp>.<body>")
//! ```
//!
//! The signed text is the timestamp as sent, one `.`, and the body bytes
//! as sent (empty for a bodyless `/invalidate/all`). Checked in this
//! order, each failure a 401 and a log line naming it:
//!
//! 1. both fields present, the timestamp 1 to 20 digits, the signature
//!    `sha256=` and 64 hex digits;
//! 2. the timestamp within `admin.hmac_window` of the admin's clock,
//!    either way (default 5 minutes);
//! 3. the MAC matches, compared in constant time (`Mac::verify_slice`);
//! 4. the signature was not accepted before: accepted signatures are
//!    remembered until their timestamp leaves the window (after that the
//!    window check refuses them), at most
//!    [`ADMIN_HMAC_SEEN_COUNT_MAX`]; when that many are live, a signed
//!    request is refused with 503 rather than forgetting one that could
//!    then be replayed. Only signatures that verified are remembered, so
//!    the set cannot be filled without the key.
//!
//! The key and the window are read per request from the invalidator's
//! access settings, so a SIGHUP reload applies them to the next call.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::ADMIN_HMAC_SEEN_COUNT_MAX;

/// The field that carries the signed timestamp.
pub const TIMESTAMP_FIELD: &str = "ringcache-timestamp";
/// The field that carries the signature.
pub const SIGNATURE_FIELD: &str = "ringcache-signature";
/// The signature's scheme prefix.
const SIGNATURE_PREFIX: &str = "sha256=";

type HmacSha256 = Hmac<Sha256>;

/// Why a signed call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    OutsideWindow,
    BadSignature,
    Replayed,
    /// The remembered set is full of live signatures (503).
    SeenFull,
}

impl Refused {
    /// The message for the log and the caller.
    pub fn message(self) -> &'static str {
        match self {
            Refused::Missing => {
                "signature required: send Ringcache-Timestamp and Ringcache-Signature (admin.hmac_key is set)"
            }
            Refused::Malformed => {
                "Ringcache-Timestamp must be Unix seconds and Ringcache-Signature sha256=<64 hex digits>"
            }
            Refused::OutsideWindow => "Ringcache-Timestamp is outside admin.hmac_window",
            Refused::BadSignature => "Ringcache-Signature does not match the body and timestamp",
            Refused::Replayed => "this signature was already used",
            Refused::SeenFull => "too many signed calls inside admin.hmac_window; try again later",
        }
    }

    /// The HTTP status of the refusal.
    pub fn status(self) -> u16 {
        if self == Refused::SeenFull {
            503
        } else {
            401
        }
    }
}

/// The signatures accepted and still inside the window.
pub struct Signatures {
    /// Signature → the Unix second after which its timestamp is stale.
    seen: Mutex<HashMap<[u8; 32], u64>>,
    seen_max: usize,
}

impl Default for Signatures {
    fn default() -> Signatures {
        Signatures::new(ADMIN_HMAC_SEEN_COUNT_MAX)
    }
}

impl Signatures {
    /// At most `seen_max` remembered signatures.
    pub fn new(seen_max: usize) -> Signatures {
        Signatures {
            seen: Mutex::new(HashMap::new()),
            seen_max,
        }
    }

    /// Check a call's timestamp and signature fields against `body` (see
    /// the module doc); `now_secs` is the admin's clock.
    pub fn verify(
        &self,
        key: &[u8],
        window_secs: u64,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: u64,
    ) -> Result<(), Refused> {
        let (Some(ts_text), Some(sig_text)) = (timestamp, signature) else {
            return Err(Refused::Missing);
        };
        let ts_text = ts_text.trim();
        if ts_text.is_empty() || ts_text.len() > 20 || !ts_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Refused::Malformed);
        }
        let ts: u64 = ts_text.parse().map_err(|_| Refused::Malformed)?;
        let mac_given = sig_text
            .trim()
            .strip_prefix(SIGNATURE_PREFIX)
            .and_then(parse_hex32)
            .ok_or(Refused::Malformed)?;
        if ts.abs_diff(now_secs) > window_secs {
            return Err(Refused::OutsideWindow);
        }
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
        mac.update(ts_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&mac_given)
            .map_err(|_| Refused::BadSignature)?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(&mac_given).is_some_and(|&until| until >= now_secs) {
            return Err(Refused::Replayed);
        }
        if seen.len() >= self.seen_max {
            seen.retain(|_, until| *until >= now_secs);
            if seen.len() >= self.seen_max {
                return Err(Refused::SeenFull);
            }
        }
        seen.insert(mac_given, ts.saturating_add(window_secs));
        Ok(())
    }
}

/// The value of a `Ringcache-Signature` field for `body` signed at
/// `timestamp` with `key` (what a client computes).
pub fn sign(key: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = String::with_capacity(SIGNATURE_PREFIX.len() + 64);
    out.push_str(SIGNATURE_PREFIX);
    for b in mac.finalize().into_bytes() {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"an-example-key-of-32-characters!!";

    #[test]
    fn signatures_match_openssl() {
        // printf '%s' '1700000000.{"urls":["/a"]}' |
        //   openssl dgst -sha256 -hmac 'an-example-key-of-32-characters!!' -hex
        assert_eq!(
            sign(KEY, 1_700_000_000, br#"{"urls":["/a"]}"#),
            "sha256=8dac013b13c487dd15757db48cae82d5e386d1834988da5c019877202ba9820c"
        );
    }

    #[test]
    fn each_check_refuses_what_it_should() {
        let s = Signatures::new(2);
        let now = 1_000_000;
        let body = b"{}";
        let ok = sign(KEY, now, body);
        let ts = now.to_string();
        let v = |ts: Option<&str>, sig: Option<&str>, body: &[u8], now| {
            s.verify(KEY, 300, ts, sig, body, now)
        };
        assert_eq!(v(None, Some(&ok), body, now), Err(Refused::Missing));
        assert_eq!(v(Some(&ts), None, body, now), Err(Refused::Missing));
        assert_eq!(
            v(Some("12a"), Some(&ok), body, now),
            Err(Refused::Malformed)
        );
        assert_eq!(
            v(Some(&ts), Some("sha256=00"), body, now),
            Err(Refused::Malformed)
        );
        assert_eq!(
            v(Some(&ts), Some(&ok), body, now + 301),
            Err(Refused::OutsideWindow)
        );
        assert_eq!(
            v(Some(&ts), Some(&ok), b"{ }", now),
            Err(Refused::BadSignature)
        );
        let upper = ok.to_uppercase().replace("SHA256=", "sha256=");
        assert_eq!(v(Some(&ts), Some(&upper), body, now), Ok(()));
        assert_eq!(
            v(Some(&ts), Some(&ok), body, now + 10),
            Err(Refused::Replayed)
        );
        // A clock a little ahead of ours is accepted too.
        let ahead = sign(KEY, now + 200, body);
        assert_eq!(
            v(Some(&(now + 200).to_string()), Some(&ahead), body, now),
            Ok(())
        );
        // Two live signatures fill a set of two; one expired makes room.
        let third = sign(KEY, now + 1, body);
        assert_eq!(
            v(Some(&(now + 1).to_string()), Some(&third), body, now + 1),
            Err(Refused::SeenFull)
        );
        assert_eq!(Refused::SeenFull.status(), 503);
        let later = now + 301;
        let fourth = sign(KEY, later, body);
        assert_eq!(
            v(Some(&later.to_string()), Some(&fourth), body, later),
            Ok(())
        );
    }
}
