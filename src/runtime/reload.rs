//! SIGHUP: reread the configuration file and apply what can change while
//! serving.
//!
//! ```text
//!  main thread (sigwait)                       worker i, once per tick
//!  ───────────────────────                     ─────────────────────────
//!  Config::load(same flags) → validate         generation ≠ seen?
//!  plan: reloadable | needs a restart            ├─ copy limits (short lock,
//!  limits ─▶ Mutex<Limits>, generation += 1      │  never on the request path)
//!  wait until every worker has seen it  ◀─────── └─ seen[i] = generation
//!  one log line: applied / needs a restart
//! ```
//!
//! Reloadable: the log level and the limits read per request or per tick
//! (sizes of a request, timeouts, the largest object stored, the drain
//! times), and who may invalidate: `admin.token`, `admin.hmac_key`,
//! `admin.hmac_window` and `invalidation.purge_allow` (kept behind a lock
//! in the `Invalidator`,
//! read once per admin request and per `PURGE`). The rest of
//! `[invalidation]` (the tag field, whether it is cut, the tag index's
//! limits, `purge_method`) and `limits.bans_max` /
//! `limits.admin_body_bytes_max` shape what was built at start: restart.
//! `cache.refresh_ahead` is read from the workers' start-time copy of the
//! `[cache]` table: restart. Everything that sizes a structure built at start (connection
//! slots, buffers, rings, queues, the shared lease table) or that names a
//! resource (addresses, origin, workers, I/O backend, memory, store) needs a
//! restart: it is reported, and the running value stays.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::config::{Config, Limits};

/// The reloadable part of the configuration, shared by the main thread
/// (writer) and the workers (readers, once per tick).
pub struct Reload {
    /// Bumped (Release) after `limits` is replaced.
    generation: AtomicU64,
    limits: Mutex<Limits>,
    /// The generation each worker runs with.
    seen: Vec<CachePadded<AtomicU64>>,
}

impl Reload {
    pub fn new(limits: Limits, workers: usize) -> Reload {
        Reload {
            generation: AtomicU64::new(0),
            limits: Mutex::new(limits),
            seen: (0..workers)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Worker side, once per tick: the new limits when the generation moved
    /// since `seen` (which is updated), else `None` without taking the lock.
    pub fn pick_up(&self, worker: usize, seen: &mut u64) -> Option<Limits> {
        // Acquire pairs with the Release in `publish`: the limits written
        // before the bump are visible under the lock below.
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        let limits = *self.limits.lock().unwrap_or_else(PoisonError::into_inner);
        *seen = generation;
        // Release pairs with the Acquire in `wait_seen`.
        self.seen[worker].store(generation, Ordering::Release);
        Some(limits)
    }

    /// Main thread: make `limits` the running limits; returns the generation.
    pub fn publish(&self, limits: Limits) -> u64 {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
        // Release: see `pick_up`.
        self.generation.fetch_add(1, Ordering::Release) + 1
    }

    /// Wait until every worker runs with `generation` or later; false when
    /// `within` passed first (a stalled worker).
    pub fn wait_seen(&self, generation: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            // Acquire pairs with the Release in `pick_up`.
            if self
                .seen
                .iter()
                .all(|s| s.load(Ordering::Acquire) >= generation)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(RELOAD_POLL_INTERVAL);
        }
    }
}

/// How often the main thread looks whether the workers picked up a reload.
pub const RELOAD_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What a reread configuration changes.
#[derive(Debug)]
pub struct Plan {
    /// The running configuration with every reloadable value taken from
    /// the new file: what runs after the reload.
    pub config: Config,
    /// `key old → new` for each value applied now.
    pub applied: Vec<String>,
    /// `key old → new` for each value that only a restart applies.
    pub restart: Vec<String>,
}

impl Plan {
    /// Whether the workers' limits change.
    pub fn limits_changed(&self, running: &Config) -> bool {
        self.config.limits != running.limits
    }

