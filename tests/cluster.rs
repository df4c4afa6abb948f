//! A ringcache cluster: three nodes sharing invalidations over one Redis
//! stream, and the deploy/cluster/ front (haproxy, consistent URI hashing).
//!
//! Three real nodes (`serve --bus`) share an invalidation sent to one of
//! them; three `Bus` instances driven through their public API (each
//! standing for a node whose cache is a set of URLs) cover delivery, acks
//! and a returning node. Skipped, with a printed reason, when `redis-server`
//! (or, for the front, `haproxy`) is not installed.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ringcache::bus::resp::{Conn, ReplyLimits};
use ringcache::bus::{Bus, BusConfig, EntryId};
use ringcache::metrics::Metrics as NodeMetrics;

/// Bound of every wait in this suite.
const WAIT: Duration = Duration::from_secs(15);

fn installed(program: &str) -> bool {
    let ok = Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipped: {program} is not installed");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on a free loopback port, without persistence (stopped by
/// PID when dropped).
struct Redis {
    _proc: Proc,
    port: u16,
    _dir: TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        if !installed("redis-server") {
            return None;
        }
        let port = free_port();
        let dir = TempDir::new("redis");
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
                "no",
                "--dir",
                dir.path().to_str().unwrap(),
            ],
        );
        let up = wait_until(WAIT, || {
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
        });
        assert!(up, "redis-server did not answer on port {port}");
        Some(Redis {
            _proc: proc,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/ringcache-inv", self.port)
    }
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

fn front_sends_each_uri_to_one_node(io: &str) {
    let Some(redis) = Redis::start() else { return };
    if !installed("haproxy") {
        return;
    }
    let origin = DemoOrigin::start();
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("front{i}"))).collect();
    let mut servers = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let store = d.path().join("store");
        let node = format!("node{}", i + 1);
        let extra = [
            "--store",
            store.to_str().unwrap(),
            "--bus",
            &redis.url(),
            "--bus-node",
            &node,
        ];
        let Some(s) = Server::serve(io, Some(&origin.url()), 1, &extra) else {
            return;
        };
        servers.push(s);
    }
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
}

both_io!(front_sends_each_uri_to_one_node);

const TOKEN: &str = "cluster-token-0123456789";

/// One admin `POST` on a fresh connection, with the token.
fn admin_post(server: &Server, path: &str, body: &str) -> Response {
    let mut c = Client::connect(server.admin);
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    c.read_response()
}

/// An invalidation sent to one node's admin API is applied by every node
/// through the bus; `"wait": "all"` answers once all three applied it.
fn an_invalidation_reaches_every_node(io: &str) {
    let Some(redis) = Redis::start() else { return };
    let origin = DemoOrigin::start();
    let (_cfg_dir, cfg) = config_file(&format!("[admin]\ntoken = \"{TOKEN}\"\n"));
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("bus{i}"))).collect();
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
        let Some(s) = Server::serve(io, Some(&origin.url()), 1, &extra) else {
            return;
        };
        servers.push(s);
    }
    for s in &servers {
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
    let r = admin_post(
        &servers[0],
        "/invalidate",
        r#"{"urls": ["/api/items/7"], "wait": "all", "timeout_ms": 10000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let answer: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut applied: Vec<(String, bool)> = answer["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["applied"].as_bool().unwrap(),
            )
        })
        .collect();
    applied.sort();
    let want: Vec<(String, bool)> = (1..=3).map(|i| (format!("node{i}"), true)).collect();
    assert_eq!(applied, want, "{answer}");
    // Acknowledged means applied: no node answers the purged URL from its
    // store any more, and the others are untouched.
    for s in &servers {
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
