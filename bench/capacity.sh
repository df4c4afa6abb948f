#!/usr/bin/env bash
# ringcache capacity kit: one command that starts the demo origin, ringcache
# and, where installed, nginx proxy_cache, Varnish and a bare nginx
# `return 200` responder, then sweeps connection counts over several
# workloads (hot key, Zipf over many keys, miss-only, herd), interleaving the
# servers round by round, and writes a report directory: summary.md with
# medians, min-max and peer ratios, the raw wrk outputs, env.txt, and plots
# (SVG and PNG, gnuplot).
#
# Usage: bench/capacity.sh                                  (~35 minutes)
#        ROUNDS=1 DURATION=3 CONNS="16 256" bench/capacity.sh (a quick pass)
#
# Knobs (environment; bench/README.md has the full table):
#   ROUNDS        interleaved repetitions [3]
#   DURATION      seconds per wrk run [10]
#   CONNS         connection counts ["16 64 256 1024"]
#   WORKLOADS     any of: hot zipf miss herd [all four]
#   SERVERS       any of: ringcache nginx varnish bare [all four]
#   BODY_BYTES    response body size [1024]
#   ZIPF_KEYS     keys of the Zipf workload [100000]
#   ZIPF_S        Zipf exponent [0.99]
#   ZIPF_SEED     seed of the key sequence of the warm-up; the b-th block of
#                 (connections, round) uses ZIPF_SEED + b [1]
#   WARM_SECS     unmeasured wrk run per server before the zipf sweep [DURATION]
#   HERD_KEYS     cold keys per herd; clients per key = connections / keys [8]
#   HERD_DELAY_MS origin delay in the herd [100]
#   HERD_TIMEOUT  seconds one herd may take [30]
#   CLIENT_LIMIT_PCT  wrk CPU use (percent of one core) from which a run is
#                 marked as limited by the load generator [90]
#   RINGCACHE_IO, RINGCACHE_WORKERS, SKIP_BUILD, RINGCACHE_BIN, SERVER_CPU,
#   CLIENT_CPU, MEMORY, RESULTS_DIR, KEEP_TMP: as for bench/run.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
BENCH_NAME=capacity
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNS=${CONNS:-"16 64 256 1024"}
WORKLOADS=${WORKLOADS:-"hot zipf miss herd"}
SERVERS=${SERVERS:-"ringcache nginx varnish bare"}
BODY_BYTES=${BODY_BYTES:-1024}
ZIPF_KEYS=${ZIPF_KEYS:-100000}
ZIPF_S=${ZIPF_S:-0.99}
ZIPF_SEED=${ZIPF_SEED:-1}
WARM_SECS=${WARM_SECS:-$DURATION}
HERD_KEYS=${HERD_KEYS:-8}
HERD_DELAY_MS=${HERD_DELAY_MS:-100}
HERD_TIMEOUT=${HERD_TIMEOUT:-30}
CLIENT_LIMIT_PCT=${CLIENT_LIMIT_PCT:-90}
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

# Objects must not expire while the kit runs.
MAX_AGE=86400

# ---------------------------------------------------------------- checks

for v in ROUNDS DURATION BODY_BYTES ZIPF_KEYS ZIPF_SEED WARM_SECS HERD_KEYS HERD_DELAY_MS HERD_TIMEOUT CLIENT_LIMIT_PCT RINGCACHE_WORKERS; do
    is_posint "${!v}" || die "$v must be a positive integer, got '${!v}'"
done
[[ $ZIPF_S =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "ZIPF_S must be a number, got '$ZIPF_S'"
for c in $CONNS; do
    is_posint "$c" || die "CONNS: '$c' is not a positive integer"
done
for w in $WORKLOADS; do
    case $w in hot | zipf | miss | herd) ;; *) die "WORKLOADS: unknown workload '$w'" ;; esac
done
for s in $SERVERS; do
    case $s in ringcache | nginx | varnish | bare) ;; *) die "SERVERS: unknown server '$s'" ;; esac