    /// Whether the admin token or `purge_allow` change.
    pub fn access_changed(&self, running: &Config) -> bool {
        let (new, old) = (&self.config.invalidation, &running.invalidation);
        new.admin_token != old.admin_token
            || new.purge_allow != old.purge_allow
            || new.admin_hmac_key != old.admin_hmac_key
            || new.admin_hmac_window != old.admin_hmac_window
    }

    /// The one log line that reports the reload.
    pub fn summary(&self) -> String {
        let applied = if self.applied.is_empty() {
            "nothing to apply".to_string()
        } else {
            format!("applied {}", self.applied.join(", "))
        };
        if self.restart.is_empty() {
            format!("reload: {applied}")
        } else {
            format!(
                "reload: {applied}; needs a restart, still running the old value: {}",
                self.restart.join(", ")
            )
        }
    }
}

/// Compare the running configuration with a freshly loaded one.
pub fn plan(running: &Config, new: &Config) -> Plan {
    let mut plan = Plan {
        config: running.clone(),
        applied: Vec::new(),
        restart: Vec::new(),
    };
    fn note<T: PartialEq + std::fmt::Debug>(list: &mut Vec<String>, key: &str, old: &T, new: &T) {
        if old != new {
            list.push(format!("{key} {old:?} → {new:?}"));
        }
    }
    fn note_text(list: &mut Vec<String>, key: &str, old: &str, new: &str) {
        if old != new {
            list.push(format!("{key} {old} → {new}"));
        }
    }
    // Needs a restart: resources named at start.
    note(&mut plan.restart, "listen", &running.listen, &new.listen);
    note(&mut plan.restart, "admin", &running.admin, &new.admin);
    note_text(
        &mut plan.restart,
        "origin",
        running
            .origin
            .as_ref()
            .map_or("the demo origin", |o| o.authority.as_str()),
        new.origin
            .as_ref()
            .map_or("the demo origin", |o| o.authority.as_str()),
    );
    note(&mut plan.restart, "workers", &running.workers, &new.workers);
    note(&mut plan.restart, "io", &running.io, &new.io);
    note(
        &mut plan.restart,
        "memory",
        &running.memory_bytes,
        &new.memory_bytes,
    );
    let store = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or("anonymous memory".to_string(), |p| p.display().to_string())
    };
    note_text(
        &mut plan.restart,
        "store",
        &store(&running.store_path),
        &store(&new.store_path),
    );
    // Applied now.
    let level = |l: Option<log::LevelFilter>| {
        l.map_or("unset".to_string(), |l| l.as_str().to_ascii_lowercase())
    };
    note_text(
        &mut plan.applied,
        "log_level",
        &level(running.log_level),
        &level(new.log_level),
    );
    plan.config.log_level = new.log_level;

    let (old, fresh, run) = (&running.limits, &new.limits, &mut plan.config.limits);
    macro_rules! reloadable {
        ($($field:ident),* $(,)?) => {$(
            note(&mut plan.applied, concat!("limits.", stringify!($field)), &old.$field, &fresh.$field);
            run.$field = fresh.$field;
        )*};
    }
    macro_rules! restart_only {
        ($($field:ident),* $(,)?) => {$(
            note(&mut plan.restart, concat!("limits.", stringify!($field)), &old.$field, &fresh.$field);
        )*};
    }
    // Read per request or per tick from the worker's copy of the limits.
    reloadable!(
        head_bytes_max,
        headers_count_max,
        body_bytes_max,
        pipeline_depth_max,
        client_output_bytes_max,
        header_timeout,
        keepalive_timeout,
        send_timeout,
        origin_connect_timeout,
        origin_response_timeout,
        origin_idle_timeout,
        origin_queue_timeout,
        origin_response_bytes_max,
        object_bytes_max,
        shutdown_grace,
        drain_idle_timeout,
    );
    // Size a structure built at start, or are shared by every worker.
    restart_only!(
        connections_max,
        origin_connections_max,
        origin_idle_max,
        origin_queue_max,
        coalesce_waiters_max,
        coalesce_wait_timeout,
        hit_for_miss_ttl,
        hit_for_miss_count_max,
        recv_buffer_bytes,
        recv_buffers_count,
        ring_entries,
        bans_max,
        admin_body_bytes_max,
    );

