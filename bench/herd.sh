#!/usr/bin/env bash
# ringcache herd bench: CLIENTS x KEYS requests for cold keys fired at once
# at ringcache, nginx (proxy_cache_lock on) and Varnish, all in front of the
# demo origin answering after a fixed delay. Reports per server the origin
# fetches per key (the origin's own per-path counter), client latency
# p50/p99/max and errors, medians over interleaved rounds.
#
# Usage: bench/herd.sh                     (3 rounds, 100 clients x 10 keys, 100 ms)
#        ROUNDS=1 bench/herd.sh            (a quick check)
#
# Knobs (environment):
#   ROUNDS          interleaved rounds [3]
#   HERD_CLIENTS    requests per key, each on its own connection [100]
#   HERD_KEYS       cold keys per herd [10]
#   HERD_DELAY_MS   the origin's answer delay (delay_ms= knob) [100]
#   HERD_TIMEOUT    seconds one herd may take before the rest count as errors [30]
#   SERVERS         any of: ringcache nginx varnish origin [all four];
#                   `origin` sends the herd straight to the demo origin, no
#                   cache: the client's own floor (every request is a fetch)
#   RINGCACHE_IO, RINGCACHE_WORKERS, SKIP_BUILD, RINGCACHE_BIN, SERVER_CPU,
#   CLIENT_CPU, MEMORY, RESULTS_DIR, KEEP_TMP: as for bench/run.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
BENCH_NAME=herd
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

ROUNDS=${ROUNDS:-3}
HERD_CLIENTS=${HERD_CLIENTS:-100}
HERD_KEYS=${HERD_KEYS:-10}
HERD_DELAY_MS=${HERD_DELAY_MS:-100}
HERD_TIMEOUT=${HERD_TIMEOUT:-30}
SERVERS=${SERVERS:-"ringcache nginx varnish origin"}
RINGCACHE_IO=${RINGCACHE_IO:-auto}
RINGCACHE_WORKERS=${RINGCACHE_WORKERS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
RINGCACHE_BIN=${RINGCACHE_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/ringcache}
ORIGIN=ringcache
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
MEMORY=${MEMORY:-256MiB}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}

for v in ROUNDS HERD_CLIENTS HERD_KEYS HERD_DELAY_MS HERD_TIMEOUT RINGCACHE_WORKERS; do
    is_posint "${!v}" || die "$v must be a positive integer, got '${!v}'"
done
for s in $SERVERS; do
    case $s in ringcache | nginx | varnish | origin) ;; *) die "SERVERS: unknown server '$s'" ;; esac
done
case $RINGCACHE_IO in auto | uring | epoll) ;; *) die "RINGCACHE_IO must be auto, uring or epoll" ;; esac
for tool in taskset curl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

find_peers
SERVERS=$(keep_installed "$SERVERS")
[[ -n $SERVERS ]] || die "no server left to measure"
check_cpus
check_fds $((HERD_CLIENTS * HERD_KEYS))
build_ringcache

n_runs=$(($(count_words "$SERVERS") * ROUNDS))
log "plan: servers=[$SERVERS] rounds=$ROUNDS, $HERD_CLIENTS clients x $HERD_KEYS keys, origin delay ${HERD_DELAY_MS}ms"
log "plan: $n_runs herds, expected total about $((n_runs * 3 + 20))s"
log "pinning: servers and origin on CPU $SERVER_CPU, herd client on CPU $CLIENT_CPU; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

init_work
start_servers "$SERVERS"

# Varnish's rush_exponent: how many waiters one finished fetch wakes.
rush_exponent() {
    if has_word "$SERVERS" varnish && command -v varnishadm >/dev/null; then
        varnishadm -n "$WORK/varnish" param.show rush_exponent 2>/dev/null |
            awk '/Value is/ { print $3; exit }' || true
    fi
}

STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$RESULTS_DIR/herd-$STAMP
mkdir -p "$RAW"
write_env "$RAW/env.txt" \
    "servers: $SERVERS; rounds: $ROUNDS; herd: $HERD_CLIENTS clients x $HERD_KEYS keys; origin delay: ${HERD_DELAY_MS}ms; timeout: ${HERD_TIMEOUT}s"

ROWS=$RAW/herd-rows.txt
: >"$ROWS"
for ((round = 1; round <= ROUNDS; round++)); do
    for server in $SERVERS; do
        herd_once "$server" "$round" "$HERD_CLIENTS" "$HERD_KEYS" "$HERD_DELAY_MS" "$STAMP" "$ROWS"
        sleep 0.5
    done
done
save_counters "$RAW" "$SERVERS"
echo "loadavg at end: $(cat /proc/loadavg)" >>"$RAW/env.txt"

{
    echo "# ringcache herd bench, $STAMP"
    echo
    echo "Load average at start: $(grep -m1 'loadavg at start' "$RAW/env.txt" | cut -d: -f2- | cut -d' ' -f2-4), at the end: $(cut -d' ' -f1-3 /proc/loadavg); see env.txt."
    herd_table "$ROWS" "herd" "$SERVERS" "$HERD_DELAY_MS"
    echo
    echo "Target for ringcache: 1 origin fetch per key, p99 within 10 ms of the origin delay."
    if has_word "$SERVERS" nginx; then
        echo "nginx: proxy_cache_lock on, proxy_cache_lock_timeout 5s, proxy_cache_lock_age 5s;"
        echo "its waiters look at the lock on a 500 ms timer."
    fi
    if has_word "$SERVERS" varnish; then
        echo "Varnish: default waiting list (rush_exponent $(rush_exponent))."
    fi
    if has_word "$SERVERS" origin; then
        echo "\`origin\`: the herd straight to the demo origin, no cache: the client's own floor."
    fi
} >"$RAW/summary.md"
cat "$RAW/summary.md"
echo
echo "Summary: $RAW/summary.md"
