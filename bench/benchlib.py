"""What the Python benchmarks share: free loopback ports, waiting for a
server to answer, percentiles, and stopping every process they started, by
PID."""

import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_up(url, who, within=30):
    """Return once `url` answers; exit with a message naming `who` if it
    does not within `within` seconds."""
    end = time.time() + within
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{who}: {url} did not come up")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def stop_all(procs, within=20):
    """SIGTERM every process still running, then SIGKILL whatever has not
    exited `within` seconds later."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=within)
        except subprocess.TimeoutExpired:
            p.kill()
