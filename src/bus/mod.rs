//! The invalidation bus: invalidations received by one node reach every node
//! of the cluster through one Redis stream.
//!
//! ```text
//!  node A: POST /invalidate ──▶ apply locally ──▶ Bus::publish(body)
//!                                                   │ XADD S MAXLEN ~ N * node A inv BODY
//!                                                   ▼
//!                                   Redis stream S: 1733500000000-0 {node A, inv ...}
//!                                                   │ XREAD BLOCK ms COUNT n STREAMS S last_id
//!  node B: consumer thread ◀────────────────────────┘
//!          skip own entries · apply(body) · save last_id (fsync) · HSET ack:<id> B ok
//! ```
//!
//! Redis keys, for stream `S` (every key carries the stream's name, so
//! several clusters can share one Redis):
//!
//! | key | type | what |
//! |---|---|---|
//! | `S` | stream | entries `{node, inv}`, trimmed to about `stream_len_max` |
//! | `ringcache:S:epoch` | string | created once (`SET NX`); a new value means Redis lost its data |
//! | `ringcache:S:nodes` | set | every node that ever announced itself |
//! | `ringcache:S:node:NAME` | string, `EX heartbeat_ttl` | NAME is alive |
//! | `ringcache:S:ack:ID` | hash, `EXPIRE ack_ttl` | node → `ok <objects>` or `err` |
//!
//! Delivery. The consumer applies every other node's entry once, in id
//! order, and then saves its position (`last_id`, and `offset`, the stream's
//! `entries-added` count at that entry) in a state file, fsynced before the
//! entries are acknowledged. A node that stops and comes back resumes after
//! `last_id` and replays exactly what it missed. A crash between an apply and
//! the save replays that batch once more: invalidations are idempotent. A
//! node without a saved position (first start) begins at the stream's end.
//! [`Bus::wait_caught_up`] tells when the entries the stream held past the
//! saved position at the first connect are applied: `serve` waits for it
//! (bounded by `catch_up_timeout`) before its workers take connections.
//!
//! Lost entries. Entries can disappear before a node read them: the stream
//! was trimmed past its position (`entries-added − length > offset`), Redis
//! restarted without its data (the epoch key changed or the stream vanished),
//! or the state file is damaged. The node then cannot know what it missed, so
//! it drops its whole cache (the `drop_all` callback, with a warn line) rather
//! than serve stale objects, and continues from the stream's end (after a
//! trim) or from the start of the new stream (after Redis lost its data).
//!
//! Redis unreachable. Local invalidation does not depend on the bus: the
//! caller applies first, then publishes. A publish that cannot reach Redis
//! fails at once (counted), and its body waits in a bounded outbox, sent in
//! order on reconnect; beyond `outbox_entries_max` the oldest is dropped with
//! a warn line. The consumer reconnects with exponential backoff between
//! `reconnect_backoff_min` and `reconnect_backoff_max`.
//!
//! The client is our own RESP2 over `std::net::TcpStream` ([`resp`]): the bus
//! needs a dozen commands, every reply must be bounded (sizes, nesting, one
//! oversized entry must not wedge the reader), and every call needs a
//! timeout; a blocking socket with those bounds is a few hundred lines, with
//! no async runtime and no dependency.

mod entry_id;
pub mod resp;
mod state;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};

pub use self::entry_id::EntryId;
pub use self::resp::BusError;
use self::resp::{Conn, ReplyLimits, Value};
use self::state::{Loaded, Position, StateFile};
pub use crate::config::BusConfig;
use crate::metrics::BusMetrics;

/// How often [`Bus::wait_acks`] looks for new acknowledgements, at most.
pub const ACK_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Its first pause; each later one doubles, up to [`ACK_POLL_INTERVAL`].
pub const ACK_POLL_FIRST: Duration = Duration::from_millis(1);
/// Longest uninterrupted sleep of the consumer thread (so that stop is prompt).
pub const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often [`Bus::wait_caught_up`] looks at the consumer's progress.
pub const CATCH_UP_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Applies another node's invalidation body; returns the objects invalidated.
pub type ApplyFn = Box<dyn FnMut(&[u8]) -> Result<u64, String> + Send>;
/// Drops the whole cache (entries were lost).
pub type DropAllFn = Box<dyn FnMut() + Send>;

