//! Every tunable and limit of ringcache, with its unit in its name.
//!
//! Precedence: command-line flags > TOML file (`--config`) > the defaults
//! below. Sizes accept `64MiB`, `16KiB`, `1GiB` or plain bytes; durations
//! accept `500ms`, `30s`, `2m`, `1h`. A bad value fails at start with a
//! message naming the key. The configuration is parsed and validated once,
//! then copied into the workers; nothing reads it on the request path.

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
    /// Idle keep-alive origin connections one worker keeps.
    pub origin_idle_max: usize,
    /// Time an idle origin connection is kept.
    pub origin_idle_timeout: Duration,
    /// Requests waiting for a free origin connection on one worker (beyond: 503).
    pub origin_queue_max: usize,
    /// Largest origin response (head + body) ringcache relays (beyond: 502).
    pub origin_response_bytes_max: usize,
    /// Largest object stored in the cache; larger responses are relayed, not stored.
    pub object_bytes_max: usize,
    /// Requests of one worker waiting for another request's fetch of the same key.
    pub coalesce_waiters_max: usize,
    /// Time a request waits for another's fetch before it asks the origin itself.
    pub coalesce_wait_timeout: Duration,
    /// Time a key whose answer was not cacheable skips coalescing.
    pub hit_for_miss_ttl: Duration,
    /// Hit-for-miss marks one worker keeps.
    pub hit_for_miss_count_max: usize,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
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
            origin_idle_max: 128,
            origin_idle_timeout: Duration::from_secs(30),
            origin_queue_max: 4096,
            origin_response_bytes_max: 64 << 20,
            object_bytes_max: 8 << 20,
            coalesce_waiters_max: 4096,
            coalesce_wait_timeout: Duration::from_secs(10),
            hit_for_miss_ttl: Duration::from_secs(30),
            hit_for_miss_count_max: 65_536,
            shutdown_grace: Duration::from_secs(10),
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
    /// The store file (`None`: anonymous memory, nothing survives a restart).
    pub store_path: Option<std::path::PathBuf>,
    /// Rebuild a store file that is refused (other version or layout,
    /// damaged header) cold, instead of failing.
    pub store_reset: bool,
    pub limits: Limits,
    pub invalidation: Invalidation,
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

/// Values given on the command line; `None` means "not given".
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Traffic listener [default: 127.0.0.1:8080]
    #[arg(long, env = "RINGCACHE_LISTEN")]
    pub listen: Option<String>,
    /// Origin URL, http://host:port [default: the built-in demo origin]
    #[arg(long, env = "RINGCACHE_ORIGIN")]
    pub origin: Option<String>,
    /// Admin listener for /metrics and /healthz [default: 127.0.0.1:9180]
    #[arg(long, env = "RINGCACHE_ADMIN")]
    pub admin: Option<String>,
    /// Worker threads, one per core [default: the CPUs this process may run on]
    #[arg(long, env = "RINGCACHE_WORKERS")]
    pub workers: Option<usize>,
    /// I/O backend [default: auto]
    #[arg(long, value_enum, env = "RINGCACHE_IO")]
    pub io: Option<IoMode>,
    /// Cache memory cap, e.g. 256MiB [default: 256MiB]
    #[arg(long, env = "RINGCACHE_MEMORY")]
    pub memory: Option<String>,
    /// Store file: created, sized to --memory and reused, so restarts are warm
    /// [default: anonymous memory]
    #[arg(long, env = "RINGCACHE_STORE")]
    pub store: Option<std::path::PathBuf>,
    /// Rebuild a refused store file (other version or layout, damaged
    /// header) empty instead of failing
    #[arg(long)]
    pub store_reset: bool,
    /// TOML configuration file; flags override it
    #[arg(long, env = "RINGCACHE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
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
    store: Option<std::path::PathBuf>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    invalidation: FileInvalidation,
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
    origin_idle_max: Option<usize>,
    origin_idle_timeout: Option<String>,
    origin_queue_max: Option<usize>,
    origin_response_bytes_max: Option<String>,
    object_bytes_max: Option<String>,
    coalesce_waiters_max: Option<usize>,
    coalesce_wait_timeout: Option<String>,
    hit_for_miss_ttl: Option<String>,
    hit_for_miss_count_max: Option<usize>,
    shutdown_grace: Option<String>,
    recv_buffer_bytes: Option<String>,
    recv_buffers_count: Option<u16>,
    ring_entries: Option<u32>,
    bans_max: Option<usize>,
    admin_body_bytes_max: Option<String>,
}

