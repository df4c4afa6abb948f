#!/usr/bin/env bash
# ringcache bench driver: ringcache against nginx (proxy_cache), Varnish and
# a bare nginx `return 200` responder, all on one pinned server core, with
# wrk on the other core. See bench/README.md for what each peer does and how
# to read the tables.
#
# Usage: bench/run.sh            (defaults: ~22 minutes on a quiet machine)
#        ROUNDS=1 DURATION=3 CONNS=64 bench/run.sh      (a quick check)
#
# Knobs (environment):
#   ROUNDS        repetitions of every (scenario, conns, server) run [5]
#   DURATION      seconds per wrk run [10]
#   CONNS         wrk connection counts, space-separated ["64 256"]
#   SCENARIOS     any of: hit-1k hit-16k uniform-10k [all three]
#   SERVERS       any of: ringcache nginx varnish bare [all four]
#   RINGCACHE_IO  --io for ringcache: auto | uring | epoll [auto]
#   SKIP_BUILD=1  do not run `cargo build --release`
#   RINGCACHE_BIN path of the ringcache binary [target/release/ringcache]
#   ORIGIN        ringcache (the demo origin, for real runs) | stub
#                 (bench/stub_origin.py, only for checking the kit) [ringcache]
#   WARM_UNIFORM  1: fetch all 10k keys once before uniform-10k is measured;
#                 0: measure from a cold cache (round 1 then includes misses) [1]
#   SERVER_CPU    core for origin, ringcache, nginx, varnishd [1]
#   CLIENT_CPU    core for wrk [0]
#   MEMORY        cache size for every proxy [256MiB]
#   RESULTS_DIR   where CSV and raw wrk output go [bench/results]
#   KEEP_TMP=1    keep the temporary directory (configs, server logs)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNS=${CONNS:-"64 256"}
SCENARIOS=${SCENARIOS:-"hit-1k hit-16k uniform-10k"}
SERVERS=${SERVERS:-"ringcache nginx varnish bare"}
RINGCACHE_IO=${RINGCACHE_IO:-auto}
SKIP_BUILD=${SKIP_BUILD:-0}
RINGCACHE_BIN=${RINGCACHE_BIN:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/ringcache}
ORIGIN=${ORIGIN:-ringcache}
WARM_UNIFORM=${WARM_UNIFORM:-1}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
MEMORY=${MEMORY:-256MiB}
RESULTS_DIR=${RESULTS_DIR:-$BENCH_DIR/results}
KEEP_TMP=${KEEP_TMP:-0}

# Objects must not expire while the bench runs.
MAX_AGE=86400
UNIFORM_KEYS=10000

# ---------------------------------------------------------------- checks

is_posint "$ROUNDS" || die "ROUNDS must be a positive integer, got '$ROUNDS'"
is_posint "$DURATION" || die "DURATION must be whole seconds, got '$DURATION'"
for c in $CONNS; do
    is_posint "$c" || die "CONNS: '$c' is not a positive integer"
done
for s in $SCENARIOS; do
    case $s in hit-1k | hit-16k | uniform-10k) ;; *) die "SCENARIOS: unknown scenario '$s'" ;; esac
done
for s in $SERVERS; do
    case $s in ringcache | nginx | varnish | bare) ;; *) die "SERVERS: unknown server '$s'" ;; esac
done
case $RINGCACHE_IO in auto | uring | epoll) ;; *) die "RINGCACHE_IO must be auto, uring or epoll" ;; esac
case $ORIGIN in ringcache | stub) ;; *) die "ORIGIN must be ringcache or stub" ;; esac

for tool in wrk taskset curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y wrk util-linux curl)"
done

find_peers
SERVERS=$(keep_installed "$SERVERS")
[[ -n $SERVERS ]] || die "no server left to measure"
check_cpus

# ---------------------------------------------------------------- plan