done
case $RINGCACHE_IO in auto | uring | epoll) ;; *) die "RINGCACHE_IO must be auto, uring or epoll" ;; esac
# The bare responder has two body sizes.
if has_word "$SERVERS" bare && [[ $BODY_BYTES != 1024 && $BODY_BYTES != 16384 ]]; then
    die "BODY_BYTES must be 1024 or 16384 while 'bare' is measured (its two bodies)"
fi
for tool in wrk taskset curl python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y wrk util-linux curl python3)"
done

find_peers
SERVERS=$(keep_installed "$SERVERS")
[[ -n $SERVERS ]] || die "no server left to measure"
check_cpus
for c in $CONNS; do
    check_fds "$c"
done

PLOTS=1
if ! command -v gnuplot >/dev/null; then
    log "gnuplot is not installed (apt-get install -y gnuplot-nox): the report will have no plots"
    PLOTS=0
fi

# The herd has no use for the bare responder; `origin` (straight to the
# demo origin) is the client's floor instead.
HERD_SERVERS=""
for s in $SERVERS; do
    [[ $s == bare ]] || HERD_SERVERS+="${HERD_SERVERS:+ }$s"
done
HERD_SERVERS+=" origin"
WRK_WORKLOADS=""
for w in $WORKLOADS; do
    [[ $w == herd ]] || WRK_WORKLOADS+="${WRK_WORKLOADS:+ }$w"
done

# ---------------------------------------------------------------- plan

n_conns=$(count_words "$CONNS")
n_serv=$(count_words "$SERVERS")
n_wrk=$(count_words "$WRK_WORKLOADS")
n_runs=$((n_wrk * n_conns * ROUNDS * n_serv))
n_herds=0
has_word "$WORKLOADS" herd && n_herds=$((n_conns * ROUNDS * $(count_words "$HERD_SERVERS")))
warm_s=0
has_word "$WORKLOADS" zipf && warm_s=$((n_serv * (WARM_SECS + 2)))
# ~2 s per wrk run of settling and bookkeeping, ~4 s per herd, ~30 s start-up.
expected_s=$((n_runs * (DURATION + 2) + n_herds * 4 + warm_s + 30))
log "plan: workloads=[$WORKLOADS] conns=[$CONNS] servers=[$SERVERS] rounds=$ROUNDS duration=${DURATION}s"
log "plan: $n_runs wrk runs and $n_herds herds; expected total about $((expected_s / 60))m$((expected_s % 60))s (without the build)"
log "pinning: servers and origin on CPU $SERVER_CPU, wrk and the herd client on CPU $CLIENT_CPU; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

build_ringcache

# ---------------------------------------------------------------- start

init_work
start_servers "$SERVERS"

STAMP=$(date +%Y%m%d-%H%M%S)
RAW=$RESULTS_DIR/capacity-$STAMP
mkdir -p "$RAW/wrk" "$RAW/herd" "$RAW/plot-data"
CSV=$RAW/capacity.csv
echo "workload,conns,round,server,rps,p50_us,p90_us,p99_us,requests,sock_errors,non2xx,origin_requests,hit_ratio,wrk_cpu_pct,duration_s" >"$CSV"
write_env "$RAW/env.txt" \
    "workloads: $WORKLOADS; conns: $CONNS; servers: $SERVERS; rounds: $ROUNDS; duration: ${DURATION}s" \
    "body: $BODY_BYTES bytes; zipf: $ZIPF_KEYS keys, s=$ZIPF_S, seed $ZIPF_SEED, warm-up ${WARM_SECS}s" \
    "herd: $HERD_KEYS keys, connections/keys clients per key, origin delay ${HERD_DELAY_MS}ms"
log "results: $RAW"

# ---------------------------------------------------------------- runs

# children_cpu_secs VAR: sets VAR to the seconds of CPU (user + system) used
# by this shell's waited-for children. `times` runs in this shell (a
# redirection, not a command substitution, which would be a new process
# with no children yet).
children_cpu_secs() {
    times >"$WORK/times.txt"
    printf -v "$1" '%s' "$(awk 'NR == 2 {
        s = 0
        for (i = 1; i <= NF; i++) {
            m = $i; sub(/s$/, "", m); split(m, p, "m"); s += p[1] * 60 + p[2]
        }
        printf "%.3f", s
    }' "$WORK/times.txt")"
}

