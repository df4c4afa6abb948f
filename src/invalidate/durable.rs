//! Durable invalidation: bans written to the store file's journal
//! (`store::journal`) before they are acknowledged, and re-created from it
//! before a restarted process serves its first request.
//!
//! **Order of an invalidation** ([`super::Invalidator::apply`], which the
//! admin API, the bus and nothing else on the way to a ban call):
//! 1. the request is checked whole (a refusal changes nothing);
//! 2. every ban it makes is written to the journal as one record (its
//!    selector, its creation second, its retirement second), all of them
//!    or none; the write returns once the bytes are in the mapped file;
//! 3. the bans are added in memory, URL and tag purges remove or soften
//!    the stored objects (changes to the region, see below);
//! 4. only then does the caller answer (200, the bus acknowledgement).
//!
//! **Order of a start** (`runtime::serve`): the store is opened and its
//! items recovered by the scan; the journal is read and every intact
//! record re-creates its ban with its original times (an `all` too), the
//! floor of retired bans is restored; only then are the admin thread and
//! the workers started, so the first request, and `READY=1`, come after.
//!
//! **Why a purged object is not served after a crash.** Two mechanisms,
//! one per kind of invalidation:
//! - *bans* (prefix, regex, header, a path without host, a tag while the
//!   tag index is incomplete, `all`): the record is in the file before
//!   the answer, so a process that dies after answering left it there,
//!   and the next start re-creates the ban before serving. A ban compares
//!   its creation second with the object's `born_secs`, both Unix seconds
//!   written into the file, so "stored before the ban" means the same
//!   after the restart. A ban that retired before the crash left its
//!   creation second in the floor (compaction writes it in the journal's
//!   header; until then the record itself is there and retires again).
//! - *removals and soft purges* (a URL with its host, a tag through a
//!   complete index, `PURGE`): they change the region itself before the
//!   answer. A hard purge unlinks the index slot and marks the item's
//!   first chunk RETIRED; the recovery scan only takes chunks marked HEAD,
//!   so the item's bytes, though still in their segment, are never taken
//!   back. A soft purge stores the same bytes again as a new version with
//!   a lifetime that ended (and RETIRES the old one); recovery keeps the
//!   newest version of a key, so the object comes back stale and is
//!   revalidated. After a restart the tag index is incomplete (it is not
//!   kept in the file), so tag purges become tag bans, logged as above.
//!
//! **What is lost, and when.** Nothing that was acknowledged, as long as
//! the kernel's page cache reaches the file: the process dying at any
//! point (`kill -9`, a panic, the OOM killer) loses at most the record
//! being written, of an invalidation that was not answered. The journal is
//! not `msync`ed per record: a power loss or kernel crash may lose recent
//! records and recent removals alike, so a start that finds the store not
//! closed cleanly and last opened under another boot id treats every
//! stored object as invalidated (an `all` ban, logged loudly): the cache
//! starts cold rather than risk a purged object. The same happens when a
//! record other than the last one is damaged (an acknowledged ban cannot
//! be read), when the journal's headers are unreadable, and, as a last
//! resort, when a request's bans do not fit the journal even after a
//! compaction (impossible while the ban list fits, see the sizing below).
//!
//! **Sizing.** The journal holds `limits.bans_max` + 1 records per half,
//! each slot as large as the largest ban a request may make
//! ([`payload_bytes_max`]): every active ban has its record, retired ones
//! are compacted away by the upkeep thread (and before an append that
//! would not fit), so while the ban list fits the journal does.

use std::sync::atomic::{AtomicU64, Ordering};

use regex::RegexBuilder;

use super::bans::{Bans, Selector};
use crate::config::{
    Invalidation, BAN_REGEX_COMPILED_BYTES_MAX, BAN_REGEX_PATTERN_BYTES_MAX, BAN_SELECTOR_BYTES_MAX,
};
use crate::metrics::BanLogGauges;
use crate::store::journal::{Journal, JournalFull, JournalGeometry, Record, Scan};

const KIND_PATH: u8 = 1;
const KIND_PREFIX: u8 = 2;
const KIND_REGEX: u8 = 3;
const KIND_HEADER: u8 = 4;
const KIND_TAG: u8 = 5;
const KIND_ALL: u8 = 6;

const _: () = assert!(BAN_REGEX_PATTERN_BYTES_MAX <= BAN_SELECTOR_BYTES_MAX);

