//! The invalidation bus against a real `redis-server` on loopback: delivery
//! once to every other node, resume from the state file, a trimmed stream, a
//! Redis restart with the outbox, acknowledgements.
//!
//! Skipped, with a printed reason, when `redis-server` is not installed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringcache::bus::resp::{Conn, ReplyLimits, Value};
use ringcache::bus::{Bus, BusConfig, EntryId, PublishError};
use ringcache::metrics::BusMetrics;

/// Bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(15);

/// Poll `cond` every 10 ms until it holds or `WAIT` passes.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringcache-bus-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` child on a free loopback port, without persistence,
/// killed by PID on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    /// `None` (after printing why) when redis-server is not installed.
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: TempDir::new("redis"),
        };
        r.restart();
        Some(r)
    }

    /// Start (again) on the same port; returns once it answers PING.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        assert!(
            wait_until(|| self
                .conn()
                .and_then(|mut c| c.command(&[b"PING"]).ok())
                .is_some()),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    /// SIGKILL by PID: the data is gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self, stream: &str) -> String {
        format!("redis://127.0.0.1:{}/{stream}", self.port)
    }

    fn conn(&self) -> Option<Conn> {
        Conn::connect(
            &format!("127.0.0.1:{}", self.port),
            Duration::from_secs(1),
            Duration::from_secs(2),
            ReplyLimits {
                reply_bytes_max: 1 << 20,
                bulk_bytes_max: 1 << 16,
            },
        )
        .ok()
    }

    fn command(&self, args: &[&[u8]]) -> Value {
        self.conn().unwrap().command(args).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One bus instance and what its callbacks saw.
struct Node {
    bus: Option<Bus>,
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
    drops: Arc<AtomicU64>,
}

fn config(url: &str, name: &str, state_dir: &Path) -> BusConfig {
    let mut c = BusConfig::new(url, name).unwrap();
    c.state_dir = Some(state_dir.to_path_buf());
    c.block_timeout = Duration::from_millis(100);
    c.connect_timeout = Duration::from_millis(500);
    c.io_timeout = Duration::from_secs(1);
    c.reconnect_backoff_min = Duration::from_millis(20);
    c.reconnect_backoff_max = Duration::from_millis(200);
    c.heartbeat_ttl = Duration::from_secs(2);
    c.outbox_entries_max = 4;
    c
}

impl Node {
    fn start(cfg: BusConfig) -> Node {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(AtomicU64::new(0));
        let (a, d) = (Arc::clone(&applied), Arc::clone(&drops));
        let bus = Bus::start(
            cfg,
            move |p: &[u8]| {
                a.lock().unwrap().push(p.to_vec());
                Ok(1)
            },
            move || {
                d.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        let n = Node {
            bus: Some(bus),
            applied,
            drops,
        };
        assert!(wait_until(|| n.connected()), "bus did not connect");
        n
    }

    fn bus(&self) -> &Bus {
        self.bus.as_ref().unwrap()
    }

    fn stop(&mut self) {
        self.bus.take().unwrap().stop();
    }

    fn connected(&self) -> bool {
        self.bus().metrics().connected.load(Ordering::Relaxed) == 1
    }

    fn applied(&self) -> Vec<String> {
        self.applied
            .lock()
            .unwrap()
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    fn drops(&self) -> u64 {
        self.drops.load(Ordering::SeqCst)
    }

    fn publish(&self, body: &str) -> EntryId {
        self.bus().publish(body.as_bytes()).unwrap()
    }

    /// Wait until this node applied `body` (it is the last one applied).
    fn wait_applied(&self, body: &str) {
        assert!(
            wait_until(|| self.applied().last().map(String::as_str) == Some(body)),
            "{body:?} not applied; applied: {:?}",
            self.applied()
        );
    }
}

#[test]
fn each_entry_is_applied_once_by_every_other_node_and_not_by_its_author() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let b = Node::start(config(&url, "b", &db.0));
    for i in 1..=3 {
        a.publish(&format!("{{\"urls\":[\"/a/{i}\"]}}"));
    }
    b.publish("from-b");
    a.publish("end-a");
    b.wait_applied("end-a");
    a.wait_applied("from-b");
    // A last entry from each side, then nothing more may arrive.
    b.publish("end-b");
    a.wait_applied("end-b");
    let id = a.publish("last");
    b.wait_applied("last");
    let acks = a.bus().wait_acks(id, WAIT).unwrap();
    assert_eq!(acks, vec![("a".into(), true), ("b".into(), true)]);
    assert_eq!(
        b.applied(),
        [
            "{\"urls\":[\"/a/1\"]}",
            "{\"urls\":[\"/a/2\"]}",
            "{\"urls\":[\"/a/3\"]}",
            "end-a",
            "last"
        ]
    );
    assert_eq!(a.applied(), ["from-b", "end-b"]);
    let m = b.bus().metrics();
    assert_eq!(m.applied.load(Ordering::Relaxed), 5);
    assert_eq!(m.lag_entries.load(Ordering::Relaxed), 0);
    assert_eq!(m.publish_errors.load(Ordering::Relaxed), 0);
    assert_eq!((a.drops(), b.drops()), (0, 0));
    // Entries carry the author and the body, and the stream is capped.
    let len = redis.command(&[b"XLEN", b"inv"]).int().unwrap();
    assert_eq!(len, 7);
    // A body over the limit is refused before it reaches Redis.
    let big = vec![b'x'; (64 << 10) + 1];
    assert!(matches!(
        a.bus().publish(&big),
        Err(PublishError::TooLarge { .. })
    ));
}

#[test]
fn a_restarted_consumer_replays_exactly_what_it_missed() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let mut b = Node::start(config(&url, "b", &db.0));
    a.publish("one");
    b.wait_applied("one");
    b.stop();
    a.publish("two");
    a.publish("three");
    let b = Node::start(config(&url, "b", &db.0));
    b.wait_applied("three");
    a.publish("four");
    b.wait_applied("four");
    assert_eq!(b.applied(), ["two", "three", "four"]);
    assert_eq!(b.drops(), 0);
    assert!(db.0.join("ringcache-bus-inv.state").exists());
    // A node that never consumed the stream starts at its end.
    let dc = TempDir::new("c");
    let c = Node::start(config(&url, "c", &dc.0));
    a.publish("five");
    c.wait_applied("five");
    assert_eq!(c.applied(), ["five"]);
}

/// `wait_caught_up` answers true only once every entry the stream held past
/// the saved position is applied (what `serve` waits for before it takes
/// connections), and false while Redis cannot be reached.
#[test]
fn caught_up_means_every_missed_entry_is_applied() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let mut b = Node::start(config(&url, "b", &db.0));
    a.publish("one");
    b.wait_applied("one");
    b.stop();
    let missed: Vec<String> = (1..=5).map(|i| format!("missed-{i}")).collect();
    for m in &missed {
        a.publish(m);
    }
    let b = Node::start(config(&url, "b", &db.0));
    assert!(b.bus().wait_caught_up(WAIT), "never caught up");
    // No waiting here: caught up means applied.
    assert_eq!(b.applied(), missed);

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dd = TempDir::new("d");
    let cut_off = Bus::start(
        config(&format!("redis://127.0.0.1:{port}/inv"), "d", &dd.0),
        |_: &[u8]| Ok(0),
        || {},
    )
    .unwrap();
    assert!(!cut_off.wait_caught_up(Duration::from_millis(300)));
}

#[test]
fn a_stream_trimmed_past_the_saved_id_drops_the_cache_once() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let mut b = Node::start(config(&url, "b", &db.0));
    a.publish("one");
    b.wait_applied("one");
    b.stop();
    for i in 0..20 {
        a.publish(&format!("missed-{i}"));
    }
    assert_eq!(
        redis.command(&[b"XTRIM", b"inv", b"MAXLEN", b"5"]).int(),
        Some(16)
    );
    let mut b = Node::start(config(&url, "b", &db.0));
    assert!(wait_until(|| b.drops() == 1));
    a.publish("after");
    b.wait_applied("after");
    assert_eq!(b.applied(), ["after"]);
    assert_eq!(b.bus().metrics().cache_drops.load(Ordering::Relaxed), 1);
    // The new position was saved: another restart drops nothing more.
    b.stop();
    let b = Node::start(config(&url, "b", &db.0));
    a.publish("again");
    b.wait_applied("again");
    assert_eq!(b.applied(), ["again"]);
    assert_eq!(b.drops(), 0);
    // A trim that removes only what was applied is no loss.
    assert!(redis
        .command(&[b"XTRIM", b"inv", b"MAXLEN", b"0"])
        .int()
        .is_some());
    a.publish("still");
    b.wait_applied("still");
    assert_eq!(b.drops(), 0);
}

