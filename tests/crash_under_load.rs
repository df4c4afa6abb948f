//! `kill -9` while wrk fills and reads the store: the next start on the same
//! store file recovers the intact items, drops the torn ones, and never
//! answers with a byte the origin did not send.
//!
//! wrk runs a Lua script over a few thousand distinct keys of the demo
//! origin, whose bodies are a function of the path alone, so every answer
//! after the restart (hit or miss) can be compared with the origin's.
//! Skipped, with a printed reason, when `wrk` is not installed.

#[macro_use]
mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Distinct keys wrk requests.
const KEYS: u64 = 3000;
/// Items the store must hold before the kill: the fill is well under way,
/// and wrk's requests for the keys already stored are hits.
const STORED_BEFORE_KILL_MIN: f64 = 1500.0;
/// Bound of every wait here.
const WAIT: Duration = Duration::from_secs(30);
/// wrk's own bound (it is stopped by PID long before).
const WRK_SECS_MAX: u64 = 60;

/// Key `i`: bodies from 256 bytes to about 48 KiB, so that some items span
/// many pages of the store when the process dies.
fn key_path(i: u64) -> String {
    format!("/api/items/{i}?size={}", 256 + (i * 7919) % 49_152)
}

/// Random keys among [`KEYS`], each wrk thread with its own seed, with the
/// `Host` the test client sends (the key includes it).
fn wrk_script() -> String {
    format!(
        r#"local keys = {KEYS}
local seq = 0
function setup(thread)
  seq = seq + 1
  thread:set("seed", seq)
end
function init(args)
  math.randomseed(seed * 7919)
  wrk.headers["Host"] = "ringcache.test"
end
function request()
  local i = math.random(0, keys - 1)
  local size = 256 + (i * 7919) % 49152
  return wrk.format("GET", "/api/items/" .. i .. "?size=" .. size)
end
"#
    )
}

#[track_caller]
fn assert_no_panic(server: &Server, when: &str) {
    let lines = server.stderr_lines();
    assert!(
        !lines.iter().any(|l| l.contains("panicked")),
        "{when}: a panic in the log:\n{}",
        server.proc.transcript()
    );
}

fn kill9_under_wrk_load(io: &str) {
    if !installed("wrk") {
        return;
    }
    let origin = DemoOrigin::start();
    let dir = TempDir::new("kill9wrk");
    let store = dir.path().join("store");
    let script = dir.write("keys.lua", &wrk_script());
    let extra = ["--store", store.to_str().unwrap(), "--memory", "256MiB"];
    let Some(mut server) = Server::serve(io, Some(&origin.url()), 2, &extra) else {
        return;
    };

    let url = server.url();
    let duration = format!("{WRK_SECS_MAX}s");
    let mut wrk = Proc::spawn_bin(
        Path::new("wrk"),
        "wrk",
        &[
            "-t2",
            "-c16",
            "-d",
            &duration,
            "--timeout",
            "2s",
            "-s",
            script.to_str().unwrap(),
            &url,
        ],
    );
    // The store is being filled and read: enough items stored, and hits.
    let mut seen = (0.0, 0.0);
    let loaded = wait_until(WAIT, || {
        let m = server.metrics();
        seen = (
            m.value("ringcache_store_items"),
            m.value("ringcache_cache_hits_total"),
        );
        seen.0 >= STORED_BEFORE_KILL_MIN && seen.1 > 0.0
    });
    assert!(
        loaded,
        "wrk did not load the server: (items, hits) {seen:?}"
    );
    assert!(wrk.try_wait().is_none(), "wrk ended before the kill");
    server.proc.signal(libc::SIGKILL);
    let status = server.wait_exit(WAIT).expect("the server exits on SIGKILL");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(
        wrk.try_wait().is_none(),
        "wrk was still running when the server died"
    );
    assert_no_panic(&server, "before the kill");
    drop(server);
    wrk.signal(libc::SIGINT);
    if wrk.wait_timeout(Duration::from_secs(5)).is_none() {
        wrk.terminate(Duration::from_secs(1));
    }

    let server = Server::serve(io, Some(&origin.url()), 2, &extra).expect("restart");
    let m = server.metrics();
    let recovered = m.value("ringcache_store_recovered_items");
    let dropped = m
        .get("ringcache_store_dropped_items")
        .expect("ringcache_store_dropped_items is reported");
    assert!(recovered > 0.0, "nothing recovered: {}", m.text);
    assert!(
        server.logged("unclean stop"),
        "the restart must see an unclean stop:\n{}",
        server.proc.transcript()
    );

    // Every key, hit or miss, is byte for byte what the origin sends.
    let (mut proxy, mut direct) = (server.client(), Client::connect(origin.addr));
    let mut hits = 0u64;
    for i in 0..KEYS {
        let path = key_path(i);
        let want = direct.get(&path);
        assert_eq!(want.status, 200, "origin {path}: {}", want.summary());
        let got = proxy.get(&path);
        assert_eq!(got.status, 200, "{path}: {}", got.summary());
        assert!(
            got.body == want.body,
            "{path}: {} bytes differ from the origin's {} ({})",
            got.body.len(),
            want.body.len(),
            got.summary()
        );
        hits += u64::from(got.is_hit());
    }
    assert!(hits > 0, "no key answered from the recovered store");
    assert_no_panic(&server, "after the restart");
    eprintln!(
        "kill -9 under wrk ({io}): {recovered} items recovered, {dropped} dropped, {hits} of {KEYS} keys hits after the restart"
    );
}

both_io!(kill9_under_wrk_load);