/// The largest record payload a ban may need: a selector of
/// `BAN_SELECTOR_BYTES_MAX` (a header ban's name and value together, plus
/// their separator), or a tag ban (the tag field's name, a separator, a
/// tag of `tag_bytes_max`).
pub fn payload_bytes_max(inv: &Invalidation) -> usize {
    (BAN_SELECTOR_BYTES_MAX + 1).max(inv.tag_header.len() + 1 + inv.tag_bytes_max)
}

/// The journal a store file needs for these limits.
pub fn geometry(bans_max: usize, inv: &Invalidation) -> JournalGeometry {
    JournalGeometry::for_records(bans_max + 1, payload_bytes_max(inv))
}

/// A selector as a journal record's kind and payload.
pub fn encode(sel: &Selector) -> (u8, Vec<u8>) {
    let joined = |a: &str, b: &str| {
        let mut v = Vec::with_capacity(a.len() + 1 + b.len());
        v.extend_from_slice(a.as_bytes());
        v.push(0);
        v.extend_from_slice(b.as_bytes());
        v
    };
    match sel {
        Selector::Path(p) => (KIND_PATH, p.as_bytes().to_vec()),
        Selector::Prefix(p) => (KIND_PREFIX, p.as_bytes().to_vec()),
        Selector::Regex(r) => (KIND_REGEX, r.as_str().as_bytes().to_vec()),
        Selector::Header { name, value } => (KIND_HEADER, joined(name, value)),
        Selector::Tag { header, tag } => (KIND_TAG, joined(header, tag)),
        Selector::All => (KIND_ALL, Vec::new()),
    }
}

/// The selector a record holds; None for anything [`encode`] does not make.
pub fn decode(kind: u8, payload: &[u8]) -> Option<Selector> {
    let text = std::str::from_utf8(payload).ok()?;
    let split = || text.split_once('\0').filter(|(a, _)| !a.is_empty());
    Some(match kind {
        KIND_PATH => Selector::Path(text.to_string()),
        KIND_PREFIX => Selector::Prefix(text.to_string()),
        KIND_REGEX => Selector::Regex(
            RegexBuilder::new(text)
                .size_limit(BAN_REGEX_COMPILED_BYTES_MAX)
                .dfa_size_limit(BAN_REGEX_COMPILED_BYTES_MAX)
                .build()
                .ok()?,
        ),
        KIND_HEADER => {
            let (name, value) = split()?;
            Selector::Header {
                name: name.to_string(),
                value: value.to_string(),
            }
        }
        KIND_TAG => {
            let (header, tag) = split()?;
            Selector::Tag {
                header: header.to_string(),
                tag: tag.to_string(),
            }
        }
        KIND_ALL if payload.is_empty() => Selector::All,
        _ => return None,
    })
}

fn record(sel: &Selector, created_secs: u64, retire_secs: u64) -> Record {
    let (kind, payload) = encode(sel);
    Record {
        seq: 0,
        kind,
        created_secs,
        retire_secs,
        payload,
    }
}

/// The journal of a store file, as the invalidator uses it.
pub struct BanLog {
    journal: Journal,
    replayed: u64,
    dropped: u64,
    /// Times the bans of a request did not fit even after a compaction.
    overflows: AtomicU64,
}

/// What a start read from the journal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Bans re-created (retired ones included: they retire again at once).
    pub bans: u64,
    /// Records dropped: torn, damaged, or not a ban.
    pub dropped: u64,
    /// Everything stored was invalidated: the journal may miss a ban.
    pub dropped_all: bool,
}

