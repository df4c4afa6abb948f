//! Every tunable and limit of ringcache, with its unit in its name.
//!
//! Every key is described once, in [`OPTIONS`]: its type, default, allowed
//! range, environment variable, flag, whether a SIGHUP applies it, and one
//! line of doc. Precedence: command-line flags (named flags, `--set
//! KEY=VALUE`) > environment (`RINGCACHE_TABLE_KEY`) > TOML file
//! (`--config`) > the defaults below. Sizes accept `64MiB`, `16KiB`, `1GiB`
//! or plain bytes; durations accept `500ms`, `30s`, `2m`, `1h`. A bad value
//! fails at start with a message naming the key, the value, the allowed
//! range and the source. The configuration is parsed and validated once,
//! then copied into the workers; nothing reads it on the request path.
//!
//! ```text
//!  file ─┐                    per key: kind, range          per table
//!  env  ─┼─▶ Provenance ──▶ (check, in the file's syntax) ──▶ File* ──▶ Config ──▶ validate()
//!  flags ┘   key → (value, source)
//! ```

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Default traffic listener.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Default admin listener (metrics, health).
pub const ADMIN_DEFAULT: &str = "127.0.0.1:9180";
/// Hard ceiling for `limits.headers_count_max`: header arrays are sized by it.
pub const HEADERS_COUNT_CAP: usize = 256;
/// Default cap on the cache's memory.
pub const MEMORY_BYTES_DEFAULT: u64 = 256 << 20;
/// Smallest cache the store accepts.
pub const MEMORY_BYTES_MIN: u64 = 1 << 20;
/// Default bytes of `memory` per index slot (`memory_per_index_slot`).
pub const MEMORY_PER_INDEX_SLOT_DEFAULT: u64 = crate::store::layout::BUDGET_BYTES_PER_SLOT as u64;

/// Which I/O backend workers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel offers every opcode we need, else epoll.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (mio).
    Epoll,
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Epoll => "epoll",
        })
    }
}

/// Per-worker and per-request limits. Every buffer, queue and timeout is here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Client connections one worker holds open at most; more are closed at accept.
    pub connections_max: usize,
    /// Request line plus header fields, in bytes (beyond: 431).
    pub head_bytes_max: usize,
    /// Header fields in one request or response (beyond: 431 / 502).
    pub headers_count_max: usize,
    /// Request body bytes, after de-chunking (beyond: 413).
    pub body_bytes_max: usize,
    /// Requests of one connection parsed ahead of their responses.
    pub pipeline_depth_max: usize,
    /// Bytes of responses queued for one client before we stop reading its requests.
    pub client_output_bytes_max: usize,
    /// Time to receive a complete request head once it has started (beyond: 408, close).
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    /// Time one write of queued responses to a client may take (beyond: close).
    pub send_timeout: Duration,
    /// Time to connect to the origin (beyond: 504).
    pub origin_connect_timeout: Duration,
    /// Time from sending a request to the origin to its complete response (beyond: 504).
    pub origin_response_timeout: Duration,
    /// Origin connections one worker holds at most (busy + idle).
    pub origin_connections_max: usize,
    /// Origin connections the whole process holds at most, every worker
    /// together (busy + idle); beyond it requests wait in their worker's queue.
    pub origin_connections_total_max: usize,
    /// Idle keep-alive origin connections one worker keeps.
    pub origin_idle_max: usize,
    /// Time an idle origin connection is kept.
    pub origin_idle_timeout: Duration,
    /// Requests waiting for a free origin connection on one worker (beyond: 503).
    pub origin_queue_max: usize,
    /// Time a request waits in that queue before it is answered 503.
    pub origin_queue_timeout: Duration,
    /// Largest origin response (head + body) ringcache relays (beyond: 502).
    pub origin_response_bytes_max: usize,
    /// Largest object stored in the cache; larger responses are relayed, not stored.
    pub object_bytes_max: usize,
    /// Requests of one worker waiting for another request's fetch of the same key.
    pub coalesce_waiters_max: usize,
    /// Time a request waits for another's fetch before it asks the origin itself.
    pub coalesce_wait_timeout: Duration,
    /// Responses with at least this Content-Length are streamed to the
    /// filler and its waiters on the same worker as they arrive, in bytes.
    pub coalesce_stream_bytes_min: usize,
    /// Time a key whose answer was not cacheable skips coalescing.
    pub hit_for_miss_ttl: Duration,
    /// Hit-for-miss marks one worker keeps.
    pub hit_for_miss_count_max: usize,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// While draining, time a keep-alive connection with nothing pending is
    /// kept open for one more request (answered with `Connection: close`).
    pub drain_idle_timeout: Duration,
    /// Bytes in one provided receive buffer.
    pub recv_buffer_bytes: usize,
    /// Provided receive buffers per worker (a power of two).
    pub recv_buffers_count: u16,
    /// io_uring submission queue entries per worker (a power of two).
    pub ring_entries: u32,
    /// Active bans (prefix, regex, header, stale-index tag, all) kept at once.
    pub bans_max: usize,
    /// Body of one admin request (`POST /invalidate`), in bytes (beyond: 413).
    pub admin_body_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 16_384,
            head_bytes_max: 16 << 10,
            headers_count_max: 100,
            body_bytes_max: 8 << 20,
            pipeline_depth_max: 128,
            client_output_bytes_max: 4 << 20,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            origin_connect_timeout: Duration::from_secs(2),
            origin_response_timeout: Duration::from_secs(30),
            origin_connections_max: 512,
            origin_connections_total_max: 1024,
            origin_idle_max: 128,
            origin_idle_timeout: Duration::from_secs(30),
            origin_queue_max: 4096,
            origin_queue_timeout: Duration::from_secs(5),
            origin_response_bytes_max: 64 << 20,
            object_bytes_max: 8 << 20,
            coalesce_waiters_max: 4096,
            coalesce_wait_timeout: Duration::from_secs(10),
            coalesce_stream_bytes_min: 1 << 20,
            hit_for_miss_ttl: Duration::from_secs(30),
            hit_for_miss_count_max: 65_536,
            shutdown_grace: Duration::from_secs(10),
            drain_idle_timeout: Duration::from_secs(1),
            recv_buffer_bytes: 16 << 10,
            recv_buffers_count: 1024,
            ring_entries: 4096,
            bans_max: 1024,
            admin_body_bytes_max: 64 << 10,
        }
    }
}

/// The validated configuration of `ringcache serve`.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: start the built-in demo origin in-process.
    pub origin: Option<Origin>,
    pub admin: SocketAddr,
    pub workers: usize,
    pub io: IoMode,
    pub memory_bytes: u64,
    /// Bytes of `memory` per index slot: the store holds at most 15/16 of
    /// `memory / memory_per_index_slot` objects.
    pub memory_per_index_slot: u64,
    /// The store file (`None`: anonymous memory, nothing survives a restart).
    pub store_path: Option<std::path::PathBuf>,
    /// Rebuild a store file that is refused (other version or layout,
    /// damaged header) cold, instead of failing.
    pub store_reset: bool,
    /// `log_level` from the file (`None`: `RINGCACHE_LOG` or `info`).
    pub log_level: Option<log::LevelFilter>,
    pub limits: Limits,
    pub cache: CacheConfig,
    /// The invalidation bus (`[bus]`, `--bus`); `None`: this node stands alone.
    pub bus: Option<BusConfig>,
    pub invalidation: Invalidation,
    /// The access log (`[access_log]`, `--access-log`).
    pub access_log: crate::access_log::AccessLogConfig,
}

/// Where misses go: a plain-HTTP origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub addr: SocketAddr,
    /// `host[:port]` as written in the URL; sent as Host when the client sent none.
    pub authority: String,
}

impl Origin {
    /// Parse `http://host[:port][/]` and resolve it once, at start.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("origin {url:?}: only http:// origins are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "origin {url:?}: expected http://host[:port] without a path"
            ));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("origin {url:?}: cannot resolve: {e}"))?
            .next()
            .ok_or_else(|| format!("origin {url:?}: resolves to no address"))?;
        Ok(Origin {
            addr,
            authority: authority.to_string(),
        })
    }
}

/// Values given on the command line; `None` means "not given". Each named
/// flag sets one key (see [`ServeArgs::flag_values`]); `--set KEY=VALUE`
/// sets any other. Environment variables are read by [`Config::load`],
/// one per key ([`env_name`]), so that each value knows its source.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Traffic listener (key `listen`) [default: 127.0.0.1:8080]
    #[arg(long)]
    pub listen: Option<String>,
    /// Origin URL, http://host:port (key `origin`) [default: the built-in demo origin]
    #[arg(long)]
    pub origin: Option<String>,
    /// Admin listener for /metrics and /healthz (key `admin.listen`) [default: 127.0.0.1:9180]
    #[arg(long)]
    pub admin: Option<String>,
    /// Worker threads, one per core (key `workers`) [default: the CPUs this process may run on]
    #[arg(long)]
    pub workers: Option<usize>,
    /// I/O backend (key `io`) [default: auto]
    #[arg(long, value_enum)]
    pub io: Option<IoMode>,
    /// Cache memory cap, e.g. 256MiB (key `memory`) [default: 256MiB]
    #[arg(long)]
    pub memory: Option<String>,
    /// Store file: created, sized to --memory and reused, so restarts are warm
    /// (key `store`) [default: anonymous memory]
    #[arg(long)]
    pub store: Option<std::path::PathBuf>,
    /// Rebuild a refused store file (other version or layout, damaged
    /// header) empty instead of failing (key `store_reset`)
    #[arg(long)]
    pub store_reset: bool,
    /// Invalidation bus, redis://HOST:PORT/STREAM (key `bus.url`) [default: none]
    #[arg(long)]
    pub bus: Option<String>,
    /// This node's name on the bus (key `bus.node`) [default: hostname:admin-port]
    #[arg(long)]
    pub bus_node: Option<String>,
    /// Refresh a fresh object hit in the last PERCENT of its lifetime, in
    /// the background, e.g. 10% (0 to 50) (key `cache.refresh_ahead`) [default: 0, off]
    #[arg(long, value_name = "PERCENT")]
    pub refresh_ahead: Option<String>,
    /// Access log file (`-`: stdout, `off`: no log); turns an `off`
    /// log on in full mode (key `access_log.path`) [default: off]
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<String>,
    /// Access log line format: json or combined (key `access_log.format`) [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub access_log_format: Option<String>,
    /// Set any configuration key, e.g. --set limits.head_bytes_max=8KiB
    /// (repeatable; `ringcache config-reference` lists the keys)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// TOML configuration file; environment variables and flags override it
    #[arg(long, env = "RINGCACHE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// The named flags that were given, as `(key, value)`.
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let mut put = |key: &'static str, value: Option<String>| {
            if let Some(value) = value {
                v.push((key, value));
            }
        };
        put("listen", self.listen.clone());
        put("origin", self.origin.clone());
        put("admin.listen", self.admin.clone());
        put("workers", self.workers.map(|n| n.to_string()));
        put("io", self.io.map(|m| m.to_string()));
        put("memory", self.memory.clone());
        put(
            "store",
            self.store.as_ref().map(|p| p.display().to_string()),
        );
        put("store_reset", self.store_reset.then(|| "true".to_string()));
        put("bus.url", self.bus.clone());
        put("bus.node", self.bus_node.clone());
        put("cache.refresh_ahead", self.refresh_ahead.clone());
        match self.access_log.as_deref() {
            Some("off") => put("access_log.mode", Some("off".to_string())),
            path => put("access_log.path", path.map(str::to_string)),
        }
        put("access_log.format", self.access_log_format.clone());
        v
    }
}

/// The TOML file's shape. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    origin: Option<String>,
    admin: Option<FileAdmin>,
    workers: Option<usize>,
    io: Option<IoMode>,
    memory: Option<String>,
    memory_per_index_slot: Option<String>,
    store: Option<std::path::PathBuf>,
    store_reset: Option<bool>,
    log_level: Option<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    cache: FileCache,
    bus: Option<FileBus>,
    #[serde(default)]
    invalidation: FileInvalidation,
    #[serde(default)]
    access_log: crate::access_log::FileAccessLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    connections_max: Option<usize>,
    head_bytes_max: Option<String>,
    headers_count_max: Option<usize>,
    body_bytes_max: Option<String>,
    pipeline_depth_max: Option<usize>,
    client_output_bytes_max: Option<String>,
    header_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    send_timeout: Option<String>,
    origin_connect_timeout: Option<String>,
    origin_response_timeout: Option<String>,
    origin_connections_max: Option<usize>,
    origin_connections_total_max: Option<usize>,
    origin_idle_max: Option<usize>,
    origin_idle_timeout: Option<String>,
    origin_queue_max: Option<usize>,
    origin_queue_timeout: Option<String>,
    origin_response_bytes_max: Option<String>,
    object_bytes_max: Option<String>,
    coalesce_waiters_max: Option<usize>,
    coalesce_wait_timeout: Option<String>,
    coalesce_stream_bytes_min: Option<String>,
    hit_for_miss_ttl: Option<String>,
    hit_for_miss_count_max: Option<usize>,
    shutdown_grace: Option<String>,
    drain_idle_timeout: Option<String>,
    recv_buffer_bytes: Option<String>,
    recv_buffers_count: Option<u16>,
    ring_entries: Option<u32>,
    bans_max: Option<usize>,
    admin_body_bytes_max: Option<String>,
}

impl Config {
    /// Merge flags over the environment over the file over defaults, then
    /// validate.
    pub fn load(args: &ServeArgs) -> Result<Config, String> {
        Config::load_traced(args, &|name| std::env::var(name).ok()).map(|(c, _)| c)
    }

    /// [`Config::load`] with the environment read through `env`, returning
    /// where each value came from as well.
    pub fn load_traced(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Provenance), String> {
        let given = Provenance::collect(args, env)?;
        let config = Config::from_file(given.to_file()?)?;
        config.validate()?;
        Ok((config, given))
    }

    /// The configuration a file's shape holds, defaults for what it lacks.
    fn from_file(file: FileConfig) -> Result<Config, String> {
        let listen_s = file.listen.unwrap_or_else(|| LISTEN_DEFAULT.to_string());
        let (file_admin, file_token, file_hmac) = match file.admin {
            Some(FileAdmin::Listen(s)) => (Some(s), None, (None, None)),
            Some(FileAdmin::Table(t)) => (t.listen, t.token, (t.hmac_key, t.hmac_window)),
            None => (None, None, (None, None)),
        };
        let admin_s = file_admin.unwrap_or_else(|| ADMIN_DEFAULT.to_string());
        let origin = match file.origin {
            Some(url) => Some(Origin::parse(&url)?),
            None => None,
        };
        let workers = file.workers.unwrap_or_else(available_cpus);
        let memory_bytes = match file.memory.as_deref() {
            Some(s) => parse_size(s).map_err(|e| format!("memory: {e}"))?,
            None => MEMORY_BYTES_DEFAULT,
        };
        let memory_per_index_slot = match file.memory_per_index_slot.as_deref() {
            Some(s) => parse_size(s).map_err(|e| format!("memory_per_index_slot: {e}"))?,
            None => MEMORY_PER_INDEX_SLOT_DEFAULT,
        };
        let store_path = file.store;
        let bus = BusConfig::load(file.bus, &admin_s, store_path.as_deref())?;
        Ok(Config {
            listen: parse_addr("listen", &listen_s)?,
            origin,
            admin: parse_addr("admin", &admin_s)?,
            workers,
            io: file.io.unwrap_or(IoMode::Auto),
            memory_bytes,
            memory_per_index_slot,
            store_path,
            store_reset: file.store_reset.unwrap_or(false),
            log_level: match file.log_level.as_deref() {
                Some(s) => Some(crate::logging::parse_level(s).ok_or_else(|| {
                    format!("log_level: {s:?} is not one of off, error, warn, info, debug, trace")
                })?),
                None => None,
            },
            limits: file.limits.apply(Limits::default())?,
            cache: file.cache.apply(CacheConfig::default())?,
            bus,
            invalidation: file
                .invalidation
                .apply(file_token, file_hmac, memory_bytes)?,
            access_log: file.access_log.apply()?,
        })
    }