/// Why a publish did not reach the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The body is over `payload_bytes_max`; nothing was queued.
    TooLarge { bytes: usize, max: usize },
    /// Redis is unreachable; the body waits in the outbox.
    Queued(String),
    /// Redis refused the command (not queued: it would be refused again).
    Refused(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::TooLarge { bytes, max } => {
                write!(
                    f,
                    "invalidation body of {bytes} bytes is over bus.payload_bytes_max ({max})"
                )
            }
            PublishError::Queued(why) => write!(f, "queued for the bus: {why}"),
            PublishError::Refused(why) => write!(f, "refused by redis: {why}"),
        }
    }
}

/// The key names of one stream.
struct Keys {
    stream: String,
    epoch: String,
    nodes: String,
    node_prefix: String,
    ack_prefix: String,
}

impl Keys {
    fn new(stream: &str) -> Keys {
        Keys {
            stream: stream.to_string(),
            epoch: format!("ringcache:{stream}:epoch"),
            nodes: format!("ringcache:{stream}:nodes"),
            node_prefix: format!("ringcache:{stream}:node:"),
            ack_prefix: format!("ringcache:{stream}:ack:"),
        }
    }

    fn node(&self, name: &str) -> String {
        format!("{}{name}", self.node_prefix)
    }

    fn ack(&self, id: EntryId) -> String {
        format!("{}{id}", self.ack_prefix)
    }
}

/// What the consumer thread and the publishers share.
struct Shared {
    cfg: BusConfig,
    keys: Keys,
    metrics: Arc<BusMetrics>,
    stop: AtomicBool,
    publisher: Mutex<Publisher>,
    /// The outbox's length, readable without the lock.
    outbox_len: AtomicUsize,
    /// The consumer has read the stream up to the end it saw after its
    /// first sync: every invalidation published before the start is applied.
    caught_up: AtomicBool,
}

/// The publishing side: its own connection and the outbox.
struct Publisher {
    conn: Option<Conn>,
    outbox: VecDeque<Vec<u8>>,
}

/// A running bus: the consumer thread and the publishing side.
pub struct Bus {
    shared: Arc<Shared>,
    /// Taken by the first [`Bus::close`].
    consumer: Mutex<Option<JoinHandle<()>>>,
}

impl Bus {
    /// Start the consumer thread. `apply` gets every other node's entry;
    /// `drop_all` is called when entries were lost. Both run on the bus's
    /// thread, never on a worker. Fails only on an invalid configuration or
    /// when the thread cannot start; an unreachable Redis is retried.
    pub fn start(
        cfg: BusConfig,
        apply: impl FnMut(&[u8]) -> Result<u64, String> + Send + 'static,
        drop_all: impl FnMut() + Send + 'static,
    ) -> Result<Bus, String> {
        cfg.validate()?;
        let state = cfg
            .state_file()
            .map(|path| StateFile::new(path, &cfg.stream));
        if state.is_none() {
            warn!(
                "bus: neither bus.state_dir nor --store is set: the resume point is not kept and a restart starts at the stream's end"
            );
        }
        let shared = Arc::new(Shared {
            keys: Keys::new(&cfg.stream),
            cfg,
            metrics: Arc::new(BusMetrics::default()),
            stop: AtomicBool::new(false),
            publisher: Mutex::new(Publisher {
                conn: None,
                outbox: VecDeque::new(),
            }),
            outbox_len: AtomicUsize::new(0),
            caught_up: AtomicBool::new(false),
        });
        let consumer = Consumer {
            shared: Arc::clone(&shared),
            apply: Box::new(apply),
            drop_all: Box::new(drop_all),
            loaded: state.as_ref().map(StateFile::load),
            state,
            pos: None,
            ever_connected: false,
        };
        let handle = std::thread::Builder::new()
            .name("ringcache-bus".into())
            .spawn(move || consumer.run())
            .map_err(|e| format!("bus: cannot start its thread: {e}"))?;
        Ok(Bus {
            shared,
            consumer: Mutex::new(Some(handle)),
        })
    }

    /// The bus's series, for `Metrics::attach_bus`.
    pub fn metrics(&self) -> Arc<BusMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// This node's name on the bus.
    pub fn node(&self) -> &str {
        &self.shared.cfg.node
    }

    /// Invalidations waiting for Redis.
    pub fn outbox_len(&self) -> usize {
        // Relaxed: a count for reporting and tests.
        self.shared.outbox_len.load(Ordering::Relaxed)
    }