impl BanLog {
    /// Re-create the bans `scan` read from `journal` in `bans`, restore
    /// the floor, and compact. `reopened_unclean`: the store file was in
    /// use when its last process stopped (not closed cleanly). `now_secs`:
    /// the time of the start.
    pub fn replay(
        journal: Journal,
        scan: Scan,
        bans: &Bans,
        reopened_unclean: bool,
        now_secs: u64,
    ) -> (BanLog, Replayed) {
        let mut out = Replayed {
            dropped: scan.dropped,
            ..Replayed::default()
        };
        let mut lost = scan.lost;
        if scan.lost {
            log::error!(
                "invalidation journal: an acknowledged record cannot be read (damaged); \
                 every stored object is invalidated"
            );
        }
        if reopened_unclean && scan.booted_since(&crate::store::journal::boot_id()) {
            log::error!(
                "invalidation journal: the store was not closed cleanly and the machine \
                 restarted since (power loss or crash): writes may be lost, every stored \
                 object is invalidated"
            );
            lost = true;
        }
        for r in &scan.records {
            match decode(r.kind, &r.payload) {
                Some(sel) => {
                    if bans
                        .add_with(sel, r.created_secs, Some(r.retire_secs))
                        .is_err()
                    {
                        log::error!(
                            "invalidation journal: more bans than limits.bans_max; \
                             every stored object is invalidated"
                        );
                        lost = true;
                    }
                    out.bans += 1;
                }
                None => {
                    out.dropped += 1;
                    lost |= r.seq != scan.records.last().map_or(0, |l| l.seq);
                }
            }
        }
        bans.raise_floor(scan.floor_secs);
        if lost {
            let _ = bans.add_with(Selector::All, now_secs, None);
            out.dropped_all = true;
        }
        if out.dropped > 0 {
            log::warn!(
                "invalidation journal: {} record(s) dropped (torn or damaged)",
                out.dropped
            );
        }
        let log = BanLog {
            journal,
            replayed: out.bans,
            dropped: out.dropped,
            overflows: AtomicU64::new(0),
        };
        // Rewrite what is live now: dropped and retired records go, an
        // `all` added above is recorded, the floor is kept.
        log.compact(bans, now_secs);
        (log, out)
    }

    /// Record the bans `sels`, created at `now_secs` and retiring at
    /// `retire_secs`, compacting first when they do not fit. Err: they do
    /// not fit even then.
    pub fn record(
        &self,
        bans: &Bans,
        sels: &[Selector],
        now_secs: u64,
        retire_secs: u64,
    ) -> Result<(), JournalFull> {
        if sels.is_empty() {
            return Ok(());
        }
        let mut recs: Vec<Record> = sels
            .iter()
            .map(|s| record(s, now_secs, retire_secs))
            .collect();
        if self.journal.append(&mut recs).is_ok() {
            return Ok(());
        }
        self.compact(bans, now_secs);
        self.journal.append(&mut recs)
    }

    /// The last resort when [`BanLog::record`] fails: record an `all`
    /// alone (a compaction to one record always fits). Counted.
    pub fn record_all(&self, now_secs: u64, retire_secs: u64, floor_secs: u64) {
        // Relaxed: a statistic.
        self.overflows.fetch_add(1, Ordering::Relaxed);
        let mut all = [record(&Selector::All, now_secs, retire_secs)];
        if self.journal.compact(&mut all, floor_secs).is_err() {
            log::error!("invalidation journal: cannot record even one ban");
        }
    }

    /// Rewrite the journal to the active bans and the floor (after
    /// retiring what `now_secs` retires). The caller holds the
    /// invalidator's write lock, so no ban is added meanwhile.
    pub fn compact(&self, bans: &Bans, now_secs: u64) {
        let live = bans.list(now_secs);
        let floor = bans.floor_secs();
        let mut recs: Vec<Record> = live
            .iter()
            .map(|b| record(&b.selector, b.created_secs, b.retire_secs))
            .collect();
        if self.journal.compact(&mut recs, floor).is_err() {
            // More active bans than slots: cannot happen with the sizing
            // above; the appends that follow fail and fall back to `all`.
            log::error!("invalidation journal: the active bans do not fit a compaction");
        }
    }

    /// Are there records of bans no longer active (worth a compaction)?
    pub fn has_dead_records(&self, bans: &Bans) -> bool {
        self.journal.records() > bans.active() as u64
    }

