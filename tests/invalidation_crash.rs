//! Crash-safe invalidation: every kind of invalidation, answered by the
//! admin API, survives a `kill -9` right after the answer (and a clean
//! SIGTERM restart) with the same store file. Purged objects are fetched
//! again (or, soft, revalidated); untouched objects stay hits. Also: a
//! damaged journal record is dropped and counted, and bans that retired
//! and were compacted away still leave their floor after a crash.
//!
//! One scripted origin per test counts requests per path and conditional
//! ones; every object carries an ETag, a tag (`Surrogate-Key`) and a team
//! field (`X-Team`), both the first segment of its path.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

const TOKEN: &str = "crash-token-0123456789";

struct Fixture {
    origin: TestOrigin,
    dir: TempDir,
    config: PathBuf,
}

/// The first segment of a path: `/p/1` → `p`.
fn segment(path: &str) -> &str {
    path.trim_start_matches('/').split('/').next().unwrap_or("")
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let origin = TestOrigin::start(|req| {
            let path = req.path().to_string();
            let cc = if path.starts_with("/short/") {
                "max-age=1"
            } else {
                "max-age=600"
            };
            let seg = segment(&path).to_string();
            let headers = [
                ("Cache-Control", cc),
                ("ETag", "\"v1\""),
                ("X-Team", seg.as_str()),
                ("Surrogate-Key", seg.as_str()),
            ];
            let conditional = req
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("if-none-match") && v == "\"v1\"");
            if conditional {
                Reply::Send(response(304, &headers, b""))
            } else {
                Reply::Send(response(200, &headers, path.as_bytes()))
            }
        });
        let dir = TempDir::new(tag);
        let config = dir.write("ringcache.toml", &format!("[admin]\ntoken = \"{TOKEN}\"\n"));
        Fixture {
            origin,
            dir,
            config,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn serve(&self, io: &str) -> Option<Server> {
        let store = self.store();
        Server::serve(
            io,
            Some(&self.origin.url()),
            2,
            &[
                "--store",
                store.to_str().unwrap(),
                "--memory",
                "64MiB",
                "--config",
                self.config.to_str().unwrap(),
            ],
        )
    }

    /// Requests the origin got for `path`, and how many were conditional.
    fn counts(&self, path: &str) -> (usize, usize) {
        let all = self.origin.all_requests();
        let mine: Vec<_> = all.iter().filter(|r| r.path() == path).collect();
        let conditional = mine
            .iter()
            .filter(|r| {
                r.headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("if-none-match"))
            })
            .count();
        (mine.len(), conditional)
    }

    /// Fill `paths` (one miss each) and check the second request is a hit.
    fn fill(&self, server: &Server, paths: &[&str]) {
        for p in paths {
            let r = server.get(p);
            assert_eq!(r.status, 200, "{p}: {}", r.summary());
            assert_eq!(r.body, p.as_bytes());
        }
        for p in paths {
            assert_hit(&server.get(p), p);
        }
    }
}

#[track_caller]
fn assert_hit(r: &Response, path: &str) {
    assert_eq!(r.status, 200, "{path}: {}", r.summary());
    assert!(
        r.cache_status().starts_with("ringcache; hit"),
        "{path}: expected a hit: {}",
        r.summary()
    );
    assert_eq!(r.body, path.as_bytes());
}

#[track_caller]
fn invalidate(server: &Server, body: &str) {
    let r = if body == "all" {
        server.admin_post("/invalidate/all", TOKEN, "")
    } else {
        server.admin_post("/invalidate", TOKEN, body)
    };
    assert_eq!(r.status, 200, "{body}: {}", r.summary());
}

/// SIGKILL, and wait for the process to be gone.
fn kill9(mut server: Server) {
    server.proc.signal(libc::SIGKILL);
    assert!(
        server.wait_exit(Duration::from_secs(5)).is_some(),
        "the killed server did not exit"
    );
}