    /// Wait up to `timeout` until the consumer has applied every entry the
    /// stream held when it first connected (what this node missed while it
    /// was down); false when the time ran out (Redis unreachable or slow).
    pub fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // Acquire pairs with the Release store in `poll`: the applies
            // before it are visible to the caller.
            if self.shared.caught_up.load(Ordering::Acquire) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(CATCH_UP_POLL_INTERVAL.min(deadline - now));
        }
    }

    /// Share an invalidation this node received (and applied) with the
    /// others. Never blocks longer than one connect or one command timeout.
    pub fn publish(&self, payload: &[u8]) -> Result<EntryId, PublishError> {
        let sh = &*self.shared;
        let max = sh.cfg.payload_bytes_max;
        if payload.len() > max {
            sh.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
            return Err(PublishError::TooLarge {
                bytes: payload.len(),
                max,
            });
        }
        let mut p = sh.lock_publisher();
        // Relaxed: a hint; a stale value costs one queued entry or one failed try.
        if sh.metrics.connected.load(Ordering::Relaxed) == 0 {
            sh.queue(&mut p, payload);
            return Err(PublishError::Queued("redis unreachable".into()));
        }
        sh.flush_locked(&mut p);
        if !p.outbox.is_empty() {
            sh.queue(&mut p, payload);
            return Err(PublishError::Queued(
                "older invalidations are still queued".into(),
            ));
        }
        match sh.xadd(&mut p, payload) {
            Ok(id) => Ok(id),
            Err(BusError::Server(m)) => {
                sh.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
                warn!("bus: redis refused an invalidation: {m}");
                Err(PublishError::Refused(m))
            }
            Err(e) => {
                sh.queue(&mut p, payload);
                Err(PublishError::Queued(e.to_string()))
            }
        }
    }

    /// Wait up to `timeout` for every live node to acknowledge entry `id`;
    /// returns each live node (and each node that acknowledged) with whether
    /// it applied the entry, sorted by name.
    pub fn wait_acks(
        &self,
        id: EntryId,
        timeout: Duration,
    ) -> Result<Vec<(String, bool)>, BusError> {
        let sh = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut conn = sh.connect()?;
        // Acks land within a millisecond or two of the publish on a quiet
        // cluster: look again soon, then back off to the poll interval.
        let mut pause = ACK_POLL_FIRST;
        loop {
            let members = conn.command(&[b"SMEMBERS", sh.keys.nodes.as_bytes()])?;
            let mut names: Vec<String> = members
                .array()
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.text().map(str::to_string))
                .collect();
            names.sort();
            names.truncate(sh.cfg.nodes_max);
            let mut cmds: Vec<Vec<Vec<u8>>> = names
                .iter()
                .map(|n| vec![b"EXISTS".to_vec(), sh.keys.node(n).into_bytes()])
                .collect();
            cmds.push(vec![b"HGETALL".to_vec(), sh.keys.ack(id).into_bytes()]);
            let replies = conn.pipeline(&cmds)?;
            let mut acks: HashMap<String, bool> = HashMap::new();
            if let Some(fields) = replies.last().and_then(Value::array) {
                for pair in fields.chunks_exact(2) {
                    if let (Some(node), Some(v)) = (pair[0].text(), pair[1].bytes()) {
                        acks.insert(node.to_string(), v.starts_with(b"ok"));
                    }
                }
            }
            let mut out: Vec<(String, bool)> = Vec::new();
            let mut dead: Vec<&String> = Vec::new();
            for (name, live) in names.iter().zip(&replies) {
                if live.int() == Some(1) {
                    out.push((name.clone(), acks.get(name).copied().unwrap_or(false)));
                } else if !acks.contains_key(name) {
                    dead.push(name);
                }
            }
            for (node, ok) in &acks {
                if !out.iter().any(|(n, _)| n == node) {
                    out.push((node.clone(), *ok));
                }
            }
            out.sort();
            let now = Instant::now();
            if out.iter().all(|(_, ok)| *ok) || now >= deadline {
                let others = out.iter().filter(|(n, _)| *n != sh.cfg.node);
                let (awaited, failed) =
                    others.fold((0, 0), |(a, f), (_, ok)| (a + 1, f + u64::from(!*ok)));
                sh.metrics
                    .acks_awaited
                    .fetch_add(awaited, Ordering::Relaxed);
                sh.metrics.acks_failed.fetch_add(failed, Ordering::Relaxed);
                // Forget members whose heartbeat expired (best effort).
                if !dead.is_empty() {
                    let mut cmd: Vec<&[u8]> = vec![b"SREM", sh.keys.nodes.as_bytes()];
                    cmd.extend(dead.iter().map(|n| n.as_bytes()));
                    let _ = conn.command(&cmd);
                }
                return Ok(out);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(ACK_POLL_INTERVAL);
        }
    }

    /// Stop the consumer thread and leave the cluster (the heartbeat key is
    /// removed). Queued invalidations that were not sent are dropped.
    pub fn stop(self) {
        self.close();
    }

    /// [`Bus::stop`] for a bus shared with other threads (a stopping
    /// `serve`): waits for the consumer's current read, at most
    /// `block_timeout` plus `io_timeout`, then leaves the cluster, so that
    /// acknowledgement waits on other nodes stop counting this one.
    /// Publishing afterwards only queues. Later calls return at once.
    pub fn close(&self) {
        // Relaxed: the thread polls the flag; join orders everything after.
        self.shared.stop.store(true, Ordering::Relaxed);
        let handle = self
            .consumer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            if h.join().is_err() {
                error!("bus: the consumer thread panicked");
            }
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        // Relaxed: a polled flag.
        self.stop.load(Ordering::Relaxed)
    }

    fn lock_publisher(&self) -> MutexGuard<'_, Publisher> {
        // A publisher that panicked left a valid queue: keep going.
        self.publisher.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect(&self) -> Result<Conn, BusError> {
        Conn::connect(
            &self.cfg.redis_addr,
            self.cfg.connect_timeout,
            self.cfg.io_timeout,
            ReplyLimits {
                reply_bytes_max: self.cfg.reply_bytes_max,
                bulk_bytes_max: self.cfg.payload_bytes_max,
            },
        )
    }

    /// Publish the outbox's length (for the session loop and the metric).
    fn set_outbox_len(&self, p: &Publisher) {
        // Relaxed: counts for the session loop's hint and for reporting.
        self.outbox_len.store(p.outbox.len(), Ordering::Relaxed);
        self.metrics
            .outbox_entries
            .store(p.outbox.len() as u64, Ordering::Relaxed);
    }

    /// Put `payload` at the back of the outbox, dropping the oldest beyond the bound.
    fn queue(&self, p: &mut Publisher, payload: &[u8]) {
        self.metrics.publish_errors.fetch_add(1, Ordering::Relaxed);
        if p.outbox.len() >= self.cfg.outbox_entries_max {
            p.outbox.pop_front();
            self.metrics.outbox_dropped.fetch_add(1, Ordering::Relaxed);
            warn!(
                "bus: outbox full (bus.outbox_entries_max = {}): the oldest unpublished invalidation is dropped, other nodes will not see it",
                self.cfg.outbox_entries_max
            );
        }
        p.outbox.push_back(payload.to_vec());
        self.set_outbox_len(p);
    }

    /// Send queued invalidations in order; stop at the first failure.
    fn flush_outbox(&self) {
        let mut p = self.lock_publisher();
        self.flush_locked(&mut p);
    }

    fn flush_locked(&self, p: &mut Publisher) {
        let queued = p.outbox.len();
        while let Some(front) = p.outbox.front() {
            let payload = front.clone();
            match self.xadd(p, &payload) {
                Ok(_) => {
                    p.outbox.pop_front();
                }
                Err(BusError::Server(m)) => {
                    // Redis will refuse it again: do not block the queue on it.
                    warn!("bus: redis refused a queued invalidation, dropped: {m}");
                    p.outbox.pop_front();
                }
                Err(e) => {
                    debug!("bus: outbox not flushed: {e}");
                    break;
                }
            }
        }
        self.set_outbox_len(p);
        if queued > 0 && p.outbox.is_empty() {
            info!("bus: {queued} queued invalidations published");
        }
    }

    fn xadd(&self, p: &mut Publisher, payload: &[u8]) -> Result<EntryId, BusError> {
        if p.conn.is_none() {
            p.conn = Some(self.connect()?);
        }
        let Some(conn) = p.conn.as_mut() else {
            unreachable!("connected just above");
        };
        let len = self.cfg.stream_len_max.to_string();
        let res = conn.command(&[
            b"XADD",
            self.keys.stream.as_bytes(),
            b"MAXLEN",
            b"~",
            len.as_bytes(),
            b"*",
            b"node",
            self.cfg.node.as_bytes(),
            b"inv",
            payload,
        ]);
        match res {
            Ok(v) => v
                .text()
                .and_then(EntryId::parse)
                .ok_or_else(|| BusError::Protocol("XADD did not return an id".into())),
            Err(e) => {
                if e.is_fatal() {
                    p.conn = None;
                }
                Err(e)
            }
        }
    }
}

