//! A ringcache cluster: three nodes sharing invalidations over one Redis
//! stream, and the deploy/cluster/ front (haproxy, consistent URI hashing).
//!
//! Three real nodes (`serve --bus`, each with its own store file and bus
//! state) share invalidations sent to one of them: URL, tag (Vary variants
//! included) and prefix purges, acknowledged by all with `"wait": "all"`; a
//! node stopped (SIGTERM or SIGKILL) during purges replays what it missed
//! before it serves again; Redis killed and restarted with its data (the
//! purges held in the outbox reach the others) or without (every node drops
//! its cache). Three `Bus` instances driven through their public API (each
//! standing for a node whose cache is a set of URLs) cover delivery, acks
//! and a returning node. Conditions are awaited by polling metrics with a
//! bound, never by sleeping. Skipped, with a printed reason, when
//! `redis-server` (or, for the front, `haproxy`) is not installed.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ringcache::bus::resp::{Conn, ReplyLimits};
use ringcache::bus::{Bus, BusConfig, EntryId};
use ringcache::metrics::Metrics as NodeMetrics;

/// Bound of every wait in this suite.
const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on a free loopback port (stopped by PID when dropped).
/// Persistent: an append-only file fsynced at every write, so that the
/// stream survives a `kill -9`; otherwise nothing is kept.
struct Redis {
    proc: Proc,
    port: u16,
    persistent: bool,
    dir: TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        Redis::start_with(false)
    }

    fn start_persistent() -> Option<Redis> {
        Redis::start_with(true)
    }

    fn start_with(persistent: bool) -> Option<Redis> {
        if !installed("redis-server") {
            return None;
        }
        let port = free_port();
        let dir = TempDir::new("redis");
        let proc = Redis::spawn(port, persistent, dir.path());
        Some(Redis {
            proc,
            port,
            persistent,
            dir,
        })
    }

    /// Start `redis-server` and wait until it answers PING.
    fn spawn(port: u16, persistent: bool, dir: &Path) -> Proc {
        let aof = if persistent { "yes" } else { "no" };
        let proc = Proc::spawn_bin(
            Path::new("redis-server"),
            "redis",
            &[
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                aof,
                "--appendfsync",
                "always",
                "--dir",
                dir.to_str().unwrap(),
            ],
        );
        let up = wait_until(WAIT, || redis_ping(port));
        assert!(up, "redis-server did not answer on port {port}");
        proc
    }

    /// `kill -9`, and wait for the exit.
    fn kill9(&mut self) {
        self.proc.signal(libc::SIGKILL);
        assert!(
            self.proc.wait_timeout(WAIT).is_some(),
            "redis-server survives SIGKILL"
        );
    }

    /// Start again on the same port and directory (with the data it kept,
    /// when persistent).
    fn restart(&mut self) {
        self.proc = Redis::spawn(self.port, self.persistent, self.dir.path());
    }

    /// Stop (SIGSTOP) or resume (SIGCONT) the server: connections stay
    /// open, commands get no answer meanwhile.
    fn pause(&mut self, paused: bool) {
        self.proc
            .signal(if paused { libc::SIGSTOP } else { libc::SIGCONT });
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/ringcache-inv", self.port)
    }
}

fn redis_ping(port: u16) -> bool {
    Conn::connect(
        &format!("127.0.0.1:{port}"),
        Duration::from_secs(1),
        Duration::from_secs(1),
        ReplyLimits {
            reply_bytes_max: 4096,
            bulk_bytes_max: 1024,
        },
    )
    .and_then(|mut c| c.command(&[b"PING"]))
    .is_ok()
}

/// A node: its cache (a set of URLs) and its bus.
struct Node {
    name: &'static str,
    cache: Arc<Mutex<BTreeSet<String>>>,
    bus: Option<Bus>,
}

/// The URLs named in an invalidation body such as `{"urls":["/a","/b"]}`.
fn urls(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split('"')
        .filter(|s| s.starts_with('/'))
        .map(str::to_string)
        .collect()
}