    /// Bytes the store gets: `memory` less what the tag index reserves.
    pub fn store_bytes(&self) -> u64 {
        self.memory_bytes - self.invalidation.tag_index_bytes_max
    }

    /// Check the relations between values; each error names its key.
    pub fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        let check = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_string()) };
        check(
            (1..=1024).contains(&self.workers),
            "workers: must be between 1 and 1024",
        )?;
        check(
            self.memory_bytes >= MEMORY_BYTES_MIN,
            "memory: must be at least 1MiB",
        )?;
        check(
            (1..=1 << 20).contains(&l.connections_max),
            "limits.connections_max: must be between 1 and 1048576",
        )?;
        check(
            (256..=1 << 20).contains(&l.head_bytes_max),
            "limits.head_bytes_max: must be between 256 bytes and 1MiB",
        )?;
        check(
            (8..=HEADERS_COUNT_CAP).contains(&l.headers_count_max),
            "limits.headers_count_max: must be between 8 and 256",
        )?;
        check(
            (1..=4096).contains(&l.pipeline_depth_max),
            "limits.pipeline_depth_max: must be between 1 and 4096",
        )?;
        check(
            l.client_output_bytes_max >= 4096,
            "limits.client_output_bytes_max: must be at least 4KiB",
        )?;
        check(
            (1..=65_536).contains(&l.origin_connections_max),
            "limits.origin_connections_max: must be between 1 and 65536",
        )?;
        check(
            (1..=1 << 20).contains(&l.origin_connections_total_max),
            "limits.origin_connections_total_max: must be between 1 and 1048576",
        )?;
        check(
            l.coalesce_stream_bytes_min >= 1024,
            "limits.coalesce_stream_bytes_min: must be at least 1KiB",
        )?;
        check(
            l.origin_idle_max <= l.origin_connections_max,
            "limits.origin_idle_max: must not exceed limits.origin_connections_max",
        )?;
        check(
            l.object_bytes_max <= l.origin_response_bytes_max,
            "limits.object_bytes_max: must not exceed limits.origin_response_bytes_max",
        )?;
        check(
            (l.object_bytes_max as u64) < self.memory_bytes,
            "limits.object_bytes_max: must be below memory",
        )?;
        check(
            (1024..=1 << 20).contains(&l.recv_buffer_bytes),
            "limits.recv_buffer_bytes: must be between 1KiB and 1MiB",
        )?;
        check(
            l.recv_buffers_count.is_power_of_two() && l.recv_buffers_count <= 32_768,
            "limits.recv_buffers_count: must be a power of two, at most 32768",
        )?;
        check(
            l.ring_entries.is_power_of_two() && (64..=32_768).contains(&l.ring_entries),
            "limits.ring_entries: must be a power of two between 64 and 32768",
        )?;
        for (name, d) in [
            ("limits.header_timeout", l.header_timeout),
            ("limits.keepalive_timeout", l.keepalive_timeout),
            ("limits.send_timeout", l.send_timeout),
            ("limits.origin_connect_timeout", l.origin_connect_timeout),
            ("limits.origin_response_timeout", l.origin_response_timeout),
            ("limits.origin_idle_timeout", l.origin_idle_timeout),
            ("limits.origin_queue_timeout", l.origin_queue_timeout),
            ("limits.coalesce_wait_timeout", l.coalesce_wait_timeout),
            ("limits.hit_for_miss_ttl", l.hit_for_miss_ttl),
            ("limits.drain_idle_timeout", l.drain_idle_timeout),
        ] {
            check(
                d >= Duration::from_millis(10),
                &format!("{name}: must be at least 10ms"),
            )?;
        }
        self.cache.validate()?;
        if let Some(bus) = &self.bus {
            bus.validate()?;
        }
        check(
            (1..=BANS_CAP).contains(&l.bans_max),
            "limits.bans_max: must be between 1 and 65536",
        )?;
        check(
            (1024..=16 << 20).contains(&l.admin_body_bytes_max),
            "limits.admin_body_bytes_max: must be between 1KiB and 16MiB",
        )?;
        self.invalidation.validate(self.memory_bytes)?;
        self.access_log.validate()?;
        Ok(())
    }
}

impl fmt::Display for Config {
    /// The effective configuration, in the TOML file's own syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.limits;
        writeln!(f, "listen = \"{}\"", self.listen)?;
        match &self.origin {
            Some(o) => writeln!(f, "origin = \"http://{}\"", o.authority)?,
            None => writeln!(f, "# origin: the built-in demo origin")?,
        }
        writeln!(f, "admin = \"{}\"", self.admin)?;
        writeln!(f, "workers = {}", self.workers)?;
        writeln!(f, "io = \"{}\"", self.io)?;
        writeln!(f, "memory = \"{}\"", format_size(self.memory_bytes))?;
        writeln!(
            f,
            "memory_per_index_slot = \"{}\"",
            format_size(self.memory_per_index_slot)
        )?;
        match &self.store_path {
            Some(p) => writeln!(f, "store = {:?}", p.display().to_string())?,
            None => writeln!(f, "# store: anonymous memory")?,
        }
        if let Some(level) = self.log_level {
            writeln!(f, "log_level = \"{}\"", level.as_str().to_ascii_lowercase())?;
        }
        writeln!(f, "\n[limits]")?;
        writeln!(f, "connections_max = {}", l.connections_max)?;
        writeln!(
            f,
            "head_bytes_max = \"{}\"",
            format_size(l.head_bytes_max as u64)
        )?;
        writeln!(f, "headers_count_max = {}", l.headers_count_max)?;
        writeln!(
            f,
            "body_bytes_max = \"{}\"",
            format_size(l.body_bytes_max as u64)
        )?;
        writeln!(f, "pipeline_depth_max = {}", l.pipeline_depth_max)?;
        writeln!(
            f,
            "client_output_bytes_max = \"{}\"",
            format_size(l.client_output_bytes_max as u64)
        )?;
        writeln!(
            f,
            "header_timeout = \"{}\"",
            format_duration(l.header_timeout)
        )?;
        writeln!(
            f,
            "keepalive_timeout = \"{}\"",
            format_duration(l.keepalive_timeout)
        )?;
        writeln!(f, "send_timeout = \"{}\"", format_duration(l.send_timeout))?;
        writeln!(
            f,
            "origin_connect_timeout = \"{}\"",
            format_duration(l.origin_connect_timeout)
        )?;
        writeln!(
            f,
            "origin_response_timeout = \"{}\"",
            format_duration(l.origin_response_timeout)
        )?;
        writeln!(f, "origin_connections_max = {}", l.origin_connections_max)?;
        writeln!(
            f,
            "origin_connections_total_max = {}",
            l.origin_connections_total_max
        )?;
        writeln!(f, "origin_idle_max = {}", l.origin_idle_max)?;
        writeln!(
            f,
            "origin_idle_timeout = \"{}\"",
            format_duration(l.origin_idle_timeout)
        )?;
        writeln!(f, "origin_queue_max = {}", l.origin_queue_max)?;
        writeln!(
            f,
            "origin_queue_timeout = \"{}\"",
            format_duration(l.origin_queue_timeout)
        )?;
        writeln!(
            f,
            "origin_response_bytes_max = \"{}\"",
            format_size(l.origin_response_bytes_max as u64)
        )?;
        writeln!(
            f,
            "object_bytes_max = \"{}\"",
            format_size(l.object_bytes_max as u64)
        )?;
        writeln!(f, "coalesce_waiters_max = {}", l.coalesce_waiters_max)?;
        writeln!(
            f,
            "coalesce_wait_timeout = \"{}\"",
            format_duration(l.coalesce_wait_timeout)
        )?;
        writeln!(
            f,
            "coalesce_stream_bytes_min = \"{}\"",
            format_size(l.coalesce_stream_bytes_min as u64)
        )?;
        writeln!(
            f,
            "hit_for_miss_ttl = \"{}\"",
            format_duration(l.hit_for_miss_ttl)
        )?;
        writeln!(f, "hit_for_miss_count_max = {}", l.hit_for_miss_count_max)?;
        writeln!(
            f,
            "shutdown_grace = \"{}\"",
            format_duration(l.shutdown_grace)
        )?;
        writeln!(
            f,
            "drain_idle_timeout = \"{}\"",
            format_duration(l.drain_idle_timeout)
        )?;
        writeln!(
            f,
            "recv_buffer_bytes = \"{}\"",
            format_size(l.recv_buffer_bytes as u64)
        )?;
        writeln!(f, "recv_buffers_count = {}", l.recv_buffers_count)?;
        writeln!(f, "ring_entries = {}", l.ring_entries)?;
        writeln!(f, "bans_max = {}", l.bans_max)?;
        writeln!(
            f,
            "admin_body_bytes_max = \"{}\"",
            format_size(l.admin_body_bytes_max as u64)
        )?;
        write!(f, "{}", self.cache)?;
        write!(f, "\n{}", self.invalidation)?;
        write!(f, "\n{}", self.access_log)?;
        match &self.bus {
            Some(bus) => write!(f, "\n{bus}"),
            None => Ok(()),
        }
    }
}

impl FileLimits {
    fn apply(self, mut l: Limits) -> Result<Limits, String> {
        fn size(key: &str, v: Option<String>, into: &mut usize) -> Result<(), String> {
            set_size("limits", key, v, into)
        }
        fn dur(key: &str, v: Option<String>, into: &mut Duration) -> Result<(), String> {
            set_duration("limits", key, v, into)
        }
        fn count<T>(v: Option<T>, into: &mut T) {
            if let Some(n) = v {
                *into = n;
            }
        }
        count(self.connections_max, &mut l.connections_max);
        size("head_bytes_max", self.head_bytes_max, &mut l.head_bytes_max)?;
        count(self.headers_count_max, &mut l.headers_count_max);
        size("body_bytes_max", self.body_bytes_max, &mut l.body_bytes_max)?;
        count(self.pipeline_depth_max, &mut l.pipeline_depth_max);
        size(
            "client_output_bytes_max",
            self.client_output_bytes_max,
            &mut l.client_output_bytes_max,
        )?;
        dur("header_timeout", self.header_timeout, &mut l.header_timeout)?;
        dur(
            "keepalive_timeout",
            self.keepalive_timeout,
            &mut l.keepalive_timeout,
        )?;
        dur("send_timeout", self.send_timeout, &mut l.send_timeout)?;
        dur(
            "origin_connect_timeout",
            self.origin_connect_timeout,
            &mut l.origin_connect_timeout,
        )?;
        dur(
            "origin_response_timeout",
            self.origin_response_timeout,
            &mut l.origin_response_timeout,
        )?;
        count(self.origin_connections_max, &mut l.origin_connections_max);
        count(
            self.origin_connections_total_max,
            &mut l.origin_connections_total_max,
        );
        count(self.origin_idle_max, &mut l.origin_idle_max);
        dur(
            "origin_idle_timeout",
            self.origin_idle_timeout,
            &mut l.origin_idle_timeout,
        )?;
        count(self.origin_queue_max, &mut l.origin_queue_max);
        dur(
            "origin_queue_timeout",
            self.origin_queue_timeout,
            &mut l.origin_queue_timeout,
        )?;
        size(
            "origin_response_bytes_max",
            self.origin_response_bytes_max,
            &mut l.origin_response_bytes_max,
        )?;
        size(
            "object_bytes_max",
            self.object_bytes_max,
            &mut l.object_bytes_max,
        )?;
        count(self.coalesce_waiters_max, &mut l.coalesce_waiters_max);
        dur(
            "coalesce_wait_timeout",
            self.coalesce_wait_timeout,
            &mut l.coalesce_wait_timeout,
        )?;
        size(
            "coalesce_stream_bytes_min",
            self.coalesce_stream_bytes_min,
            &mut l.coalesce_stream_bytes_min,
        )?;
        dur(
            "hit_for_miss_ttl",
            self.hit_for_miss_ttl,
            &mut l.hit_for_miss_ttl,
        )?;
        count(self.hit_for_miss_count_max, &mut l.hit_for_miss_count_max);
        dur("shutdown_grace", self.shutdown_grace, &mut l.shutdown_grace)?;
        dur(
            "drain_idle_timeout",
            self.drain_idle_timeout,
            &mut l.drain_idle_timeout,
        )?;
        size(
            "recv_buffer_bytes",
            self.recv_buffer_bytes,
            &mut l.recv_buffer_bytes,
        )?;
        count(self.recv_buffers_count, &mut l.recv_buffers_count);
        count(self.ring_entries, &mut l.ring_entries);
        count(self.bans_max, &mut l.bans_max);
        size(
            "admin_body_bytes_max",
            self.admin_body_bytes_max,
            &mut l.admin_body_bytes_max,
        )?;
        Ok(l)
    }
}

// ----- [cache]: cache key, variants and storability switches -------------

/// Most `Vary` variants kept per URL, at most.
pub const VARIANTS_PER_KEY_CAP: usize = 64;
/// Query parameters of one request that the cache key sorts or filters;
/// a query with more is keyed as written.
pub const KEY_QUERY_PARAMS_MAX: usize = 64;
/// Entries of `cache.key_ignore_params`, at most.
pub const KEY_IGNORE_PARAMS_MAX: usize = 64;
/// Largest `cache.heuristic_max` and `cache.default_ttl`: a year.
pub const CACHE_TTL_SECS_CAP: u64 = 365 * 24 * 3600;
/// Largest `cache.refresh_ahead`, in percent of a freshness lifetime.
pub const REFRESH_AHEAD_PERCENT_MAX: u8 = 50;

/// A `cache.refresh_ahead` / `--refresh-ahead` value: `10%` or `10`.
fn parse_refresh_ahead(s: &str) -> Result<u8, String> {
    let digits = s.trim();
    let digits = digits.strip_suffix('%').unwrap_or(digits).trim_end();
    match digits.parse::<u8>() {
        Ok(n) if n <= REFRESH_AHEAD_PERCENT_MAX => Ok(n),
        _ => Err(format!(
            "{s:?} is not a percentage between 0 and {REFRESH_AHEAD_PERCENT_MAX}"
        )),
    }
}

/// `cache.refresh_ahead` as written in the file: a number or a `"10%"` string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FilePercent {
    Number(i64),
    Text(String),
}

/// What to do with a response carrying `Set-Cookie` (`cache.set_cookie`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SetCookieMode {
    /// Not stored (the default).
    #[default]
    Refuse,
    /// Stored without its `Set-Cookie` fields.
    Strip,
    /// Stored as received.
    Store,
}

impl fmt::Display for SetCookieMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetCookieMode::Refuse => "refuse",
            SetCookieMode::Strip => "strip",
            SetCookieMode::Store => "store",
        })
    }
}

/// The `[cache]` table: how the cache key is built, how many variants a
/// URL keeps, and the storability switches (RFC 9111 §3, §4.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Variants (distinct `Vary` secondary keys) stored per URL; the
    /// oldest gives way beyond it.
    pub variants_per_key_max: usize,
    /// Sort the query's parameters in the key (`b=1&a=2` = `a=2&b=1`).
    pub key_sort_query: bool,
    /// Query parameters left out of the key: exact names, or prefixes
    /// written with a trailing `*` (`utm_*`).
    pub key_ignore_params: Vec<String>,
    /// The request's host is part of the key (off: one origin, one site).
    pub key_include_host: bool,
    pub set_cookie: SetCookieMode,
    /// Heuristic freshness (RFC 9111 §4.2.2) for responses without an
    /// explicit lifetime, on statuses cacheable by default.
    pub heuristic: bool,
    /// Heuristic lifetime as a percentage of the time since Last-Modified.
    pub heuristic_percent: u8,
    /// Cap on any heuristic lifetime.
    pub heuristic_max: Duration,
    /// Lifetime given to a response with a validator (ETag or
    /// Last-Modified) but no explicit freshness; zero: off.
    pub default_ttl: Duration,
    /// A fresh hit in the last this-many percent of its freshness lifetime
    /// also starts a background refresh of the key; 0: off.
    pub refresh_ahead_percent: u8,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            variants_per_key_max: 8,
            key_sort_query: false,
            key_ignore_params: Vec::new(),
            key_include_host: true,
            set_cookie: SetCookieMode::Refuse,
            heuristic: false,
            heuristic_percent: 10,
            heuristic_max: Duration::from_secs(24 * 3600),
            default_ttl: Duration::ZERO,
            refresh_ahead_percent: 0,
        }
    }
}