/// What `XINFO STREAM` said (or that the stream does not exist).
#[derive(Debug, Default)]
struct StreamInfo {
    exists: bool,
    length: u64,
    last_generated: EntryId,
    /// Redis 7 and later.
    entries_added: Option<u64>,
    first_entry: Option<EntryId>,
}

fn stream_info(conn: &mut Conn, stream: &str) -> Result<StreamInfo, BusError> {
    let reply = match conn.command(&[b"XINFO", b"STREAM", stream.as_bytes()]) {
        Ok(v) => v,
        Err(BusError::Server(m)) if m.contains("no such key") => return Ok(StreamInfo::default()),
        Err(e) => return Err(e),
    };
    let fields = reply
        .array()
        .ok_or_else(|| BusError::Protocol("XINFO STREAM: not an array".into()))?;
    let mut info = StreamInfo {
        exists: true,
        ..StreamInfo::default()
    };
    for pair in fields.chunks_exact(2) {
        let id = || pair[1].text().and_then(EntryId::parse);
        match pair[0].text() {
            Some("length") => info.length = pair[1].int().unwrap_or(0).max(0) as u64,
            Some("last-generated-id") => info.last_generated = id().unwrap_or_default(),
            Some("entries-added") => info.entries_added = pair[1].int().map(|n| n.max(0) as u64),
            Some("first-entry") => {
                info.first_entry = pair[1]
                    .array()
                    .and_then(|e| e.first())
                    .and_then(Value::text)
                    .and_then(EntryId::parse)
            }
            _ => {}
        }
    }
    Ok(info)
}