/// After the restart: each of `purged` is fetched again (the origin count
/// goes up by one, no validator sent), each of `kept` is a hit (the origin
/// count does not move).
#[track_caller]
fn assert_purged_and_kept(f: &Fixture, server: &Server, purged: &[&str], kept: &[&str]) {
    for p in kept {
        let before = f.counts(p);
        assert_hit(&server.get(p), p);
        assert_eq!(f.counts(p), before, "{p}: the origin was asked again");
    }
    for p in purged {
        let (n, cond) = f.counts(p);
        let r = server.get(p);
        assert_eq!(r.status, 200, "{p}: {}", r.summary());
        assert!(
            !r.cache_status().starts_with("ringcache; hit"),
            "{p}: a purged object was served from the store after the crash: {}",
            r.summary()
        );
        assert_eq!(r.body, p.as_bytes());
        assert_eq!(
            f.counts(p),
            (n + 1, cond),
            "{p}: one unconditional origin request"
        );
    }
}

const TARGETS: [&str; 2] = ["/p/1", "/p/2"];
const OTHERS: [&str; 2] = ["/q/1", "/q/2"];

/// Fill, invalidate with `body`, kill -9 at once, restart: `purged` are
/// fetched again, `kept` are hits, `replayed` bans came back.
fn crash_case(io: &str, tag: &str, body: &str, purged: &[&str], kept: &[&str], replayed: f64) {
    let f = Fixture::new(tag);
    let Some(server) = f.serve(io) else {
        return;
    };
    f.fill(&server, &[&TARGETS[..], &OTHERS[..]].concat());
    invalidate(&server, body);
    kill9(server);
    let server = f.serve(io).expect("restart");
    let m = server.metrics();
    assert_eq!(m.value("ringcache_ban_log_replayed_total"), replayed);
    assert_eq!(m.value("ringcache_ban_log_dropped_total"), 0.0);
    assert_eq!(m.value("ringcache_bans_active"), replayed);
    assert_purged_and_kept(&f, &server, purged, kept);
}

fn hard_url_purge(io: &str) {
    // Removed from the region: nothing to replay, and recovery does not
    // bring the item back.
    crash_case(
        io,
        "url",
        r#"{"urls": ["http://ringcache.test/p/1"]}"#,
        &["/p/1"],
        &["/p/2", "/q/1", "/q/2"],
        0.0,
    );
}

fn exact_path_ban(io: &str) {
    crash_case(
        io,
        "path",
        r#"{"urls": ["/p/1"]}"#,
        &["/p/1"],
        &["/p/2", "/q/1", "/q/2"],
        1.0,
    );
}

fn prefix_ban(io: &str) {
    crash_case(
        io,
        "prefix",
        r#"{"prefixes": ["/p/"]}"#,
        &TARGETS,
        &OTHERS,
        1.0,
    );
}

fn regex_ban(io: &str) {
    crash_case(
        io,
        "regex",
        r#"{"regex": "^/p/[0-9]+$"}"#,
        &TARGETS,
        &OTHERS,
        1.0,
    );
}

fn header_ban(io: &str) {
    crash_case(
        io,
        "header",
        r#"{"header": {"name": "X-Team", "value": "p"}}"#,
        &TARGETS,
        &OTHERS,
        1.0,
    );
}