impl Node {
    fn start(
        url: &str,
        name: &'static str,
        state_dir: &Path,
        cache: Arc<Mutex<BTreeSet<String>>>,
    ) -> Node {
        let mut cfg = BusConfig::new(url, name).unwrap();
        cfg.state_dir = Some(state_dir.to_path_buf());
        cfg.block_timeout = Duration::from_millis(100);
        cfg.reconnect_backoff_min = Duration::from_millis(20);
        cfg.reconnect_backoff_max = Duration::from_millis(200);
        cfg.heartbeat_ttl = Duration::from_secs(2);
        let (apply_cache, drop_cache) = (Arc::clone(&cache), Arc::clone(&cache));
        let bus = Bus::start(
            cfg,
            move |body: &[u8]| {
                let mut c = apply_cache.lock().unwrap();
                Ok(urls(body).iter().filter(|u| c.remove(*u)).count() as u64)
            },
            move || drop_cache.lock().unwrap().clear(),
        )
        .unwrap();
        let m = bus.metrics();
        assert!(
            wait_until(WAIT, || m.connected.load(Ordering::Relaxed) == 1),
            "{name} did not connect"
        );
        Node {
            name,
            cache,
            bus: Some(bus),
        }
    }

    fn bus(&self) -> &Bus {
        self.bus.as_ref().unwrap()
    }

    /// What `POST /invalidate` does on this node: apply here, then share.
    fn invalidate(&self, body: &str) -> EntryId {
        {
            let mut c = self.cache.lock().unwrap();
            for u in urls(body.as_bytes()) {
                c.remove(&u);
            }
        }
        self.bus().publish(body.as_bytes()).unwrap()
    }

    fn has(&self, url: &str) -> bool {
        self.cache.lock().unwrap().contains(url)
    }
}

fn full_cache() -> Arc<Mutex<BTreeSet<String>>> {
    Arc::new(Mutex::new(
        (1..=9).map(|i| format!("/api/items/{i}")).collect(),
    ))
}

#[test]
fn three_nodes_share_invalidations_and_a_returning_node_catches_up() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("node{i}"))).collect();
    let mut nodes: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .zip(&dirs)
        .map(|(name, d)| Node::start(&url, name, d.path(), full_cache()))
        .collect();
    let all = |acks: Vec<(String, bool)>| {
        acks == vec![
            ("n1".to_string(), true),
            ("n2".to_string(), true),
            ("n3".to_string(), true),
        ]
    };

    // Each node receives one invalidation; every node ends without the three.
    for (i, n) in nodes.iter().enumerate() {
        let id = n.invalidate(&format!("{{\"urls\":[\"/api/items/{}\"]}}", i + 1));
        assert!(all(n.bus().wait_acks(id, WAIT).unwrap()), "{}", n.name);
    }
    for n in &nodes {
        for i in 1..=9 {
            assert_eq!(
                n.has(&format!("/api/items/{i}")),
                i > 3,
                "{} item {i}",
                n.name
            );
        }
        let m = n.bus().metrics();
        assert_eq!(m.applied.load(Ordering::Relaxed), 2, "{}", n.name);
    }

    // n3 goes away; an invalidation meanwhile is acknowledged by the live two.
    let n3_cache = Arc::clone(&nodes[2].cache);
    nodes[2].bus.take().unwrap().stop();
    let id = nodes[0].invalidate("{\"urls\":[\"/api/items/4\",\"/api/items/5\"]}");
    assert_eq!(
        nodes[0].bus().wait_acks(id, WAIT).unwrap(),
        vec![("n1".to_string(), true), ("n2".to_string(), true)]
    );
    assert!(n3_cache.lock().unwrap().contains("/api/items/4"));

    // n3 comes back with its state file and applies what it missed.
    nodes[2] = Node::start(&url, "n3", dirs[2].path(), n3_cache);
    assert!(wait_until(WAIT, || !nodes[2].has("/api/items/4")
        && !nodes[2].has("/api/items/5")));
    let id = nodes[1].invalidate("{\"urls\":[\"/api/items/6\"]}");
    assert!(all(nodes[1].bus().wait_acks(id, WAIT).unwrap()));
    for n in &nodes {
        let left: Vec<String> = n.cache.lock().unwrap().iter().cloned().collect();
        assert_eq!(
            left,
            ["/api/items/7", "/api/items/8", "/api/items/9"],
            "{}",
            n.name
        );
    }

    // The bus's series render with a node's metrics.
    let metrics = NodeMetrics::new(1);
    metrics.attach_bus(nodes[2].bus().metrics());
    let text = metrics.render(&ringcache::metrics::StoreGauges {
        bytes_used: 0,
        bytes_max: 0,
        items: 0,
        evictions: 0,
        index_evictions: 0,
        index_slots: 0,
        expirations: 0,
        recovered: 0,
        dropped: 0,
        recovery_secs: 0.0,
        clockpro: None,
    });
    assert!(text.contains("ringcache_bus_connected 1\n"), "{text}");
    assert!(text.contains("ringcache_bus_applied_total 2\n"), "{text}");
    assert!(
        text.contains("ringcache_bus_cache_drops_total 0\n"),
        "{text}"
    );
}