/// One stream entry as read.
struct Entry {
    id: EntryId,
    node: Option<String>,
    /// `None`: missing, or over `payload_bytes_max`.
    payload: Option<Vec<u8>>,
}

fn parse_xread(reply: Value) -> Result<Vec<Entry>, BusError> {
    let bad = |m: &str| BusError::Protocol(format!("XREAD: {m}"));
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err(bad("not an array")),
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(mut pair) = s else {
            return Err(bad("stream is not an array"));
        };
        let Some(Value::Array(entries)) = pair.pop() else {
            return Err(bad("entries are not an array"));
        };
        for e in entries {
            let Value::Array(mut parts) = e else {
                return Err(bad("entry is not an array"));
            };
            if parts.len() != 2 {
                return Err(bad("entry is not [id, fields]"));
            }
            let fields = parts.pop().unwrap_or(Value::Nil);
            let id = parts[0]
                .text()
                .and_then(EntryId::parse)
                .ok_or_else(|| bad("entry id"))?;
            let mut entry = Entry {
                id,
                node: None,
                payload: None,
            };
            if let Value::Array(fields) = fields {
                let mut it = fields.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    match (k.bytes(), v) {
                        (Some(b"node"), v) => entry.node = v.text().map(str::to_string),
                        (Some(b"inv"), Value::Bulk(b)) => entry.payload = Some(b),
                        _ => {}
                    }
                }
            }
            out.push(entry);
        }
    }
    Ok(out)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The consumer thread's state.
struct Consumer {
    shared: Arc<Shared>,
    apply: ApplyFn,
    drop_all: DropAllFn,
    state: Option<StateFile>,
    /// What the state file said at start, consumed by the first sync.
    loaded: Option<Loaded>,
    /// Where we stand; `None` until the first sync.
    pos: Option<Position>,
    ever_connected: bool,
}

/// How a connected session ended.
enum SessionEnd {
    Stopped,
    Failed { was_connected: bool, err: BusError },
}

impl Consumer {
    fn run(mut self) {
        let cfg = self.shared.cfg.clone();
        let mut backoff = cfg.reconnect_backoff_min;
        loop {
            match self.session() {
                SessionEnd::Stopped => break,
                SessionEnd::Failed { was_connected, err } => {
                    self.shared.metrics.connected.store(0, Ordering::Relaxed);
                    if was_connected {
                        backoff = cfg.reconnect_backoff_min;
                        warn!("bus: lost redis {}: {err}; local invalidation goes on, publishes are queued", cfg.redis_addr);
                    } else {
                        warn!(
                            "bus: cannot reach redis {}: {err}; retrying in {}ms",
                            cfg.redis_addr,
                            backoff.as_millis()
                        );
                    }
                }
            }
            if !self.sleep(backoff) {
                break;
            }
            backoff = (backoff * 2).min(cfg.reconnect_backoff_max);
        }
        self.shared.metrics.connected.store(0, Ordering::Relaxed);
        self.leave();
    }