impl CacheConfig {
    fn validate(&self) -> Result<(), String> {
        if !(1..=VARIANTS_PER_KEY_CAP).contains(&self.variants_per_key_max) {
            return Err(format!(
                "cache.variants_per_key_max: must be between 1 and {VARIANTS_PER_KEY_CAP}"
            ));
        }
        if self.key_ignore_params.len() > KEY_IGNORE_PARAMS_MAX {
            return Err(format!(
                "cache.key_ignore_params: at most {KEY_IGNORE_PARAMS_MAX} entries"
            ));
        }
        for p in &self.key_ignore_params {
            let name = p.strip_suffix('*').unwrap_or(p);
            if (name.is_empty() && !p.ends_with('*'))
                || name
                    .bytes()
                    .any(|b| b == b'&' || b == b'=' || b == b'*' || b <= b' ')
            {
                return Err(format!(
                    "cache.key_ignore_params: {p:?} is not a parameter name (or prefix with a trailing *)"
                ));
            }
        }
        if self.refresh_ahead_percent > REFRESH_AHEAD_PERCENT_MAX {
            return Err(format!(
                "cache.refresh_ahead: must be between 0% and {REFRESH_AHEAD_PERCENT_MAX}%"
            ));
        }
        if self.heuristic_percent > 100 {
            return Err("cache.heuristic_percent: must be between 0 and 100".to_string());
        }
        for (name, d) in [
            ("cache.heuristic_max", self.heuristic_max),
            ("cache.default_ttl", self.default_ttl),
        ] {
            if d.as_secs() > CACHE_TTL_SECS_CAP || d.subsec_nanos() != 0 {
                return Err(format!("{name}: whole seconds, at most a year"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for CacheConfig {
    /// The `[cache]` table in the TOML file's syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\n[cache]")?;
        writeln!(f, "variants_per_key_max = {}", self.variants_per_key_max)?;
        writeln!(f, "key_sort_query = {}", self.key_sort_query)?;
        let params: Vec<String> = self
            .key_ignore_params
            .iter()
            .map(|p| format!("{p:?}"))
            .collect();
        writeln!(f, "key_ignore_params = [{}]", params.join(", "))?;
        writeln!(f, "key_include_host = {}", self.key_include_host)?;
        writeln!(f, "set_cookie = \"{}\"", self.set_cookie)?;
        writeln!(f, "heuristic = {}", self.heuristic)?;
        writeln!(f, "heuristic_percent = {}", self.heuristic_percent)?;
        writeln!(
            f,
            "heuristic_max = \"{}\"",
            format_duration(self.heuristic_max)
        )?;
        writeln!(f, "default_ttl = \"{}\"", format_duration(self.default_ttl))?;
        writeln!(f, "refresh_ahead = \"{}%\"", self.refresh_ahead_percent)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    variants_per_key_max: Option<usize>,
    key_sort_query: Option<bool>,
    key_ignore_params: Option<Vec<String>>,
    key_include_host: Option<bool>,
    set_cookie: Option<String>,
    heuristic: Option<bool>,
    heuristic_percent: Option<u8>,
    heuristic_max: Option<String>,
    default_ttl: Option<String>,
    refresh_ahead: Option<FilePercent>,
}

impl FileCache {
    fn apply(self, mut c: CacheConfig) -> Result<CacheConfig, String> {
        fn dur(key: &str, v: Option<String>, into: &mut Duration) -> Result<(), String> {
            set_duration("cache", key, v, into)
        }
        if let Some(n) = self.variants_per_key_max {
            c.variants_per_key_max = n;
        }
        if let Some(b) = self.key_sort_query {
            c.key_sort_query = b;
        }
        if let Some(v) = self.key_ignore_params {
            c.key_ignore_params = v;
        }
        if let Some(b) = self.key_include_host {
            c.key_include_host = b;
        }
        if let Some(s) = self.set_cookie {
            c.set_cookie = match s.as_str() {
                "refuse" => SetCookieMode::Refuse,
                "strip" => SetCookieMode::Strip,
                "store" => SetCookieMode::Store,
                other => {
                    return Err(format!(
                        "cache.set_cookie: {other:?} is not one of refuse, strip, store"
                    ))
                }
            };
        }
        if let Some(b) = self.heuristic {
            c.heuristic = b;
        }
        if let Some(n) = self.heuristic_percent {
            c.heuristic_percent = n;
        }
        dur("heuristic_max", self.heuristic_max, &mut c.heuristic_max)?;
        dur("default_ttl", self.default_ttl, &mut c.default_ttl)?;
        if let Some(p) = self.refresh_ahead {
            let text = match p {
                FilePercent::Number(n) => n.to_string(),
                FilePercent::Text(s) => s,
            };
            c.refresh_ahead_percent =
                parse_refresh_ahead(&text).map_err(|e| format!("cache.refresh_ahead: {e}"))?;
        }
        Ok(c)
    }
}

// ----- invalidation: `[invalidation]` and `admin.token` ---------------------

/// Hard ceiling for `limits.bans_max`.
pub const BANS_CAP: usize = 65_536;
/// Longest regex pattern a ban accepts, in bytes (beyond: 400).
pub const BAN_REGEX_PATTERN_BYTES_MAX: usize = 1024;
/// Longest selector of one ban, in bytes (beyond: 400): a prefix, a path
/// without host, a header ban's name and value together. Sizes the record
/// slots of the invalidation journal in the store file.
pub const BAN_SELECTOR_BYTES_MAX: usize = 1024;
/// Compiled size of one ban regex, in bytes (`regex::RegexBuilder::size_limit`).
pub const BAN_REGEX_COMPILED_BYTES_MAX: usize = 1 << 20;
/// Selectors of one kind in one invalidation request (URLs, prefixes, tags).
pub const INVALIDATION_SELECTORS_MAX: usize = 1024;
/// Default cap of the tag index: this share of `memory`, at most 16MiB.
pub const TAG_INDEX_MEMORY_SHARE: u64 = 16;
/// Ceiling of the default tag index cap.
pub const TAG_INDEX_BYTES_DEFAULT_MAX: u64 = 16 << 20;
/// How often bans are retired and the tag index pruned of objects that left
/// the store.
pub const INVALIDATION_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest stale window (stale-while-revalidate, stale-if-error) of one
/// object that keeps the bans older than it, in seconds; a longer one is
/// cut off by the retired-ban floor instead (see `invalidate::bans`).
pub const BAN_STALE_WINDOW_SECS_MAX: u64 = 24 * 3600;
/// Tag index keys checked per hold of its lock while pruning.
pub const TAG_PRUNE_CHUNK_KEYS: usize = 256;
/// Environment variable that holds the admin token (overrides the file).
pub const ADMIN_TOKEN_ENV: &str = "RINGCACHE_ADMIN_TOKEN";
/// Environment variable that holds the admin HMAC key (overrides the file).
pub const ADMIN_HMAC_KEY_ENV: &str = "RINGCACHE_ADMIN_HMAC_KEY";
/// Shortest `admin.hmac_key`, in bytes (the SHA-256 output size).
pub const ADMIN_HMAC_KEY_BYTES_MIN: usize = 32;
/// Default `admin.hmac_window`: how far a signed request's timestamp may
/// be from the admin's clock, either way.
pub const ADMIN_HMAC_WINDOW_DEFAULT: Duration = Duration::from_secs(300);
/// Range of `admin.hmac_window`.
pub const ADMIN_HMAC_WINDOW_MIN: Duration = Duration::from_secs(10);
pub const ADMIN_HMAC_WINDOW_MAX: Duration = Duration::from_secs(3600);
/// Signatures remembered to refuse replays (those inside the window); a
/// signed request that finds it full of live ones is refused (503).
pub const ADMIN_HMAC_SEEN_COUNT_MAX: usize = 65_536;
/// Default `invalidation.refresh_queue_max`, in keys, and its ceiling.
pub const REFRESH_QUEUE_MAX_DEFAULT: usize = 65_536;
pub const REFRESH_QUEUE_CAP: usize = 1 << 20;
/// Default `invalidation.refresh_rate`, in refreshes started per second,
/// and its ceiling.
pub const REFRESH_RATE_DEFAULT: u32 = 100;
pub const REFRESH_RATE_CAP: u32 = 100_000;
/// Default `invalidation.refresh_concurrency_max`, in origin requests, and
/// its ceiling.
pub const REFRESH_CONCURRENCY_MAX_DEFAULT: usize = 8;
pub const REFRESH_CONCURRENCY_CAP: usize = 1024;

/// `admin = "ADDR"`, or an `[admin]` table with `listen` and `token`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileAdmin {
    Listen(String),
    Table(FileAdminTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdminTable {
    listen: Option<String>,
    token: Option<String>,
    hmac_key: Option<String>,
    hmac_window: Option<String>,
}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// `ADDR/LEN`, or a bare address (a network of one).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= bits)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={bits}"))?,
            None => bits,
        };
        Ok(Cidr { addr, prefix_len })
    }

    /// Does the network hold `ip`? An IPv4-mapped IPv6 peer counts as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(i)), 32u32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128u32),
            _ => return false,
        };
        let len = u32::from(self.prefix_len);
        if len == 0 {
            return true;
        }
        let shift = bits - len;
        (net >> shift) == (ip >> shift)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Purges, bans and tags (`[invalidation]`), and the admin token.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalidation {
    /// Bearer token the admin API asks for (`admin.token` or
    /// `RINGCACHE_ADMIN_TOKEN`); `None`: the invalidation API answers 403.
    pub admin_token: Option<String>,
    /// Response field whose values are the object's tags, lowercase
    /// (`surrogate-key` or `cache-tag`; values split on spaces and commas).
    pub tag_header: String,
    /// Remove the tag field from what clients get (it stays in the store).
    pub tag_header_strip: bool,
    /// Tags of one object that are indexed; more are ignored (logged).
    pub tags_per_object_max: usize,
    /// Longest tag indexed, in bytes; longer ones are ignored.
    pub tag_bytes_max: usize,
    /// Bytes of the tag index, reserved out of `memory`.
    pub tag_index_bytes_max: u64,
    /// Accept the `PURGE` method on the traffic port.
    pub purge_method: bool,
    /// Networks a `PURGE` may come from.
    pub purge_allow: Vec<Cidr>,
    /// `admin.hmac_key` (or `RINGCACHE_ADMIN_HMAC_KEY`): when set, every
    /// `POST /invalidate*` must be signed with it (`crate::admin_auth`).
    pub admin_hmac_key: Option<String>,
    /// `admin.hmac_window`: how far a signed timestamp may be from now.
    pub admin_hmac_window: Duration,
    /// Keys a `"mode": "refresh"` may queue for a background refetch;
    /// beyond, they stay soft-purged (counted as dropped).
    pub refresh_queue_max: usize,
    /// Refreshes started per second, per origin.
    pub refresh_rate: u32,
    /// Refresh requests in flight to the origin at once, per origin,
    /// over all workers.
    pub refresh_concurrency_max: usize,
}

impl Invalidation {
    fn validate(&self, memory_bytes: u64) -> Result<(), String> {
        if self.tag_header.is_empty()
            || !self
                .tag_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("invalidation.tag_header: must be a field name".into());
        }
        // It is moved and may be cut from responses: never a field that
        // frames, dates or governs caching.
        const RESERVED: [&str; 10] = [
            "content-length",
            "transfer-encoding",
            "connection",
            "content-type",
            "date",
            "age",
            "etag",
            "last-modified",
            "cache-control",
            "vary",
        ];
        if RESERVED.contains(&self.tag_header.as_str()) {
            return Err(format!(
                "invalidation.tag_header: {:?} is a field ringcache needs as it is",
                self.tag_header
            ));
        }
        if !(1..=256).contains(&self.tags_per_object_max) {
            return Err("invalidation.tags_per_object_max: must be between 1 and 256".into());
        }
        if !(1..=4096).contains(&self.tag_bytes_max) {
            return Err("invalidation.tag_bytes_max: must be between 1 and 4096".into());
        }
        if self.tag_index_bytes_max > memory_bytes / 4
            || memory_bytes - self.tag_index_bytes_max < MEMORY_BYTES_MIN
        {
            return Err(
                "invalidation.tag_index_bytes_max: must be at most a quarter of memory and leave the store 1MiB"
                    .into(),
            );
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("admin.token: must be at least 16 visible ASCII characters".into());
            }
        }
        if let Some(k) = &self.admin_hmac_key {
            if k.len() < ADMIN_HMAC_KEY_BYTES_MIN || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "admin.hmac_key: must be at least {ADMIN_HMAC_KEY_BYTES_MIN} visible ASCII characters"
                ));
            }
        }
        if !(ADMIN_HMAC_WINDOW_MIN..=ADMIN_HMAC_WINDOW_MAX).contains(&self.admin_hmac_window) {
            return Err("admin.hmac_window: must be between 10s and 1h".into());
        }
        if !(1..=REFRESH_QUEUE_CAP).contains(&self.refresh_queue_max) {
            return Err(format!(
                "invalidation.refresh_queue_max: must be between 1 and {REFRESH_QUEUE_CAP}"
            ));
        }
        if !(1..=REFRESH_RATE_CAP).contains(&self.refresh_rate) {
            return Err(format!(
                "invalidation.refresh_rate: must be between 1 and {REFRESH_RATE_CAP} per second"
            ));
        }
        if !(1..=REFRESH_CONCURRENCY_CAP).contains(&self.refresh_concurrency_max) {
            return Err(format!(
                "invalidation.refresh_concurrency_max: must be between 1 and {REFRESH_CONCURRENCY_CAP}"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Invalidation {
    /// The `[invalidation]` table; the token is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# admin.token: {}",
            if self.admin_token.is_some() {
                "set"
            } else {
                "not set (the invalidation API answers 403)"
            }
        )?;
        writeln!(
            f,
            "# admin.hmac_key: {}",
            if self.admin_hmac_key.is_some() {
                "set (invalidation requests must be signed)"
            } else {
                "not set (no signature asked for)"
            }
        )?;
        writeln!(
            f,
            "# admin.hmac_window: \"{}\"",
            format_duration(self.admin_hmac_window)
        )?;
        writeln!(f, "[invalidation]")?;
        writeln!(f, "tag_header = \"{}\"", self.tag_header)?;
        writeln!(f, "tag_header_strip = {}", self.tag_header_strip)?;
        writeln!(f, "tags_per_object_max = {}", self.tags_per_object_max)?;
        writeln!(f, "tag_bytes_max = {}", self.tag_bytes_max)?;
        writeln!(
            f,
            "tag_index_bytes_max = \"{}\"",
            format_size(self.tag_index_bytes_max)
        )?;
        writeln!(f, "purge_method = {}", self.purge_method)?;
        writeln!(f, "refresh_queue_max = {}", self.refresh_queue_max)?;
        writeln!(f, "refresh_rate = {}", self.refresh_rate)?;
        writeln!(
            f,
            "refresh_concurrency_max = {}",
            self.refresh_concurrency_max
        )?;
        let allow: Vec<String> = self
            .purge_allow
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect();
        writeln!(f, "purge_allow = [{}]", allow.join(", "))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInvalidation {
    tag_header: Option<String>,
    tag_header_strip: Option<bool>,
    tags_per_object_max: Option<usize>,
    tag_bytes_max: Option<usize>,
    tag_index_bytes_max: Option<String>,
    purge_method: Option<bool>,
    purge_allow: Option<Vec<String>>,
    refresh_queue_max: Option<usize>,
    refresh_rate: Option<u32>,
    refresh_concurrency_max: Option<usize>,
}

impl FileInvalidation {
    fn apply(
        self,
        file_token: Option<String>,
        (file_hmac_key, file_hmac_window): (Option<String>, Option<String>),
        memory_bytes: u64,
    ) -> Result<Invalidation, String> {
        let admin_token = file_token;
        let admin_hmac_key = file_hmac_key;
        let mut admin_hmac_window = ADMIN_HMAC_WINDOW_DEFAULT;
        set_duration(
            "admin",
            "hmac_window",
            file_hmac_window,
            &mut admin_hmac_window,
        )?;
        let tag_index_bytes_max = match self.tag_index_bytes_max {
            Some(s) => {
                parse_size(&s).map_err(|e| format!("invalidation.tag_index_bytes_max: {e}"))?
            }
            None => (memory_bytes / TAG_INDEX_MEMORY_SHARE)
                .min(TAG_INDEX_BYTES_DEFAULT_MAX)
                .min(memory_bytes.saturating_sub(MEMORY_BYTES_MIN)),
        };
        let purge_allow = match self.purge_allow {
            Some(list) => list
                .iter()
                .map(|s| Cidr::parse(s).map_err(|e| format!("invalidation.purge_allow: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![
                Cidr::parse("127.0.0.1/32").expect("constant"),
                Cidr::parse("::1/128").expect("constant"),
            ],
        };
        Ok(Invalidation {
            admin_token,
            tag_header: self
                .tag_header
                .unwrap_or_else(|| "Surrogate-Key".into())
                .to_ascii_lowercase(),
            tag_header_strip: self.tag_header_strip.unwrap_or(true),
            tags_per_object_max: self.tags_per_object_max.unwrap_or(32),
            tag_bytes_max: self.tag_bytes_max.unwrap_or(128),
            tag_index_bytes_max,
            purge_method: self.purge_method.unwrap_or(false),
            purge_allow,
            admin_hmac_key,
            admin_hmac_window,
            refresh_queue_max: self.refresh_queue_max.unwrap_or(REFRESH_QUEUE_MAX_DEFAULT),
            refresh_rate: self.refresh_rate.unwrap_or(REFRESH_RATE_DEFAULT),
            refresh_concurrency_max: self
                .refresh_concurrency_max
                .unwrap_or(REFRESH_CONCURRENCY_MAX_DEFAULT),
        })
    }
}

/// `table.key = "SIZE"` from the file, when given, into `into`.
fn set_size(table: &str, key: &str, v: Option<String>, into: &mut usize) -> Result<(), String> {
    if let Some(s) = v {
        let n = parse_size(&s).map_err(|e| format!("{table}.{key}: {e}"))?;
        *into = usize::try_from(n).map_err(|_| format!("{table}.{key}: too large"))?;
    }
    Ok(())
}

/// `table.key = "DURATION"` from the file, when given, into `into`.
fn set_duration(
    table: &str,
    key: &str,
    v: Option<String>,
    into: &mut Duration,
) -> Result<(), String> {
    if let Some(s) = v {
        *into = parse_duration(&s).map_err(|e| format!("{table}.{key}: {e}"))?;
    }
    Ok(())
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{key}: {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{key}: {s:?} resolves to no address"))
}

/// The CPUs this process may run on (its affinity mask), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `64MiB`, `16KiB`, `1GiB`, `10MB`, `512` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("{s:?}: unknown size unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `500ms`, `30s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s)"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "" => Err(format!("{s:?}: a duration needs a unit (ms, s, m, h)")),
        other => Err(format!("{s:?}: unknown duration unit {other:?}")),
    }
}

fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}")
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

// ---------------------------------------------------------------------------
// [bus]: the invalidation bus between nodes (Redis Streams), see `crate::bus`.
// ---------------------------------------------------------------------------

/// The `[bus]` table: where invalidations are shared between nodes, and the
/// limits of the thread that carries them.
#[derive(Clone, Debug, PartialEq)]
pub struct BusConfig {
    /// `host:port` of the Redis server, resolved at each connect.
    pub redis_addr: String,
    /// The stream every node of the cluster writes to and reads from.
    pub stream: String,
    /// This node's name: entries it wrote are not applied again, acks carry it.
    pub node: String,
    /// Directory of the resume-point file, `ringcache-bus-STREAM.state`
    /// (one node per directory).
    pub state_dir: Option<std::path::PathBuf>,
    /// Without `state_dir`, the resume point lives beside this store file,
    /// as `STORE.bus-STREAM.state`; with neither, it is not kept.
    pub store_path: Option<std::path::PathBuf>,
    /// Entries the stream keeps, approximately (`XADD MAXLEN ~ N`).
    pub stream_len_max: u64,
    /// Entries read in one `XREAD` (COUNT).
    pub batch_entries_max: usize,
    /// Largest invalidation body published or applied, in bytes.
    pub payload_bytes_max: usize,
    /// Largest reply kept from Redis, in bytes.
    pub reply_bytes_max: usize,
    /// Invalidations kept while Redis is unreachable; the oldest go beyond.
    pub outbox_entries_max: usize,
    /// Nodes listed when collecting acknowledgements.
    pub nodes_max: usize,
    /// Time one `XREAD` blocks waiting for entries.
    pub block_timeout: std::time::Duration,
    /// Time to connect to Redis.
    pub connect_timeout: std::time::Duration,
    /// Time one command's write or reply may take.
    pub io_timeout: std::time::Duration,
    /// First wait before reconnecting; doubles up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: std::time::Duration,
    pub reconnect_backoff_max: std::time::Duration,
    /// Lifetime of a node's heartbeat key; refreshed every third of it.
    pub heartbeat_ttl: std::time::Duration,
    /// Lifetime of an entry's acknowledgements.
    pub ack_ttl: std::time::Duration,
    /// At start, how long `serve` waits for the bus to apply what the
    /// stream holds past the saved position before it serves anyway.
    pub catch_up_timeout: std::time::Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBus {
    url: Option<String>,
    node: Option<String>,
    state_dir: Option<std::path::PathBuf>,
    stream_len_max: Option<u64>,
    batch_entries_max: Option<usize>,
    payload_bytes_max: Option<String>,
    reply_bytes_max: Option<String>,
    outbox_entries_max: Option<usize>,
    nodes_max: Option<usize>,
    block_timeout: Option<String>,
    connect_timeout: Option<String>,
    io_timeout: Option<String>,
    reconnect_backoff_min: Option<String>,
    reconnect_backoff_max: Option<String>,
    heartbeat_ttl: Option<String>,
    ack_ttl: Option<String>,
    catch_up_timeout: Option<String>,
}

/// Longest node or stream name, in bytes.
pub const BUS_NAME_BYTES_MAX: usize = 128;

impl BusConfig {
    /// The defaults for one Redis URL and node name.
    pub fn new(url: &str, node: &str) -> Result<BusConfig, String> {
        let (redis_addr, stream) = Self::parse_url(url)?;
        Ok(BusConfig {
            redis_addr,
            stream,
            node: node.to_string(),
            state_dir: None,
            store_path: None,
            stream_len_max: 100_000,
            batch_entries_max: 128,
            payload_bytes_max: 64 << 10,
            reply_bytes_max: 16 << 20,
            outbox_entries_max: 1024,
            nodes_max: 256,
            block_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            heartbeat_ttl: Duration::from_secs(15),
            ack_ttl: Duration::from_secs(600),
            catch_up_timeout: Duration::from_secs(5),
        })
    }

    /// `redis://HOST:PORT/STREAM` → (`HOST:PORT`, `STREAM`).
    pub fn parse_url(url: &str) -> Result<(String, String), String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("bus.url {url:?}: expected redis://HOST:PORT/STREAM"))?;
        let (authority, stream) = rest
            .split_once('/')
            .ok_or_else(|| format!("bus.url {url:?}: the stream name is missing"))?;
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!("bus.url {url:?}: expected HOST:PORT"));
        }
        if !bus_name_ok(stream) {
            return Err(format!(
                "bus.url {url:?}: the stream name must be 1 to 128 of A-Z a-z 0-9 . _ : -"
            ));
        }
        Ok((authority.to_string(), stream.to_string()))
    }

    /// The resume-point file, when there is a place for it.
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        match (&self.state_dir, &self.store_path) {
            (Some(d), _) => Some(d.join(format!("ringcache-bus-{}.state", self.stream))),
            (None, Some(store)) => {
                let mut name = store.file_name()?.to_os_string();
                name.push(format!(".bus-{}.state", self.stream));
                Some(store.with_file_name(name))
            }
            (None, None) => None,
        }
    }

