#!/usr/bin/env python3
"""Development stand-in for `ringcache origin`, for checking the bench kit
while the ringcache binary cannot serve yet. Real runs use `ringcache origin`
(bench/run.sh does unless ORIGIN=stub is set).

Serves the same routes as the demo origin:
  GET /api/items/{id}?size=BYTES&max_age=SECS  JSON body of exactly `size`
      bytes, Cache-Control: public, max-age=SECS (default 60), ETag,
      Last-Modified
  GET /__origin/stats  {"requests": N, "by_path": {...}}
"""
import argparse
import email.utils
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
COUNTS = {"requests": 0, "by_path": {}}
STARTED = email.utils.formatdate(usegmt=True)


def item_body(item, size):
    head = '{"id":"%s","pad":"' % item
    tail = '"}'
    fill = max(0, size - len(head) - len(tail))
    body = (head + ("abcdefghijklmnopqrstuvwxyz" * (fill // 26 + 1))[:fill] + tail).encode()
    return body[:size] if len(body) > size else body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send_body(self, status, body, headers):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/__origin/stats":
            with LOCK:
                body = json.dumps(COUNTS).encode()
            self.send_body(200, body, [("Content-Type", "application/json"),
                                       ("Cache-Control", "no-store")])
            return
        with LOCK:
            COUNTS["requests"] += 1
            COUNTS["by_path"][url.path] = COUNTS["by_path"].get(url.path, 0) + 1
        if not url.path.startswith("/api/items/"):
            self.send_body(404, b"not found\n", [("Content-Type", "text/plain")])
            return
        q = parse_qs(url.query)
        size = int(q.get("size", ["256"])[0])
        max_age = int(q.get("max_age", ["60"])[0])
        item = url.path[len("/api/items/"):]
        body = item_body(item, size)
        etag = '"%s"' % hashlib.sha1(body).hexdigest()[:16]
        self.send_body(200, body, [
            ("Content-Type", "application/json"),
            ("Cache-Control", "public, max-age=%d" % max_age),
            ("ETag", etag),
            ("Last-Modified", STARTED),
        ])

    do_HEAD = do_GET


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:8081")
    p.add_argument("--threads", type=int, default=0, help="ignored")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.serve_forever()


if __name__ == "__main__":
    main()