    /// Sleep `d` unless stopped; false when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.shared.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::sleep(STOP_POLL_INTERVAL.min(until - now));
        }
    }

    /// Remove our heartbeat so that acknowledgement waits stop counting us.
    fn leave(&self) {
        let sh = &*self.shared;
        if let Ok(mut conn) = sh.connect() {
            let _ = conn.pipeline(&[
                vec![b"DEL".to_vec(), sh.keys.node(&sh.cfg.node).into_bytes()],
                vec![
                    b"SREM".to_vec(),
                    sh.keys.nodes.clone().into_bytes(),
                    sh.cfg.node.clone().into_bytes(),
                ],
            ]);
        }
    }

    fn session(&mut self) -> SessionEnd {
        let mut conn = match self.shared.connect() {
            Ok(c) => c,
            Err(err) => {
                return SessionEnd::Failed {
                    was_connected: false,
                    err,
                }
            }
        };
        if let Err(err) = self
            .sync(&mut conn)
            .and_then(|()| self.heartbeat(&mut conn))
        {
            return SessionEnd::Failed {
                was_connected: false,
                err,
            };
        }
        let sh = Arc::clone(&self.shared);
        sh.metrics.connected.store(1, Ordering::Relaxed);
        if self.ever_connected {
            sh.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        info!(
            "bus: connected to redis {}, stream {}, node {}, resuming after {}",
            sh.cfg.redis_addr,
            sh.cfg.stream,
            sh.cfg.node,
            self.pos.as_ref().map_or(EntryId::ZERO, |p| p.last_id)
        );
        let heartbeat_every = sh.cfg.heartbeat_ttl / 3;
        let mut heartbeat_at = Instant::now() + heartbeat_every;
        loop {
            if sh.stopping() {
                return SessionEnd::Stopped;
            }
            if sh.outbox_len.load(Ordering::Relaxed) > 0 {
                sh.flush_outbox();
            }
            let res = (|| {
                if Instant::now() >= heartbeat_at {
                    self.heartbeat(&mut conn)?;
                    heartbeat_at = Instant::now() + heartbeat_every;
                }
                self.poll(&mut conn)
            })();
            if let Err(err) = res {
                return SessionEnd::Failed {
                    was_connected: true,
                    err,
                };
            }
        }
    }

    fn heartbeat(&self, conn: &mut Conn) -> Result<(), BusError> {
        let sh = &*self.shared;
        let replies = conn.pipeline(&[
            vec![
                b"SET".to_vec(),
                sh.keys.node(&sh.cfg.node).into_bytes(),
                unix_ms().to_string().into_bytes(),
                b"EX".to_vec(),
                sh.cfg
                    .heartbeat_ttl
                    .as_secs()
                    .max(1)
                    .to_string()
                    .into_bytes(),
            ],
            vec![
                b"SADD".to_vec(),
                sh.keys.nodes.clone().into_bytes(),
                sh.cfg.node.clone().into_bytes(),
            ],
        ])?;
        match replies.iter().find_map(|v| match v {
            Value::Error(m) => Some(m.clone()),
            _ => None,
        }) {
            Some(m) => Err(BusError::Server(m)),
            None => Ok(()),
        }
    }

    /// Learn the stream's epoch and decide where to read from.
    fn sync(&mut self, conn: &mut Conn) -> Result<(), BusError> {
        let sh = Arc::clone(&self.shared);
        let token = format!(
            "{}-{}",
            sh.cfg.node,
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let replies = conn.pipeline(&[
            vec![
                b"SET".to_vec(),
                sh.keys.epoch.clone().into_bytes(),
                token.into_bytes(),
                b"NX".to_vec(),
            ],
            vec![b"GET".to_vec(), sh.keys.epoch.clone().into_bytes()],
        ])?;
        let epoch = replies
            .get(1)
            .and_then(Value::text)
            .filter(|e| !e.is_empty() && !e.contains(char::is_whitespace))
            .ok_or_else(|| BusError::Protocol("the epoch key holds no usable value".into()))?
            .to_string();
        let info = stream_info(conn, &sh.keys.stream)?;
        let at_end = Position {
            epoch: epoch.clone(),
            last_id: info.last_generated,
            offset: info.entries_added.unwrap_or(0),
        };
        let known = match self.pos.take() {
            Some(p) => Some(p),
            None => match self.loaded.take() {
                None | Some(Loaded::Missing) => None,
                Some(Loaded::Found(p)) => Some(p),
                Some(Loaded::Damaged(why)) => {
                    self.drop_cache(&format!("the bus state file is damaged ({why})"));
                    None
                }
            },
        };
        self.pos = Some(match known {
            Some(p) if p.epoch == epoch => p,
            Some(_) => {
                // Everything the new stream holds was written after the loss:
                // read it all (after the drop, applying it is harmless).
                self.drop_cache("the stream's epoch changed (redis lost its data)");
                Position {
                    epoch: epoch.clone(),
                    last_id: EntryId::ZERO,
                    offset: 0,
                }
            }
            None => {
                info!(
                    "bus: no resume point for stream {}: starting at its end ({})",
                    sh.keys.stream, at_end.last_id
                );
                at_end
            }
        });
        self.save();
        Ok(())
    }

    fn drop_cache(&mut self, why: &str) {
        warn!("bus: {why}: invalidations may have been lost, dropping the whole cache");
        (self.drop_all)();
        self.shared
            .metrics
            .cache_drops
            .fetch_add(1, Ordering::Relaxed);
    }

    fn save(&self) {
        if let (Some(state), Some(pos)) = (&self.state, &self.pos) {
            if let Err(e) = state.save(pos) {
                error!(
                    "bus: cannot save the resume point to {}: {e}; a restart will replay or drop",
                    state.path().display()
                );
            }
        }
    }

    /// One turn: check for lost entries, read a batch, apply, save, acknowledge.
    fn poll(&mut self, conn: &mut Conn) -> Result<(), BusError> {
        let sh = Arc::clone(&self.shared);
        let info = stream_info(conn, &sh.keys.stream)?;
        let Some(pos) = self.pos.clone() else {
            return Err(BusError::Protocol("not synced".into()));
        };
        if let Some(why) = lost_entries(&pos, &info) {
            self.drop_cache(&why);
            self.pos = Some(Position {
                epoch: pos.epoch,
                last_id: info.last_generated,
                offset: info.entries_added.unwrap_or(0),
            });
            self.save();
            return Ok(());
        }
        let lag = match info.entries_added {
            Some(added) => added.saturating_sub(pos.offset),
            None if info.last_generated > pos.last_id => info.length,
            None => 0,
        };
        sh.metrics.lag_entries.store(lag, Ordering::Relaxed);
        if lag == 0 {
            sh.metrics.lag_ms.store(0, Ordering::Relaxed);
        }
        if pos.last_id >= info.last_generated {
            // Release pairs with the Acquire load in `wait_caught_up`.
            sh.caught_up.store(true, Ordering::Release);
        }
        let block_ms = sh.cfg.block_timeout.as_millis().to_string();
        let count = sh.cfg.batch_entries_max.to_string();
        let last = pos.last_id.to_string();
        let reply = conn.command_within(
            &[
                b"XREAD",
                b"COUNT",
                count.as_bytes(),
                b"BLOCK",
                block_ms.as_bytes(),
                b"STREAMS",
                sh.keys.stream.as_bytes(),
                last.as_bytes(),
            ],
            sh.cfg.block_timeout + sh.cfg.io_timeout,
        )?;
        let entries = parse_xread(reply)?;
        if let Some(first) = entries.first() {
            sh.metrics
                .lag_ms
                .store(unix_ms().saturating_sub(first.id.ms), Ordering::Relaxed);
            self.consume(conn, entries)?;
        }
        Ok(())
    }

    fn consume(&mut self, conn: &mut Conn, entries: Vec<Entry>) -> Result<(), BusError> {
        let sh = Arc::clone(&self.shared);
        let Some(mut pos) = self.pos.clone() else {
            return Err(BusError::Protocol("not synced".into()));
        };
        let mut acks: Vec<Vec<Vec<u8>>> = Vec::with_capacity(entries.len() * 2);
        let ack_ttl = sh.cfg.ack_ttl.as_secs().max(1).to_string();
        for e in entries {
            if e.id <= pos.last_id {
                continue;
            }
            pos.last_id = e.id;
            pos.offset += 1;
            let outcome = if e.node.as_deref() == Some(sh.cfg.node.as_str()) {
                // Our own entry: applied locally before it was published.
                "ok".to_string()
            } else {
                match e.payload.as_deref().map(|p| (self.apply)(p)) {
                    Some(Ok(n)) => {
                        sh.metrics.applied.fetch_add(1, Ordering::Relaxed);
                        format!("ok {n}")
                    }
                    Some(Err(why)) => {
                        sh.metrics.apply_errors.fetch_add(1, Ordering::Relaxed);
                        warn!("bus: entry {} from {:?} not applied: {why}", e.id, e.node);
                        "err".to_string()
                    }
                    None => {
                        sh.metrics.apply_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            "bus: entry {} from {:?} has no usable body (missing or over bus.payload_bytes_max): skipped",
                            e.id, e.node
                        );
                        "err".to_string()
                    }
                }
            };
            let key = sh.keys.ack(e.id).into_bytes();
            acks.push(vec![
                b"HSET".to_vec(),
                key.clone(),
                sh.cfg.node.clone().into_bytes(),
                outcome.into_bytes(),
            ]);
            acks.push(vec![b"EXPIRE".to_vec(), key, ack_ttl.clone().into_bytes()]);
        }
        self.pos = Some(pos);
        // Durable before acknowledged.
        self.save();
        if !acks.is_empty() {
            conn.pipeline(&acks)?;
        }
        Ok(())
    }
}