impl Config {
    /// Merge flags over the file over defaults, then validate.
    pub fn load(args: &ServeArgs) -> Result<Config, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen_s = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| LISTEN_DEFAULT.to_string());
        let (file_admin, file_token) = match file.admin {
            Some(FileAdmin::Listen(s)) => (Some(s), None),
            Some(FileAdmin::Table(t)) => (t.listen, t.token),
            None => (None, None),
        };
        let admin_s = args
            .admin
            .clone()
            .or(file_admin)
            .unwrap_or_else(|| ADMIN_DEFAULT.to_string());
        let origin = match args.origin.clone().or(file.origin) {
            Some(url) => Some(Origin::parse(&url)?),
            None => None,
        };
        let workers = match args.workers.or(file.workers) {
            Some(n) => n,
            None => available_cpus(),
        };
        let memory_bytes = match args.memory.as_deref().or(file.memory.as_deref()) {
            Some(s) => parse_size(s).map_err(|e| format!("memory: {e}"))?,
            None => MEMORY_BYTES_DEFAULT,
        };
        let config = Config {
            listen: parse_addr("listen", &listen_s)?,
            origin,
            admin: parse_addr("admin", &admin_s)?,
            workers,
            io: args.io.or(file.io).unwrap_or(IoMode::Auto),
            memory_bytes,
            store_path: args.store.clone().or(file.store),
            store_reset: args.store_reset,
            limits: file.limits.apply(Limits::default())?,
            invalidation: file.invalidation.apply(file_token, memory_bytes)?,
        };
        config.validate()?;
        Ok(config)
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
            ("limits.coalesce_wait_timeout", l.coalesce_wait_timeout),
            ("limits.hit_for_miss_ttl", l.hit_for_miss_ttl),
        ] {
            check(
                d >= Duration::from_millis(10),
                &format!("{name}: must be at least 10ms"),
            )?;
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
        match &self.store_path {
            Some(p) => writeln!(f, "store = {:?}", p.display().to_string())?,
            None => writeln!(f, "# store: anonymous memory")?,
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
        writeln!(f, "origin_idle_max = {}", l.origin_idle_max)?;
        writeln!(
            f,
            "origin_idle_timeout = \"{}\"",
            format_duration(l.origin_idle_timeout)
        )?;
        writeln!(f, "origin_queue_max = {}", l.origin_queue_max)?;
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
        write!(f, "\n{}", self.invalidation)
    }
}

impl FileLimits {
    fn apply(self, mut l: Limits) -> Result<Limits, String> {
        fn size(key: &str, v: Option<String>, into: &mut usize) -> Result<(), String> {
            if let Some(s) = v {
                let n = parse_size(&s).map_err(|e| format!("limits.{key}: {e}"))?;
                *into = usize::try_from(n).map_err(|_| format!("limits.{key}: too large"))?;
            }
            Ok(())
        }
        fn dur(key: &str, v: Option<String>, into: &mut Duration) -> Result<(), String> {
            if let Some(s) = v {
                *into = parse_duration(&s).map_err(|e| format!("limits.{key}: {e}"))?;
            }
            Ok(())
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
        count(self.origin_idle_max, &mut l.origin_idle_max);
        dur(
            "origin_idle_timeout",
            self.origin_idle_timeout,
            &mut l.origin_idle_timeout,
        )?;
        count(self.origin_queue_max, &mut l.origin_queue_max);
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
        dur(
            "hit_for_miss_ttl",
            self.hit_for_miss_ttl,
            &mut l.hit_for_miss_ttl,
        )?;
        count(self.hit_for_miss_count_max, &mut l.hit_for_miss_count_max);
        dur("shutdown_grace", self.shutdown_grace, &mut l.shutdown_grace)?;
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

// ----- invalidation: `[invalidation]` and `admin.token` ---------------------

/// Hard ceiling for `limits.bans_max`.
pub const BANS_CAP: usize = 65_536;
/// Longest regex pattern a ban accepts, in bytes (beyond: 400).
pub const BAN_REGEX_PATTERN_BYTES_MAX: usize = 1024;
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
/// Tag index keys checked per hold of its lock while pruning.
pub const TAG_PRUNE_CHUNK_KEYS: usize = 256;
/// Environment variable that holds the admin token (overrides the file).
pub const ADMIN_TOKEN_ENV: &str = "RINGCACHE_ADMIN_TOKEN";

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
}

impl FileInvalidation {
    fn apply(self, file_token: Option<String>, memory_bytes: u64) -> Result<Invalidation, String> {
        let admin_token = std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .or(file_token);
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
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
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
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
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
    fn origin_urls() {
        let o = Origin::parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(o.addr, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(o.authority, "127.0.0.1:8081");
        assert_eq!(Origin::parse("http://127.0.0.1/").unwrap().addr.port(), 80);
        assert!(Origin::parse("https://example.com").is_err());
        assert!(Origin::parse("http://127.0.0.1:1/api").is_err());
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let dir = std::env::temp_dir().join(format!("ringcache-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nworkers = 3\n[limits]\nhead_bytes_max = \"8KiB\"\nheader_timeout = \"2s\"\n",
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
}