    fn load(
        file: Option<FileBus>,
        admin: &str,
        store: Option<&Path>,
    ) -> Result<Option<BusConfig>, String> {
        let file = file.unwrap_or_default();
        let Some(url) = file.url else {
            return Ok(None);
        };
        let node = match file.node {
            Some(n) => n,
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "ringcache".to_string());
                let port = admin.rsplit_once(':').map_or("0", |(_, p)| p);
                format!("{host}:{port}")
            }
        };
        let mut b = BusConfig::new(&url, &node)?;
        b.state_dir = file.state_dir;
        b.store_path = store.map(Path::to_path_buf);
        fn size(key: &str, v: Option<String>, into: &mut usize) -> Result<(), String> {
            set_size("bus", key, v, into)
        }
        fn dur(key: &str, v: Option<String>, into: &mut Duration) -> Result<(), String> {
            set_duration("bus", key, v, into)
        }
        if let Some(n) = file.stream_len_max {
            b.stream_len_max = n;
        }
        if let Some(n) = file.batch_entries_max {
            b.batch_entries_max = n;
        }
        if let Some(n) = file.outbox_entries_max {
            b.outbox_entries_max = n;
        }
        if let Some(n) = file.nodes_max {
            b.nodes_max = n;
        }
        size(
            "payload_bytes_max",
            file.payload_bytes_max,
            &mut b.payload_bytes_max,
        )?;
        size(
            "reply_bytes_max",
            file.reply_bytes_max,
            &mut b.reply_bytes_max,
        )?;
        dur("block_timeout", file.block_timeout, &mut b.block_timeout)?;
        dur(
            "connect_timeout",
            file.connect_timeout,
            &mut b.connect_timeout,
        )?;
        dur("io_timeout", file.io_timeout, &mut b.io_timeout)?;
        dur(
            "reconnect_backoff_min",
            file.reconnect_backoff_min,
            &mut b.reconnect_backoff_min,
        )?;
        dur(
            "reconnect_backoff_max",
            file.reconnect_backoff_max,
            &mut b.reconnect_backoff_max,
        )?;
        dur("heartbeat_ttl", file.heartbeat_ttl, &mut b.heartbeat_ttl)?;
        dur("ack_ttl", file.ack_ttl, &mut b.ack_ttl)?;
        dur(
            "catch_up_timeout",
            file.catch_up_timeout,
            &mut b.catch_up_timeout,
        )?;
        Ok(Some(b))
    }

    /// Check the relations between values; each error names its key.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, msg: &str| if ok { Ok(()) } else { Err(msg.to_string()) };
        check(
            bus_name_ok(&self.node),
            "bus.node: must be 1 to 128 of A-Z a-z 0-9 . _ : -",
        )?;
        check(
            (1..=1 << 30).contains(&self.stream_len_max),
            "bus.stream_len_max: must be between 1 and 2^30",
        )?;
        check(
            (1..=10_000).contains(&self.batch_entries_max),
            "bus.batch_entries_max: must be between 1 and 10000",
        )?;
        check(
            (64..=64 << 20).contains(&self.payload_bytes_max),
            "bus.payload_bytes_max: must be between 64 bytes and 64MiB",
        )?;
        check(
            self.reply_bytes_max as u64
                >= self.batch_entries_max as u64 * (self.payload_bytes_max as u64 + 1024),
            "bus.reply_bytes_max: must hold batch_entries_max entries of payload_bytes_max (+1KiB each)",
        )?;
        check(
            (1..=1 << 20).contains(&self.outbox_entries_max),
            "bus.outbox_entries_max: must be between 1 and 1048576",
        )?;
        check(
            (1..=65_536).contains(&self.nodes_max),
            "bus.nodes_max: must be between 1 and 65536",
        )?;
        check(
            self.reconnect_backoff_min <= self.reconnect_backoff_max,
            "bus.reconnect_backoff_min: must not exceed bus.reconnect_backoff_max",
        )?;
        check(
            self.heartbeat_ttl >= Duration::from_secs(1),
            "bus.heartbeat_ttl: must be at least 1s (Redis expires in seconds)",
        )?;
        check(
            self.ack_ttl >= Duration::from_secs(1),
            "bus.ack_ttl: must be at least 1s (Redis expires in seconds)",
        )?;
        for (name, d) in [
            ("bus.block_timeout", self.block_timeout),
            ("bus.connect_timeout", self.connect_timeout),
            ("bus.io_timeout", self.io_timeout),
            ("bus.reconnect_backoff_min", self.reconnect_backoff_min),
        ] {
            check(
                d >= Duration::from_millis(10),
                &format!("{name}: must be at least 10ms"),
            )?;
        }
        Ok(())
    }
}

fn bus_name_ok(s: &str) -> bool {
    (1..=BUS_NAME_BYTES_MAX).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

impl fmt::Display for BusConfig {
    /// The `[bus]` table, in the TOML file's own syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "[bus]")?;
        writeln!(f, "url = \"redis://{}/{}\"", self.redis_addr, self.stream)?;
        writeln!(f, "node = \"{}\"", self.node)?;
        match (&self.state_dir, &self.store_path) {
            (Some(d), _) => writeln!(f, "state_dir = {:?}", d.display().to_string())?,
            (None, Some(_)) => writeln!(
                f,
                "# state_dir: none, the resume point is kept beside the store file"
            )?,
            (None, None) => writeln!(
                f,
                "# state_dir: none and no store file, the resume point is not kept"
            )?,
        }
        writeln!(f, "stream_len_max = {}", self.stream_len_max)?;
        writeln!(f, "batch_entries_max = {}", self.batch_entries_max)?;
        for (k, v) in [
            ("payload_bytes_max", self.payload_bytes_max),
            ("reply_bytes_max", self.reply_bytes_max),
        ] {
            writeln!(f, "{k} = \"{}\"", format_size(v as u64))?;
        }
        writeln!(f, "outbox_entries_max = {}", self.outbox_entries_max)?;
        writeln!(f, "nodes_max = {}", self.nodes_max)?;
        for (k, v) in [
            ("block_timeout", self.block_timeout),
            ("connect_timeout", self.connect_timeout),
            ("io_timeout", self.io_timeout),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("heartbeat_ttl", self.heartbeat_ttl),
            ("ack_ttl", self.ack_ttl),
            ("catch_up_timeout", self.catch_up_timeout),
        ] {
            writeln!(f, "{k} = \"{}\"", format_duration(v))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Every key in one table: type, default, range, environment variable, flag,
// whether SIGHUP applies it, one line of doc. Loading (`Provenance`), the
// printed effective configuration (`check-config`), the generated reference
// (`config-reference`, README.md) and the reload plan are derived from it.
// ---------------------------------------------------------------------------

/// How a key's value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Bytes with a unit: `64KiB`, `16MiB` (or plain bytes).
    Size,
    /// A time with a unit: `500ms`, `5s`, `2m`, `1h`.
    Duration,
    /// A whole number.
    Count,
    Bool,
    /// Free text: an address, a URL, a path, a name.
    Text,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A list of strings (comma-separated in an environment variable or `--set`).
    List,
    /// A percentage: `10%` or `10`.
    Percent,
}

/// When a new value of a key takes effect.
#[derive(Clone, Copy)]
pub enum Apply {
    /// At SIGHUP: copies the key's value from the reread configuration
    /// into the running one.
    Reload(fn(&mut Config, &Config)),
    /// At the next start; a SIGHUP reports the change and keeps the old value.
    Restart,
}

/// One configuration key.
#[derive(Clone, Copy)]
pub struct OptionSpec {
    /// As written in the TOML file, `table.key` (top-level keys: `key`).
    pub key: &'static str,
    pub kind: Kind,
    /// Allowed values in the kind's unit: bytes, milliseconds, a count or
    /// percent (`u64::MAX`: no upper bound).
    pub range: Option<(u64, u64)>,
    /// The named flag that sets it (every key also has `--set KEY=VALUE`).
    pub flag: Option<&'static str>,
    /// The default in words, where it is not a fixed value.
    pub default_text: Option<&'static str>,
    pub apply: Apply,
    /// Never printed: shown as set or unset.
    pub secret: bool,
    pub doc: &'static str,
    /// The running value as text (`None`: unset).
    pub show: fn(&Config) -> Option<String>,
}

/// A value as text, the way `check-config` and the reference print it.
trait Show {
    fn show(&self, kind: Kind) -> Option<String>;
}

macro_rules! show_number {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self, kind: Kind) -> Option<String> {
                let n = *self as u64;
                Some(match kind {
                    Kind::Size => format_size(n),
                    Kind::Percent => format!("{n}%"),
                    _ => n.to_string(),
                })
            }
        }
    )*};
}
show_number!(usize, u64, u32, u16, u8);