/// Three `serve --bus` nodes in front of the demo origin, each with its
/// own store file; `tag` names their directories.
struct DemoNodes {
    servers: Vec<Server>,
    _dirs: Vec<TempDir>,
    _cfg_dir: TempDir,
}

impl DemoNodes {
    /// `None` when io_uring is unavailable.
    fn start(io: &str, redis: &Redis, origin: &DemoOrigin, tag: &str) -> Option<DemoNodes> {
        let (cfg_dir, cfg) = config_file(&format!("[admin]\ntoken = \"{TOKEN}\"\n"));
        let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("{tag}{i}"))).collect();
        let mut servers = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            let store = d.path().join("store");
            let node = format!("node{}", i + 1);
            let extra = [
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
                "--bus",
                &redis.url(),
                "--bus-node",
                &node,
            ];
            servers.push(Server::serve(io, Some(&origin.url()), 1, &extra)?);
        }
        Some(DemoNodes {
            servers,
            _dirs: dirs,
            _cfg_dir: cfg_dir,
        })
    }
}

/// deploy/cluster/haproxy.cfg with its addresses replaced by these.
fn haproxy_config(front: u16, nodes: &[&Server]) -> String {
    let cfg = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster/haproxy.cfg"),
    )
    .unwrap();
    let mut cfg = cfg.replace("127.0.0.1:8000", &format!("127.0.0.1:{front}"));
    for (i, s) in nodes.iter().enumerate() {
        cfg = cfg
            .replace(&format!("127.0.0.1:808{}", i + 1), &s.addr.to_string())
            .replace(
                &format!("port 918{}", i + 1),
                &format!("port {}", s.admin.port()),
            );
    }
    cfg
}

