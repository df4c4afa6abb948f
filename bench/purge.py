#!/usr/bin/env python3
"""Purge throughput and purge-to-applied latency across a three-node cluster.

    bench/purge.py [RINGCACHE_BIN]

Starts redis-server, the demo origin and three ringcache nodes on one Redis
stream (`serve --bus`), all on 127.0.0.1, fills every node with tagged
objects, then measures through node 1's admin API:

- URL purges per second (`{"urls": [...]}`, one per request, no waiting);
- tag purges per second (`{"tags": [...]}`);
- purge-to-applied latency on all nodes: `"wait": "all"`, the time until
  node 1 has every node's acknowledgement (p50, p99, max).

Every process is stopped by PID at exit. Counts are bounded (knobs below).
"""

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import free_port, pct, stop_all, wait_up

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/ringcache"
URL_PURGES = int(os.environ.get("URL_PURGES", "2000"))
TAG_PURGES = int(os.environ.get("TAG_PURGES", "500"))
ACKED_PURGES = int(os.environ.get("ACKED_PURGES", "300"))
OBJECTS = int(os.environ.get("OBJECTS", "500"))
TOKEN = "bench-token-0123456789abcdef"

procs = []
work = tempfile.mkdtemp(prefix="ringcache-purge-")


def spawn(args, log):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def admin(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body).encode()
    c.request("POST", "/invalidate", body=data,
              headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    r = c.getresponse()
    out = r.read()
    c.close()
    if r.status != 200:
        sys.exit(f"purge.py: /invalidate answered {r.status}: {out!r}")
    return json.loads(out)


def fill(port, ids):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in ids:
        c.request("GET", f"/api/items/{i}?tags=t{i % 50},all")
        c.getresponse().read()
    c.close()


def main():
    if not shutil.which("redis-server"):
        sys.exit("purge.py: redis-server is not installed")
    redis_port = free_port()
    spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", work], f"{work}/redis.log")
    origin_port = free_port()
    spawn([BIN, "origin", "--listen", f"127.0.0.1:{origin_port}"], f"{work}/origin.log")
    wait_up(f"http://127.0.0.1:{origin_port}/api/items/1", "purge.py")
    cfg = f"{work}/ringcache.toml"
    with open(cfg, "w") as f:
        f.write(f'[admin]\ntoken = "{TOKEN}"\n')
    nodes = []
    for n in range(3):
        port, adm = free_port(), free_port()
        env = dict(os.environ, RINGCACHE_LOG="warn")
        procs.append(subprocess.Popen(
            [BIN, "serve", "--workers", "1", "--listen", f"127.0.0.1:{port}",
             "--admin", f"127.0.0.1:{adm}", "--origin", f"http://127.0.0.1:{origin_port}",
             "--config", cfg, "--memory", "64MiB", "--store", f"{work}/store{n}",
             "--bus", f"redis://127.0.0.1:{redis_port}/bench-inv", "--bus-node", f"node{n + 1}"],
            stdout=open(f"{work}/node{n}.log", "w"), stderr=subprocess.STDOUT, env=env))
        nodes.append((port, adm))
    for port, adm in nodes:
        wait_up(f"http://127.0.0.1:{adm}/healthz", "purge.py")
        fill(port, range(OBJECTS))
    time.sleep(1)  # heartbeats: every node is live before acks are awaited

    t = time.perf_counter()
    for i in range(URL_PURGES):
        admin(nodes[0][1], {"urls": [f"/api/items/{i % OBJECTS}?tags=t{i % 50},all"],
                            "host": "127.0.0.1"})
    url_rate = URL_PURGES / (time.perf_counter() - t)

    t = time.perf_counter()
    for i in range(TAG_PURGES):
        admin(nodes[0][1], {"tags": [f"t{i % 50}"]})
    tag_rate = TAG_PURGES / (time.perf_counter() - t)

    lat = []
    for i in range(ACKED_PURGES):
        t = time.perf_counter()
        a = admin(nodes[0][1], {"urls": [f"/api/items/{i % OBJECTS}"], "host": "127.0.0.1",
                                "wait": "all", "timeout_ms": 5000})
        lat.append((time.perf_counter() - t) * 1000)
        if sorted(n["node"] for n in a["nodes"] if n["applied"]) != ["node1", "node2", "node3"]:
            sys.exit(f"purge.py: not every node acknowledged: {a}")

    print(f"URL purges/s (node 1's admin API, one per request): {url_rate:,.0f}")
    print(f"tag purges/s: {tag_rate:,.0f}")
    print(f"purge-to-applied on all 3 nodes, {ACKED_PURGES} acknowledged purges: "
          f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, max {max(lat):.1f} ms")
    print(f"load average: {os.getloadavg()}")


try:
    main()
finally:
    stop_all(procs, within=15)
    shutil.rmtree(work, ignore_errors=True)