#[test]
fn a_redis_restart_is_survived_and_the_outbox_is_flushed() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let b = Node::start(config(&url, "b", &db.0));
    a.publish("before");
    b.wait_applied("before");

    redis.kill();
    assert!(wait_until(|| !a.connected() && !b.connected()));
    for body in ["q1", "q2", "q3", "q4", "q5", "q6"] {
        assert!(matches!(
            a.bus().publish(body.as_bytes()),
            Err(PublishError::Queued(_))
        ));
    }
    // outbox_entries_max = 4: the two oldest went.
    assert_eq!(a.bus().outbox_len(), 4);
    let m = a.bus().metrics();
    assert_eq!(m.publish_errors.load(Ordering::Relaxed), 6);
    assert_eq!(m.outbox_dropped.load(Ordering::Relaxed), 2);

    redis.restart();
    assert!(wait_until(|| a.connected() && b.connected()));
    assert!(wait_until(|| a.bus().outbox_len() == 0));
    b.wait_applied("q6");
    assert_eq!(b.applied(), ["before", "q3", "q4", "q5", "q6"]);
    for n in [&a, &b] {
        let m = n.bus().metrics();
        assert!(m.reconnects.load(Ordering::Relaxed) >= 1);
        // Redis came back empty: what was in flight may be lost.
        assert_eq!(n.drops(), 1);
    }
    a.publish("after");
    b.wait_applied("after");
    assert_eq!(b.drops(), 1);
}