    pub fn gauges(&self) -> BanLogGauges {
        BanLogGauges {
            records: self.journal.records(),
            bytes_used: self.journal.bytes_used(),
            bytes_cap: self.journal.bytes_cap(),
            replayed: self.replayed,
            dropped: self.dropped,
            // Relaxed: a statistic.
            overflows: self.overflows.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inv() -> Invalidation {
        crate::invalidate::test_config()
    }

    fn same(a: &Selector, b: &Selector) -> bool {
        a.to_json() == b.to_json()
    }

    #[test]
    fn selectors_round_trip_and_junk_is_refused() {
        let sels = [
            Selector::Path("/a?b=1".into()),
            Selector::Prefix("/api/".into()),
            Selector::Regex(regex::Regex::new("^/x/[0-9]+$").unwrap()),
            Selector::Header {
                name: "x-team".into(),
                value: "search team".into(),
            },
            Selector::Tag {
                header: "surrogate-key".into(),
                tag: "t1".into(),
            },
            Selector::All,
        ];
        for s in &sels {
            let (k, p) = encode(s);
            assert!(p.len() <= payload_bytes_max(&inv()));
            assert!(same(&decode(k, &p).expect("decodes"), s));
        }
        assert!(decode(0, b"").is_none());
        assert!(decode(KIND_ALL, b"x").is_none());
        assert!(decode(KIND_HEADER, b"novalue").is_none());
        assert!(decode(KIND_REGEX, b"(").is_none());
        assert!(decode(KIND_PATH, &[0xff, 0xfe]).is_none());
    }

    fn journal(bans_max: usize) -> (Journal, Scan) {
        Journal::anonymous(geometry(bans_max, &inv())).unwrap()
    }

    /// The journal's bytes read again as after a process death.
    fn reopen(log: &BanLog) -> (Journal, Scan) {
        log.journal.reopened()
    }

    #[test]
    fn replay_recreates_bans_with_their_times_and_the_floor() {
        let bans = Bans::new(4, 0);
        let (j, s) = journal(4);
        let (log, r) = BanLog::replay(j, s, &bans, false, 1000);
        assert_eq!(r, Replayed::default());
        let sels = [Selector::Prefix("/a/".into()), Selector::Path("/b".into())];
        log.record(&bans, &sels, 1000, 2000).unwrap();
        for s in sels {
            bans.add_with(s, 1000, Some(2000)).unwrap();
        }
        log.record(&bans, &[Selector::Prefix("/c/".into())], 1500, 1600)
            .unwrap();
        bans.add_with(Selector::Prefix("/c/".into()), 1500, Some(1600))
            .unwrap();
        // A restart at 1700: /c/ retired, its second is the floor.
        let (j2, s2) = reopen(&log);
        let again = Bans::new(4, 0);
        let (log2, r) = BanLog::replay(j2, s2, &again, true, 1700);
        assert_eq!((r.bans, r.dropped, r.dropped_all), (3, 0, false));
        assert_eq!(again.active(), 2);
        assert_eq!(again.floor_secs(), 1500);
        let list = again.list(1700);
        assert_eq!(list[0].created_secs, 1000);
        assert_eq!(list[0].retire_secs, 2000);
        assert!(again.check(b"h\0/a/1", b"", 999, 1700));
        assert!(!again.check(b"h\0/a/1", b"", 1001, 1700));
        // The compaction at start kept the floor and the live records only.
        assert_eq!(log2.gauges().records, 2);
        let (j3, s3) = reopen(&log2);
        assert_eq!(s3.floor_secs, 1500);
        let third = Bans::new(4, 0);
        BanLog::replay(j3, s3, &third, false, 1700);
        assert_eq!(third.active(), 2);
        assert_eq!(third.floor_secs(), 1500);
    }

    #[test]
    fn a_full_journal_compacts_then_falls_back_to_all() {
        let bans = Bans::new(2, 0);
        let (j, s) = journal(2);
        let (log, _) = BanLog::replay(j, s, &bans, false, 10);
        // Three slots; two bans that retire at 20, then two more at 30:
        // the append compacts the retired ones away.
        let two = [Selector::Prefix("/a".into()), Selector::Prefix("/b".into())];
        log.record(&bans, &two, 10, 20).unwrap();
        for s in two {
            bans.add_with(s, 10, Some(20)).unwrap();
        }
        let two = [Selector::Prefix("/c".into()), Selector::Prefix("/d".into())];
        log.record(&bans, &two, 30, 40).unwrap();
        assert_eq!(log.gauges().records, 2);
        for s in two {
            bans.add_with(s, 30, Some(40)).unwrap();
        }
        // Two more live ones do not fit three slots: refused whole.
        let two = [Selector::Prefix("/e".into()), Selector::Prefix("/f".into())];
        assert_eq!(log.record(&bans, &two, 31, 40), Err(JournalFull));
        log.record_all(31, 40, bans.floor_secs());
        let g = log.gauges();
        assert_eq!((g.records, g.overflows), (1, 1));
    }

    proptest! {
        #[test]
        fn any_path_prefix_or_header_round_trips(
            a in "[ -~]{0,64}",
            b in "[ -~]{0,64}",
        ) {
            for s in [
                Selector::Path(a.clone()),
                Selector::Prefix(a.clone()),
                Selector::Header { name: format!("x{}", a.replace('\0', "")), value: b.clone() },
            ] {
                let (k, p) = encode(&s);
                let back = decode(k, &p);
                prop_assert!(back.is_some_and(|d| same(&d, &s)));
            }
        }
    }
}