n_scen=$(count_words "$SCENARIOS")
n_conns=$(count_words "$CONNS")
n_serv=$(count_words "$SERVERS")
n_runs=$((n_scen * n_conns * ROUNDS * n_serv))
measure_s=$((n_runs * DURATION))
# ~2 s per run of settling and bookkeeping, ~20 s per scenario of warm-up,
# ~30 s of start-up (the build is not counted).
expected_s=$((measure_s + n_runs * 2 + n_scen * 20 + 30))
log "plan: scenarios=[$SCENARIOS] conns=[$CONNS] servers=[$SERVERS] rounds=$ROUNDS duration=${DURATION}s"
log "plan: $n_runs wrk runs, ${measure_s}s of measurement; expected total about $((expected_s / 60))m$((expected_s % 60))s (without the build)"
log "pinning: servers and origin on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- build

need_ringcache=0
if has_word "$SERVERS" ringcache || [[ $ORIGIN == ringcache ]]; then
    need_ringcache=1
fi
if ((need_ringcache)); then
    build_ringcache
fi
if [[ $ORIGIN == stub ]]; then
    command -v python3 >/dev/null || die "ORIGIN=stub needs python3"
    log "warning: ORIGIN=stub: the origin is bench/stub_origin.py, for checking the kit only"
fi

# ---------------------------------------------------------------- processes

init_work
FAILED_SCENARIOS=()
start_servers "$SERVERS"

# ---------------------------------------------------------------- scenarios

# Sets S_SIZE, S_KEYS, S_PATH (the single key, or key 0) and S_FMT.
scenario_def() {
    case $1 in
        hit-1k) S_SIZE=1024 S_KEYS=1 ;;
        hit-16k) S_SIZE=16384 S_KEYS=1 ;;
        uniform-10k) S_SIZE=1024 S_KEYS=$UNIFORM_KEYS ;;
    esac
    S_FMT="/api/items/%d?size=$S_SIZE&max_age=$MAX_AGE"
    # shellcheck disable=SC2059 # S_FMT is our own format string
    S_PATH=$(printf "$S_FMT" 1)
}

# check_hit SERVER PATH: 0 if PATH is answered 200, with the scenario's body
# size and, for the caches, the server's hit marker.
check_hit() {
    local server=$1 path=$2 port hdrs
    port=$(server_port "$server")
    hdrs=$(curl -s --max-time 5 -D - -o "$WORK/body" "http://127.0.0.1:$port$path") || {
        log "$server: GET $path failed"
        return 1
    }
    local status size
    status=$(head -n1 <<<"$hdrs" | tr -d '\r' | cut -d' ' -f2)
    size=$(wc -c <"$WORK/body")
    if [[ $status != 200 || $size != "$S_SIZE" ]]; then
        log "$server: GET $path: status $status, $size body bytes (expected 200, $S_SIZE)"
        return 1
    fi
    local marker
    case $server in
        ringcache) marker='^cache-status:[[:space:]]*ringcache;[[:space:]]*hit' ;;
        nginx) marker='^x-cache-status:[[:space:]]*HIT' ;;
        varnish) marker='^x-cache:[[:space:]]*HIT' ;;
        bare) return 0 ;;
    esac
    if ! tr -d '\r' <<<"$hdrs" | grep -qi "$marker"; then
        log "$server: GET $path is not a cache hit after warm-up; response head:"
        tr -d '\r' <<<"$hdrs" | sed 's/^/    /' >&2
        return 1
    fi
}