# Sets W_MODE and W_FMT for a workload.
workload_def() {
    case $1 in
        hot) W_MODE=hot W_FMT="/api/items/%d?size=$BODY_BYTES&max_age=$MAX_AGE" ;;
        zipf) W_MODE=zipf W_FMT="/api/items/%d?size=$BODY_BYTES&max_age=$MAX_AGE" ;;
        miss) W_MODE=miss W_FMT="/api/items/miss-%s?size=$BODY_BYTES&max_age=$MAX_AGE" ;;
    esac
}

# wrk_run WORKLOAD CONNS ROUND SERVER SECONDS OUT: one wrk run; prints the
# BENCH_RESULT line followed by origin=N cpu=SECONDS.
wrk_run() {
    local workload=$1 conns=$2 round=$3 server=$4 secs=$5 out=$6 seed=$7 port url after c0 c1
    port=$(server_port "$server")
    # shellcheck disable=SC2059 # W_FMT is our own format string
    url="http://127.0.0.1:$port$(printf "${W_FMT/\%s/%d}" 0)"
    # Zeroed before every run: the count after it is the run's, and the
    # origin's per-path table (and so its stats answer) stays small.
    origin_reset || log "$server: the origin did not confirm the reset of its counters"
    children_cpu_secs c0
    WRK_MODE=$W_MODE WRK_PATH_FMT=$W_FMT WRK_KEYS=$ZIPF_KEYS ZIPF_S=$ZIPF_S ZIPF_SEED=$seed \
        WRK_RUN_ID="$STAMP-$workload-c$conns-r$round-$server" \
        timeout $((secs + 60)) taskset -c "$CLIENT_CPU" \
        wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$BENCH_DIR/workload.lua" "$url" \
        >"$out" 2>&1 || log "$server: wrk exited non-zero (see $out)"
    children_cpu_secs c1
    after=$(origin_count)
    local line
    line=$(grep -m1 '^BENCH_RESULT ' "$out" || true)
    if [[ -z $line ]]; then
        log "$server: no BENCH_RESULT line from wrk (see $out); recording 0 req/s"
        line="BENCH_RESULT rps=0 p50_us=0 p90_us=0 p99_us=0 requests=0 duration_us=0 err_connect=0 err_read=0 err_write=0 err_timeout=0 non2xx=0"
    fi
    if [[ -z $after ]]; then
        log "$server: could not read the origin's counter after the run; origin requests and hit ratio unknown"
        after=-1
    fi
    echo "$line origin=$after cpu=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')"
}

# field NAME LINE: the value of NAME=... in LINE.
field() { sed -n "s/.* $1=\([0-9.-]*\).*/\1/p" <<<" $2"; }

record() {
    local workload=$1 conns=$2 round=$3 server=$4 line=$5
    local rps p50 p90 p99 req dus errs nx orq hit cpu_pct
    rps=$(field rps "$line")
    p50=$(field p50_us "$line")
    p90=$(field p90_us "$line")
    p99=$(field p99_us "$line")
    req=$(field requests "$line")
    dus=$(field duration_us "$line")
    errs=$(($(field err_connect "$line") + $(field err_read "$line") + $(field err_write "$line") + $(field err_timeout "$line")))
    nx=$(field non2xx "$line")
    orq=$(field origin "$line")
    [[ $server == bare ]] && orq=0
    hit=$(awk -v r="$req" -v o="$orq" -v s="$server" 'BEGIN {
        if (s == "bare" || r == 0 || o < 0) { print "-"; exit }
        h = 1 - o / r; if (h < 0) h = 0; printf "%.4f", h }')
    cpu_pct=$(awk -v c="$(field cpu "$line")" -v d="$dus" 'BEGIN {
        if (d <= 0) { print 0; exit } printf "%.0f", 100 * c / (d / 1e6) }')
    printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$workload" "$conns" "$round" "$server" \
        "$rps" "$p50" "$p90" "$p99" "$req" "$errs" "$nx" "$orq" "$hit" "$cpu_pct" \
        "$(awk -v d="$dus" 'BEGIN { printf "%.2f", d / 1e6 }')" >>"$CSV"
    log "  $workload c=$conns round $round/$ROUNDS $server: $rps req/s, p50 ${p50}us, p99 ${p99}us, hit ratio $hit, origin $orq, wrk cpu ${cpu_pct}%"
}

