//! The access log: one line per request answered on the traffic port, in
//! JSON lines or the combined format, written by one thread off the
//! request path.
//!
//! ```text
//!  worker 0 ── Record (fields copied at parse, in a pooled box)
//!     │        line formatted at completion into the worker's buffer
//!     │        (preallocated, `buffer_bytes`; no allocation, no syscall, no lock)
//!     ├─ buffer full, or `flush_interval` passed at a tick
//!     ▼
//!  bounded queue (workers × BUFFERS_PER_WORKER buffers) ──▶ writer thread ──▶ file / stdout
//!     ▲                                                          │
//!     └──────────── the buffer comes back, emptied ◀─────────────┘
//! ```
//!
//! Each worker owns [`BUFFERS_PER_WORKER`] buffers: one it fills, the others
//! on their way to the writer or back. When none has come back (the writer
//! or the disk is behind) the lines of that moment are dropped and counted
//! (`ringcache_access_log_dropped_total`); a worker never waits for the
//! writer. Lines written count in `ringcache_access_log_lines_total`.
//!
//! A line can never outgrow its buffer: every field is cut at a named limit
//! ([`TARGET_BYTES_MAX`], [`FIELD_BYTES_MAX`]) before escaping, which at
//! most sextuples a byte, so a line is at most [`LINE_BYTES_MAX`], and a
//! buffer with less room left than that is handed on first.
//!
//! Sampling (`mode = "sampled"`) counts requests per worker, from 0 when
//! the worker starts: request number `seq` is logged when `seq % sample ==
//! 0`, so a worker that parsed `n` requests logged `ceil(n / sample)` lines,
//! each carrying its `seq`.
//!
//! SIGUSR1 makes the writer reopen the path (after logrotate moved the
//! file); SIGTERM flushes every worker's buffer before the process exits.

use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::metrics::Metrics;

/// Default size of one worker buffer.
pub const BUFFER_BYTES_DEFAULT: usize = 64 << 10;
/// Smallest buffer: it must hold the longest line.
pub const BUFFER_BYTES_MIN: usize = 16 << 10;
/// Largest buffer.
pub const BUFFER_BYTES_MAX: usize = 16 << 20;
/// Buffers each worker owns (one filling, the others queued or returning).
pub const BUFFERS_PER_WORKER: usize = 4;
/// Default time a line may wait in a worker's buffer.
pub const FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Bounds of `flush_interval`.
pub const FLUSH_INTERVAL_MIN: Duration = Duration::from_millis(10);
pub const FLUSH_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Largest `sample` (1 in N).
pub const SAMPLE_MAX: u32 = 1_000_000;
/// Request target bytes logged; longer ones are cut and marked.
pub const TARGET_BYTES_MAX: usize = 1024;
/// Bytes logged of Host, Referer and User-Agent; longer ones are cut and marked.
pub const FIELD_BYTES_MAX: usize = 256;
/// Method bytes logged.
pub const METHOD_BYTES_MAX: usize = 32;
/// What marks a cut value, appended after its last byte kept.
pub const CUT_MARK: &[u8] = b"...";
/// Raw bytes a record holds: every field at its limit.
pub const RECORD_BYTES_MAX: usize = METHOD_BYTES_MAX + TARGET_BYTES_MAX + 3 * FIELD_BYTES_MAX;
/// The longest line: every byte escaped to six (`\u00XX`), the cut marks,
/// and the fixed part of either format (names, numbers, time, address).
pub const LINE_BYTES_MAX: usize = RECORD_BYTES_MAX * 6 + 5 * CUT_MARK.len() + 512;
/// Records a worker keeps for reuse; beyond, a finished record is freed.
pub const RECORDS_SPARE_MAX: usize = 1024;
/// Records a worker allocates at start.
pub const RECORDS_PREALLOCATED: usize = 64;
/// How often the writer looks at the reopen flag while idle.
const WRITER_POLL_INTERVAL: Duration = Duration::from_millis(100);

const _: () = assert!(LINE_BYTES_MAX <= BUFFER_BYTES_MIN);
const _: () = assert!(BUFFERS_PER_WORKER >= 2);

/// `access_log.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Sampled,
    Full,
}

/// `access_log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Combined,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "sampled" => Some(Mode::Sampled),
            "full" => Some(Mode::Full),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Sampled => "sampled",
            Mode::Full => "full",
        }
    }
}

impl Format {
    fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "combined" => Some(Format::Combined),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Combined => "combined",
        }
    }
}