#[test]
fn acknowledgements_come_from_live_nodes_within_the_timeout() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let mut b = Node::start(config(&url, "b", &db.0));
    let id = a.publish("p1");
    assert_eq!(
        a.bus().wait_acks(id, WAIT).unwrap(),
        vec![("a".into(), true), ("b".into(), true)]
    );
    // A node that is alive but never acknowledges is reported as such
    // once the timeout passes.
    redis.command(&[b"SET", b"ringcache:inv:node:ghost", b"1", b"EX", b"30"]);
    redis.command(&[b"SADD", b"ringcache:inv:nodes", b"ghost"]);
    let id = a.publish("p2");
    assert_eq!(
        a.bus().wait_acks(id, Duration::from_millis(500)).unwrap(),
        vec![
            ("a".into(), true),
            ("b".into(), true),
            ("ghost".into(), false)
        ]
    );
    // A node that left is not waited for; one whose heartbeat expired neither.
    redis.command(&[b"DEL", b"ringcache:inv:node:ghost"]);
    b.stop();
    let id = a.publish("p3");
    assert_eq!(
        a.bus().wait_acks(id, WAIT).unwrap(),
        vec![("a".into(), true)]
    );
    // Waited for b, then b and the ghost (which failed), then nobody.
    let m = a.bus().metrics();
    assert_eq!(BusMetrics::get(&m.acks_awaited), 3);
    assert_eq!(BusMetrics::get(&m.acks_failed), 1);
}

