#!/usr/bin/env python3
"""A mass invalidation under client load: soft purge versus refresh.

    bench/refresh.py [RINGCACHE_BIN]

Starts the demo origin (every answer delayed by ORIGIN_DELAY_MS) and, for
each mode, a fresh two-worker ringcache in front of it, all on 127.0.0.1.
Fills OBJECTS objects tagged `all`, then invalidates the tag with
`"mode": "soft"` or `"mode": "refresh"` while CLIENTS threads ask for
random objects for CLIENT_SECS seconds. Reports, per mode: the clients'
latency (p50, p99, max), the requests the origin got during the run, and
for refresh the most refreshes in flight (sampled from /metrics every
50 ms) and the time until the queue was drained.

With soft, the clients pay for the refetches (each first request of a key
waits for the origin) and the origin sees them at client pace; with
refresh, the refetches run at `refresh_rate` with at most
`refresh_concurrency_max` at once, and clients are answered stale or from
the refreshed object.

Every process is stopped by PID at exit. Counts and times are bounded
(knobs below). Timings depend on the machine: compare modes within a run.
"""

import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from benchlib import free_port, pct, stop_all, wait_up

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/ringcache"
OBJECTS = int(os.environ.get("OBJECTS", "2000"))
CLIENTS = int(os.environ.get("CLIENTS", "16"))
CLIENT_SECS = float(os.environ.get("CLIENT_SECS", "3"))
ORIGIN_DELAY_MS = int(os.environ.get("ORIGIN_DELAY_MS", "20"))
REFRESH_RATE = int(os.environ.get("REFRESH_RATE", "2000"))
REFRESH_CONCURRENCY = int(os.environ.get("REFRESH_CONCURRENCY", "8"))
DRAIN_SECS_MAX = 60
TOKEN = "bench-token-0123456789abcdef"

procs = []
work = tempfile.mkdtemp(prefix="ringcache-refresh-")


def path(i):
    return f"/api/items/{i}?tags=all&max_age=300&delay_ms={ORIGIN_DELAY_MS}"


def metrics(adm):
    text = urllib.request.urlopen(f"http://127.0.0.1:{adm}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def origin_requests(port):
    stats = urllib.request.urlopen(f"http://127.0.0.1:{port}/__origin/stats", timeout=5).read()
    return json.loads(stats)["requests"]


def run_clients(port, ids, deadline, latencies, seed):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rng = random.Random(seed)
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        c.request("GET", path(rng.choice(ids)))
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"refresh.py: a client got {r.status}")
        latencies.append((time.perf_counter() - t) * 1000)
    c.close()


def scenario(mode, origin_port):
    port, adm = free_port(), free_port()
    cfg = f"{work}/{mode}.toml"
    with open(cfg, "w") as f:
        f.write(f'[admin]\ntoken = "{TOKEN}"\n[invalidation]\nrefresh_rate = {REFRESH_RATE}\n'
                f"refresh_concurrency_max = {REFRESH_CONCURRENCY}\n")
    p = subprocess.Popen(
        [BIN, "serve", "--workers", "2", "--listen", f"127.0.0.1:{port}",
         "--admin", f"127.0.0.1:{adm}", "--origin", f"http://127.0.0.1:{origin_port}",
         "--config", cfg, "--memory", "128MiB"],
        stdout=open(f"{work}/{mode}.log", "w"), stderr=subprocess.STDOUT,
        env=dict(os.environ, RINGCACHE_LOG="warn"))
    procs.append(p)
    wait_up(f"http://127.0.0.1:{adm}/healthz", "refresh.py")
    ids = list(range(OBJECTS))
    # Fill in parallel: every miss waits ORIGIN_DELAY_MS.
    fillers = [threading.Thread(target=lambda part=ids[k::16]: fill(port, part)) for k in range(16)]
    for t in fillers:
        t.start()
    for t in fillers:
        t.join()
    before = origin_requests(origin_port)
    c = http.client.HTTPConnection("127.0.0.1", adm, timeout=30)
    c.request("POST", "/invalidate", body=json.dumps({"tags": ["all"], "mode": mode}),
              headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.getresponse()
    answer = json.loads(r.read())
    if r.status != 200 or answer["invalidated"] != OBJECTS:
        sys.exit(f"refresh.py: {mode}: {r.status} {answer}")
    started = time.perf_counter()
    latencies = [[] for _ in range(CLIENTS)]
    deadline = started + CLIENT_SECS
    threads = [threading.Thread(target=run_clients, args=(port, ids, deadline, latencies[k], k))
               for k in range(CLIENTS)]
    for t in threads:
        t.start()
    peak, drained = 0.0, None
    while True:
        m = metrics(adm)
        peak = max(peak, m.get("ringcache_invalidation_refreshes_in_flight", 0.0))
        now = time.perf_counter()
        if mode == "refresh" and drained is None and \
                m.get("ringcache_invalidation_refresh_queue_depth", 1) == 0 and \
                m.get("ringcache_invalidation_refreshes_in_flight", 1) == 0:
            drained = now - started
        if now >= deadline and (mode != "refresh" or drained is not None):
            break
        if now - started > DRAIN_SECS_MAX:
            break
        time.sleep(0.05)
    for t in threads:
        t.join()
    lat = [x for part in latencies for x in part]
    fetched = origin_requests(origin_port) - before
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return {
        "mode": mode,
        "client_requests": len(lat),
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat),
        "origin_requests": fetched,
        "refresh_in_flight_peak": int(peak) if mode == "refresh" else "-",
        "queued": answer.get("queued", "-"),
        "drained_s": "-" if drained is None else round(drained, 2),
    }


def fill(port, ids):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in ids:
        c.request("GET", path(i))
        c.getresponse().read()
    c.close()


def main():
    origin_port = free_port()
    procs.append(subprocess.Popen([BIN, "origin", "--listen", f"127.0.0.1:{origin_port}"],
                                  stdout=open(f"{work}/origin.log", "w"),
                                  stderr=subprocess.STDOUT))
    wait_up(f"http://127.0.0.1:{origin_port}/api/items/1", "refresh.py")
    rows = [scenario(mode, origin_port) for mode in ("soft", "refresh")]
    print(f"objects={OBJECTS} clients={CLIENTS} client_secs={CLIENT_SECS} "
          f"origin_delay_ms={ORIGIN_DELAY_MS} refresh_rate={REFRESH_RATE} "
          f"refresh_concurrency_max={REFRESH_CONCURRENCY}")
    cols = ["mode", "client_requests", "p50_ms", "p99_ms", "max_ms", "origin_requests",
            "refresh_in_flight_peak", "queued", "drained_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols))


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)