# check_answer SERVER PATH: 200 with BODY_BYTES bytes.
check_answer() {
    local server=$1 path=$2 port code size
    port=$(server_port "$server")
    read -r code size < <(curl -s -o /dev/null --max-time 5 -w '%{http_code} %{size_download}\n' \
        "http://127.0.0.1:$port$path" || echo "000 0")
    if [[ $code != 200 || $size != "$BODY_BYTES" ]]; then
        log "$server: GET $path: status $code, $size body bytes (expected 200, $BODY_BYTES)"
        return 1
    fi
}

FAILED=()
HERD_ROWS=$RAW/herd/herd-rows.txt
: >"$HERD_ROWS"

for workload in $WRK_WORKLOADS; do
    workload_def "$workload"
    ok=1
    for server in $SERVERS; do
        # shellcheck disable=SC2059
        path=$(printf "${W_FMT/\%s/%d}" 0)
        # Twice: the second answer comes from the cache.
        check_answer "$server" "$path" && check_answer "$server" "$path" || ok=0
    done
    if ((!ok)); then
        log "workload $workload skipped: a server did not answer 200 with $BODY_BYTES bytes"
        FAILED+=("$workload")
        continue
    fi
    if [[ $workload == zipf ]]; then
        log "zipf: ${WARM_SECS}s unmeasured warm-up per server (64 connections), the same key sequence as the runs"
        for server in $SERVERS; do
            line=$(wrk_run zipf 64 0 "$server" "$WARM_SECS" "$RAW/wrk/zipf-warm-$server.txt" "$ZIPF_SEED")
            log "  zipf warm-up $server: $(field rps "$line") req/s"
        done
    fi
    # Block b (a connection count and a round, counted from 1 in the order
    # they run) draws Zipf keys with seed ZIPF_SEED + b; the warm-up uses
    # ZIPF_SEED. Every server gets the same sequence in a block, and no block
    # replays a sequence the caches have already seen.
    block=0
    for conns in $CONNS; do
        for ((round = 1; round <= ROUNDS; round++)); do
            block=$((block + 1))
            for server in $SERVERS; do
                line=$(wrk_run "$workload" "$conns" "$round" "$server" "$DURATION" \
                    "$RAW/wrk/$workload-c$conns-r$round-$server.txt" $((ZIPF_SEED + block)))
                record "$workload" "$conns" "$round" "$server" "$line"
                sleep 1
            done
        done
    done
done

if has_word "$WORKLOADS" herd; then
    HERD_TAG=$STAMP
    for conns in $CONNS; do
        clients=$((conns / HERD_KEYS))
        ((clients >= 1)) || clients=1
        for ((round = 1; round <= ROUNDS; round++)); do
            for server in $HERD_SERVERS; do
                herd_once "$server" "$round" "$clients" "$HERD_KEYS" "$HERD_DELAY_MS" "$HERD_TAG-c$conns" "$HERD_ROWS"
                sleep 0.5
            done
        done
    done
fi

save_counters "$RAW" "$SERVERS"
echo "loadavg at end: $(cat /proc/loadavg)" >>"$RAW/env.txt"

# ---------------------------------------------------------------- report