/// The `[access_log]` table, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogConfig {
    pub mode: Mode,
    /// 1 in `sample` requests per worker when `mode` is sampled.
    pub sample: u32,
    pub format: Format,
    /// The file lines are appended to (created 0640); `-`: stdout.
    pub path: PathBuf,
    /// One worker buffer, in bytes.
    pub buffer_bytes: usize,
    /// Longest time a line waits in a worker's buffer (checked each tick).
    pub flush_interval: Duration,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            mode: Mode::Off,
            sample: 1,
            format: Format::Json,
            path: PathBuf::from("-"),
            buffer_bytes: BUFFER_BYTES_DEFAULT,
            flush_interval: FLUSH_INTERVAL_DEFAULT,
        }
    }
}

/// The `[access_log]` table as the TOML file writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    mode: Option<String>,
    sample: Option<u32>,
    format: Option<String>,
    path: Option<PathBuf>,
    buffer_bytes: Option<String>,
    flush_interval: Option<String>,
}

impl FileAccessLog {
    /// The file's values over the defaults (the flags and environment
    /// reach this table through its keys, see `config::ServeArgs`).
    pub fn apply(self) -> Result<AccessLogConfig, String> {
        let mut c = AccessLogConfig::default();
        if let Some(s) = self.mode.as_deref() {
            c.mode = Mode::parse(s).ok_or_else(|| {
                format!("access_log.mode: {s:?} is not one of off, sampled, full")
            })?;
        }
        if let Some(n) = self.sample {
            c.sample = n;
        }
        if let Some(s) = self.format.as_deref() {
            c.format = Format::parse(s)
                .ok_or_else(|| format!("access_log.format: {s:?} is not one of json, combined"))?;
        }
        if let Some(p) = self.path {
            c.path = p;
        }
        if let Some(s) = self.buffer_bytes {
            let n = crate::config::parse_size(&s)
                .map_err(|e| format!("access_log.buffer_bytes: {e}"))?;
            c.buffer_bytes =
                usize::try_from(n).map_err(|_| "access_log.buffer_bytes: too large".to_string())?;
        }
        if let Some(s) = self.flush_interval {
            c.flush_interval = crate::config::parse_duration(&s)
                .map_err(|e| format!("access_log.flush_interval: {e}"))?;
        }
        Ok(c)
    }
}

impl AccessLogConfig {
    /// Check the values; each error names its key.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=SAMPLE_MAX).contains(&self.sample) {
            return Err(format!(
                "access_log.sample: must be between 1 and {SAMPLE_MAX}"
            ));
        }
        if !(BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX).contains(&self.buffer_bytes) {
            return Err("access_log.buffer_bytes: must be between 16KiB and 16MiB".to_string());
        }
        if !(FLUSH_INTERVAL_MIN..=FLUSH_INTERVAL_MAX).contains(&self.flush_interval) {
            return Err("access_log.flush_interval: must be between 10ms and 60s".to_string());
        }
        if self.path.as_os_str().is_empty() {
            return Err("access_log.path: must not be empty (`-` is stdout)".to_string());
        }
        Ok(())
    }

    /// Requests per line logged: 1 when full, `sample` when sampled.
    fn every(&self) -> u64 {
        match self.mode {
            Mode::Sampled => u64::from(self.sample),
            _ => 1,
        }
    }
}

impl fmt::Display for AccessLogConfig {
    /// The `[access_log]` table, in the TOML file's own syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[access_log]")?;
        writeln!(f, "mode = \"{}\"", self.mode.name())?;
        writeln!(f, "sample = {}", self.sample)?;
        writeln!(f, "format = \"{}\"", self.format.name())?;
        writeln!(f, "path = {:?}", self.path.display().to_string())?;
        let b = self.buffer_bytes;
        if b % (1 << 20) == 0 {
            writeln!(f, "buffer_bytes = \"{}MiB\"", b >> 20)?;
        } else if b % (1 << 10) == 0 {
            writeln!(f, "buffer_bytes = \"{}KiB\"", b >> 10)?;
        } else {
            writeln!(f, "buffer_bytes = \"{b}\"")?;
        }
        let ms = self.flush_interval.as_millis();
        if ms % 1000 == 0 {
            writeln!(f, "flush_interval = \"{}s\"", ms / 1000)
        } else {
            writeln!(f, "flush_interval = \"{ms}ms\"")
        }
    }
}

// ---------------------------------------------------------------------------
// Records: what a request leaves for its line.
// ---------------------------------------------------------------------------

/// Where one field's bytes sit in a record.
#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: u16,
    len: u16,
    present: bool,
    cut: bool,
}