    // The worker reads the refresh-ahead share from its own copy of the
    // `[cache]` table, taken at start: a restart.
    note(
        &mut plan.restart,
        "cache.refresh_ahead",
        &running.cache.refresh_ahead_percent,
        &new.cache.refresh_ahead_percent,
    );

    // Who may invalidate: applied now. The token is never printed.
    let (old, fresh) = (&running.invalidation, &new.invalidation);
    if old.admin_token != fresh.admin_token {
        let state = |t: &Option<String>| if t.is_some() { "set" } else { "unset" };
        plan.applied.push(format!(
            "admin.token ({} → {}, changed)",
            state(&old.admin_token),
            state(&fresh.admin_token)
        ));
    }
    let nets = |l: &[crate::config::Cidr]| {
        let l: Vec<String> = l.iter().map(ToString::to_string).collect();
        format!("[{}]", l.join(", "))
    };
    note_text(
        &mut plan.applied,
        "invalidation.purge_allow",
        &nets(&old.purge_allow),
        &nets(&fresh.purge_allow),
    );
    if old.admin_hmac_key != fresh.admin_hmac_key {
        let state = |t: &Option<String>| if t.is_some() { "set" } else { "unset" };
        plan.applied.push(format!(
            "admin.hmac_key ({} → {}, changed)",
            state(&old.admin_hmac_key),
            state(&fresh.admin_hmac_key)
        ));
    }
    note(
        &mut plan.applied,
        "admin.hmac_window",
        &old.admin_hmac_window,
        &fresh.admin_hmac_window,
    );
    plan.config.invalidation.admin_token = fresh.admin_token.clone();
    plan.config.invalidation.purge_allow = fresh.purge_allow.clone();
    plan.config.invalidation.admin_hmac_key = fresh.admin_hmac_key.clone();
    plan.config.invalidation.admin_hmac_window = fresh.admin_hmac_window;
    // The rest of [invalidation] shapes the tag index and what the workers
    // store: a restart.
    macro_rules! invalidation_restart_only {
        ($($field:ident),* $(,)?) => {$(
            note(&mut plan.restart, concat!("invalidation.", stringify!($field)), &old.$field, &fresh.$field);
        )*};
    }
    invalidation_restart_only!(
        tag_header,
        tag_header_strip,
        tags_per_object_max,
        tag_bytes_max,
        tag_index_bytes_max,
        purge_method,
        refresh_queue_max,
        refresh_rate,
        refresh_concurrency_max,
    );
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    fn config() -> Config {
        Config::load(&ServeArgs {
            workers: Some(2),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn reloadable_values_apply_and_others_wait_for_a_restart() {
        let running = config();
        let mut new = running.clone();
        new.limits.head_bytes_max = 1024;
        new.limits.keepalive_timeout = Duration::from_secs(5);
        new.limits.connections_max = 10;
        new.workers = 7;
        new.log_level = Some(log::LevelFilter::Debug);
        new.cache.refresh_ahead_percent = 10;
        let plan = plan(&running, &new);
        assert_eq!(plan.config.cache.refresh_ahead_percent, 0);
        assert_eq!(plan.config.limits.head_bytes_max, 1024);
        assert_eq!(plan.config.limits.keepalive_timeout, Duration::from_secs(5));
        assert_eq!(
            plan.config.limits.connections_max,
            running.limits.connections_max
        );
        assert_eq!(plan.config.workers, 2);
        assert_eq!(plan.config.log_level, Some(log::LevelFilter::Debug));
        assert!(plan.limits_changed(&running));
        let line = plan.summary();
        assert!(
            line.contains("limits.head_bytes_max 16384 → 1024"),
            "{line}"
        );
        assert!(line.contains("log_level"), "{line}");
        let restart = &line[line.find("needs a restart").expect(&line)..];
        assert!(restart.contains("workers 2 → 7"), "{line}");
        assert!(restart.contains("limits.connections_max"), "{line}");
        assert!(restart.contains("cache.refresh_ahead 0 → 10"), "{line}");
        assert!(!restart.contains("head_bytes_max"), "{line}");
    }

    #[test]
    fn admin_token_and_purge_allow_apply_the_rest_of_invalidation_waits() {
        let running = config();
        let mut new = running.clone();
        new.invalidation.admin_token = Some("a-secret-token-of-some-length".into());
        new.invalidation.purge_allow = vec![crate::config::Cidr::parse("10.0.0.0/8").unwrap()];
        new.invalidation.tag_header = "cache-tag".into();
        new.limits.bans_max = 7;
        let plan = plan(&running, &new);
        assert!(plan.access_changed(&running));
        assert_eq!(
            plan.config.invalidation.admin_token,
            new.invalidation.admin_token
        );
        assert_eq!(
            plan.config.invalidation.purge_allow,
            new.invalidation.purge_allow
        );
        assert_eq!(
            plan.config.invalidation.tag_header,
            running.invalidation.tag_header
        );
        assert_eq!(plan.config.limits.bans_max, running.limits.bans_max);
        let line = plan.summary();
        assert!(!line.contains("a-secret-token"), "{line}");
        let restart = &line[line.find("needs a restart").expect(&line)..];
        let applied = &line[..line.find("needs a restart").expect(&line)];
        assert!(
            applied.contains("admin.token (unset → set, changed)"),
            "{line}"
        );
        assert!(applied.contains("invalidation.purge_allow"), "{line}");
        assert!(restart.contains("invalidation.tag_header"), "{line}");
        assert!(restart.contains("limits.bans_max"), "{line}");
    }

    #[test]
    fn the_signing_key_applies_and_refresh_limits_wait() {
        let running = config();
        let mut new = running.clone();
        new.invalidation.admin_hmac_key = Some("a-signing-key-0123456789abcdefghij".into());
        new.invalidation.admin_hmac_window = Duration::from_secs(60);
        new.invalidation.refresh_rate = 7;
        let plan = plan(&running, &new);
        assert!(plan.access_changed(&running));
        assert_eq!(
            plan.config.invalidation.admin_hmac_key,
            new.invalidation.admin_hmac_key
        );
        assert_eq!(
            plan.config.invalidation.admin_hmac_window,
            Duration::from_secs(60)
        );
        assert_eq!(
            plan.config.invalidation.refresh_rate,
            running.invalidation.refresh_rate
        );
        let line = plan.summary();
        assert!(!line.contains("a-signing-key"), "{line}");
        let split = line.find("needs a restart").expect(&line);
        assert!(
            line[..split].contains("admin.hmac_key (unset → set, changed)"),
            "{line}"
        );
        assert!(line[..split].contains("admin.hmac_window"), "{line}");
        assert!(
            line[split..].contains("invalidation.refresh_rate"),
            "{line}"
        );
    }

    #[test]
    fn unchanged_file_applies_nothing() {
        let running = config();
        let plan = plan(&running, &running.clone());
        assert!(!plan.limits_changed(&running));
        assert_eq!(plan.summary(), "reload: nothing to apply");
    }

    #[test]
    fn workers_pick_up_a_generation_once() {
        let reload = Reload::new(Limits::default(), 2);
        let mut seen = [0u64; 2];
        assert!(reload.pick_up(0, &mut seen[0]).is_none());
        let limits = Limits {
            head_bytes_max: 2048,
            ..Limits::default()
        };
        let generation = reload.publish(limits);
        assert!(!reload.wait_seen(generation, Duration::ZERO));
        assert_eq!(
            reload.pick_up(0, &mut seen[0]).map(|l| l.head_bytes_max),
            Some(2048)
        );
        assert!(reload.pick_up(0, &mut seen[0]).is_none());
        assert!(!reload.wait_seen(generation, Duration::ZERO));
        assert!(reload.pick_up(1, &mut seen[1]).is_some());
        assert!(reload.wait_seen(generation, Duration::ZERO));
    }
}