/// Values shown as they display.
macro_rules! show_display {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self, _: Kind) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
show_display!(bool, String, SocketAddr, IoMode, SetCookieMode);

impl Show for Duration {
    fn show(&self, _: Kind) -> Option<String> {
        Some(format_duration(*self))
    }
}

impl Show for std::path::PathBuf {
    fn show(&self, _: Kind) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl Show for crate::access_log::Mode {
    fn show(&self, _: Kind) -> Option<String> {
        Some(self.name().to_string())
    }
}

impl Show for crate::access_log::Format {
    fn show(&self, _: Kind) -> Option<String> {
        Some(self.name().to_string())
    }
}

impl Show for Origin {
    fn show(&self, _: Kind) -> Option<String> {
        Some(format!("http://{}", self.authority))
    }
}

impl Show for log::LevelFilter {
    fn show(&self, _: Kind) -> Option<String> {
        Some(self.as_str().to_ascii_lowercase())
    }
}

impl Show for Vec<String> {
    fn show(&self, _: Kind) -> Option<String> {
        let items: Vec<String> = self.iter().map(|s| format!("{s:?}")).collect();
        Some(format!("[{}]", items.join(", ")))
    }
}

impl Show for Vec<Cidr> {
    fn show(&self, _: Kind) -> Option<String> {
        let items: Vec<String> = self.iter().map(|c| format!("\"{c}\"")).collect();
        Some(format!("[{}]", items.join(", ")))
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self, kind: Kind) -> Option<String> {
        self.as_ref().and_then(|v| v.show(kind))
    }
}

/// One row of [`OPTIONS`] for a field of [`Config`]:
/// `key!("table.key", KIND, field.path; reload|restart, range LO => HI,
/// flag "--x", default "words"; "doc")`, the parts after `reload|restart`
/// optional and in that order.
macro_rules! key {
    ($key:literal, $kind:expr, $($f:ident).+; $apply:ident
     $(, range $lo:expr => $hi:expr)? $(, flag $flag:literal)? $(, default $def:literal)?;
     $doc:literal) => {
        OptionSpec {
            key: $key,
            kind: $kind,
            range: key!(@range $($lo, $hi)?),
            flag: key!(@opt $($flag)?),
            default_text: key!(@opt $($def)?),
            apply: key!(@apply $apply, $($f).+),
            secret: false,
            doc: $doc,
            show: |c: &Config| Show::show(&c.$($f).+, $kind),
        }
    };
    (@range $lo:expr, $hi:expr) => { Some(($lo as u64, $hi as u64)) };
    (@range) => { None };
    (@opt $v:literal) => { Some($v) };
    (@opt) => { None };
    (@apply reload, $($f:ident).+) => {
        Apply::Reload(|run: &mut Config, new: &Config| run.$($f).+ = new.$($f).+.clone())
    };
    (@apply restart, $($f:ident).+) => { Apply::Restart };
}

/// One row of [`OPTIONS`] for a field of the `[bus]` table (all restart).
macro_rules! bus_key {
    ($key:literal, $kind:expr, $f:ident $(, range $lo:expr => $hi:expr)?; $doc:literal) => {
        OptionSpec {
            key: $key,
            kind: $kind,
            range: key!(@range $($lo, $hi)?),
            flag: None,
            default_text: None,
            apply: Apply::Restart,
            secret: false,
            doc: $doc,
            show: |c: &Config| c.bus.as_ref().and_then(|b| Show::show(&b.$f, $kind)),
        }
    };
}

const MS: u64 = 1;
const SEC: u64 = 1000 * MS;
const NO_MAX: u64 = u64::MAX;
/// Smallest value of the limits' timeouts.
const TIMEOUT_MS_MIN: u64 = 10 * MS;
const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Every configuration key. To add one: a field in its `File*` table and in
/// the type it fills (as before), then one row here.
pub static OPTIONS: &[OptionSpec] = &[
    key!("listen", Kind::Text, listen; restart, flag "--listen";
        "traffic listener, `ADDR:PORT` (not used when systemd passes a socket)"),
    OptionSpec {
        key: "origin",
        kind: Kind::Text,
        range: None,
        flag: Some("--origin"),
        default_text: Some("the built-in demo origin"),
        apply: Apply::Restart,
        secret: false,
        doc: "`http://host[:port]` of the origin misses are fetched from",
        show: |c| Show::show(&c.origin, Kind::Text),
    },
    key!("workers", Kind::Count, workers; restart, range 1 => 1024, flag "--workers",
        default "the CPUs this process may run on"; "worker threads, one per core, pinned"),
    key!("io", Kind::Choice(&["auto", "uring", "epoll"]), io; restart, flag "--io";
        "I/O backend; `auto` probes io_uring and falls back to epoll with one log line"),
    key!("memory", Kind::Size, memory_bytes; restart, range MEMORY_BYTES_MIN => NO_MAX,
        flag "--memory"; "hard cap of the cache's memory, metadata and tag index included"),
    key!("memory_per_index_slot", Kind::Size, memory_per_index_slot; restart,
        range crate::store::layout::BUDGET_BYTES_PER_SLOT_MIN
            => crate::store::layout::BUDGET_BYTES_PER_SLOT_MAX;
        "bytes of `memory` per store index slot; the store holds at most 15/16 of `memory` / this many objects, so lower it (256) when most objects, key and headers included, are under about 250 bytes (each slot costs 35 bytes of `memory`); a store file made with another value is refused"),
    key!("store", Kind::Text, store_path; restart, flag "--store", default "anonymous memory";
        "store file, sized to `memory` and reused, so restarts are warm"),
    key!("store_reset", Kind::Bool, store_reset; restart, flag "--store-reset";
        "rebuild a refused store file (other version or layout, damaged header) empty instead of failing"),
    key!("log_level", Kind::Choice(LOG_LEVELS), log_level; reload,
        default "info (`RINGCACHE_LOG`, when set, wins)"; "level of the log lines on stderr"),
    key!("admin.listen", Kind::Text, admin; restart, flag "--admin";
        "admin listener: metrics, health, stats, invalidation (`admin = \"ADDR\"` works too)"),
    OptionSpec {
        key: "admin.token",
        kind: Kind::Text,
        range: None,
        flag: None,
        default_text: Some("none (the invalidation API answers 403)"),
        apply: Apply::Reload(|run, new| {
            run.invalidation.admin_token = new.invalidation.admin_token.clone()
        }),
        secret: true,
        doc: "bearer token of the invalidation API, at least 16 visible characters",
        show: |c| c.invalidation.admin_token.clone(),
    },
    OptionSpec {
        key: "admin.hmac_key",
        kind: Kind::Text,
        range: None,
        flag: None,
        default_text: Some("none (invalidation calls need no signature)"),
        apply: Apply::Reload(|run, new| {
            run.invalidation.admin_hmac_key = new.invalidation.admin_hmac_key.clone()
        }),
        secret: true,
        doc: "when set, every `POST /invalidate*` carries `Ringcache-Timestamp` and `Ringcache-Signature: sha256=HMAC(key, \"TIMESTAMP.BODY\")`; at least 32 visible characters",
        show: |c| c.invalidation.admin_hmac_key.clone(),
    },
    key!("admin.hmac_window", Kind::Duration, invalidation.admin_hmac_window; reload,
        range ADMIN_HMAC_WINDOW_MIN.as_millis() => ADMIN_HMAC_WINDOW_MAX.as_millis();
        "how far a signed call's timestamp may be from this node's clock, either way; a signature is accepted once within it"),
    // [limits]
    key!("limits.connections_max", Kind::Count, limits.connections_max; restart, range 1 => 1 << 20;
        "client connections one worker holds open; more are closed at accept"),
    key!("limits.head_bytes_max", Kind::Size, limits.head_bytes_max; reload, range 256 => 1 << 20;
        "request line plus header fields (431 beyond)"),
    key!("limits.headers_count_max", Kind::Count, limits.headers_count_max; reload,
        range 8 => HEADERS_COUNT_CAP; "header fields in one request or response (431 / 502 beyond)"),
    key!("limits.body_bytes_max", Kind::Size, limits.body_bytes_max; reload;
        "request body after de-chunking (413 beyond)"),
    key!("limits.pipeline_depth_max", Kind::Count, limits.pipeline_depth_max; reload, range 1 => 4096;
        "requests of one connection parsed ahead of their responses"),
    key!("limits.client_output_bytes_max", Kind::Size, limits.client_output_bytes_max; reload,
        range 4096 => NO_MAX; "responses queued for one client before its further requests are not read"),
    key!("limits.header_timeout", Kind::Duration, limits.header_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "time to receive a complete request head once it started (408, close)"),
    key!("limits.keepalive_timeout", Kind::Duration, limits.keepalive_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "idle keep-alive client connection"),
    key!("limits.send_timeout", Kind::Duration, limits.send_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "one write of queued responses to a client (a client that does not read is closed)"),
    key!("limits.origin_connect_timeout", Kind::Duration, limits.origin_connect_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "connecting to the origin (504)"),
    key!("limits.origin_response_timeout", Kind::Duration, limits.origin_response_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "from sending a request to the origin to its complete response (504)"),
    key!("limits.origin_connections_max", Kind::Count, limits.origin_connections_max; restart,
        range 1 => 65_536; "origin connections one worker holds, busy and idle"),
    key!("limits.origin_connections_total_max", Kind::Count, limits.origin_connections_total_max; restart,
        range 1 => 1 << 20; "origin connections of the whole process; beyond it requests wait in their worker's queue"),
    key!("limits.origin_idle_max", Kind::Count, limits.origin_idle_max; restart;
        "idle keep-alive origin connections one worker keeps (at most `origin_connections_max`)"),
    key!("limits.origin_idle_timeout", Kind::Duration, limits.origin_idle_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "idle origin connection"),
    key!("limits.origin_queue_max", Kind::Count, limits.origin_queue_max; restart;
        "requests of one worker waiting for an origin connection (503 beyond)"),
    key!("limits.origin_queue_timeout", Kind::Duration, limits.origin_queue_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "time a request waits in that queue (then 503 with `Retry-After`, or the stale object within `stale-if-error`)"),
    key!("limits.origin_response_bytes_max", Kind::Size, limits.origin_response_bytes_max; reload;
        "largest origin response relayed, head and body (502 beyond)"),
    key!("limits.object_bytes_max", Kind::Size, limits.object_bytes_max; reload;
        "largest object stored; larger responses are relayed, not stored (below `memory`)"),
    key!("limits.coalesce_waiters_max", Kind::Count, limits.coalesce_waiters_max; restart;
        "requests of one worker waiting for another's fetch of the same key"),
    key!("limits.coalesce_wait_timeout", Kind::Duration, limits.coalesce_wait_timeout; restart,
        range TIMEOUT_MS_MIN => NO_MAX; "wait for another's fetch before asking the origin directly"),
    key!("limits.coalesce_stream_bytes_min", Kind::Size, limits.coalesce_stream_bytes_min; reload,
        range 1024 => NO_MAX; "Content-Length from which a response is streamed to its client and that worker's waiters as it arrives"),
    key!("limits.hit_for_miss_ttl", Kind::Duration, limits.hit_for_miss_ttl; restart,
        range TIMEOUT_MS_MIN => NO_MAX; "a key whose answer could not be shared skips waiting this long"),
    key!("limits.hit_for_miss_count_max", Kind::Count, limits.hit_for_miss_count_max; restart;
        "hit-for-miss marks one worker keeps"),
    key!("limits.shutdown_grace", Kind::Duration, limits.shutdown_grace; reload;
        "time in-flight requests get to finish after SIGTERM"),
    key!("limits.drain_idle_timeout", Kind::Duration, limits.drain_idle_timeout; reload,
        range TIMEOUT_MS_MIN => NO_MAX; "while draining, a keep-alive connection with nothing pending waits for one more request"),
    key!("limits.recv_buffer_bytes", Kind::Size, limits.recv_buffer_bytes; restart, range 1024 => 1 << 20;
        "one provided receive buffer"),
    key!("limits.recv_buffers_count", Kind::Count, limits.recv_buffers_count; restart, range 1 => 32_768;
        "provided receive buffers per worker (a power of two)"),
    key!("limits.ring_entries", Kind::Count, limits.ring_entries; restart, range 64 => 32_768;
        "io_uring submission queue entries per worker (a power of two)"),
    key!("limits.bans_max", Kind::Count, limits.bans_max; restart, range 1 => BANS_CAP;
        "active bans (503 beyond)"),
    key!("limits.admin_body_bytes_max", Kind::Size, limits.admin_body_bytes_max; restart,
        range 1024 => 16 << 20; "body of one admin request (413 beyond)"),
    // [cache]
    key!("cache.variants_per_key_max", Kind::Count, cache.variants_per_key_max; reload,
        range 1 => VARIANTS_PER_KEY_CAP; "`Vary` variants stored per URL; the oldest gives way"),
    key!("cache.key_sort_query", Kind::Bool, cache.key_sort_query; reload;
        "sort query parameters in the key (`b=1&a=2` = `a=2&b=1`)"),
    key!("cache.key_ignore_params", Kind::List, cache.key_ignore_params; reload;
        "query parameters left out of the key: names, or prefixes with `*` (`[\"utm_*\", \"fbclid\"]`)"),
    key!("cache.key_include_host", Kind::Bool, cache.key_include_host; reload;
        "the Host is part of the key (`false`: one origin, one site)"),
    key!("cache.set_cookie", Kind::Choice(&["refuse", "strip", "store"]), cache.set_cookie; reload;
        "a response with `Set-Cookie`: not stored, stored without it, or stored as is"),
    key!("cache.heuristic", Kind::Bool, cache.heuristic; reload;
        "heuristic freshness (RFC 9111 §4.2.2) for responses without an explicit lifetime, statuses cacheable by default"),
    key!("cache.heuristic_percent", Kind::Count, cache.heuristic_percent; reload, range 0 => 100;
        "heuristic lifetime: this share of the time since `Last-Modified`"),
    key!("cache.heuristic_max", Kind::Duration, cache.heuristic_max; reload,
        range 0 => CACHE_TTL_SECS_CAP * SEC; "cap on any heuristic lifetime, whole seconds"),
    key!("cache.default_ttl", Kind::Duration, cache.default_ttl; reload,
        range 0 => CACHE_TTL_SECS_CAP * SEC;
        "lifetime of a response with `ETag` or `Last-Modified` but no lifetime (`0s`: off), whole seconds"),
    key!("cache.refresh_ahead", Kind::Percent, cache.refresh_ahead_percent; reload,
        range 0 => REFRESH_AHEAD_PERCENT_MAX, flag "--refresh-ahead";
        "a fresh hit in this last share of its lifetime also refreshes the key in the background (0: off)"),
    // [invalidation]
    key!("invalidation.tag_header", Kind::Text, invalidation.tag_header; restart;
        "response field holding an object's tags (values split on spaces and commas)"),
    key!("invalidation.tag_header_strip", Kind::Bool, invalidation.tag_header_strip; restart;
        "remove the tag field from what clients get (it stays stored)"),
    key!("invalidation.tags_per_object_max", Kind::Count, invalidation.tags_per_object_max; restart,
        range 1 => 256; "tags of one object indexed"),
    key!("invalidation.tag_bytes_max", Kind::Count, invalidation.tag_bytes_max; restart,
        range 1 => 4096; "longest tag indexed, in bytes"),
    key!("invalidation.tag_index_bytes_max", Kind::Size, invalidation.tag_index_bytes_max; restart,
        default "memory/16, at most 16MiB"; "tag index memory, reserved out of `memory` (at most a quarter)"),
    key!("invalidation.purge_method", Kind::Bool, invalidation.purge_method; restart;
        "accept `PURGE` on the traffic port"),
    OptionSpec {
        key: "invalidation.purge_allow",
        kind: Kind::List,
        range: None,
        flag: None,
        default_text: None,
        apply: Apply::Reload(|run, new| {
            run.invalidation.purge_allow = new.invalidation.purge_allow.clone()
        }),
        secret: false,
        doc: "networks a `PURGE` may come from (CIDR)",
        show: |c| Show::show(&c.invalidation.purge_allow, Kind::List),
    },
    key!("invalidation.refresh_queue_max", Kind::Count, invalidation.refresh_queue_max; restart,
        range 1 => REFRESH_QUEUE_CAP;
        "keys a `\"mode\": \"refresh\"` invalidation may queue for a background refetch; beyond it they stay soft-purged (counted)"),
    key!("invalidation.refresh_rate", Kind::Count, invalidation.refresh_rate; restart,
        range 1 => REFRESH_RATE_CAP;
        "background refetches started per second, process-wide (per origin)"),
    key!("invalidation.refresh_concurrency_max", Kind::Count, invalidation.refresh_concurrency_max; restart,
        range 1 => REFRESH_CONCURRENCY_CAP;
        "background refetches in progress at the origin at once, process-wide (per origin)"),
    // [bus]
    OptionSpec {
        key: "bus.url",
        kind: Kind::Text,
        range: None,
        flag: Some("--bus"),
        default_text: Some("none (no bus)"),
        apply: Apply::Restart,
        secret: false,
        doc: "invalidation bus shared by a cluster's nodes, `redis://HOST:PORT/STREAM`",
        show: |c| {
            c.bus
                .as_ref()
                .map(|b| format!("redis://{}/{}", b.redis_addr, b.stream))
        },
    },
    OptionSpec {
        key: "bus.node",
        kind: Kind::Text,
        range: None,
        flag: Some("--bus-node"),
        default_text: Some("hostname:admin port"),
        apply: Apply::Restart,
        secret: false,
        doc: "this node's name on the bus, unique in the cluster",
        show: |c| c.bus.as_ref().map(|b| b.node.clone()),
    },
    OptionSpec {
        key: "bus.state_dir",
        kind: Kind::Text,
        range: None,
        flag: None,
        default_text: Some("beside the store file"),
        apply: Apply::Restart,
        secret: false,
        doc: "directory of the resume-point file (one node per directory)",
        show: |c| {
            c.bus
                .as_ref()
                .and_then(|b| Show::show(&b.state_dir, Kind::Text))
        },
    },
    bus_key!("bus.stream_len_max", Kind::Count, stream_len_max, range 1 => 1u64 << 30;
        "entries the stream keeps, approximately"),
    bus_key!("bus.batch_entries_max", Kind::Count, batch_entries_max, range 1 => 10_000;
        "entries read per `XREAD`"),
    bus_key!("bus.payload_bytes_max", Kind::Size, payload_bytes_max, range 64 => 64 << 20;
        "largest invalidation body published or applied"),
    bus_key!("bus.reply_bytes_max", Kind::Size, reply_bytes_max;
        "largest Redis reply kept (must hold a full batch)"),
    bus_key!("bus.outbox_entries_max", Kind::Count, outbox_entries_max, range 1 => 1 << 20;
        "invalidations kept while Redis is unreachable"),
    bus_key!("bus.nodes_max", Kind::Count, nodes_max, range 1 => 65_536;
        "nodes listed when collecting acknowledgements"),
    bus_key!("bus.block_timeout", Kind::Duration, block_timeout, range TIMEOUT_MS_MIN => NO_MAX;
        "one `XREAD BLOCK`"),
    bus_key!("bus.connect_timeout", Kind::Duration, connect_timeout, range TIMEOUT_MS_MIN => NO_MAX;
        "connecting to Redis"),
    bus_key!("bus.io_timeout", Kind::Duration, io_timeout, range TIMEOUT_MS_MIN => NO_MAX;
        "one command's write or reply"),
    bus_key!("bus.reconnect_backoff_min", Kind::Duration, reconnect_backoff_min,
        range TIMEOUT_MS_MIN => NO_MAX; "first wait before reconnecting; doubles up to `reconnect_backoff_max`"),
    bus_key!("bus.reconnect_backoff_max", Kind::Duration, reconnect_backoff_max;
        "longest wait before reconnecting"),
    bus_key!("bus.heartbeat_ttl", Kind::Duration, heartbeat_ttl, range SEC => NO_MAX;
        "a node counts as live this long after its last heartbeat"),
    bus_key!("bus.ack_ttl", Kind::Duration, ack_ttl, range SEC => NO_MAX;
        "how long an entry's acknowledgements are kept"),
    bus_key!("bus.catch_up_timeout", Kind::Duration, catch_up_timeout;
        "at start, longest wait for the entries missed while down to be applied before serving (`0s`: do not wait)"),
    key!("access_log.mode", Kind::Choice(&["off", "sampled", "full"]), access_log.mode; restart;
        "`off`, `sampled` (1 in `sample` requests per worker) or `full`; `--access-log PATH` turns `off` into `full`"),
    key!("access_log.sample", Kind::Count, access_log.sample; restart,
        range 1 => crate::access_log::SAMPLE_MAX;
        "with `mode = \"sampled\"`, each worker logs its requests 0, N, 2N, ..."),
    key!("access_log.format", Kind::Choice(&["json", "combined"]), access_log.format; restart,
        flag "--access-log-format";
        "`json` (JSON lines) or `combined` (nginx's combined format with the cache outcome and times appended)"),
    key!("access_log.path", Kind::Text, access_log.path; restart, flag "--access-log", default "`-` (stdout)";
        "file the lines are appended to (created 0640, reopened on SIGUSR1), or `-` for stdout"),
    key!("access_log.buffer_bytes", Kind::Size, access_log.buffer_bytes; restart,
        range crate::access_log::BUFFER_BYTES_MIN => crate::access_log::BUFFER_BYTES_MAX;
        "one of each worker's line buffers (a worker holds a few; full ones go to the writer thread)"),
    key!("access_log.flush_interval", Kind::Duration, access_log.flush_interval; restart,
        range 10 * MS => 60 * SEC;
        "longest time a line waits in a worker's buffer before it goes to the writer"),
];

/// Environment variables read before the systematic name of their key was
/// introduced; the systematic name wins when both are set.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("RINGCACHE_ADMIN", "admin.listen"),
    ("RINGCACHE_BUS", "bus.url"),
    ("RINGCACHE_REFRESH_AHEAD", "cache.refresh_ahead"),
];