/// One request's fields, copied (and cut at their limits) when its head is
/// parsed, and what its answer was. Pooled per worker: a box is taken when
/// a request is logged and given back when its line is written.
#[derive(Debug)]
pub struct Record {
    started: Instant,
    /// The worker's request number (see the module doc on sampling).
    seq: u64,
    peer: Option<IpAddr>,
    /// The request line was parsed (0 or 1: HTTP/1.x).
    minor: Option<u8>,
    method: Span,
    target: Span,
    host: Span,
    referer: Span,
    user_agent: Span,
    bytes: Vec<u8>,
    /// Set once the answer is queued for the client.
    pub answered: bool,
    pub status: u16,
    pub body_bytes: u64,
    pub duration_us: u64,
    /// The `ringcache_cache_status_total` outcome label, `-` when none.
    pub outcome: &'static str,
    /// The origin's status and time, when this request asked it.
    pub origin_status: Option<u16>,
    pub origin_us: Option<u64>,
}

/// The request fields a record copies; absent ones are `None`.
pub struct RequestFields<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub minor: u8,
    pub host: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

impl Record {
    fn new() -> Box<Record> {
        Box::new(Record {
            started: Instant::now(),
            seq: 0,
            peer: None,
            minor: None,
            method: Span::default(),
            target: Span::default(),
            host: Span::default(),
            referer: Span::default(),
            user_agent: Span::default(),
            bytes: Vec::with_capacity(RECORD_BYTES_MAX),
            answered: false,
            status: 0,
            body_bytes: 0,
            duration_us: 0,
            outcome: "-",
            origin_status: None,
            origin_us: None,
        })
    }

    fn put(&mut self, v: Option<&[u8]>, max: usize) -> Span {
        let Some(v) = v else { return Span::default() };
        let take = v.len().min(max);
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&v[..take]);
        Span {
            start: start as u16,
            len: take as u16,
            present: true,
            cut: take < v.len(),
        }
    }

    fn get(&self, s: Span) -> Option<(&[u8], bool)> {
        s.present.then(|| {
            let start = usize::from(s.start);
            (&self.bytes[start..start + usize::from(s.len)], s.cut)
        })
    }

    /// Record the answer queued now: its status and body bytes.
    pub fn answer(&mut self, status: u16, body_bytes: u64) {
        if !self.answered {
            self.answered = true;
            self.status = status;
            self.body_bytes = body_bytes;
            self.duration_us =
                u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        }
    }

    /// Record the answer from a whole response (`HTTP/1.1 NNN ...`): its
    /// status and the bytes after the head.
    pub fn answer_response(&mut self, resp: &[u8]) {
        if resp.is_empty() {
            return; // the end of a streamed answer, recorded when it began
        }
        let status = resp
            .get(9..12)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = match resp.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => resp.len() - i - 4,
            None => 0,
        };
        self.answer(status, body as u64);
    }
}

// ---------------------------------------------------------------------------
// The worker side.
// ---------------------------------------------------------------------------

/// A message to the writer thread.
enum Message {
    Lines {
        worker: usize,
        buf: Vec<u8>,
        lines: u64,
    },
    /// Look at the reopen flag now.
    Wake,
    /// Every worker has flushed: write what is queued and end.
    Stop,
}

/// One worker's end of the access log. Lives in its proxy; every method
/// runs on the worker's thread and none blocks.
pub struct WorkerLog {
    worker_index: usize,
    format: Format,
    every: u64,
    flush_interval: Duration,
    /// Requests counted for sampling.
    seq: u64,
    /// The buffer being filled; `None` while every buffer is away.
    buf: Option<Vec<u8>>,
    lines: u64,
    buf_bytes: usize,
    since: Instant,
    to_writer: SyncSender<Message>,
    returned: Receiver<Vec<u8>>,
    /// Boxed on purpose: a record moves into a `Fetch` and back by pointer.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Record>>,
    metrics: Arc<Metrics>,
}

impl WorkerLog {
    /// Start a record for the next request, or `None` when this request is
    /// not logged (sampling). `peer` and `fields` (`None`: the request head
    /// did not parse) are copied now.
    pub fn begin(
        &mut self,
        peer: Option<IpAddr>,
        fields: Option<&RequestFields<'_>>,
    ) -> Option<Box<Record>> {
        let seq = self.seq;
        self.seq += 1;
        if seq % self.every != 0 {
            return None;
        }
        let mut r = self.spare.pop().unwrap_or_else(Record::new);
        r.started = Instant::now();
        r.seq = seq;
        r.peer = peer;
        r.bytes.clear();
        r.answered = false;
        r.status = 0;
        r.body_bytes = 0;
        r.duration_us = 0;
        r.outcome = "-";
        r.origin_status = None;
        r.origin_us = None;
        match fields {
            Some(f) => {
                r.minor = Some(f.minor);
                r.method = r.put(Some(f.method), METHOD_BYTES_MAX);
                r.target = r.put(Some(f.target), TARGET_BYTES_MAX);
                r.host = r.put(f.host, FIELD_BYTES_MAX);
                r.referer = r.put(f.referer, FIELD_BYTES_MAX);
                r.user_agent = r.put(f.user_agent, FIELD_BYTES_MAX);
            }
            None => {
                r.minor = None;
                for s in [
                    &mut r.method,
                    &mut r.target,
                    &mut r.host,
                    &mut r.referer,
                    &mut r.user_agent,
                ] {
                    *s = Span::default();
                }
            }
        }
        Some(r)
    }