# The per (workload, conns, server) medians, one line each:
# workload conns server rps_med rps_min rps_max p50_us p90_us p99_us
# hit_med errors non2xx origin cpu_med runs
aggregate() {
    awk -F, "$AWK_MEDIAN"'
        NR > 1 {
            k = $1 SUBSEP $2 SUBSEP $4
            if (!(k in runs)) order[++n] = k
            runs[k]++
            rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p90[k] = p90[k] " " $7
            p99[k] = p99[k] " " $8; cpu[k] = cpu[k] " " $14
            if ($13 != "-") hit[k] = hit[k] " " $13
            if (!(k in lo) || $5 + 0 < lo[k]) lo[k] = $5 + 0
            if (!(k in hi) || $5 + 0 > hi[k]) hi[k] = $5 + 0
            err[k] += $10; nx[k] += $11
            if ($12 >= 0) orq[k] += $12
        }
        END {
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, f, SUBSEP)
                h = (k in hit) ? sprintf("%.4f", median(hit[k])) : "-"
                printf "%s %s %s %.0f %.0f %.0f %.0f %.0f %.0f %s %d %d %d %.0f %d\n", f[1], f[2], f[3],
                    median(rps[k]), lo[k], hi[k], median(p50[k]), median(p90[k]), median(p99[k]),
                    h, err[k], nx[k], orq[k], median(cpu[k]), runs[k]
            }
        }' "$CSV"
}
AGG=$RAW/aggregate.txt
aggregate >"$AGG"

# workload_tables WORKLOAD: markdown tables of one workload.
workload_tables() {
    awk -v w="$1" -v order="$SERVERS" -v limit="$CLIENT_LIMIT_PCT" '
        $1 == w {
            c = $2; s = $3
            if (!(c in seen)) { seen[c] = 1; conns[++nc] = c }
            row[c, s] = $0; rps[c, s] = $4
        }
        END {
            ns = split(order, names, " ")
            printf "| conns | server | req/s median (min-max) | p50 us | p90 us | p99 us | hit ratio | sock err | non-2xx | origin req | wrk CPU %% | ringcache/this | limit |\n"
            printf "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
            for (i = 1; i <= nc; i++) {
                c = conns[i]; rc = rps[c, "ringcache"] + 0; bare = rps[c, "bare"] + 0
                for (j = 1; j <= ns; j++) {
                    s = names[j]
                    if (!((c, s) in row)) continue
                    split(row[c, s], f, " ")
                    ratio = (rc > 0 && f[4] > 0) ? sprintf("%.2f", rc / f[4]) : "-"
                    note = ""
                    if (f[14] + 0 >= limit + 0) note = "load generator"
                    else if (s != "bare" && bare > 0 && f[4] >= 0.9 * bare) note = "near bare"
                    if (note == "") note = "-"
                    printf "| %s | %s | %s (%s-%s) | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, s, f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14], ratio, note
                }
            }
            printf "\nPeer ratios (ringcache req/s divided by the peer'"'"'s, medians):\n\n"
            printf "| conns |"
            for (j = 1; j <= ns; j++) if (names[j] != "ringcache") printf " ringcache/%s |", names[j]
            printf "\n|---|"
            for (j = 1; j <= ns; j++) if (names[j] != "ringcache") printf "---|"
            printf "\n"
            for (i = 1; i <= nc; i++) {
                c = conns[i]; rc = rps[c, "ringcache"] + 0
                printf "| %s |", c
                for (j = 1; j <= ns; j++) {
                    s = names[j]
                    if (s == "ringcache") continue
                    v = rps[c, s] + 0
                    printf " %s |", (rc > 0 && v > 0) ? sprintf("%.2f", rc / v) : "-"
                }
                printf "\n"
            }
        }' "$AGG"
}

# Plot data: one file per (workload, server): conns rps_med rps_min rps_max
# p50_ms p90_ms p99_ms; and per herd server: conns p50_ms p99_ms max_ms.
awk -v dir="$RAW/plot-data" '{
    f = dir "/" $1 "-" $3 ".dat"
    printf "%s %s %s %s %.3f %.3f %.3f\n", $2, $4, $5, $6, $7 / 1000, $8 / 1000, $9 / 1000 >> f
    close(f)
}' "$AGG"
if [[ -s $HERD_ROWS ]]; then
    awk "$AWK_MEDIAN"'
        {
            delete f
            for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            k = f["server"] SUBSEP f["clients"] * f["keys"]
            if (!(k in n)) order[++m] = k
            n[k]++
            p50[k] = p50[k] " " f["p50_ms"]; p99[k] = p99[k] " " f["p99_ms"]; mx[k] = mx[k] " " f["max_ms"]
        }
        END {
            for (i = 1; i <= m; i++) {
                k = order[i]; split(k, g, SUBSEP)
                out = dir "/herd-" g[1] ".dat"
                printf "%s %.1f %.1f %.1f\n", g[2], median(p50[k]), median(p99[k]), median(mx[k]) >> out
                close(out)
            }
        }' dir="$RAW/plot-data" "$HERD_ROWS"