/// Test fault: the index of a worker that stops turning its loop once a
/// client connection has been closed, so that the watchdog test can see a
/// wedged worker (see `runtime`). Read in debug builds only: a release
/// build never looks at the variable.
pub const FAULT_STALL_WORKER_ENV: &str = "RINGCACHE_FAULT_STALL_WORKER";

/// `RINGCACHE_*` variables that are not a key's: the log level, the
/// configuration file, and the debug builds' fault switch.
const ENV_OTHERS: &[&str] = &[
    crate::logging::LOG_ENV,
    "RINGCACHE_CONFIG",
    FAULT_STALL_WORKER_ENV,
];

/// Of the environment variables `names`, those that start with
/// `RINGCACHE_` but name no key, alias or other known setting: most likely
/// a typo, which would otherwise be ignored without a word.
pub fn unknown_env_vars(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut unknown: Vec<String> = names
        .filter(|n| n.starts_with("RINGCACHE_"))
        .filter(|n| !ENV_OTHERS.contains(&n.as_str()))
        .filter(|n| !ENV_ALIASES.iter().any(|(alias, _)| alias == n))
        .filter(|n| !OPTIONS.iter().any(|o| env_name(o.key) == *n))
        .collect();
    unknown.sort();
    unknown
}

/// Warn once about each [`unknown_env_vars`] of this process.
pub fn warn_unknown_env_vars() {
    for name in unknown_env_vars(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
        log::warn!("environment variable {name} names no configuration key: ignored");
    }
}

/// The environment variable of a key: `limits.head_bytes_max` →
/// `RINGCACHE_LIMITS_HEAD_BYTES_MAX`.
pub fn env_name(key: &str) -> String {
    let mut name = String::from("RINGCACHE_");
    name.extend(key.chars().map(|c| {
        if c == '.' {
            '_'
        } else {
            c.to_ascii_uppercase()
        }
    }));
    name
}

/// The descriptor of `key`.
pub fn option(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// Where a key's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(std::path::PathBuf),
    Env(String),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

/// A value as given: from the TOML file, or as text (environment, flag).
enum Given {
    Toml(toml::Value),
    Text(String),
}

/// The value each key was given, checked and in the file's syntax, and
/// where it came from; a key not listed has its default.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    given: std::collections::BTreeMap<&'static str, (toml::Value, Source)>,
}

impl Provenance {
    /// Where `key`'s value came from.
    pub fn source(&self, key: &str) -> Source {
        self.given
            .get(key)
            .map_or(Source::Default, |(_, s)| s.clone())
    }

    /// File, then environment, then flags: each later one wins.
    fn collect(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut p = Provenance::default();
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("config {}: {e}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))?;
            let source = Source::File(path.clone());
            for (key, value) in flatten(table) {
                let spec = option(&key).ok_or_else(|| unknown_key(&key, &source))?;
                p.give(spec, Given::Toml(value), &source)?;
            }
        }
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        for spec in OPTIONS {
            let name = env_name(spec.key);
            let found = env(&name).map(|v| (name, v)).or_else(|| {
                ENV_ALIASES
                    .iter()
                    .filter(|(_, key)| *key == spec.key)
                    .find_map(|(alias, _)| env(alias).map(|v| (alias.to_string(), v)))
            });
            if let Some((name, value)) = found {
                p.give(spec, Given::Text(value), &Source::Env(name))?;
            }
        }
        for (key, value) in args.flag_values() {
            let spec = option(key).expect("every named flag has its key");
            p.give(spec, Given::Text(value), &Source::Flag)?;
        }
        for set in &args.set {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| format!("--set {set:?}: expected KEY=VALUE"))?;
            let key = key.trim();
            let spec = option(key).ok_or_else(|| unknown_key(key, &Source::Flag))?;
            p.give(spec, Given::Text(value.trim().to_string()), &Source::Flag)?;
        }
        // `--access-log PATH` also turns a log that is off (by default or
        // by any source) on, in full mode.
        if args.access_log.as_deref().is_some_and(|path| path != "off") {
            let off = p
                .given
                .get("access_log.mode")
                .map_or(true, |(v, _)| v.as_str() == Some("off"));
            if off {
                let spec = option("access_log.mode").expect("access_log.mode is a key");
                p.give(spec, Given::Text("full".to_string()), &Source::Flag)?;
            }
        }
        Ok(p)
    }

    fn give(&mut self, spec: &'static OptionSpec, v: Given, source: &Source) -> Result<(), String> {
        let value = check(spec, v)
            .map_err(|(written, why)| format!("{} = {written}: {why} ({source})", spec.key))?;
        self.given.insert(spec.key, (value, source.clone()));
        Ok(())
    }

    /// The given values in the file's shape, for the per-table parsers.
    fn to_file(&self) -> Result<FileConfig, String> {
        let mut root = toml::Table::new();
        for (key, (value, _)) in &self.given {
            match key.split_once('.') {
                Some((table, k)) => {
                    let t = root
                        .entry(table)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(t) = t {
                        t.insert(k.to_string(), value.clone());
                    }
                }
                None => {
                    root.insert(key.to_string(), value.clone());
                }
            }
        }
        toml::Value::Table(root)
            .try_into()
            .map_err(|e| format!("config: {e}"))
    }
}

/// `table.key = value` pairs of a parsed file; `admin = "ADDR"` is `admin.listen`.
fn flatten(table: toml::Table) -> Vec<(String, toml::Value)> {
    let is_table = |name: &str| {
        OPTIONS
            .iter()
            .any(|o| o.key.split_once('.').is_some_and(|(t, _)| t == name))
    };
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(t) if is_table(&key) => {
                out.extend(t.into_iter().map(|(k, v)| (format!("{key}.{k}"), v)));
            }
            toml::Value::String(_) if key == "admin" => out.push(("admin.listen".into(), value)),
            value => out.push((key, value)),
        }
    }
    out
}

/// `unknown key "x" (source)`, with the closest known key when one is close.
fn unknown_key(key: &str, source: &Source) -> String {
    let mut msg = format!("unknown key {key:?} ({source})");
    if let Some(near) = closest_key(key) {
        msg.push_str(&format!("; did you mean {near:?}?"));
    }
    msg
}

/// The known key of which `key` is the last part or the start, else the
/// nearest in edits.
fn closest_key(key: &str) -> Option<&'static str> {
    if let Some(o) = OPTIONS.iter().find(|o| {
        o.key.rsplit_once('.').is_some_and(|(_, last)| last == key)
            || (key.len() >= 4 && o.key.starts_with(key))
    }) {
        return Some(o.key);
    }
    let (best, distance) = OPTIONS
        .iter()
        .map(|o| (o.key, edit_distance(key, o.key)))
        .min_by_key(|&(_, d)| d)?;
    (distance <= 3.max(key.len() / 5)).then_some(best)
}