# warm SERVER: bring the scenario's keys into SERVER's cache, then check hits.
warm_and_check() {
    local server=$1 port codes keys k
    port=$(server_port "$server")
    if ((S_KEYS == 1)); then
        curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port$S_PATH" || true
        curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$port$S_PATH" || true
        check_hit "$server" "$S_PATH"
        return
    fi
    if [[ $WARM_UNIFORM == 1 && $server != bare ]]; then
        local glob="/api/items/[0-$((S_KEYS - 1))]?size=$S_SIZE&max_age=$MAX_AGE"
        # Status codes go to stderr (one line each), bodies to /dev/null.
        codes=$(curl -s --no-progress-meter -Z --parallel-max 8 --max-time 300 \
            -w '%{stderr}%{http_code}\n' "http://127.0.0.1:$port$glob" 2>&1 >/dev/null) || true
        local ok200
        ok200=$(grep -c '^200$' <<<"$codes" || true)
        if ((ok200 != S_KEYS)); then
            log "$server: $((S_KEYS - ok200)) of $S_KEYS warm-up requests were not answered 200"
            return 1
        fi
    fi
    if [[ $WARM_UNIFORM != 1 && $server != bare ]]; then
        return 0 # cold: nothing to check yet
    fi
    keys="0 $((S_KEYS / 2)) $((S_KEYS - 1)) $((RANDOM % S_KEYS)) $((RANDOM % S_KEYS))"
    for k in $keys; do
        # shellcheck disable=SC2059
        check_hit "$server" "$(printf "$S_FMT" "$k")" || return 1
    done
}

# ---------------------------------------------------------------- runs

mkdir -p "$RESULTS_DIR"
STAMP=$(date +%Y%m%d-%H%M%S)
CSV=$RESULTS_DIR/bench-$STAMP.csv
RAW=$RESULTS_DIR/bench-$STAMP
mkdir -p "$RAW"
echo "stamp,scenario,conns,round,server,rps,p50_us,p99_us,requests,err_connect,err_read,err_write,err_timeout,non2xx,origin_requests,duration_s,ringcache_io,origin" >"$CSV"
write_env "$RAW/env.txt" \
    "servers: $SERVERS; scenarios: $SCENARIOS; conns: $CONNS; rounds: $ROUNDS; duration: ${DURATION}s" \
    "warm uniform: $WARM_UNIFORM"

# run_one SCENARIO CONNS ROUND SERVER
run_one() {
    local scen=$1 conns=$2 round=$3 server=$4 port url out before after line
    port=$(server_port "$server")
    url="http://127.0.0.1:$port$S_PATH"
    out="$RAW/$scen-c$conns-r$round-$server.txt"
    local keys_env=0
    ((S_KEYS > 1)) && keys_env=$S_KEYS
    before=$(origin_requests)
    WRK_KEYS=$keys_env WRK_PATH_FMT=$S_FMT \
        timeout $((DURATION + 60)) taskset -c "$CLIENT_CPU" \
        wrk -t1 -c"$conns" -d"${DURATION}s" --latency -s "$BENCH_DIR/report.lua" "$url" \
        >"$out" 2>&1 || log "$server: wrk exited non-zero (see $out)"
    after=$(origin_requests)
    line=$(grep -m1 '^BENCH_RESULT ' "$out" || true)
    if [[ -z $line ]]; then
        log "$server: no BENCH_RESULT line from wrk (see $out); recording 0 req/s"
        line="BENCH_RESULT rps=0 p50_us=0 p99_us=0 requests=0 duration_us=0 err_connect=0 err_read=0 err_write=0 err_timeout=0 non2xx=0"
    fi
    local rps p50 p99 req dus ec er ew et nx
    rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$line")
    p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
    req=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
    dus=$(sed -n 's/.* duration_us=\([0-9]*\).*/\1/p' <<<"$line")
    ec=$(sed -n 's/.* err_connect=\([0-9]*\).*/\1/p' <<<"$line")
    er=$(sed -n 's/.* err_read=\([0-9]*\).*/\1/p' <<<"$line")
    ew=$(sed -n 's/.* err_write=\([0-9]*\).*/\1/p' <<<"$line")
    et=$(sed -n 's/.* err_timeout=\([0-9]*\).*/\1/p' <<<"$line")
    nx=$(sed -n 's/.* non2xx=\([0-9]*\).*/\1/p' <<<"$line")
    local oreq=$((after - before))
    [[ $server == bare ]] && oreq=0
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' \
        "$STAMP" "$scen" "$conns" "$round" "$server" "$rps" "$p50" "$p99" "$req" \
        "$ec" "$er" "$ew" "$et" "$nx" "$oreq" "$(awk -v d="$dus" 'BEGIN { printf "%.2f", d / 1e6 }')" \
        "${RINGCACHE_IO_USED:-}" "$ORIGIN" >>"$CSV"
    log "  $scen c=$conns round $round/$ROUNDS $server: $rps req/s, p50 ${p50}us, p99 ${p99}us, origin requests $oreq"
}