fi

# make_plots: throughput vs connections and latency vs throughput per
# workload, herd latency vs connections; SVG and PNG.
make_plots() {
    local png_term="pngcairo size 900,560 font 'sans,10'"
    if ! gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1; then
        png_term="png size 900,560"
    fi
    local gp=$RAW/plots.gp workload server first style=1
    {
        echo "set grid"
        echo "set key outside right top"
        echo "set logscale x 2"
        for workload in $WRK_WORKLOADS; do
            for ext in svg png; do
                if [[ $ext == svg ]]; then
                    echo "set terminal svg size 900,560 dynamic font 'sans,10'"
                else
                    echo "set terminal $png_term"
                fi
                echo "set output '$RAW/throughput-$workload.$ext'"
                echo "set title 'throughput vs connections: $workload (median, min-max bars)'"
                echo "set xlabel 'connections'; set ylabel 'requests per second'"
                echo "unset logscale y; set logscale x 2; set yrange [0:*]; set xrange [*:*]"
                first=1
                printf "plot"
                for server in $SERVERS; do
                    [[ -s $RAW/plot-data/$workload-$server.dat ]] || continue
                    ((first)) || printf ","
                    printf " '%s' using 1:2:3:4 with yerrorlines title '%s'" "$RAW/plot-data/$workload-$server.dat" "$server"
                    first=0
                done
                ((first)) && printf " NaN notitle"
                echo
                echo "set output '$RAW/latency-$workload.$ext'"
                echo "set title 'latency vs throughput: $workload (p50 solid, p99 dashed; one point per connection count)'"
                echo "set xlabel 'requests per second'; set ylabel 'latency, ms'"
                echo "unset logscale x; set logscale y 10; set xrange [0:*]; set yrange [*:*]"
                first=1
                style=1
                printf "plot"
                for server in $SERVERS; do
                    [[ -s $RAW/plot-data/$workload-$server.dat ]] || continue
                    ((first)) || printf ","
                    printf " '%s' using 2:5 with linespoints dashtype 1 linecolor %d title '%s p50'," "$RAW/plot-data/$workload-$server.dat" "$style" "$server"
                    printf " '%s' using 2:7 with linespoints dashtype 2 linecolor %d title '%s p99'" "$RAW/plot-data/$workload-$server.dat" "$style" "$server"
                    first=0
                    style=$((style + 1))
                done
                ((first)) && printf " NaN notitle"
                echo
                echo "set logscale x 2"
            done
        done
        if [[ -s $HERD_ROWS ]]; then
            for ext in svg png; do
                if [[ $ext == svg ]]; then
                    echo "set terminal svg size 900,560 dynamic font 'sans,10'"
                else
                    echo "set terminal $png_term"
                fi
                echo "set output '$RAW/latency-herd.$ext'"
                echo "set title 'herd: client latency vs herd size ($HERD_KEYS cold keys, origin delay ${HERD_DELAY_MS} ms; p50 solid, p99 dashed; log scale)'"
                echo "set xlabel 'requests in the herd'; set ylabel 'latency, ms'"
                echo "set logscale x 2; set logscale y 10; set yrange [*:*]; set xrange [*:*]"
                first=1
                style=1
                printf "plot"
                for server in $HERD_SERVERS; do
                    [[ -s $RAW/plot-data/herd-$server.dat ]] || continue
                    ((first)) || printf ","
                    printf " '%s' using 1:2 with linespoints dashtype 1 linecolor %d title '%s p50'," "$RAW/plot-data/herd-$server.dat" "$style" "$server"
                    printf " '%s' using 1:3 with linespoints dashtype 2 linecolor %d title '%s p99'" "$RAW/plot-data/herd-$server.dat" "$style" "$server"
                    first=0
                    style=$((style + 1))
                done
                ((first)) && printf " NaN notitle"
                echo
            done
        fi
    } >"$gp"
    if gnuplot "$gp" >"$RAW/gnuplot.log" 2>&1; then
        log "plots written (see $RAW/*.svg, *.png)"
        return 0
    fi
    log "gnuplot failed (see $RAW/gnuplot.log); the report has no plots"
    return 1
}
if ((PLOTS)); then
    make_plots || PLOTS=0
