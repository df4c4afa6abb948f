//! SIGHUP: reread the configuration and apply what can change while
//! serving.
//!
//! ```text
//!  main thread (sigwait)                       worker i, once per tick
//!  ───────────────────────                     ─────────────────────────
//!  Config::load(same flags) → validate         generation ≠ seen?
//!  plan: per key, from config::OPTIONS           ├─ copy limits and [cache]
//!  limits, [cache] ─▶ Mutex, generation += 1     │  (short lock, never on
//!  invalidator: access, key rules                │  the request path)
//!  wait until every worker has seen it  ◀─────── └─ seen[i] = generation
//!  one log line: applied / needs a restart
//! ```
//!
//! Which keys apply now and which need a restart is each key's `apply` in
//! `config::OPTIONS`, so the plan covers every key. Applied now: the log
//! level, the limits read per request or per tick, the whole `[cache]`
//! table (the workers rebuild their key rules and storability policy at
//! their next tick, the invalidator its key rules at once), and who may
//! invalidate (`admin.token`, `admin.hmac_key`, `admin.hmac_window`,
//! `invalidation.purge_allow`). What sizes a
//! structure built at start (connection slots, buffers, rings, queues, the
//! shared lease table, the tag index) or names a resource (addresses,
//! origin, workers, I/O backend, memory, store, `[bus]`) needs a restart:
//! it is reported, and the running value stays.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::config::{CacheConfig, Config, Limits};

/// The reloadable part of the configuration, shared by the main thread
/// (writer) and the workers (readers, once per tick).
pub struct Reload {
    /// Bumped (Release) after `running` is replaced.
    generation: AtomicU64,
    running: Mutex<(Limits, CacheConfig)>,
    /// The generation each worker runs with.
    seen: Vec<CachePadded<AtomicU64>>,
}

impl Reload {
    pub fn new(limits: Limits, cache: CacheConfig, workers: usize) -> Reload {
        Reload {
            generation: AtomicU64::new(0),
            running: Mutex::new((limits, cache)),
            seen: (0..workers)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Worker side, once per tick: the new limits and `[cache]` when the
    /// generation moved since `seen` (which is updated), else `None`
    /// without taking the lock.
    pub fn pick_up(&self, worker: usize, seen: &mut u64) -> Option<(Limits, CacheConfig)> {
        // Acquire pairs with the Release in `publish`: the limits written
        // before the bump are visible under the lock below.
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return None;
        }
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        *seen = generation;
        // Release pairs with the Acquire in `wait_seen`.
        self.seen[worker].store(generation, Ordering::Release);
        Some(running)
    }

    /// Main thread: make `limits` and `cache` the running ones; returns the
    /// generation.
    pub fn publish(&self, limits: Limits, cache: CacheConfig) -> u64 {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = (limits, cache);
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

    /// Whether the workers' `[cache]` table changes.
    pub fn cache_changed(&self, running: &Config) -> bool {
        self.config.cache != running.cache
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

/// Compare the running configuration with a freshly loaded one, key by
/// key (`config::OPTIONS`).
pub fn plan(running: &Config, new: &Config) -> Plan {
    let mut plan = Plan {
        config: running.clone(),
        applied: Vec::new(),
        restart: Vec::new(),
    };
    for (change, now) in running.changes(new, &mut plan.config) {
        match now {
            true => plan.applied.push(change),
            false => plan.restart.push(change),
        }
    }
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

    /// A reload summary split at "needs a restart": what was applied, and
    /// what waits for a restart.
    #[track_caller]
    fn applied_and_restart(line: &str) -> (&str, &str) {
        let split = line.find("needs a restart").expect(line);
        line.split_at(split)
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
        new.cache.key_sort_query = true;
        new.limits.origin_connections_total_max = 9;
        new.bus = Some(crate::config::BusConfig::new("redis://127.0.0.1:1/s", "n1").unwrap());
        let plan = plan(&running, &new);
        assert_eq!(plan.config.cache.refresh_ahead_percent, 10);
        assert!(plan.config.cache.key_sort_query);
        assert!(plan.cache_changed(&running));
        assert_eq!(plan.config.bus, None);
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
            line.contains("limits.head_bytes_max 16KiB → 1KiB"),
            "{line}"
        );
        assert!(line.contains("log_level"), "{line}");
        let (_, restart) = applied_and_restart(&line);
        assert!(restart.contains("workers 2 → 7"), "{line}");
        assert!(restart.contains("limits.connections_max"), "{line}");
        assert!(!restart.contains("cache."), "{line}");
        assert!(line.contains("cache.refresh_ahead 0% → 10%"), "{line}");
        assert!(line.contains("cache.key_sort_query false → true"), "{line}");
        assert!(!restart.contains("head_bytes_max"), "{line}");
        assert!(
            restart.contains("limits.origin_connections_total_max 1024 → 9"),
            "{line}"
        );
        assert!(
            restart.contains("bus.url unset → redis://127.0.0.1:1/s"),
            "{line}"
        );
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
        let (applied, restart) = applied_and_restart(&line);
        assert!(
            applied.contains("admin.token (unset → set, changed)"),
            "{line}"
        );
        assert!(applied.contains("invalidation.purge_allow"), "{line}");
        assert!(restart.contains("invalidation.tag_header"), "{line}");
        assert!(restart.contains("limits.bans_max"), "{line}");
    }

    #[test]
    fn access_log_changes_wait_for_a_restart() {
        let running = config();
        let mut new = running.clone();
        new.access_log.mode = crate::access_log::Mode::Full;
        new.access_log.path = "/tmp/elsewhere.log".into();
        let plan = plan(&running, &new);
        assert_eq!(plan.config.access_log, running.access_log);
        let line = plan.summary();
        let (_, restart) = applied_and_restart(&line);
        assert!(restart.contains("access_log.mode off → full"), "{line}");
        assert!(restart.contains("access_log.path"), "{line}");
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
        let (applied, restart) = applied_and_restart(&line);
        assert!(
            applied.contains("admin.hmac_key (unset → set, changed)"),
            "{line}"
        );
        assert!(applied.contains("admin.hmac_window"), "{line}");
        assert!(restart.contains("invalidation.refresh_rate"), "{line}");
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
        let reload = Reload::new(Limits::default(), CacheConfig::default(), 2);
        let mut seen = [0u64; 2];
        assert!(reload.pick_up(0, &mut seen[0]).is_none());
        let limits = Limits {
            head_bytes_max: 2048,
            ..Limits::default()
        };
        let cache = CacheConfig {
            key_sort_query: true,
            ..CacheConfig::default()
        };
        let generation = reload.publish(limits, cache);
        assert!(!reload.wait_seen(generation, Duration::ZERO));
        assert_eq!(
            reload
                .pick_up(0, &mut seen[0])
                .map(|(l, c)| (l.head_bytes_max, c.key_sort_query)),
            Some((2048, true))
        );
        assert!(reload.pick_up(0, &mut seen[0]).is_none());
        assert!(!reload.wait_seen(generation, Duration::ZERO));
        assert!(reload.pick_up(1, &mut seen[1]).is_some());
        assert!(reload.wait_seen(generation, Duration::ZERO));
    }
}
