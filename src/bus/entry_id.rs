//! Stream entry ids: `<milliseconds>-<sequence>`, ordered as numbers pairs.

use std::fmt;

/// A Redis stream entry id. `0-0` sorts before every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// Unix time in milliseconds when the entry was added (server clock).
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// Parse `ms-seq` (a bare `ms` means `ms-0`).
    pub fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id after this one.
    pub fn successor(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_formats() {
        let a = EntryId::parse("1700000000000-3").unwrap();
        assert_eq!(a.to_string(), "1700000000000-3");
        assert_eq!(EntryId::parse("5"), Some(EntryId { ms: 5, seq: 0 }));
        assert!(EntryId::parse("5-").is_none());
        assert!(EntryId::parse("-1").is_none());
        assert!(EntryId::parse("a-1").is_none());
        assert!(EntryId::parse("1-2-3").is_none());
        assert!(EntryId::parse("99999999999999999999-0").is_none());
        assert!(EntryId { ms: 2, seq: 0 } > EntryId { ms: 1, seq: 9 });
        assert_eq!(a.successor(), EntryId::parse("1700000000000-4").unwrap());
        assert_eq!(
            EntryId {
                ms: 1,
                seq: u64::MAX
            }
            .successor(),
            EntryId { ms: 2, seq: 0 }
        );
        assert!(EntryId::ZERO < a);
    }
}