    /// Write the line of an answered record (and take the record back).
    /// An unanswered record is taken back without a line.
    pub fn finish(&mut self, record: Box<Record>) {
        if record.answered {
            self.write_line(&record);
        }
        if self.spare.len() < RECORDS_SPARE_MAX {
            self.spare.push(record);
        }
    }

    fn write_line(&mut self, r: &Record) {
        if self.buf.is_none() {
            self.buf = self.returned.try_recv().ok();
        }
        if self
            .buf
            .as_ref()
            .is_some_and(|b| self.buf_bytes - b.len() < LINE_BYTES_MAX)
        {
            self.hand_off();
            self.buf = self.returned.try_recv().ok();
        }
        let Some(buf) = self.buf.as_mut() else {
            // Every buffer is with the writer: it is behind.
            self.metrics
                .access_log
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let before = buf.len();
        format_line(buf, self.format, r, self.worker_index, SystemTime::now());
        debug_assert!(buf.len() - before <= LINE_BYTES_MAX);
        debug_assert!(buf.len() <= self.buf_bytes);
        if self.lines == 0 {
            self.since = Instant::now();
        }
        self.lines += 1;
    }

    /// Hand the current buffer to the writer (never waits).
    fn hand_off(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        if self.lines == 0 {
            self.buf = Some(buf);
            return;
        }
        let lines = std::mem::take(&mut self.lines);
        match self.to_writer.try_send(Message::Lines {
            worker: self.worker_index,
            buf,
            lines,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Lines { mut buf, .. }))
            | Err(TrySendError::Disconnected(Message::Lines { mut buf, .. })) => {
                self.metrics
                    .access_log
                    .dropped
                    .fetch_add(lines, Ordering::Relaxed);
                buf.clear();
                self.buf = Some(buf);
            }
            Err(_) => {}
        }
    }

    /// Called once per tick: hand on lines older than `flush_interval`.
    pub fn tick(&mut self, now: Instant) {
        if self.lines > 0 && now.duration_since(self.since) >= self.flush_interval {
            self.hand_off();
        }
    }

    /// Hand on every line now (the worker is stopping).
    pub fn flush(&mut self) {
        if self.buf.is_none() {
            self.buf = self.returned.try_recv().ok();
        }
        self.hand_off();
    }
}

// ---------------------------------------------------------------------------
// The writer thread.
// ---------------------------------------------------------------------------

/// Where lines go.
enum Sink {
    Stdout,
    File(File),
}

fn open_sink(path: &Path) -> std::io::Result<Sink> {
    if path == Path::new("-") {
        return Ok(Sink::Stdout);
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map(Sink::File)
}

impl Sink {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File(f) => f.write_all(bytes),
        }
    }
}