/// Why entries after `pos` can no longer be read, if they cannot.
///
/// With Redis 7's `entries-added` (E) and the stream's `length` (L), the
/// entries ever removed from the head number E − L; those after our position
/// were lost when E − L exceeds our offset. Comparing ids instead ("the
/// oldest entry is newer than last_id + 1") cannot tell a trim that stopped
/// at our position from one that went past it, because ids are timestamps.
fn lost_entries(pos: &Position, info: &StreamInfo) -> Option<String> {
    if !info.exists {
        return (pos.offset > 0 || pos.last_id > EntryId::ZERO)
            .then(|| format!("the stream is gone (last applied {})", pos.last_id));
    }
    match info.entries_added {
        Some(added) if added < pos.offset => Some(format!(
            "the stream was recreated ({added} entries added, {} applied here)",
            pos.offset
        )),
        Some(added) if added - info.length.min(added) > pos.offset => Some(format!(
            "the stream was trimmed past the last applied entry {}",
            pos.last_id
        )),
        Some(_) => None,
        // Before Redis 7 (no entries-added): the oldest entry must follow
        // what we applied. Ids carry milliseconds, so this also fires when
        // the trim stopped exactly at our position: a needless drop, never a
        // missed one. From Redis 7 on, the offsets above are exact.
        None => info
            .first_entry
            .filter(|first| pos.last_id > EntryId::ZERO && *first > pos.last_id.successor())
            .map(|_| {
                format!(
                    "the stream was trimmed past the last applied entry {}",
                    pos.last_id
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(last: u64, offset: u64) -> Position {
        Position {
            epoch: "e".into(),
            last_id: EntryId { ms: last, seq: 0 },
            offset,
        }
    }

    fn info(length: u64, added: Option<u64>, first: u64) -> StreamInfo {
        StreamInfo {
            exists: true,
            length,
            last_generated: EntryId { ms: 100, seq: 0 },
            entries_added: added,
            first_entry: Some(EntryId { ms: first, seq: 0 }),
        }
    }

    #[test]
    fn lost_entries_by_offsets_and_by_ids() {
        // 10 added, 3 kept: entries 1..=7 trimmed.
        assert!(lost_entries(&pos(50, 7), &info(3, Some(10), 60)).is_none());
        assert!(lost_entries(&pos(50, 6), &info(3, Some(10), 60)).is_some());
        assert!(lost_entries(&pos(50, 10), &info(3, Some(10), 60)).is_none());
        // Fewer entries added than we applied: a new stream.
        assert!(lost_entries(&pos(50, 11), &info(3, Some(10), 60)).is_some());
        // Gone.
        let gone = StreamInfo::default();
        assert!(lost_entries(&pos(50, 3), &gone).is_some());
        assert!(lost_entries(&pos(0, 0), &gone).is_none());
        // Without entries-added: ids.
        assert!(lost_entries(&pos(50, 0), &info(3, None, 50)).is_none());
        assert!(lost_entries(&pos(50, 0), &info(3, None, 70)).is_some());
        assert!(lost_entries(&pos(0, 0), &info(3, None, 70)).is_none());
    }

    #[test]
    fn xread_replies_become_entries() {
        let bulk = |s: &str| Value::Bulk(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("node"), bulk("a"), bulk("inv"), bulk("{}")]),
                ]),
                Value::Array(vec![
                    bulk("6-0"),
                    Value::Array(vec![
                        bulk("node"),
                        bulk("b"),
                        bulk("inv"),
                        Value::Oversize(9),
                    ]),
                ]),
            ]),
        ])]);
        let e = parse_xread(reply).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].id, EntryId { ms: 5, seq: 1 });
        assert_eq!(e[0].node.as_deref(), Some("a"));
        assert_eq!(e[0].payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(e[1].payload, None);
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
        assert!(parse_xread(Value::Int(1)).is_err());
    }
}