fn purge_all(io: &str) {
    crash_case(
        io,
        "all",
        "all",
        &[&TARGETS[..], &OTHERS[..]].concat(),
        &[],
        1.0,
    );
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The replayed ban keeps its creation second: an object stored after
/// it, before the crash, is still a hit after the restart.
fn objects_stored_after_the_ban_stay_hits(io: &str) {
    let f = Fixture::new("after");
    let Some(server) = f.serve(io) else {
        return;
    };
    f.fill(&server, &TARGETS);
    let banned_at = unix_secs();
    invalidate(&server, r#"{"prefixes": ["/p/"]}"#);
    // Objects born in the ban's second are fetched again too: store the
    // new copy in a later second.
    assert!(wait_until(Duration::from_secs(3), || unix_secs() > banned_at + 1));
    let r = server.get("/p/1");
    assert!(
        !r.cache_status().starts_with("ringcache; hit"),
        "{}",
        r.summary()
    );
    assert_hit(&server.get("/p/1"), "/p/1");
    kill9(server);
    let server = f.serve(io).expect("restart");
    assert_eq!(server.metrics().value("ringcache_bans_active"), 1.0);
    assert_purged_and_kept(&f, &server, &["/p/2"], &["/p/1"]);
}

fn soft_url_purge(io: &str) {
    let f = Fixture::new("soft");
    let Some(server) = f.serve(io) else {
        return;
    };
    f.fill(&server, &["/p/1", "/q/1"]);
    invalidate(
        &server,
        r#"{"urls": ["http://ringcache.test/p/1"], "mode": "soft"}"#,
    );
    kill9(server);
    let server = f.serve(io).expect("restart");
    assert_purged_and_kept(&f, &server, &[], &["/q/1"]);
    // Stale after the restart: validated with the origin, not a fresh hit.
    let (n, cond) = f.counts("/p/1");
    let r = server.get("/p/1");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"/p/1");
    assert_eq!(
        r.cache_status_params()[..2],
        ["fwd=stale", "fwd-status=304"],
        "{}",
        r.summary()
    );
    assert_eq!(
        f.counts("/p/1"),
        (n + 1, cond + 1),
        "one conditional request"
    );
    assert_hit(&server.get("/p/1"), "/p/1");
}

fn tag_purge(io: &str) {
    let f = Fixture::new("tag");
    let Some(server) = f.serve(io) else {
        return;
    };
    f.fill(&server, &[&TARGETS[..], &OTHERS[..], &["/r/1"]].concat());
    // A fresh store's tag index is complete: the objects are removed.
    invalidate(&server, r#"{"tags": ["p"]}"#);
    kill9(server);
    let server = f.serve(io).expect("restart");
    assert_eq!(server.metrics().value("ringcache_bans_active"), 0.0);
    assert_purged_and_kept(&f, &server, &TARGETS, &OTHERS);
    // A reopened store's index is incomplete: a tag purge is also a ban,
    // and the ban is what the next crash must not lose.
    invalidate(&server, r#"{"tags": ["q"]}"#);
    kill9(server);
    let server = f.serve(io).expect("second restart");
    let m = server.metrics();
    assert_eq!(m.value("ringcache_ban_log_replayed_total"), 1.0);
    assert_purged_and_kept(&f, &server, &OTHERS, &["/r/1", "/p/1", "/p/2"]);
}

fn clean_restart_keeps_bans(io: &str) {
    let f = Fixture::new("clean");
    let Some(server) = f.serve(io) else {
        return;
    };
    f.fill(&server, &[&TARGETS[..], &OTHERS[..]].concat());
    invalidate(&server, r#"{"prefixes": ["/p/"]}"#);
    assert!(server.stop().success(), "a clean stop");
    let server = f.serve(io).expect("restart");
    assert!(
        server.logged("invalidation journal: 1 ban(s) replayed, 0 record(s) dropped"),
        "{:?}",
        server.stderr_lines()
    );
    assert_purged_and_kept(&f, &server, &TARGETS, &OTHERS);
    // `ringcache inspect` shows the journal of the running store.
    let store = f.store();
    let mut p = Proc::spawn(
        "ringcache",
        &["inspect", "--store", store.to_str().unwrap()],
    );
    assert!(p
        .wait_timeout(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    let out = p.stdout_lines().join("\n");
    assert!(out.contains("journal:  1 entries, 0 dropped"), "{out}");
}

/// The journal area of a store file: (offset, length) from its header.
fn journal_area(file: &[u8]) -> (usize, usize) {
    let at = |o: usize| u64::from_le_bytes(file[o..o + 8].try_into().unwrap()) as usize;
    (at(56), at(64))
}

/// Flip one byte inside every copy of `needle` in the journal area.
fn damage_record(store: &std::path::Path, needle: &[u8]) {
    let mut bytes = std::fs::read(store).expect("read the store file");
    let (off, len) = journal_area(&bytes);
    let mut found = 0;
    let mut i = off;
    while i + needle.len() <= off + len {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i + 1] ^= 0x20;
            found += 1;
        }
        i += 1;
    }
    assert!(found > 0, "no record holds {needle:?}");
    std::fs::write(store, &bytes).expect("write the store file");
}

/// Two bans, then one record damaged while the server is down.
fn damaged_record(io: &str, tag: &str, damaged: &str) -> Option<(Fixture, Server)> {
    let f = Fixture::new(tag);
    let server = f.serve(io)?;
    f.fill(&server, &["/first/1", "/second/1", "/q/1"]);
    invalidate(&server, r#"{"prefixes": ["/first/"]}"#);
    invalidate(&server, r#"{"prefixes": ["/second/"]}"#);
    kill9(server);
    damage_record(&f.store(), damaged.as_bytes());
    let server = f.serve(io).expect("restart");
    let m = server.metrics();
    assert_eq!(m.value("ringcache_ban_log_dropped_total"), 1.0);
    Some((f, server))
}

fn damaged_last_record_is_dropped(io: &str) {
    // The last record is what a crash during its write leaves torn: it was
    // never acknowledged, so it is dropped alone and the rest replays.
    let Some((f, server)) = damaged_record(io, "torn", "/second/") else {
        return;
    };
    assert_eq!(
        server.metrics().value("ringcache_ban_log_replayed_total"),
        1.0
    );
    assert_purged_and_kept(&f, &server, &["/first/1"], &["/q/1"]);
}

fn damaged_acknowledged_record_invalidates_everything(io: &str) {
    // An earlier record was acknowledged: its ban is lost, so nothing
    // stored can be trusted not to be what it banned.
    let Some((f, server)) = damaged_record(io, "lost", "/first/") else {
        return;
    };
    assert!(
        server.logged("every stored object is invalidated"),
        "{:?}",
        server.stderr_lines()
    );
    assert_purged_and_kept(&f, &server, &["/first/1", "/second/1", "/q/1"], &[]);
    // Healthy again: the next restart replays without drops.
    kill9(server);
    let server = f.serve(io).expect("second restart");
    assert_eq!(
        server.metrics().value("ringcache_ban_log_dropped_total"),
        0.0
    );
}

fn compacted_bans_keep_their_floor(io: &str) {
    let f = Fixture::new("compact");
    let Some(server) = f.serve(io) else {
        return;
    };
    // An object that expires at once, and a ban on it that retires soon
    // after (nothing else stored may be served longer).
    let r = server.get("/short/1");
    assert_eq!(r.status, 200, "{}", r.summary());
    invalidate(&server, r#"{"prefixes": ["/short/"]}"#);
    assert_eq!(server.metrics().value("ringcache_ban_log_records"), 1.0);
    // The upkeep retires it and compacts the journal.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let m = server.metrics();
            m.value("ringcache_bans_active") == 0.0 && m.value("ringcache_ban_log_records") == 0.0
        }),
        "the ban did not retire and compact"
    );
    f.fill(&server, &["/p/1", "/q/1"]);
    invalidate(&server, r#"{"prefixes": ["/p/"]}"#);
    kill9(server);
    let server = f.serve(io).expect("restart");
    assert_eq!(
        server.metrics().value("ringcache_ban_log_replayed_total"),
        1.0
    );
    assert_purged_and_kept(&f, &server, &["/p/1"], &["/q/1"]);
    // The expired object the retired ban covered is not validated (a 304
    // would serve its banned bytes): fetched anew, as before the crash.
    assert_purged_and_kept(&f, &server, &["/short/1"], &[]);
    assert_eq!(f.counts("/short/1").1, 0, "no conditional request");
}

both_io!(
    hard_url_purge,
    soft_url_purge,
    tag_purge,
    prefix_ban,
    regex_ban,
    header_ban,
    exact_path_ban,
    purge_all,
    objects_stored_after_the_ban_stay_hits,
    clean_restart_keeps_bans,
    damaged_last_record_is_dropped,
    damaged_acknowledged_record_invalidates_everything,
    compacted_bans_keep_their_floor,
);
