#!/usr/bin/env python3
"""Herd client of the ringcache bench kit: CLIENTS x KEYS requests at once.

Opens one connection per request (CLIENTS for each of KEYS keys), in paced
batches, waits until all are connected, then sends every request in one burst, interleaving the
keys so each key's first request goes out early, and reads every response
with one epoll loop. A request's latency runs from its own send to the last
byte of its response.

Prints one machine-readable line that bench/lib.sh parses:

  HERD_RESULT ok=N errors=N connect_errors=N non200=N timeouts=N
              bad_body=N p50_ms=X p99_ms=X max_ms=X spread_ms=X

`spread_ms` is the time from the first send to the last: how "at once" the
burst was. Percentiles are nearest-rank over the requests answered 200 with
a complete body. Standard library only; Linux only (epoll).
"""
import argparse
import errno
import select
import socket
import sys
import time

# Bytes read per recv call.
RECV_BYTES = 65536
# Largest response head accepted before the response counts as bad.
HEAD_BYTES_MAX = 16384


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", required=True, help="path before the key number")
    p.add_argument("--query", default="", help="query string after the key number")
    p.add_argument("--clients", type=int, required=True, help="requests per key")
    p.add_argument("--keys", type=int, required=True, help="distinct keys")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for the whole herd")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--dump", help="write one line per request: key, send offset ms, latency ms, status")
    p.add_argument("--connect-batch", type=int, default=100,
                   help="connections opened before each pause")
    p.add_argument("--connect-pause", type=float, default=0.02, help="seconds")
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds between the last connect and the burst, so servers accept")
    return p.parse_args()


class Conn:
    __slots__ = ("sock", "key", "request", "sent_ns", "done_ns", "buf", "status",
                 "body_start", "length", "chunked", "error")

    def __init__(self, sock, key, request):
        self.sock = sock
        self.key = key
        self.request = request
        self.sent_ns = 0
        self.done_ns = 0
        self.buf = bytearray()
        self.status = 0
        self.body_start = -1
        self.length = -1
        self.chunked = False
        self.error = ""