# table SCENARIO CONNS: the summary of the CSV rows for one block.
table() {
    awk -F, -v scen="$1" -v conns="$2" -v order="$SERVERS" "$AWK_MEDIAN"'
        NR > 1 && $2 == scen && $3 == conns {
            s = $5
            rps[s] = rps[s] " " $6
            p50[s] = p50[s] " " $7
            p99[s] = p99[s] " " $8
            if (!(s in lo) || $6 + 0 < lo[s]) lo[s] = $6 + 0
            if (!(s in hi) || $6 + 0 > hi[s]) hi[s] = $6 + 0
            err[s] += $10 + $11 + $12 + $13
            nx[s] += $14
            orq[s] += $15
            runs[s]++
        }
        END {
            printf "\n== %s, %d connections ==\n", scen, conns
            printf "%-10s %11s %23s %9s %9s %8s %8s %8s %6s %14s\n", "server", "req/s(med)", "(min-max)", "p50 us", "p99 us", "sockerr", "non-2xx", "origin", "runs", "ringcache/this"
            n = split(order, names, " ")
            if ("ringcache" in rps) rc = median(rps["ringcache"])
            for (i = 1; i <= n; i++) {
                s = names[i]
                if (!(s in rps)) continue
                m = median(rps[s])
                ratio = "-"
                if (rc > 0 && m > 0) ratio = sprintf("%.2f", rc / m)
                printf "%-10s %11.0f %23s %9.0f %9.0f %8d %8d %8d %6d %14s\n", s, m, sprintf("(%.0f-%.0f)", lo[s], hi[s]), median(p50[s]), median(p99[s]), err[s], nx[s], orq[s], runs[s], ratio
            }
        }' "$CSV"
}

SUMMARY=$RAW/summary.txt
: >"$SUMMARY"
log "results: $CSV (raw wrk output in $RAW/)"
[[ -n $RINGCACHE_IO_USED ]] && log "ringcache io backend in use: $RINGCACHE_IO_USED (asked: $RINGCACHE_IO)"

for scen in $SCENARIOS; do
    scenario_def "$scen"
    warm_note="key fetched twice first"
    if ((S_KEYS > 1)); then
        warm_note="all keys fetched once first"
        [[ $WARM_UNIFORM == 1 ]] || warm_note="no warm-up (cold cache; round 1 includes misses)"
    fi
    log "scenario $scen: body $S_SIZE bytes, $S_KEYS key(s), $warm_note"
    ok=1
    for server in $SERVERS; do
        if ! warm_and_check "$server"; then
            log "scenario $scen aborted: $server failed its warm-up/hit check"
            ok=0
            break
        fi
    done
    if ((!ok)); then
        FAILED_SCENARIOS+=("$scen")
        continue
    fi
    log "scenario $scen: warm-up done, hits confirmed on: $SERVERS"
    for conns in $CONNS; do
        for ((round = 1; round <= ROUNDS; round++)); do
            for server in $SERVERS; do
                run_one "$scen" "$conns" "$round" "$server"
                sleep 1
            done
        done
        table "$scen" "$conns" | tee -a "$SUMMARY"
    done
done

# Counters at the end, kept with the results: what each cache says it did.
save_counters "$RAW" "$SERVERS"
echo "loadavg at end: $(cat /proc/loadavg)" >>"$RAW/env.txt"

echo
echo "All tables: $SUMMARY"
echo "Raw rows:   $CSV"
if ((${#FAILED_SCENARIOS[@]} > 0)); then
    die "aborted scenarios: ${FAILED_SCENARIOS[*]}"
fi