/// The process's access log: the writer thread and what signals it.
pub struct AccessLog {
    to_writer: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AccessLog {
    /// Open the path and start the writer. Returns `None` when the log is
    /// off, else the handle and one [`WorkerLog`] per worker.
    pub fn start(
        config: &AccessLogConfig,
        workers: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<Option<(AccessLog, Vec<WorkerLog>)>, String> {
        if config.mode == Mode::Off {
            return Ok(None);
        }
        let sink = open_sink(&config.path)
            .map_err(|e| format!("access_log.path {}: {e}", config.path.display()))?;
        // Room for every buffer of every worker, plus the wake-ups and the stop.
        let (to_writer, queue) = mpsc::sync_channel(workers * BUFFERS_PER_WORKER + 4);
        let mut returns = Vec::with_capacity(workers);
        let mut logs = Vec::with_capacity(workers);
        let now = Instant::now();
        for worker_index in 0..workers {
            let (back, returned) = mpsc::sync_channel(BUFFERS_PER_WORKER);
            for _ in 1..BUFFERS_PER_WORKER {
                back.try_send(Vec::with_capacity(config.buffer_bytes))
                    .expect("the return queue holds every buffer");
            }
            returns.push(back);
            logs.push(WorkerLog {
                worker_index,
                format: config.format,
                every: config.every(),
                flush_interval: config.flush_interval,
                seq: 0,
                buf: Some(Vec::with_capacity(config.buffer_bytes)),
                lines: 0,
                buf_bytes: config.buffer_bytes,
                since: now,
                to_writer: to_writer.clone(),
                returned,
                spare: (0..RECORDS_PREALLOCATED).map(|_| Record::new()).collect(),
                metrics: Arc::clone(metrics),
            });
        }
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: config.path.clone(),
            sink,
            returns,
            reopen: Arc::clone(&reopen),
            metrics: Arc::clone(metrics),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("ringcache-alog".to_string())
            .spawn(move || writer.run(queue))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(Some((
            AccessLog {
                to_writer,
                reopen,
                thread: Some(thread),
            },
            logs,
        )))
    }

    /// SIGUSR1: reopen the path before the next write (never waits).
    pub fn reopen(&self) {
        // Release pairs with the writer's Acquire swap.
        self.reopen.store(true, Ordering::Release);
        let _ = self.to_writer.try_send(Message::Wake);
    }

    /// After every worker has flushed: write what is queued, then stop.
    pub fn close(mut self) {
        // The writer drains its queue in order, so Stop comes after every
        // buffer the workers handed on; it never blocks on the workers.
        let _ = self.to_writer.send(Message::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    path: PathBuf,
    sink: Sink,
    returns: Vec<SyncSender<Vec<u8>>>,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The last write failed (logged once until a write succeeds).
    failing: bool,
}

impl Writer {
    fn run(mut self, queue: Receiver<Message>) {
        loop {
            // Acquire pairs with the Release store in `AccessLog::reopen`.
            if self.reopen.swap(false, Ordering::Acquire) {
                self.reopen_sink();
            }
            match queue.recv_timeout(WRITER_POLL_INTERVAL) {
                Ok(Message::Lines {
                    worker,
                    mut buf,
                    lines,
                }) => {
                    if self.reopen.swap(false, Ordering::Acquire) {
                        self.reopen_sink();
                    }
                    self.write(&buf, lines);
                    buf.clear();
                    // The worker's return queue holds all its buffers: never full.
                    let _ = self.returns[worker].try_send(buf);
                }
                Ok(Message::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn write(&mut self, buf: &[u8], lines: u64) {
        match self.sink.write_all(buf) {
            Ok(()) => {
                self.failing = false;
                self.metrics
                    .access_log
                    .lines
                    .fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                if !self.failing {
                    log::error!(
                        "access log {}: write failed, dropping lines until a write succeeds: {e}",
                        self.path.display()
                    );
                    self.failing = true;
                }
                self.metrics
                    .access_log
                    .dropped
                    .fetch_add(lines, Ordering::Relaxed);
            }
        }
    }

    fn reopen_sink(&mut self) {
        match open_sink(&self.path) {
            Ok(s) => {
                self.sink = s;
                log::info!("access log {}: reopened", self.path.display());
            }
            Err(e) => log::error!(
                "access log {}: cannot reopen, still writing to the old file: {e}",
                self.path.display()
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Formats.
// ---------------------------------------------------------------------------

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `v` in decimal, zero-padded to `width` digits.
fn put_num(out: &mut Vec<u8>, v: u64, width: usize) {
    use crate::http::sink::Out as _;
    let digits = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    out.resize(out.len() + width.saturating_sub(digits), b'0');
    // A Vec takes every byte: never Full.
    let _ = out.put_u64(v);
}

/// `2026-12-06T19:50:44.123Z` (JSON) or `06/Dec/2026:19:50:44 +0000` (combined).
fn put_time(out: &mut Vec<u8>, format: Format, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = crate::http::date::civil_date(secs / 86_400);
    let tod = secs % 86_400;
    match format {
        Format::Json => {
            put_num(out, y, 4);
            out.push(b'-');
            put_num(out, m, 2);
            out.push(b'-');
            put_num(out, d, 2);
            out.push(b'T');
            put_clock(out, tod);
            out.push(b'.');
            put_num(out, u64::from(since.subsec_millis()), 3);
            out.push(b'Z');
        }
        Format::Combined => {
            put_num(out, d, 2);
            out.push(b'/');
            out.extend_from_slice(MONTHS[(m - 1) as usize]);
            out.push(b'/');
            put_num(out, y, 4);
            out.push(b':');
            put_clock(out, tod);
            out.extend_from_slice(b" +0000");
        }
    }
}

/// `HH:MM:SS` of `tod` seconds into the day, as both formats write it.
fn put_clock(out: &mut Vec<u8>, tod: u64) {
    put_num(out, tod / 3600, 2);
    out.push(b':');
    put_num(out, tod / 60 % 60, 2);
    out.push(b':');
    put_num(out, tod % 60, 2);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string: `"`, `\` and control bytes escaped; bytes of valid UTF-8
/// as they are; any byte of an invalid sequence as `\u00XX`.
fn put_json_str(out: &mut Vec<u8>, v: &[u8], cut: bool) {
    let utf8 = std::str::from_utf8(v).is_ok();
    out.push(b'"');
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x20..=0x7e => out.push(b),
            0x80..=0xff if utf8 => out.push(b),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
    }
    if cut {
        out.extend_from_slice(CUT_MARK);
    }
    out.push(b'"');
}

/// A value as nginx's `escape=default` writes it: `"`, `\`, control bytes
/// and bytes above 0x7e as `\xXX`.
fn put_combined_str(out: &mut Vec<u8>, v: &[u8]) {
    for &b in v {
        match b {
            b'"' | b'\\' | 0..=0x1f | 0x7f..=0xff => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[usize::from(b >> 4)].to_ascii_uppercase());
                out.push(HEX[usize::from(b & 15)].to_ascii_uppercase());
            }
            _ => out.push(b),
        }
    }
}

fn put_combined_field(out: &mut Vec<u8>, v: Option<(&[u8], bool)>) {
    out.push(b'"');
    match v {
        Some((v, cut)) => {
            put_combined_str(out, v);
            if cut {
                out.extend_from_slice(CUT_MARK);
            }
        }
        None => out.push(b'-'),
    }
    out.push(b'"');
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    // Writing into a Vec with room cannot fail and does not allocate.
    let _ = write!(out, "{ip}");
}

fn put_opt_num(out: &mut Vec<u8>, v: Option<u64>, none: &[u8]) {
    match v {
        Some(v) => put_num(out, v, 1),
        None => out.extend_from_slice(none),
    }
}

/// Append one line for `r` (with its `\n`).
pub fn format_line(out: &mut Vec<u8>, format: Format, r: &Record, worker: usize, now: SystemTime) {
    let protocol: Option<&[u8]> = r.minor.map(|m| {
        if m == 0 {
            &b"HTTP/1.0"[..]
        } else {
            &b"HTTP/1.1"[..]
        }
    });
    match format {
        Format::Json => {
            let cut = [r.method, r.target, r.host, r.referer, r.user_agent]
                .iter()
                .any(|s| s.cut);
            out.extend_from_slice(b"{\"time\":\"");
            put_time(out, format, now);
            out.extend_from_slice(b"\",\"client\":");
            match r.peer {
                Some(ip) => {
                    out.push(b'"');
                    put_ip(out, ip);
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
            let str_field = |out: &mut Vec<u8>, name: &[u8], v: Option<(&[u8], bool)>| {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name);
                out.extend_from_slice(b"\":");
                match v {
                    Some((v, cut)) => put_json_str(out, v, cut),
                    None => out.extend_from_slice(b"null"),
                }
            };
            str_field(out, b"method", r.get(r.method));
            str_field(out, b"target", r.get(r.target));
            str_field(out, b"protocol", protocol.map(|p| (p, false)));
            out.extend_from_slice(b",\"status\":");
            put_num(out, u64::from(r.status), 1);
            out.extend_from_slice(b",\"bytes\":");
            put_num(out, r.body_bytes, 1);
            out.extend_from_slice(b",\"duration_us\":");
            put_num(out, r.duration_us, 1);
            out.extend_from_slice(b",\"cache\":\"");
            out.extend_from_slice(r.outcome.as_bytes());
            out.extend_from_slice(b"\",\"origin_status\":");
            put_opt_num(out, r.origin_status.map(u64::from), b"null");
            out.extend_from_slice(b",\"origin_duration_us\":");
            put_opt_num(out, r.origin_us, b"null");
            str_field(out, b"host", r.get(r.host));
            str_field(out, b"referer", r.get(r.referer));
            str_field(out, b"user_agent", r.get(r.user_agent));
            out.extend_from_slice(b",\"worker\":");
            put_num(out, worker as u64, 1);
            out.extend_from_slice(b",\"seq\":");
            put_num(out, r.seq, 1);
            out.extend_from_slice(if cut {
                b",\"cut\":true}\n"
            } else {
                b",\"cut\":false}\n"
            });
        }
        Format::Combined => {
            match r.peer {
                Some(ip) => put_ip(out, ip),
                None => out.push(b'-'),
            }
            out.extend_from_slice(b" - - [");
            put_time(out, format, now);
            out.extend_from_slice(b"] \"");
            match (r.get(r.method), r.get(r.target), protocol) {
                (Some((m, _)), Some((t, cut)), Some(p)) => {
                    put_combined_str(out, m);
                    out.push(b' ');
                    put_combined_str(out, t);
                    if cut {
                        out.extend_from_slice(CUT_MARK);
                    }
                    out.push(b' ');
                    out.extend_from_slice(p);
                }
                _ => out.push(b'-'),
            }
            out.extend_from_slice(b"\" ");
            put_num(out, u64::from(r.status), 3);
            out.push(b' ');
            put_num(out, r.body_bytes, 1);
            out.push(b' ');
            put_combined_field(out, r.get(r.referer));
            out.push(b' ');
            put_combined_field(out, r.get(r.user_agent));
            out.extend_from_slice(b" cache=");
            out.extend_from_slice(r.outcome.as_bytes());
            out.extend_from_slice(b" duration_us=");
            put_num(out, r.duration_us, 1);
            out.extend_from_slice(b" origin_status=");
            put_opt_num(out, r.origin_status.map(u64::from), b"-");
            out.extend_from_slice(b" origin_duration_us=");
            put_opt_num(out, r.origin_us, b"-");
            out.extend_from_slice(b" host=");
            put_combined_field(out, r.get(r.host));
            out.extend_from_slice(b" worker=");
            put_num(out, worker as u64, 1);
            out.extend_from_slice(b" seq=");
            put_num(out, r.seq, 1);
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &RequestFields<'_>) -> Box<Record> {
        let mut r = Record::new();
        r.peer = Some("10.1.2.3".parse().unwrap());
        r.minor = Some(fields.minor);
        r.method = r.put(Some(fields.method), METHOD_BYTES_MAX);
        r.target = r.put(Some(fields.target), TARGET_BYTES_MAX);
        r.host = r.put(fields.host, FIELD_BYTES_MAX);
        r.referer = r.put(fields.referer, FIELD_BYTES_MAX);
        r.user_agent = r.put(fields.user_agent, FIELD_BYTES_MAX);
        r.answer(200, 1234);
        r.duration_us = 87;
        r.outcome = "hit";
        r
    }

    #[test]
    fn numbers_are_zero_padded() {
        let mut out = Vec::new();
        for (v, width) in [(0, 1), (7, 3), (44, 2), (123, 2), (2026, 4), (u64::MAX, 1)] {
            put_num(&mut out, v, width);
            out.push(b' ');
        }
        assert_eq!(out, b"0 007 44 123 2026 18446744073709551615 ");
    }

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms)
    }

    #[test]
    fn json_line_parses_and_escapes() {
        let r = record(&RequestFields {
            method: b"GET",
            target: b"/a?q=\"x\"",
            minor: 1,
            host: Some(b"example.com"),
            referer: None,
            user_agent: Some(b"curl\x01/8 \\ \xff"),
        });
        let mut out = Vec::new();
        format_line(&mut out, Format::Json, &r, 3, at(1_796_587_844, 123));
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-12-06T20:10:44.123Z");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["target"], "/a?q=\"x\"");
        assert_eq!(v["user_agent"], "curl\u{1}/8 \\ \u{ff}");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(v["worker"], 3);
        assert_eq!(v["cut"], false);
        assert_eq!(v["origin_status"], serde_json::Value::Null);
    }

    #[test]
    fn combined_line_escapes_like_nginx() {
        let r = record(&RequestFields {
            method: b"GET",
            target: b"/x",
            minor: 0,
            host: None,
            referer: Some(b"http://r/"),
            user_agent: Some(b"a\"b\x07c"),
        });
        let mut out = Vec::new();
        format_line(&mut out, Format::Combined, &r, 0, at(1_796_587_844, 0));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.1.2.3 - - [06/Dec/2026:20:10:44 +0000] \"GET /x HTTP/1.0\" 200 1234 \"http://r/\" \"a\\x22b\\x07c\" cache=hit duration_us=87 origin_status=- origin_duration_us=- host=\"-\" worker=0 seq=0\n"
        );
    }

    #[test]
    fn long_fields_are_cut_and_marked_within_the_line_bound() {
        let target = vec![b'\x01'; TARGET_BYTES_MAX * 3];
        let ua = vec![b'"'; FIELD_BYTES_MAX * 2];
        let r = record(&RequestFields {
            method: &[b'\x02'; 100],
            target: &target,
            minor: 1,
            host: Some(&ua),
            referer: Some(&ua),
            user_agent: Some(&ua),
        });
        for format in [Format::Json, Format::Combined] {
            let mut out = Vec::new();
            format_line(&mut out, format, &r, 0, SystemTime::now());
            assert!(out.len() <= LINE_BYTES_MAX, "{} bytes", out.len());
            if format == Format::Json {
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v["cut"], true);
                assert!(v["user_agent"].as_str().unwrap().ends_with("..."));
                assert_eq!(v["target"].as_str().unwrap().len(), TARGET_BYTES_MAX + 3);
            }
        }
    }

    #[test]
    fn answer_from_a_response() {
        let mut r = Record::new();
        r.answer_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc");
        assert!(r.answered);
        assert_eq!((r.status, r.body_bytes), (404, 3));
    }

    #[test]
    fn config_table_and_flags() {
        let file: FileAccessLog =
            toml::from_str("mode = \"sampled\"\nsample = 10\nformat = \"combined\"\npath = \"/tmp/a.log\"\nbuffer_bytes = \"32KiB\"\nflush_interval = \"200ms\"").unwrap();
        let c = file.apply().unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.mode, c.sample, c.format),
            (Mode::Sampled, 10, Format::Combined)
        );
        assert_eq!(
            (c.buffer_bytes, c.flush_interval),
            (32 << 10, Duration::from_millis(200))
        );
        let text = c.to_string();
        let back: FileAccessLog =
            toml::from_str(text.trim_start_matches("[access_log]\n")).unwrap();
        assert_eq!(back.apply().unwrap(), c);
        let bad = AccessLogConfig {
            sample: 0,
            ..AccessLogConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("access_log.sample"));
        let bad = AccessLogConfig {
            buffer_bytes: 1024,
            ..AccessLogConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("access_log.buffer_bytes"));
        assert!(toml::from_str::<FileAccessLog>("mode = \"full\"\nbogus = 1").is_err());
    }

    /// A worker's end with one buffer in hand, none to come back, and a
    /// queue to the writer that holds `queue` messages nobody reads.
    fn lonely_worker_log(
        every: u64,
        buffer_bytes: usize,
        queue: usize,
    ) -> (WorkerLog, Receiver<Message>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(1));
        let (to_writer, queued) = mpsc::sync_channel(queue);
        let (_back, returned) = mpsc::sync_channel(BUFFERS_PER_WORKER);
        let log = WorkerLog {
            worker_index: 0,
            format: Format::Json,
            every,
            flush_interval: FLUSH_INTERVAL_DEFAULT,
            seq: 0,
            buf: Some(Vec::with_capacity(buffer_bytes)),
            lines: 0,
            buf_bytes: buffer_bytes,
            since: Instant::now(),
            to_writer,
            returned,
            spare: Vec::new(),
            metrics: Arc::clone(&metrics),
        };
        (log, queued, metrics)
    }

    #[test]
    fn sampling_counts_per_worker() {
        let (mut w, _queued, _) = lonely_worker_log(10, BUFFER_BYTES_MIN, 8);
        let logged: Vec<u64> = (0..25)
            .filter_map(|_| w.begin(None, None).map(|r| r.seq))
            .collect();
        assert_eq!(logged, [0, 10, 20]);
    }

    #[test]
    fn a_writer_behind_drops_and_counts_lines_without_blocking() {
        // One message fits in the queue; the buffer never comes back.
        let (mut w, queued, metrics) = lonely_worker_log(1, BUFFER_BYTES_MIN, 1);
        let total = 200;
        for _ in 0..total {
            let mut r = w.begin(None, None).expect("full mode logs every request");
            r.answer(400, 12);
            w.finish(r);
        }
        w.flush();
        let handed: u64 = queued
            .try_iter()
            .map(|m| match m {
                Message::Lines { buf, lines, .. } => {
                    assert_eq!(buf.iter().filter(|&&b| b == b'\n').count() as u64, lines);
                    assert!(buf.len() <= BUFFER_BYTES_MIN);
                    lines
                }
                _ => 0,
            })
            .sum();
        let dropped = metrics.access_log.dropped.load(Ordering::Relaxed);
        assert!(
            handed > 0 && dropped > 0,
            "handed {handed}, dropped {dropped}"
        );
        assert_eq!(handed + dropped, total);
    }

    #[test]
    fn unanswered_records_write_no_line() {
        let (mut w, queued, _) = lonely_worker_log(1, BUFFER_BYTES_MIN, 4);
        let r = w.begin(None, None).unwrap();
        w.finish(r);
        w.flush();
        assert!(queued.try_recv().is_err());
        assert_eq!(w.spare.len(), 1, "the record is kept for reuse");
    }
}