/// Not a check, a figure: how fast entries go from one node to another on
/// this machine. `cargo test --release --test bus -- --ignored --nocapture`.
#[test]
#[ignore]
fn publish_to_apply_rate() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let b = Node::start(config(&url, "b", &db.0));
    const ENTRIES: usize = 5000;
    let body = "{\"urls\":[\"/api/items/1\",\"/api/items/2\"]}";
    let start = Instant::now();
    for _ in 0..ENTRIES - 1 {
        a.publish(body);
    }
    let published = start.elapsed();
    a.publish("end");
    b.wait_applied("end");
    let applied = start.elapsed();
    assert_eq!(b.applied().len(), ENTRIES);
    println!(
        "{ENTRIES} entries: published in {published:?} ({:.0}/s, one at a time), all applied on the other node after {applied:?} ({:.0}/s)",
        ENTRIES as f64 / published.as_secs_f64(),
        ENTRIES as f64 / applied.as_secs_f64()
    );
}

#[test]
fn a_damaged_state_file_drops_the_cache_and_starts_over() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let mut b = Node::start(config(&url, "b", &db.0));
    a.publish("one");
    b.wait_applied("one");
    b.stop();
    std::fs::write(db.0.join("ringcache-bus-inv.state"), "last_id 1-0\n").unwrap();
    let b = Node::start(config(&url, "b", &db.0));
    assert_eq!(b.drops(), 1);
    a.publish("two");
    b.wait_applied("two");
    assert_eq!(b.applied(), ["two"]);
}

#[test]
fn a_foreign_entry_over_the_payload_limit_is_skipped_not_wedging_the_reader() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    let b = Node::start(config(&url, "b", &db.0));
    let big = vec![b'x'; 100 << 10];
    let id = redis.command(&[b"XADD", b"inv", b"*", b"node", b"other", b"inv", &big]);
    let id = EntryId::parse(id.text().unwrap()).unwrap();
    redis.command(&[
        b"XADD", b"inv", b"*", b"node", b"other", b"note", b"no body",
    ]);
    a.publish("after");
    b.wait_applied("after");
    assert_eq!(b.applied(), ["after"]);
    let m = b.bus().metrics();
    assert_eq!(m.apply_errors.load(Ordering::Relaxed), 2);
    assert_eq!(m.applied.load(Ordering::Relaxed), 1);
    // Both nodes acknowledge it as not applied.
    assert_eq!(
        a.bus().wait_acks(id, Duration::from_millis(300)).unwrap(),
        vec![("a".into(), false), ("b".into(), false)]
    );
}

#[test]
fn lag_counts_the_entries_not_yet_applied() {
    let Some(redis) = Redis::start() else { return };
    let (da, db) = (TempDir::new("a"), TempDir::new("b"));
    let url = redis.url("inv");
    let a = Node::start(config(&url, "a", &da.0));
    // B's apply takes one permit per entry and says when it started one.
    let gate = Arc::new((Mutex::new((0u32, 0u32)), std::sync::Condvar::new()));
    let g = Arc::clone(&gate);
    let b = Bus::start(
        config(&url, "b", &db.0),
        move |_: &[u8]| {
            let (m, c) = &*g;
            let mut st = m.lock().unwrap();
            st.1 += 1;
            c.notify_all();
            let deadline = Instant::now() + WAIT;
            while st.0 == 0 && Instant::now() < deadline {
                st = c.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
            }
            st.0 = st.0.saturating_sub(1);
            Ok(1)
        },
        || {},
    )
    .unwrap();
    let m = b.metrics();
    assert!(wait_until(|| m.connected.load(Ordering::Relaxed) == 1));
    let started = || gate.0.lock().unwrap().1;
    let release = |n: u32| {
        gate.0.lock().unwrap().0 += n;
        gate.1.notify_all();
    };
    a.publish("e1");
    assert!(wait_until(|| started() == 1));
    a.publish("e2");
    a.publish("e3");
    release(1);
    // e1 done, e2 being applied: two entries are not applied yet.
    assert!(wait_until(|| started() == 2));
    assert!(wait_until(|| m.lag_entries.load(Ordering::Relaxed) == 2));
    release(2);
    assert!(wait_until(|| m.applied.load(Ordering::Relaxed) == 3));
    assert!(wait_until(
        || m.lag_entries.load(Ordering::Relaxed) == 0 && m.lag_ms.load(Ordering::Relaxed) == 0
    ));
}