/// Levenshtein distance, over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Check a given value against its key's kind and range; the value in the
/// file's syntax, or (the value as written, why it is refused).
fn check(spec: &OptionSpec, v: Given) -> Result<toml::Value, (String, String)> {
    let written = match &v {
        Given::Toml(value) => value.to_string(),
        Given::Text(s) => format!("{s:?}"),
    };
    let refuse = |why: String| (written.clone(), why);
    let text = match &v {
        Given::Toml(toml::Value::String(s)) | Given::Text(s) => Some(s.as_str()),
        _ => None,
    };
    let in_range = |n: u64| match spec.range {
        Some((lo, hi)) if n < lo || n > hi => Err(refuse(range_text(spec.kind, lo, hi))),
        _ => Ok(()),
    };
    match spec.kind {
        Kind::Count => {
            let n = match (&v, text) {
                (Given::Toml(toml::Value::Integer(n)), _) => u64::try_from(*n).ok(),
                (_, Some(s)) => s.trim().parse::<u64>().ok(),
                _ => None,
            }
            .ok_or_else(|| refuse("must be a whole number".into()))?;
            in_range(n)?;
            let n = i64::try_from(n).map_err(|_| refuse("too large".into()))?;
            Ok(toml::Value::Integer(n))
        }
        Kind::Bool => match (&v, text.map(|s| s.trim().to_ascii_lowercase())) {
            (Given::Toml(toml::Value::Boolean(b)), _) => Ok(toml::Value::Boolean(*b)),
            (Given::Text(_), Some(s)) if s == "true" || s == "false" => {
                Ok(toml::Value::Boolean(s == "true"))
            }
            _ => Err(refuse("must be true or false".into())),
        },
        Kind::Size => {
            let s = match (&v, text) {
                (Given::Toml(toml::Value::Integer(n)), _) if *n >= 0 => n.to_string(),
                (_, Some(s)) => s.trim().to_string(),
                _ => String::new(),
            };
            let n = parse_size(&s).map_err(|_| {
                refuse("must be a size: a number and B, KiB, MiB, GiB (or KB, MB, GB)".into())
            })?;
            in_range(n)?;
            Ok(toml::Value::String(s))
        }
        Kind::Duration => {
            let s = text.unwrap_or("").trim().to_string();
            let d = parse_duration(&s)
                .map_err(|_| refuse("must be a duration: a number and ms, s, m or h".into()))?;
            in_range(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))?;
            Ok(toml::Value::String(s))
        }
        Kind::Text => text
            .map(|s| toml::Value::String(s.to_string()))
            .ok_or_else(|| refuse("must be a string".into())),
        Kind::Choice(words) => {
            let s = text.map(|s| s.trim().to_ascii_lowercase());
            match s {
                Some(s) if words.contains(&s.as_str()) => Ok(toml::Value::String(s)),
                _ => Err(refuse(format!("must be one of {}", words.join(", ")))),
            }
        }
        Kind::List => match (&v, text) {
            (Given::Toml(toml::Value::Array(items)), _)
                if items.iter().all(toml::Value::is_str) =>
            {
                Ok(toml::Value::Array(items.clone()))
            }
            (Given::Text(_), Some(s)) => Ok(toml::Value::Array(
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| toml::Value::String(p.to_string()))
                    .collect(),
            )),
            _ => Err(refuse("must be a list of strings".into())),
        },
        Kind::Percent => {
            let n = match (&v, text) {
                (Given::Toml(toml::Value::Integer(n)), _) => u64::try_from(*n).ok(),
                (_, Some(s)) => {
                    let s = s.trim();
                    s.strip_suffix('%').unwrap_or(s).trim_end().parse().ok()
                }
                _ => None,
            }
            .ok_or_else(|| refuse("must be a percentage (10% or 10)".into()))?;
            in_range(n)?;
            Ok(toml::Value::String(format!("{n}%")))
        }
    }
}

/// A value of `kind` in words: `16KiB`, `10ms`, `256 bytes`, `10%`.
fn unit_text(kind: Kind, n: u64) -> String {
    match kind {
        Kind::Size if n < 1024 || n % 1024 != 0 => format!("{n} bytes"),
        Kind::Size => format_size(n),
        Kind::Duration => format_duration(Duration::from_millis(n)),
        Kind::Percent => format!("{n}%"),
        _ => n.to_string(),
    }
}

/// `must be between 256 bytes and 1MiB`, `must be at least 10ms`.
fn range_text(kind: Kind, lo: u64, hi: u64) -> String {
    if hi == NO_MAX {
        format!("must be at least {}", unit_text(kind, lo))
    } else {
        format!(
            "must be between {} and {}",
            unit_text(kind, lo),
            unit_text(kind, hi)
        )
    }
}

/// A shown value in the file's syntax: strings quoted, numbers, booleans
/// and lists as they are.
fn literal(kind: Kind, text: &str) -> String {
    match kind {
        Kind::Count | Kind::Bool | Kind::List => text.to_string(),
        _ => format!("{text:?}"),
    }
}

/// A key's value as `check-config` and the reload line print it.
fn shown(spec: &OptionSpec, value: Option<&str>) -> String {
    match (spec.secret, value) {
        (true, Some(_)) => "(set)".to_string(),
        (_, None) => "(unset)".to_string(),
        (false, Some(v)) => literal(spec.kind, v),
    }
}

impl Config {
    /// The effective configuration, one line per key with the source of
    /// its value (`check-config`).
    pub fn describe(&self, given: &Provenance) -> String {
        let mut out = String::new();
        for spec in OPTIONS {
            let line = format!(
                "{} = {}",
                spec.key,
                shown(spec, (spec.show)(self).as_deref())
            );
            out.push_str(&format!("{line:<56} # {}\n", given.source(spec.key)));
        }
        out
    }

    /// What a SIGHUP reload does with each key that differs between `self`
    /// (running) and `new`: `(key old → new, applied now)`. The values of
    /// the keys applied now are copied into `into`.
    pub fn changes(&self, new: &Config, into: &mut Config) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for spec in OPTIONS {
            let (old, fresh) = ((spec.show)(self), (spec.show)(new));
            if old == fresh {
                continue;
            }
            let text = match spec.secret {
                true => format!(
                    "{} ({} → {}, changed)",
                    spec.key,
                    if old.is_some() { "set" } else { "unset" },
                    if fresh.is_some() { "set" } else { "unset" }
                ),
                false => format!(
                    "{} {} → {}",
                    spec.key,
                    old.as_deref().unwrap_or("unset"),
                    fresh.as_deref().unwrap_or("unset")
                ),
            };
            match spec.apply {
                Apply::Reload(copy) => {
                    copy(into, new);
                    out.push((text, true));
                }
                Apply::Restart => out.push((text, false)),
            }
        }
        out
    }
}

/// Markers around the generated reference in README.md.
pub const REFERENCE_BEGIN: &str =
    "<!-- config-reference: generated by `ringcache config-reference`, do not edit -->";
pub const REFERENCE_END: &str = "<!-- end of config-reference -->";