def parse_head(c):
    """Fills status/body_start/length/chunked once the head is complete."""
    end = c.buf.find(b"\r\n\r\n")
    if end < 0:
        if len(c.buf) > HEAD_BYTES_MAX:
            c.error = "head_too_large"
        return
    lines = bytes(c.buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        c.status = int(parts[1])
    except (IndexError, ValueError):
        c.error = "bad_status_line"
        return
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            c.length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            c.chunked = True
    c.body_start = end + 4


def complete(c):
    """True when the whole response is in the buffer."""
    if c.body_start < 0:
        parse_head(c)
        if c.body_start < 0:
            return False
    if c.chunked:
        return c.buf.endswith(b"0\r\n\r\n")
    if c.length >= 0:
        return len(c.buf) - c.body_start >= c.length
    return False  # delimited by close: finished when the peer closes


def percentile(sorted_ms, q):
    if not sorted_ms:
        return 0.0
    rank = max(1, -(-len(sorted_ms) * q // 100))  # nearest rank, ceil
    return sorted_ms[int(rank) - 1]


def main():
    a = parse_args()
    total = a.clients * a.keys
    host_field = "%s:%d" % (a.host, a.port)
    query = ("?" + a.query) if a.query else ""
    conns = []
    # Interleave keys: request i goes to key i % keys.
    for i in range(total):
        key = i % a.keys
        req = ("GET %s%d%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ringcache-herd\r\n"
               "Accept: */*\r\n\r\n" % (a.prefix, key, query, host_field)).encode()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(Conn(s, key, req))

    ep = select.epoll(total + 1)
    by_fd = {}
    connecting = set()
    for i, c in enumerate(conns):
        if i and i % a.connect_batch == 0:
            # Paced, so that a listen backlog (128 for some servers) is not
            # overrun: a dropped handshake would add a retransmission timeout
            # to the latency of that request.
            time.sleep(a.connect_pause)
        rc = c.sock.connect_ex((a.host, a.port))
        if rc not in (0, errno.EINPROGRESS):
            c.error = "connect:" + errno.errorcode.get(rc, str(rc))
            continue
        fd = c.sock.fileno()
        by_fd[fd] = c
        ep.register(fd, select.EPOLLOUT)
        connecting.add(fd)

    deadline = time.monotonic() + a.connect_timeout
    while connecting and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.1):
            c = by_fd[fd]
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                c.error = "connect:" + errno.errorcode.get(err, str(err))
            ep.unregister(fd)
            connecting.discard(fd)
    for fd in connecting:
        by_fd[fd].error = "connect:timeout"
        ep.unregister(fd)
    time.sleep(a.settle)

    # The burst.
    live = [c for c in conns if not c.error]
    first_ns = time.perf_counter_ns()
    for c in live:
        c.sent_ns = time.perf_counter_ns()
        try:
            n = c.sock.send(c.request)
            if n != len(c.request):
                c.error = "short_send"
        except OSError as e:
            c.error = "send:" + errno.errorcode.get(e.errno or 0, str(e))
    last_ns = time.perf_counter_ns()

    waiting = 0
    for c in live:
        if c.error:
            continue
        ep.register(c.sock.fileno(), select.EPOLLIN)
        waiting += 1

    deadline = time.monotonic() + a.timeout
    while waiting and time.monotonic() < deadline:
        for fd, _ in ep.poll(0.05):
            c = by_fd[fd]
            try:
                data = c.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError as e:
                data = None
                c.error = "recv:" + errno.errorcode.get(e.errno or 0, str(e))
            finished = False
            if data:
                c.buf += data
                if complete(c):
                    finished = True
                elif c.error:
                    finished = True
            elif not c.error:
                # Peer closed: complete only for a close-delimited body.
                if c.body_start >= 0 and c.length < 0 and not c.chunked:
                    finished = True
                else:
                    c.error = "closed_early"
            if finished or c.error:
                c.done_ns = time.perf_counter_ns()
                ep.unregister(fd)
                waiting -= 1

    connect_errors = sum(1 for c in conns if c.error.startswith("connect:"))
    timeouts = 0
    non200 = 0
    bad_body = 0
    latencies_ms = []
    for c in conns:
        if c.error:
            continue
        if not c.done_ns:
            timeouts += 1
            continue
        if c.status != 200:
            non200 += 1
            continue
        if c.length == 0 and not c.chunked:
            bad_body += 1
            continue
        latencies_ms.append((c.done_ns - c.sent_ns) / 1e6)
    other_errors = sum(1 for c in conns if c.error and not c.error.startswith("connect:"))
    for c in conns:
        c.sock.close()
    latencies_ms.sort()
    if a.dump:
        with open(a.dump, "w") as out:
            out.write("# key send_offset_ms latency_ms status error\n")
            for c in conns:
                lat = (c.done_ns - c.sent_ns) / 1e6 if c.done_ns and c.sent_ns else -1
                off = (c.sent_ns - first_ns) / 1e6 if c.sent_ns else -1
                out.write("%d %.3f %.3f %d %s\n" % (c.key, off, lat, c.status, c.error or "-"))
    errors = total - len(latencies_ms)
    kinds = {}
    for c in conns:
        if c.error:
            kinds[c.error] = kinds.get(c.error, 0) + 1
    if kinds:
        print("error kinds: " + ", ".join("%s=%d" % kv for kv in sorted(kinds.items())),
              file=sys.stderr)
    print("HERD_RESULT ok=%d errors=%d connect_errors=%d non200=%d timeouts=%d "
          "other_errors=%d bad_body=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f spread_ms=%.1f"
          % (len(latencies_ms), errors, connect_errors, non200, timeouts, other_errors,
             bad_body, percentile(latencies_ms, 50), percentile(latencies_ms, 99),
             latencies_ms[-1] if latencies_ms else 0.0, (last_ns - first_ns) / 1e6))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