/// haproxy with deploy/cluster/haproxy.cfg in front of three nodes: each URI
/// is fetched by one node only, and a purge acknowledged by all nodes makes
/// the next request for it through the front a miss at the origin.
fn front_sends_each_uri_to_one_node_and_purges_reach_it(io: &str) {
    let Some(redis) = Redis::start() else { return };
    if !installed("haproxy") {
        return;
    }
    let origin = DemoOrigin::start();
    let Some(nodes) = DemoNodes::start(io, &redis, &origin, "front") else {
        return;
    };
    let servers: &[Server] = &nodes.servers;
    let front = free_port();
    let refs: Vec<&Server> = servers.iter().collect();
    let cfg_dir = TempDir::new("haproxy");
    let cfg = cfg_dir.write("haproxy.cfg", &haproxy_config(front, &refs));
    let _haproxy = Proc::spawn_bin(
        Path::new("haproxy"),
        "haproxy",
        &["-db", "-f", cfg.to_str().unwrap()],
    );
    let front_addr = format!("127.0.0.1:{front}").parse().unwrap();
    assert!(
        wait_until(WAIT, || std::net::TcpStream::connect(front_addr).is_ok()),
        "haproxy did not listen"
    );

    let paths: Vec<String> = (1..=12).map(|i| format!("/api/items/{i}")).collect();
    for _ in 0..2 {
        for p in &paths {
            let r = http_get(front_addr, p);
            assert_eq!(r.status, 200, "{p}: {}", r.summary());
        }
    }
    // Each URI reached the origin once: its second request found it on the
    // node that fetched it.
    let stats = origin.stats();
    for p in &paths {
        assert_eq!(stats.path(p), 1, "{p}");
    }
    let hits: Vec<f64> = servers
        .iter()
        .map(|s| s.metrics().value("ringcache_cache_hits_total"))
        .collect();
    assert_eq!(hits.iter().sum::<f64>(), paths.len() as f64, "{hits:?}");
    assert!(hits.iter().filter(|h| **h > 0.0).count() >= 2, "{hits:?}");

    // A purge sent to node 1 and acknowledged by every node: the next
    // request for the URI through the front reaches the origin, whichever
    // node holds it; the other URIs are still hits.
    let purged = &paths[4];
    let r = servers[0].admin_post(
        "/invalidate",
        TOKEN,
        &format!(r#"{{"urls": ["{purged}"], "wait": "all", "timeout_ms": 10000}}"#),
    );
    assert_eq!(applied_nodes(&r), all_applied(), "{}", r.body_str());
    let r = http_get(front_addr, purged);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(!r.is_hit(), "{purged} after the purge: {}", r.summary());
    assert_eq!(origin.stats().path(purged), 2, "{purged} fetched again");
    for p in paths.iter().filter(|p| *p != purged) {
        let r = http_get(front_addr, p);
        assert!(r.is_hit(), "{p}: {}", r.summary());
        assert_eq!(origin.stats().path(p), 1, "{p}");
    }
}

both_io!(front_sends_each_uri_to_one_node_and_purges_reach_it);

const TOKEN: &str = "cluster-token-0123456789";

/// An invalidation sent to one node's admin API is applied by every node
/// through the bus; `"wait": "all"` answers once all three applied it.
fn an_invalidation_reaches_every_node(io: &str) {
    let Some(redis) = Redis::start() else { return };
    let origin = DemoOrigin::start();
    let Some(nodes) = DemoNodes::start(io, &redis, &origin, "bus") else {
        return;
    };
    let servers: &[Server] = &nodes.servers;
    for s in servers {
        assert!(
            wait_until(WAIT, || s.metrics().value("ringcache_bus_connected") == 1.0),
            "a node did not connect to the bus"
        );
        for p in ["/api/items/7", "/api/items/8"] {
            assert_eq!(s.get(p).status, 200);
            let r = s.get(p);
            assert!(
                r.cache_status().starts_with("ringcache; hit"),
                "{}",
                r.summary()
            );
        }
    }
    let r = servers[0].admin_post(
        "/invalidate",
        TOKEN,
        r#"{"urls": ["/api/items/7"], "wait": "all", "timeout_ms": 10000}"#,
    );
    assert_eq!(applied_nodes(&r), all_applied(), "{}", r.body_str());
    // Acknowledged means applied: no node answers the purged URL from its
    // store any more, and the others are untouched.
    for s in servers {
        let r = s.get("/api/items/7");
        assert_eq!(r.status, 200);
        assert!(
            r.cache_status().starts_with("ringcache; fwd="),
            "{}",
            r.summary()
        );
        let r = s.get("/api/items/8");
        assert!(
            r.cache_status().starts_with("ringcache; hit"),
            "{}",
            r.summary()
        );
    }
    let stats = origin.stats();
    assert_eq!(stats.path("/api/items/7"), 6, "3 fills, 3 refetches");
    assert_eq!(stats.path("/api/items/8"), 3);
    for s in &servers[1..] {
        assert_eq!(s.metrics().value("ringcache_bus_applied_total"), 1.0);
    }
}

both_io!(an_invalidation_reaches_every_node);

#[test]
fn the_nginx_front_is_valid() {
    if !installed("nginx") {
        return;
    }
    let conf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster/nginx.conf");
    let prefix = TempDir::new("nginx");
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Three real nodes on one bus, in front of a counting origin
// ---------------------------------------------------------------------------

/// What every node of [`Cluster`] reads beside the admin token: a quick
/// reconnect, and a start-up catch-up long enough for a paused Redis. The
/// heartbeat keeps its default (15s): a shorter one can lapse on a busy
/// machine, and a `"wait": "all"` would then answer without that node.
const NODE_BUS_CONFIG: &str = "[bus]\nreconnect_backoff_min = \"20ms\"\nreconnect_backoff_max = \"200ms\"\ncatch_up_timeout = \"20s\"\n";

/// A counting origin whose answers are a function of the request: the body
/// names the target and the `Accept-Language`, `?tags=a,b` is sent as
/// `Surrogate-Key: a b`, and paths under `/v/` vary on `Accept-Language`.
fn cluster_origin() -> TestOrigin {
    TestOrigin::start(|req| {
        let query = req.target.split_once('?').map_or("", |(_, q)| q);
        let tags = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("tags="))
            .unwrap_or("")
            .replace(',', " ");
        let lang = req.header("accept-language").unwrap_or("none");
        let mut headers = vec![("Cache-Control", "max-age=600")];
        if req.path().starts_with("/v/") {
            headers.push(("Vary", "Accept-Language"));
        }
        if !tags.is_empty() {
            headers.push(("Surrogate-Key", &tags));
        }
        let body = format!("{} lang={lang}", req.target);
        Reply::Send(response(200, &headers, body.as_bytes()))
    })
}

/// Requests the origin received for `target` (with this `Accept-Language`,
/// when given).
fn fetches(origin: &TestOrigin, target: &str, lang: Option<&str>) -> usize {
    origin
        .all_requests()
        .iter()
        .filter(|r| {
            r.target == target && lang.map_or(true, |l| r.header("accept-language") == Some(l))
        })
        .count()
}

/// `GET target` with an optional `Accept-Language`; the answer must be the
/// origin's body for it.
#[track_caller]
fn get_as(server: &Server, target: &str, lang: Option<&str>) -> Response {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: ringcache.test\r\n");
    if let Some(l) = lang {
        req.push_str(&format!("Accept-Language: {l}\r\n"));
    }
    req.push_str("\r\n");
    let mut c = server.client();
    c.send(req.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{target}: {}", r.summary());
    assert_eq!(
        r.body_str(),
        format!("{target} lang={}", lang.unwrap_or("none")),
        "{target}"
    );
    r
}

/// The nodes listed in an `/invalidate` answer, with `applied`, sorted.
fn applied_nodes(r: &Response) -> Vec<(String, bool)> {
    assert_eq!(r.status, 200, "{}", r.summary());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut nodes: Vec<(String, bool)> = answer["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {answer}"))
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or("").to_string(),
                n["applied"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    nodes.sort();
    nodes
}

fn all_applied() -> Vec<(String, bool)> {
    (1..=3).map(|i| (format!("node{i}"), true)).collect()
}

/// Redis, a counting origin and three `serve --bus` nodes, each with its
/// own store file (and bus state beside it) in its own directory.
struct Cluster {
    nodes: Vec<Option<Server>>,
    origin: TestOrigin,
    redis: Redis,
    dirs: Vec<TempDir>,
    _cfg_dir: TempDir,
    cfg: PathBuf,
}

impl Cluster {
    /// `None` when Redis is not installed or io_uring is unavailable.
    fn start(io: &str, redis: Option<Redis>) -> Option<Cluster> {
        let redis = redis?;
        let (cfg_dir, cfg) = config_file(&format!(
            "[admin]\ntoken = \"{TOKEN}\"\n\n{NODE_BUS_CONFIG}"
        ));
        let mut c = Cluster {
            nodes: Vec::new(),
            origin: cluster_origin(),
            redis,
            dirs: (1..=3).map(|i| TempDir::new(&format!("node{i}"))).collect(),
            _cfg_dir: cfg_dir,
            cfg,
        };
        for i in 0..3 {
            let extra = c.extra_args(i);
            let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
            let server = Server::serve(io, Some(&c.origin.url()), 1, &refs)?;
            c.nodes.push(Some(server));
        }
        for i in 0..3 {
            c.wait_metric(i, "ringcache_bus_connected", |v| v == 1.0);
        }
        Some(c)
    }

    fn extra_args(&self, i: usize) -> Vec<String> {
        let store = self.dirs[i].path().join("store");
        [
            "--config",
            self.cfg.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
            "--memory",
            "32MiB",
            "--bus",
            &self.redis.url(),
            "--bus-node",
            &format!("node{}", i + 1),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("the node is running")
    }

    /// Wait until node `i`'s metric `name` satisfies `ok`; panics with its
    /// value after [`WAIT`].
    #[track_caller]
    fn wait_metric(&self, i: usize, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = f64::NAN;
        let held = wait_until(WAIT, || {
            last = self.node(i).metrics().value(name);
            ok(last)
        });
        assert!(held, "node{}: {name} stays at {last}", i + 1);
        last
    }

    fn metric(&self, i: usize, name: &str) -> f64 {
        self.node(i).metrics().value(name)
    }

    /// `POST /invalidate` with `body` on node `i`.
    fn invalidate(&self, i: usize, body: &str) -> Response {
        self.node(i).admin_post("/invalidate", TOKEN, body)
    }

    /// Fetch every `(target, lang)` on every running node, then check each
    /// is a hit there.
    fn fill(&self, objects: &[(&str, Option<&str>)]) {
        for s in self.nodes.iter().flatten() {
            for (t, lang) in objects {
                get_as(s, t, *lang);
            }
            for (t, lang) in objects {
                let r = get_as(s, t, *lang);
                assert!(r.is_hit(), "{t} {lang:?}: {}", r.summary());
            }
        }
    }

    /// On node `i`: each of `purged` reaches the origin once more, each of
    /// `kept` is a hit without reaching it.
    #[track_caller]
    fn assert_purged(
        &self,
        i: usize,
        purged: &[(&str, Option<&str>)],
        kept: &[(&str, Option<&str>)],
    ) {
        let s = self.node(i);
        for (t, lang) in purged {
            let before = fetches(&self.origin, t, *lang);
            let r = get_as(s, t, *lang);
            assert!(
                !r.is_hit(),
                "node{} served purged {t} {lang:?}: {}",
                i + 1,
                r.summary()
            );
            assert_eq!(
                fetches(&self.origin, t, *lang),
                before + 1,
                "node{}: {t} {lang:?} fetched again",
                i + 1
            );
        }
        for (t, lang) in kept {
            let before = fetches(&self.origin, t, *lang);
            let r = get_as(s, t, *lang);
            assert!(
                r.is_hit(),
                "node{} lost {t} {lang:?}: {}",
                i + 1,
                r.summary()
            );
            assert_eq!(fetches(&self.origin, t, *lang), before, "{t} {lang:?}");
        }
    }
}

/// A tag purge sent to one node with `"wait": "all"` answers once all three
/// applied it; on every node the objects carrying the tag, Vary variants
/// included, are fetched again and the others are still hits.
fn tag_purge_waits_for_every_node(io: &str) {
    let Some(c) = Cluster::start(io, Redis::start()) else {
        return;
    };
    let tagged: [(&str, Option<&str>); 3] = [
        ("/v/page?tags=t1,page", Some("en")),
        ("/v/page?tags=t1,page", Some("fr")),
        ("/o/a?tags=t1", None),
    ];
    let kept: [(&str, Option<&str>); 2] = [("/o/b?tags=t2", None), ("/o/c", None)];
    let all: Vec<_> = tagged.iter().chain(&kept).copied().collect();
    c.fill(&all);
    for (t, lang) in &all {
        assert_eq!(
            fetches(&c.origin, t, *lang),
            3,
            "{t} {lang:?}: one fill per node"
        );
    }

    let r = c.invalidate(0, r#"{"tags": ["t1"], "wait": "all", "timeout_ms": 10000}"#);
    assert_eq!(applied_nodes(&r), all_applied(), "{}", r.body_str());
    for i in 0..3 {
        c.assert_purged(i, &tagged, &kept);
    }
    for i in 1..3 {
        assert_eq!(c.metric(i, "ringcache_bus_applied_total"), 1.0);
    }
}

both_io!(tag_purge_waits_for_every_node);

/// The objects of [`node_down_during_purges`]: purged meanwhile by URL, by
/// tag and by a prefix ban, and untouched.
const MISSED: [&str; 5] = ["/o/u1", "/o/u2", "/o/t?tags=gone", "/o/p/1", "/o/p/2"];
const UNTOUCHED: [&str; 3] = ["/o/k1", "/o/k2?tags=stays", "/o/pk/3"];

/// Node 3 stops (SIGTERM or SIGKILL) while node 1 receives URL and tag
/// purges and a prefix ban. Restarted on the same store and bus state, it
/// applies what it missed before it serves: none of the purged objects is
/// served from its store, the untouched ones are warm hits.
fn node_down_during_purges(io: &str, signal: i32) {
    let Some(mut c) = Cluster::start(io, Redis::start()) else {
        return;
    };
    let with_lang = |ts: &[&'static str]| -> Vec<(&'static str, Option<&'static str>)> {
        ts.iter().map(|t| (*t, None)).collect()
    };
    let (missed, untouched) = (with_lang(&MISSED), with_lang(&UNTOUCHED));
    let all: Vec<_> = missed.iter().chain(&untouched).copied().collect();
    c.fill(&all);

    let mut node3 = c.nodes[2].take().unwrap();
    node3.proc.signal(signal);
    let status = node3.wait_exit(WAIT).expect("node3 exits");
    if signal == libc::SIGTERM {
        assert!(status.success(), "node3 after SIGTERM: {status:?}");
    }
    drop(node3);

    if signal == libc::SIGTERM {
        // A node that stopped cleanly left the cluster: an acknowledged
        // purge answers once the two live nodes applied it.
        let r = c.invalidate(
            0,
            r#"{"urls": ["/o/u1"], "host": "ringcache.test", "wait": "all", "timeout_ms": 10000}"#,
        );
        let live: Vec<(String, bool)> = all_applied().into_iter().take(2).collect();
        assert_eq!(applied_nodes(&r), live, "{}", r.body_str());
    }
    for body in [
        r#"{"urls": ["/o/u1"], "host": "ringcache.test"}"#,
        r#"{"urls": ["/o/u2"]}"#,
        r#"{"tags": ["gone"]}"#,
        r#"{"prefixes": ["/o/p/"]}"#,
    ] {
        let r = c.invalidate(0, body);
        assert_eq!(r.status, 200, "{body}: {}", r.summary());
        assert!(
            !r.body_str().contains("\"bus\""),
            "not published: {}",
            r.body_str()
        );
    }
    let sent = if signal == libc::SIGTERM { 5.0 } else { 4.0 };
    c.wait_metric(1, "ringcache_bus_applied_total", |v| v == sent);

    // Restart with Redis paused: the node must not take connections before
    // it has read the stream, however long Redis takes to answer.
    c.redis.pause(true);
    let extra = c.extra_args(2);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let args = serve_args(io, Some(&c.origin.url()), 1, &extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = Proc::spawn("ringcache", &refs);
    let said = wait_until(WAIT, || {
        proc.stderr_lines()
            .iter()
            .any(|l| l.contains("before serving") || l.contains("ready: listen="))
    });
    let ready_while_paused = proc.logged("ready: listen=");
    c.redis.pause(false);
    assert!(said, "node3 said nothing:\n{}", proc.transcript());
    assert!(
        !ready_while_paused,
        "node3 was ready before it could read what it missed:\n{}",
        proc.transcript()
    );
    let node3 = Server::wait_ready(proc, READY_DEADLINE)
        .unwrap_or_else(|e| panic!("{}", describe_start_error(&bin(), &refs, &e)));
    let lines = node3.stderr_lines();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    assert!(
        at("bus: caught up with the stream") < at("ready: listen="),
        "node3 must catch up before it is ready: {lines:?}"
    );
    c.nodes[2] = Some(node3);

    c.assert_purged(2, &missed, &untouched);
    assert_eq!(c.metric(2, "ringcache_bus_applied_total"), sent);
    assert_eq!(c.metric(2, "ringcache_bus_cache_drops_total"), 0.0);
    assert!(c.metric(2, "ringcache_store_recovered_items") >= all.len() as f64);
}

fn node_down_by_sigterm_during_purges(io: &str) {
    node_down_during_purges(io, libc::SIGTERM);
}

fn node_killed_during_purges(io: &str) {
    node_down_during_purges(io, libc::SIGKILL);
}

both_io!(
    node_down_by_sigterm_during_purges,
    node_killed_during_purges
);

/// Redis is killed (`kill -9`) and comes back with its append-only file:
/// meanwhile purges sent to node 1 apply there at once and wait in its
/// outbox; once the nodes reconnect they reach nodes 2 and 3, and no node
/// serves a purged object, none dropped its cache.
fn redis_killed_and_restarted(io: &str) {
    let Some(mut c) = Cluster::start(io, Redis::start_persistent()) else {
        return;
    };
    let purged: [(&str, Option<&str>); 3] = [
        ("/o/r1", None),
        ("/v/r2?tags=rt", Some("en")),
        ("/v/r2?tags=rt", Some("de")),
    ];
    let kept: [(&str, Option<&str>); 2] = [("/o/k", None), ("/v/r3?tags=other", Some("en"))];
    let all: Vec<_> = purged.iter().chain(&kept).copied().collect();
    c.fill(&all);
    // One entry before the outage: the stream and the positions exist.
    let r = c.invalidate(
        0,
        r#"{"urls": ["/o/none"], "wait": "all", "timeout_ms": 10000}"#,
    );
    assert_eq!(applied_nodes(&r), all_applied(), "{}", r.body_str());

    c.redis.kill9();
    for i in 0..3 {
        c.wait_metric(i, "ringcache_bus_connected", |v| v == 0.0);
    }
    let errors = c.metric(0, "ringcache_bus_publish_errors_total");
    for body in [r#"{"urls": ["/o/r1"]}"#, r#"{"tags": ["rt"]}"#] {
        let r = c.invalidate(0, body);
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(r.body_str().contains("queued"), "{}", r.body_str());
    }
    assert_eq!(
        c.metric(0, "ringcache_bus_publish_errors_total"),
        errors + 2.0
    );
    assert_eq!(c.metric(0, "ringcache_bus_outbox_entries"), 2.0);
    // Applied on node 1 at once, Redis or not.
    c.assert_purged(0, &purged, &kept);

    c.redis.restart();
    for i in 0..3 {
        c.wait_metric(i, "ringcache_bus_connected", |v| v == 1.0);
        c.wait_metric(i, "ringcache_bus_reconnects_total", |v| v >= 1.0);
    }
    c.wait_metric(0, "ringcache_bus_outbox_entries", |v| v == 0.0);
    for i in 1..3 {
        c.wait_metric(i, "ringcache_bus_applied_total", |v| v == 3.0);
    }
    for i in 0..3 {
        assert_eq!(
            c.metric(i, "ringcache_bus_cache_drops_total"),
            0.0,
            "node{}",
            i + 1
        );
    }
    for i in 1..3 {
        c.assert_purged(i, &purged, &kept);
    }
}

both_io!(redis_killed_and_restarted);

/// Redis comes back empty (no persistence): every node sees that the
/// stream's epoch changed, cannot know what it missed and drops its whole
/// cache, with a warn line.
fn redis_back_empty_drops_every_cache(io: &str) {
    let Some(mut c) = Cluster::start(io, Redis::start()) else {
        return;
    };
    let objects: [(&str, Option<&str>); 3] = [
        ("/o/e1", None),
        ("/v/e2", Some("en")),
        ("/o/e3?tags=x", None),
    ];
    c.fill(&objects);
    let r = c.invalidate(
        0,
        r#"{"urls": ["/o/none"], "wait": "all", "timeout_ms": 10000}"#,
    );
    assert_eq!(applied_nodes(&r), all_applied(), "{}", r.body_str());

    c.redis.kill9();
    c.redis.restart();
    for i in 0..3 {
        c.wait_metric(i, "ringcache_bus_cache_drops_total", |v| v == 1.0);
        c.wait_metric(i, "ringcache_bus_connected", |v| v == 1.0);
        assert!(c.metric(i, "ringcache_bus_reconnects_total") >= 1.0);
        assert!(
            c.node(i)
                .stderr_lines()
                .iter()
                .any(|l| l.contains("epoch changed") && l.contains("dropping the whole cache")),
            "node{}: no warn line",
            i + 1
        );
    }
    for i in 0..3 {
        c.assert_purged(i, &objects, &[]);
    }
    // The new stream works: an acknowledged purge reaches every node.
    let r = c.invalidate(
        2,
        r#"{"urls": ["/o/e1"], "wait": "all", "timeout_ms": 10000}"#,
    );
    assert_eq!(applied_nodes(&r), all_applied(), "{}", r.body_str());
}

both_io!(redis_back_empty_drops_every_cache);
