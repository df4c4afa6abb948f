#!/usr/bin/env bash
# Compare two ringcache binaries on the hit path, interleaved, in one run.
#
#   bench/ab.sh BASE_BIN NEW_BIN
#
# Both serve the same 1 KiB object from the demo origin (BASE_BIN's
# `origin`), one worker each, pinned to SERVER_CPU; wrk runs pinned to
# CLIENT_CPU against each in turn, ROUNDS times. Prints req/s and p99 per
# run, then the medians and NEW/BASE. Everything listens on 127.0.0.1 and
# every process is stopped by PID on exit.
#
# Extra `serve` arguments: EXTRA_ARGS for both, BASE_ARGS and NEW_ARGS for
# one side, so one binary can be compared with itself under two settings.
# Besides req/s it prints the server's CPU time per request (user +
# system, all its threads, from /proc/PID/stat around each wrk run): on a
# busy machine a build with one more thread earns more CPU share and can
# look faster in req/s, while CPU per request still shows what it costs.
# The hit-path cost of the access log, for example:
#
#   NEW_ARGS="--access-log /tmp/ab-access.log" bench/ab.sh target/release/ringcache target/release/ringcache
set -euo pipefail

BASE_BIN=${1:?usage: bench/ab.sh BASE_BIN NEW_BIN}
NEW_BIN=${2:?usage: bench/ab.sh BASE_BIN NEW_BIN}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
RINGCACHE_IO=${RINGCACHE_IO:-uring}
PATH_Q="/api/items/1?size=1024&max_age=86400"
EXTRA_ARGS=${EXTRA_ARGS:-}
BASE_ARGS=${BASE_ARGS:-}
NEW_ARGS=${NEW_ARGS:-}

command -v wrk >/dev/null || { echo "ab.sh: wrk is not installed" >&2; exit 1; }
pids=()
work=$(mktemp -d)
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_http() {
    for _ in $(seq 1 300); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "ab.sh: $1 did not come up" >&2
    exit 1
}

origin_port=$(free_port)
taskset -c "$SERVER_CPU" "$BASE_BIN" origin --listen "127.0.0.1:$origin_port" \
    >"$work/origin.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$origin_port/api/items/1"

declare -A port server_pid
for which in base new; do
    bin=$BASE_BIN
    side_args=$BASE_ARGS
    if [[ $which == new ]]; then
        bin=$NEW_BIN
        side_args=$NEW_ARGS
    fi
    port[$which]=$(free_port)
    admin=$(free_port)
    # Word splitting on purpose: the variables hold flag lists.
    # shellcheck disable=SC2086
    RINGCACHE_LOG=warn taskset -c "$SERVER_CPU" "$bin" serve --workers 1 \
        --io "$RINGCACHE_IO" --listen "127.0.0.1:${port[$which]}" \
        --admin "127.0.0.1:$admin" --origin "http://127.0.0.1:$origin_port" \
        --memory 64MiB $EXTRA_ARGS $side_args >"$work/$which.log" 2>&1 &
    pids+=($!)
    server_pid[$which]=$!
    wait_http "http://127.0.0.1:${port[$which]}$PATH_Q"
done

# CPU ticks (user + system) the process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_sec=$(getconf CLK_TCK)

declare -A rps p99 cpu
for r in $(seq 1 "$ROUNDS"); do
    for which in base new; do
        t0=$(cpu_ticks "${server_pid[$which]}")
        out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
            "http://127.0.0.1:${port[$which]}$PATH_Q")
        t1=$(cpu_ticks "${server_pid[$which]}")
        q=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        l=$(awk '$1 == "99%" {print $2}' <<<"$out")
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        u=$(awk -v t=$((t1 - t0)) -v hz="$ticks_per_sec" -v n="$n" \
            'BEGIN {printf "%.3f", (n > 0 ? t / hz * 1e6 / n : 0)}')
        rps[$which]+="$q "
        p99[$which]+="$l "
        cpu[$which]+="$u "
        printf 'round %d %-4s %10s req/s  p99 %-8s  cpu %s us/request\n' "$r" "$which" "$q" "$l" "$u"
    done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mb=$(median "${rps[base]}")
mn=$(median "${rps[new]}")
echo "median base $mb req/s, new $mn req/s, new/base $(awk -v a="$mn" -v b="$mb" 'BEGIN {printf "%.3f", a/b}')"
cb=$(median "${cpu[base]}")
cn=$(median "${cpu[new]}")
echo "median cpu base $cb us/request, new $cn us/request, new/base $(awk -v a="$cn" -v b="$cb" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')"
echo "p99 base: ${p99[base]}"
echo "p99 new:  ${p99[new]}"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
