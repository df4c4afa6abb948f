#!/usr/bin/env bash
# A three-node ringcache cluster on one machine, all on loopback:
#   redis-server 127.0.0.1:6390   the invalidation bus (stream "ringcache-inv")
#   ringcache origin 127.0.0.1:8090  the demo origin
#   ringcache nodes  127.0.0.1:808{1,2,3}, admin 127.0.0.1:918{1,2,3}
#   haproxy          127.0.0.1:8000  (balance uri, hash-type consistent)
# Ctrl-C stops everything it started (by PID). State lives in $RUN_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/ringcache}
RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/ringcache-cluster.XXXXXX)}
REDIS_PORT=${REDIS_PORT:-6390}
[ -x "$BIN" ] || cargo build --release

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$RUN_DIR" >"$RUN_DIR/redis.log" 2>&1 &
pids+=($!)
"$BIN" origin --listen 127.0.0.1:8090 2>"$RUN_DIR/origin.log" &
pids+=($!)
for n in 1 2 3; do
    "$BIN" serve --origin http://127.0.0.1:8090 \
        --listen "127.0.0.1:808$n" --admin "127.0.0.1:918$n" \
        --store "$RUN_DIR/node$n.store" --memory 64MiB --workers 1 \
        --bus "redis://127.0.0.1:$REDIS_PORT/ringcache-inv" --bus-node "node$n" \
        2>"$RUN_DIR/node$n.log" &
    pids+=($!)
done
haproxy -db -f deploy/cluster/haproxy.cfg 2>"$RUN_DIR/haproxy.log" &
pids+=($!)

echo "cluster up: curl -si 127.0.0.1:8000/api/items/1 ; logs and state in $RUN_DIR"
wait -n