fi

SUMMARY=$RAW/summary.md
{
    echo "# ringcache capacity report, $STAMP"
    echo
    echo "Servers: $SERVERS. Workloads: $WORKLOADS. Connections: $CONNS."
    echo "Rounds: $ROUNDS, interleaved; ${DURATION}s per wrk run (one thread, pinned to CPU $CLIENT_CPU;"
    echo "servers and the demo origin pinned to CPU $SERVER_CPU). Body: $BODY_BYTES bytes."
    echo "ringcache: --workers $RINGCACHE_WORKERS --io ${RINGCACHE_IO_USED:-n/a} --memory $MEMORY."
    echo "Load average at start: $(grep -m1 'loadavg at start' "$RAW/env.txt" | cut -d: -f2- | cut -d' ' -f2-4), at the end: $(cut -d' ' -f1-3 /proc/loadavg). Machine and versions: env.txt."
    echo
    echo "How to read: medians over the rounds; req/s with its min-max. hit ratio = 1 - origin requests / requests"
    echo "during the run (the origin's own counter). wrk CPU % is the load generator's CPU time over the run's"
    echo "length (100 = one full core). limit: \"load generator\" when wrk used ${CLIENT_LIMIT_PCT}% of its core or more"
    echo "(the figure is the client's ceiling, not the server's); \"near bare\" when a cache reaches 90% of the bare"
    echo "\`return 200\` responder, which is the most one wrk thread got from any server in the same block."
    for workload in $WRK_WORKLOADS; do
        echo
        case $workload in
            hot) echo "## hot: one key, always a hit" ;;
            zipf) echo "## zipf: $ZIPF_KEYS keys, Zipf s=$ZIPF_S, seed $ZIPF_SEED + block (warmed ${WARM_SECS}s per server first with seed $ZIPF_SEED)" ;;
            miss) echo "## miss: every request a new key (origin fetch, store, answer)" ;;
        esac
        echo
        workload_tables "$workload"
        if ((PLOTS)); then
            echo
            echo "![throughput $workload](throughput-$workload.svg) ![latency $workload](latency-$workload.svg)"
        fi
    done
    if [[ -s $HERD_ROWS ]]; then
        echo
        echo "## herd: connections x 1 request at once over $HERD_KEYS cold keys, origin delay ${HERD_DELAY_MS} ms"
        echo
        echo "\`origin\` is the herd sent straight to the demo origin (no cache): the client's own floor."
        echo "nginx: proxy_cache_lock on, proxy_cache_lock_timeout 5s, proxy_cache_lock_age 5s."
        for conns in $CONNS; do
            clients=$((conns / HERD_KEYS))
            ((clients >= 1)) || clients=1
            grep -- " tag=$HERD_TAG-c$conns " "$HERD_ROWS" >"$RAW/herd/rows-c$conns.txt" || true
            herd_table "$RAW/herd/rows-c$conns.txt" "herd, $conns connections" "$HERD_SERVERS" "$HERD_DELAY_MS"
        done
        if ((PLOTS)); then
            echo
            echo "![herd latency](latency-herd.svg)"
        fi
    fi
    if ((!PLOTS)); then
        echo
        echo "No plots: gnuplot is not installed or failed (apt-get install -y gnuplot-nox)."
    fi
    if ((${#FAILED[@]} > 0)); then
        echo
        echo "Skipped workloads (a server did not answer correctly): ${FAILED[*]}"
    fi
} >"$SUMMARY"

cat "$SUMMARY"
echo
echo "Report: $SUMMARY"
if ((${#FAILED[@]} > 0)); then
    die "skipped workloads: ${FAILED[*]}"
fi