/// The configuration reference in Markdown, one table per TOML table
/// (`ringcache config-reference`; README.md holds it between the markers).
pub fn reference() -> String {
    let mut defaults = Config::load_traced(&ServeArgs::default(), &|_| None)
        .expect("the defaults are valid")
        .0;
    defaults.bus =
        Some(BusConfig::new("redis://127.0.0.1:6379/ringcache", "node").expect("a valid bus URL"));
    if let Some(bus) = defaults.bus.as_mut() {
        bus.state_dir = None;
    }
    let mut out = String::new();
    out.push_str(REFERENCE_BEGIN);
    out.push_str(
        "\n\nEvery key can be set in the TOML file (`--config`), by its environment variable \
         (`RINGCACHE_` and the key in capitals, dots as underscores: \
         `limits.head_bytes_max` is `RINGCACHE_LIMITS_HEAD_BYTES_MAX`), \
         and on the command line with `--set KEY=VALUE` (repeatable) or its named flag; \
         a flag wins over the environment, which wins over the file, which wins over the \
         default. `ringcache check-config` (same flags and environment as `serve`) prints \
         every key's effective value and where it came from. Sizes take `B`, `KiB`, `MiB`, \
         `GiB` (or `KB`, `MB`, `GB`, or plain bytes); durations `ms`, `s`, `m`, `h`. \
         *On SIGHUP*: `applied` keys change while serving, `restart` keys are reported and \
         keep their running value until the next start.\n",
    );
    let mut table = None;
    for spec in OPTIONS {
        let this = spec.key.split_once('.').map(|(t, _)| t);
        if table != Some(this) {
            table = Some(this);
            match this {
                None => out.push_str("\nTop-level keys:\n"),
                Some(t) => out.push_str(&format!("\n`[{t}]`:\n")),
            }
            out.push_str(
                "\n| key | default | allowed | environment | flag | on SIGHUP | meaning |\n",
            );
            out.push_str("|---|---|---|---|---|---|---|\n");
        }
        let default = match spec.default_text {
            Some(words) => words.to_string(),
            None => format!(
                "`{}`",
                literal(spec.kind, &(spec.show)(&defaults).unwrap_or_default())
            ),
        };
        let allowed = match (spec.kind, spec.range) {
            (kind, Some((lo, hi))) => {
                let what = range_text(kind, lo, hi);
                what.strip_prefix("must be ").unwrap_or(&what).to_string()
            }
            (Kind::Choice(words), None) => words
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(", "),
            (Kind::Size, None) => "a size".into(),
            (Kind::Duration, None) => "a duration".into(),
            (Kind::Count, None) => "a whole number".into(),
            (Kind::Bool, None) => "`true`, `false`".into(),
            (Kind::List, None) => "a list of strings".into(),
            (Kind::Text, None) | (Kind::Percent, None) => "text".into(),
        };
        let mut env = format!("`{}`", env_name(spec.key));
        for (alias, _) in ENV_ALIASES.iter().filter(|(_, k)| *k == spec.key) {
            env.push_str(&format!(" (or `{alias}`)"));
        }
        let flag = spec.flag.map_or("".into(), |f| format!("`{f}`"));
        let apply = match spec.apply {
            Apply::Reload(_) => "applied",
            Apply::Restart => "restart",
        };
        out.push_str(&format!(
            "| `{}` | {default} | {allowed} | {env} | {flag} | {apply} | {} |\n",
            spec.key,
            spec.doc.replace('|', "\\|")
        ));
    }
    out.push('\n');
    out.push_str(REFERENCE_END);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn unknown_environment_variables_are_named() {
        let names = [
            "RINGCACHE_LIMITS_HEAD_BYTES_MAX",
            "RINGCACHE_LIMITS_HEAD_BYTE_MAX",
            "RINGCACHE_LOG",
            "RINGCACHE_CONFIG",
            "RINGCACHE_ADMIN",
            "RINGCACHE_MEMORY",
            "RINGCACHE_MEMROY",
            "PATH",
        ];
        assert_eq!(
            unknown_env_vars(names.iter().map(|n| n.to_string())),
            ["RINGCACHE_LIMITS_HEAD_BYTE_MAX", "RINGCACHE_MEMROY"]
        );
    }

    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("16KiB").unwrap(), 16 << 10);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("30").is_err());
        assert_eq!(format_size(256 << 20), "256MiB");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn networks() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(
            n.contains("::ffff:10.0.0.1".parse().unwrap()),
            "IPv4-mapped"
        );
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert_eq!(Cidr::parse("::1").unwrap().prefix_len, 128);
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
    }

    #[test]
    fn invalidation_table_and_admin_token() {
        let dir = std::env::temp_dir().join(format!("ringcache-inv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        let c = load("memory = \"64MiB\"\n").unwrap();
        assert_eq!(c.invalidation.admin_token, None);
        assert_eq!(c.invalidation.tag_index_bytes_max, 4 << 20);
        assert_eq!(c.store_bytes(), 60 << 20);
        assert!(!c.invalidation.purge_method);
        let c = load(
            "admin = { listen = \"127.0.0.1:9999\", token = \"0123456789abcdef\" }\n[invalidation]\ntag_header = \"Cache-Tag\"\npurge_method = true\npurge_allow = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        assert_eq!(c.admin.port(), 9999);
        assert_eq!(
            c.invalidation.admin_token.as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(c.invalidation.tag_header, "cache-tag");
        assert_eq!(
            c.invalidation.purge_allow,
            [Cidr::parse("10.0.0.0/8").unwrap()]
        );
        // The printed configuration parses back (the token is not printed).
        let again = load(&c.to_string()).unwrap();
        assert_eq!(again.invalidation.purge_allow, c.invalidation.purge_allow);
        assert_eq!(again.invalidation.admin_token, None);
        let err = load("[admin]\ntoken = \"0123456789abcdef\"\nmemory = \"1MiB\"\n").unwrap_err();
        assert!(err.contains("admin"), "{err}");
        let err = load("[admin]\ntoken = \"short\"\n").unwrap_err();
        assert!(err.contains("admin.token"), "{err}");
        let err = load("[invalidation]\ntag_header = \"Content-Length\"\n").unwrap_err();
        assert!(err.contains("invalidation.tag_header"), "{err}");
        let err = load("[invalidation]\npurge_allow = [\"nowhere\"]\n").unwrap_err();
        assert!(err.contains("invalidation.purge_allow"), "{err}");
        let err = load("[invalidation]\ntag_index_bytes_max = \"200MiB\"\n").unwrap_err();
        assert!(err.contains("invalidation.tag_index_bytes_max"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn refresh_limits_and_admin_signing_keys() {
        let dir = std::env::temp_dir().join(format!("ringcache-refresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        let c = load("").unwrap();
        let inv = &c.invalidation;
        assert_eq!(inv.refresh_queue_max, REFRESH_QUEUE_MAX_DEFAULT);
        assert_eq!(inv.refresh_rate, REFRESH_RATE_DEFAULT);
        assert_eq!(inv.refresh_concurrency_max, REFRESH_CONCURRENCY_MAX_DEFAULT);
        assert_eq!(inv.admin_hmac_window, ADMIN_HMAC_WINDOW_DEFAULT);
        let c = load(
            "[admin]\nhmac_key = \"0123456789abcdef0123456789abcdef\"\nhmac_window = \"1m\"\n[invalidation]\nrefresh_queue_max = 10\nrefresh_rate = 5\nrefresh_concurrency_max = 2\n",
        )
        .unwrap();
        let inv = &c.invalidation;
        assert_eq!(
            inv.admin_hmac_key.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(inv.admin_hmac_window, Duration::from_secs(60));
        assert_eq!(
            (
                inv.refresh_queue_max,
                inv.refresh_rate,
                inv.refresh_concurrency_max
            ),
            (10, 5, 2)
        );
        // Printed without the key; the limits parse back.
        let text = c.to_string();
        assert!(!text.contains("0123456789abcdef"), "{text}");
        let again = load(&text).unwrap();
        assert_eq!(again.invalidation.refresh_rate, 5);
        for (bad, key) in [
            ("[admin]\nhmac_key = \"short\"\n", "admin.hmac_key"),
            ("[admin]\nhmac_window = \"1s\"\n", "admin.hmac_window"),
            (
                "[invalidation]\nrefresh_queue_max = 0\n",
                "invalidation.refresh_queue_max",
            ),
            (
                "[invalidation]\nrefresh_rate = 0\n",
                "invalidation.refresh_rate",
            ),
            (
                "[invalidation]\nrefresh_concurrency_max = 5000\n",
                "invalidation.refresh_concurrency_max",
            ),
        ] {
            let err = load(bad).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn origin_urls() {
        let o = Origin::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(o.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(o.authority, "127.0.0.1:8081");
        assert_eq!(Origin::parse("http://127.0.0.1/").unwrap().addr.port(), 80);
        assert!(Origin::parse("https://example.com").is_err());
        assert!(Origin::parse("http://127.0.0.1:1/api").is_err());
    }

    #[test]
    fn refresh_ahead_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("ringcache-cfg-ahead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let load = |text: &str, flag: Option<&str>| {
            std::fs::write(&path, text).unwrap();
            Config::load(&ServeArgs {
                config: Some(path.clone()),
                refresh_ahead: flag.map(str::to_string),
                ..Default::default()
            })
        };
        assert_eq!(load("", None).unwrap().cache.refresh_ahead_percent, 0);
        let c = load("[cache]\nrefresh_ahead = \"10%\"\n", None).unwrap();
        assert_eq!(c.cache.refresh_ahead_percent, 10);
        // The printed configuration parses back.
        assert_eq!(load(&c.to_string(), None).unwrap().cache, c.cache);
        let c = load("[cache]\nrefresh_ahead = 25\n", None).unwrap();
        assert_eq!(c.cache.refresh_ahead_percent, 25);
        let c = load("[cache]\nrefresh_ahead = 25\n", Some("5%")).unwrap();
        assert_eq!(c.cache.refresh_ahead_percent, 5, "the flag wins");
        for bad in ["51", "-1", "\"x%\"", "\"60%\""] {
            let err = load(&format!("[cache]\nrefresh_ahead = {bad}\n"), None).unwrap_err();
            assert!(err.contains("cache.refresh_ahead"), "{err}");
        }
        let err = load("", Some("abc")).unwrap_err();
        assert!(err.contains("cache.refresh_ahead = \"abc\""), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn origin_connections_total_max_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("ringcache-cfg-total-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::load(&ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        assert_eq!(
            Limits::default().origin_connections_total_max,
            1024,
            "the default the README and systemd/ringcache.toml state"
        );
        let c = load("[limits]\norigin_connections_total_max = 8\n").unwrap();
        assert_eq!(c.limits.origin_connections_total_max, 8);
        let err = load("[limits]\norigin_connections_total_max = 0\n").unwrap_err();
        assert!(err.contains("limits.origin_connections_total_max"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let dir = std::env::temp_dir().join(format!("ringcache-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nworkers = 3\n[limits]\nhead_bytes_max = \"8KiB\"\nheader_timeout = \"2s\"\n\
             [cache]\nkey_ignore_params = [\"utm_*\"]\nset_cookie = \"strip\"\ndefault_ttl = \"1m\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            workers: Some(1),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.workers, 1);
        assert_eq!(c.limits.head_bytes_max, 8 << 10);
        assert_eq!(c.limits.header_timeout, Duration::from_secs(2));
        // The printed configuration parses back to the same values.
        std::fs::write(&path, c.to_string()).unwrap();
        let again = Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(again.limits, c.limits);
        assert_eq!(again.cache, c.cache);
        assert_eq!(c.cache.set_cookie, SetCookieMode::Strip);
        assert_eq!(c.cache.default_ttl, Duration::from_secs(60));
        assert_eq!(c.cache.key_ignore_params, ["utm_*"]);
        assert_eq!(again.workers, 1);

        std::fs::write(&path, "[limits]\nhead_bytes_maxx = 3\n").unwrap();
        let err = Config::load(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("head_bytes_maxx"), "{err}");

        std::fs::write(&path, "[limits]\nheader_timeout = \"soon\"\n").unwrap();
        let err = Config::load(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("limits.header_timeout"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bus_table_loads_validates_and_prints_back() {
        let dir = std::env::temp_dir().join(format!("ringcache-cfg-bus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "store = \"/var/lib/ringcache/store\"\n[bus]\nurl = \"redis://127.0.0.1:6379/inv\"\nbatch_entries_max = 4\nblock_timeout = \"250ms\"\n",
        )
        .unwrap();
        let c = Config::load(&ServeArgs {
            config: Some(path.clone()),
            admin: Some("127.0.0.1:9181".into()),
            ..Default::default()
        })
        .unwrap();
        let bus = c.bus.clone().unwrap();
        assert_eq!(bus.redis_addr, "127.0.0.1:6379");
        assert_eq!(bus.stream, "inv");
        assert!(bus.node.ends_with(":9181"), "{}", bus.node);
        assert_eq!(bus.batch_entries_max, 4);
        assert_eq!(bus.block_timeout, Duration::from_millis(250));
        assert_eq!(
            bus.state_file().unwrap(),
            Path::new("/var/lib/ringcache/store.bus-inv.state")
        );
        std::fs::write(&path, c.to_string()).unwrap();
        let again = Config::load(&ServeArgs {
            config: Some(path.clone()),
            bus_node: Some("n1".into()),
            ..Default::default()
        })
        .unwrap();
        let again = again.bus.unwrap();
        assert_eq!(again.node, "n1");
        assert_eq!(
            BusConfig {
                node: bus.node.clone(),
                ..again
            },
            bus
        );

        for (text, key) in [
            ("[bus]\nurl = \"http://x:1/s\"\n", "bus.url"),
            ("[bus]\nurl = \"redis://x/s\"\n", "bus.url"),
            ("[bus]\nurl = \"redis://x:1/\"\n", "bus.url"),
            (
                "[bus]\nurl = \"redis://x:1/s\"\nnode = \"a b\"\n",
                "bus.node",
            ),
            (
                "[bus]\nurl = \"redis://x:1/s\"\nbatch_entries_max = 0\n",
                "bus.batch_entries_max",
            ),
            (
                "[bus]\nurl = \"redis://x:1/s\"\nreply_bytes_max = \"1MiB\"\n",
                "bus.reply_bytes_max",
            ),
            (
                "[bus]\nurl = \"redis://x:1/s\"\nheartbeat_ttl = \"500ms\"\n",
                "bus.heartbeat_ttl",
            ),
            ("[bus]\nurl = \"redis://x:1/s\"\nsoon = 1\n", "soon"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(&ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.contains(key), "{text:?}: {err}");
        }
        // The flag alone turns the bus on; no store file: no resume point.
        let c = Config::load(&ServeArgs {
            bus: Some("redis://127.0.0.1:6379/s".into()),
            ..Default::default()
        })
        .unwrap();
        let mut bus = c.bus.unwrap();
        assert_eq!(bus.state_file(), None);
        bus.state_dir = Some("/srv/n1".into());
        assert_eq!(
            bus.state_file().unwrap(),
            Path::new("/srv/n1/ringcache-bus-s.state")
        );
        std::fs::remove_dir_all(dir).ok();
    }

    /// Load with `file` as the TOML file, `env` as the environment and
    /// `args` as the flags.
    fn load_with(
        file: &str,
        env: &[(&str, &str)],
        mut args: ServeArgs,
    ) -> Result<(Config, Provenance), String> {
        let dir = std::env::temp_dir().join(format!(
            "ringcache-cfg-src-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, file).unwrap();
        args.config = Some(path);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = Config::load_traced(&args, &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        });
        std::fs::remove_dir_all(dir).ok();
        r
    }

    fn set(pairs: &[&str]) -> ServeArgs {
        ServeArgs {
            set: pairs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flag_over_env_over_file_over_default() {
        // A size, a duration, a string and a bool, each at every level.
        let keys = [
            ("limits.head_bytes_max", ["4KiB", "8KiB", "2KiB"], "16KiB"),
            ("limits.keepalive_timeout", ["5s", "7s", "9s"], "1m"),
            (
                "invalidation.tag_header",
                ["a-tag", "b-tag", "c-tag"],
                "surrogate-key",
            ),
            ("cache.key_sort_query", ["true", "false", "true"], "false"),
        ];
        let file = "[limits]\nhead_bytes_max = \"4KiB\"\nkeepalive_timeout = \"5s\"\n\
                    [invalidation]\ntag_header = \"a-tag\"\n[cache]\nkey_sort_query = true\n";
        let show = |c: &Config, key: &str| (option(key).unwrap().show)(c).unwrap();
        let env: Vec<(String, &str)> = keys.iter().map(|(k, v, _)| (env_name(k), v[1])).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let flags: Vec<String> = keys
            .iter()
            .map(|(k, v, _)| format!("{k}={}", v[2]))
            .collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        for (level, (file, env, flags)) in [
            ("", &[][..], &[][..]),
            (file, &[][..], &[][..]),
            (file, &env[..], &[][..]),
            (file, &env[..], &flags[..]),
        ]
        .into_iter()
        .enumerate()
        {
            let (c, given) = load_with(file, env, set(flags)).unwrap();
            for (key, values, default) in keys {
                let (want, source) = match level {
                    0 => (default, "default".to_string()),
                    1 => (values[0], "file ".to_string()),
                    2 => (values[1], format!("env {}", env_name(key))),
                    _ => (values[2], "flag".to_string()),
                };
                assert_eq!(show(&c, key), want, "{key} at level {level}");
                let got = given.source(key).to_string();
                assert!(got.starts_with(&source), "{key}: {got} is not {source}");
            }
        }
        // Named flags and `--set` are both flags; `--set` is read last.
        let args = ServeArgs {
            memory: Some("64MiB".into()),
            ..set(&["memory=32MiB"])
        };
        let (c, given) = load_with(
            "memory = \"128MiB\"\n",
            &[("RINGCACHE_MEMORY", "96MiB")],
            args,
        )
        .unwrap();
        assert_eq!(c.memory_bytes, 32 << 20);
        assert_eq!(given.source("memory"), Source::Flag);
        // The older environment names still work; the systematic one wins.
        let (c, given) = load_with(
            "",
            &[("RINGCACHE_REFRESH_AHEAD", "5%")],
            ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(c.cache.refresh_ahead_percent, 5);
        assert_eq!(
            given.source("cache.refresh_ahead"),
            Source::Env("RINGCACHE_REFRESH_AHEAD".into())
        );
        let (c, _) = load_with(
            "",
            &[
                ("RINGCACHE_REFRESH_AHEAD", "5%"),
                ("RINGCACHE_CACHE_REFRESH_AHEAD", "7"),
            ],
            ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(c.cache.refresh_ahead_percent, 7);
        // The admin token from the environment, never printed.
        let (c, given) = load_with(
            "admin = \"127.0.0.1:9999\"\n",
            &[("RINGCACHE_ADMIN_TOKEN", "0123456789abcdef")],
            ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(
            c.invalidation.admin_token.as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(c.admin.port(), 9999);
        let text = c.describe(&given);
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(text.contains("admin.token = (set)"), "{text}");
        // A list from the environment: comma-separated.
        let (c, _) = load_with(
            "",
            &[("RINGCACHE_CACHE_KEY_IGNORE_PARAMS", "utm_*, fbclid")],
            ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(c.cache.key_ignore_params, ["utm_*", "fbclid"]);
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_range() {
        let err = |file: &str, env: &[(&str, &str)], flags: &[&str]| {
            load_with(file, env, set(flags)).unwrap_err()
        };
        // Out of range, from each source.
        let e = err("[limits]\nhead_bytes_max = \"128\"\n", &[], &[]);
        assert!(
            e.starts_with(
                "limits.head_bytes_max = \"128\": must be between 256 bytes and 1MiB (file "
            ),
            "{e}"
        );
        let e = err("", &[("RINGCACHE_LIMITS_HEAD_BYTES_MAX", "2MiB")], &[]);
        assert_eq!(
            e,
            "limits.head_bytes_max = \"2MiB\": must be between 256 bytes and 1MiB (env RINGCACHE_LIMITS_HEAD_BYTES_MAX)"
        );
        let e = err("", &[], &["limits.header_timeout=5ms"]);
        assert_eq!(
            e,
            "limits.header_timeout = \"5ms\": must be at least 10ms (flag)"
        );
        let e = err("", &[], &["cache.refresh_ahead=60%"]);
        assert_eq!(
            e,
            "cache.refresh_ahead = \"60%\": must be between 0% and 50% (flag)"
        );
        // Wrong unit.
        let e = err("[limits]\nbody_bytes_max = \"8 parsecs\"\n", &[], &[]);
        assert!(
            e.starts_with("limits.body_bytes_max = \"8 parsecs\": must be a size"),
            "{e}"
        );
        let e = err("[limits]\nsend_timeout = \"60\"\n", &[], &[]);
        assert!(
            e.starts_with("limits.send_timeout = \"60\": must be a duration"),
            "{e}"
        );
        // Wrong type.
        let e = err("[limits]\nconnections_max = \"lots\"\n", &[], &[]);
        assert!(
            e.starts_with("limits.connections_max = \"lots\": must be a whole number"),
            "{e}"
        );
        let e = err("[cache]\nheuristic = 1\n", &[], &[]);
        assert!(
            e.starts_with("cache.heuristic = 1: must be true or false"),
            "{e}"
        );
        let e = err("", &[], &["io=fast"]);
        assert_eq!(e, "io = \"fast\": must be one of auto, uring, epoll (flag)");
        let e = err("[cache]\nkey_ignore_params = \"utm_*\"\n", &[], &[]);
        assert!(
            e.starts_with("cache.key_ignore_params = \"utm_*\": must be a list"),
            "{e}"
        );
        // Unknown keys, with the closest known key.
        let e = err("[limits]\nhead_bytes_maxx = 3\n", &[], &[]);
        assert!(
            e.starts_with("unknown key \"limits.head_bytes_maxx\" (file ")
                && e.ends_with("did you mean \"limits.head_bytes_max\"?"),
            "{e}"
        );
        let e = err("", &[], &["keepalive_timeout=5s"]);
        assert_eq!(
            e,
            "unknown key \"keepalive_timeout\" (flag); did you mean \"limits.keepalive_timeout\"?"
        );
        let e = err("[nowhere]\nx = 1\n", &[], &[]);
        assert!(e.starts_with("unknown key \"nowhere\""), "{e}");
        let e = err("", &[], &["limits.head_bytes_max"]);
        assert!(e.contains("expected KEY=VALUE"), "{e}");
    }

    #[test]
    fn every_key_is_described_and_its_default_is_in_range() {
        let (defaults, _) = Config::load_traced(&ServeArgs::default(), &|_| None).unwrap();
        let mut seen = std::collections::HashSet::new();
        for spec in OPTIONS {
            assert!(seen.insert(spec.key), "{} twice", spec.key);
            assert!(!spec.doc.is_empty(), "{}", spec.key);
            if let (Some((lo, hi)), Some(v)) = (spec.range, (spec.show)(&defaults)) {
                let n = match spec.kind {
                    Kind::Size => parse_size(&v).unwrap(),
                    Kind::Duration => parse_duration(&v).unwrap().as_millis() as u64,
                    Kind::Percent => v.trim_end_matches('%').parse().unwrap(),
                    _ => v.parse().unwrap(),
                };
                assert!(
                    (lo..=hi).contains(&n),
                    "{}: default {v} out of range",
                    spec.key
                );
                // Just out of range is refused with the key in the message.
                let mut out = vec![];
                if lo > 0 {
                    out.push(lo - 1);
                }
                if hi < NO_MAX {
                    out.push(hi + 1);
                }
                for n in out {
                    let text = match spec.kind {
                        Kind::Size => format!("{n}"),
                        Kind::Duration => format!("{n}ms"),
                        _ => format!("{n}"),
                    };
                    let e =
                        Config::load_traced(&set(&[&format!("{}={text}", spec.key)]), &|_| None)
                            .unwrap_err();
                    assert!(e.starts_with(&format!("{} = ", spec.key)), "{e}");
                }
            }
        }
        // Each named flag sets the key its descriptor names, and only those keys have one.
        let all = ServeArgs {
            listen: Some("127.0.0.1:1".into()),
            origin: Some("http://127.0.0.1:2".into()),
            admin: Some("127.0.0.1:3".into()),
            workers: Some(1),
            io: Some(IoMode::Epoll),
            memory: Some("64MiB".into()),
            store: Some("/tmp/x".into()),
            store_reset: true,
            bus: Some("redis://127.0.0.1:4/s".into()),
            bus_node: Some("n".into()),
            refresh_ahead: Some("5".into()),
            access_log: Some("/tmp/a.log".into()),
            access_log_format: Some("combined".into()),
            ..Default::default()
        };
        let mut by_flag: Vec<&str> = all.flag_values().iter().map(|(k, _)| *k).collect();
        let mut described: Vec<&str> = OPTIONS
            .iter()
            .filter(|o| o.flag.is_some())
            .map(|o| o.key)
            .collect();
        by_flag.sort_unstable();
        described.sort_unstable();
        assert_eq!(by_flag, described);
        assert_eq!(
            env_name("limits.head_bytes_max"),
            "RINGCACHE_LIMITS_HEAD_BYTES_MAX"
        );
        assert_eq!(env_name("admin.token"), ADMIN_TOKEN_ENV);
    }

    #[test]
    fn every_key_of_the_printed_file_is_described() {
        // The TOML that `Display` prints holds only described keys.
        let (c, _) = load_with("", &[], set(&["bus.url=redis://127.0.0.1:1/s"])).unwrap();
        let table: toml::Table = toml::from_str(&c.to_string()).unwrap();
        for (key, _) in flatten(table) {
            assert!(option(&key).is_some(), "{key} has no descriptor");
        }
    }
}
