# ringcache bench kit: what bench/run.sh, bench/herd.sh and bench/capacity.sh
# share. Sourced, never run. Provides logging, the peer lookup, CPU pinning,
# free ports, starting and stopping every process by PID, the demo origin,
# ringcache, nginx (proxy_cache and the bare responder) and Varnish, and the
# herd measurement.
#
# The sourcing script sets, before calling anything here:
#   BENCH_DIR REPO_DIR SERVER_CPU CLIENT_CPU RINGCACHE_BIN RINGCACHE_IO
#   MEMORY KEEP_TMP ORIGIN (ringcache|stub)
# and optionally RINGCACHE_WORKERS (default 1) and RAW (the result directory,
# where the configurations and server logs are copied at exit).

# Seconds a server gets to come up before the run is abandoned.
START_TIMEOUT=${START_TIMEOUT:-30}
# An awk function every table of the kit uses: the median of a list of
# numbers separated by spaces (0 for an empty list). Prepend it to a program:
# awk "$AWK_MEDIAN"'{ ... median(list) ... }'.
AWK_MEDIAN='
function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) {
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    if (n == 0) return 0
    if (n % 2) return a[(n + 1) / 2]
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
'
# Which script is talking, in log lines.
BENCH_NAME=${BENCH_NAME:-bench}

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
has_word() { [[ " $1 " == *" $2 "* ]]; }
count_words() {
    local -a words
    read -ra words <<<"$1"
    echo "${#words[@]}"
}

# ---------------------------------------------------------------- peers

# Sets NGINX_BIN and VARNISHD_BIN (empty when not installed).
find_peers() {
    NGINX_BIN=$(command -v nginx || true)
    [[ -z $NGINX_BIN && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
    VARNISHD_BIN=$(command -v varnishd || true)
    [[ -z $VARNISHD_BIN && -x /usr/sbin/varnishd ]] && VARNISHD_BIN=/usr/sbin/varnishd
    return 0
}

# keep_installed "SERVERS": prints the servers whose program is installed,
# logging the ones skipped.
keep_installed() {
    local s kept=""
    for s in $1; do
        case $s in
            nginx | bare)
                if [[ -z $NGINX_BIN ]]; then
                    log "nginx is not installed: skipping '$s' (apt-get install -y nginx)"
                    continue
                fi
                ;;
            varnish)
                if [[ -z $VARNISHD_BIN ]]; then
                    log "varnishd is not installed: skipping 'varnish' (apt-get install -y varnish)"
                    continue
                fi
                ;;
        esac
        kept+="${kept:+ }$s"
    done
    echo "$kept"
}

# Checks that SERVER_CPU and CLIENT_CPU can be used; on one CPU both become 0.
check_cpus() {
    NCPU=$(nproc --all 2>/dev/null || echo 1)
    local allowed
    allowed=$(taskset -cp $$ 2>/dev/null | sed 's/.*: //')
    if ((NCPU < 2)); then
        log "warning: only $NCPU CPU: client and servers share core 0; figures mean little"
        SERVER_CPU=0
        CLIENT_CPU=0
    fi
    taskset -c "$SERVER_CPU" true 2>/dev/null || die "cannot pin to SERVER_CPU=$SERVER_CPU (allowed: $allowed)"
    taskset -c "$CLIENT_CPU" true 2>/dev/null || die "cannot pin to CLIENT_CPU=$CLIENT_CPU (allowed: $allowed)"
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# check_fds N: dies unless N connections fit under the open-files limit
# (after check_cpus raised it), with room for the rest of the process.
check_fds() {
    local limit
    limit=$(ulimit -n)
    [[ $limit == unlimited ]] && return 0
    ((limit >= $1 + 64)) || die "$1 connections need more open files than ulimit -n ($limit) allows"
}

# Builds the release binary unless SKIP_BUILD=1, then checks it is there.
build_ringcache() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        log "building ringcache (cargo build --release; SKIP_BUILD=1 skips this)"
        (cd "$REPO_DIR" && cargo build --release --bin ringcache)
    fi
    [[ -x $RINGCACHE_BIN ]] || die "no ringcache binary at $RINGCACHE_BIN (set RINGCACHE_BIN or build it)"
}

# ---------------------------------------------------------------- processes

# Creates the temporary directory WORK and installs the exit trap that stops
# every started process, newest first, by PID.
init_work() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringcache-bench.XXXXXX")
    CACHE_DIR=""
    PIDS=()
    RAW=${RAW:-}
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

cleanup() {
    local rc=$? i pid n
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((n = 0; n < 50; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${RAW:-} && -d ${RAW:-} ]]; then
        # Keep the generated configurations and server logs with the results.
        cp "$WORK"/*.log "$WORK"/*.conf "$WORK"/*.vcl "$RAW"/ 2>/dev/null || true
    fi
    [[ -n $CACHE_DIR ]] && rm -rf "$CACHE_DIR"
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}

TAKEN_PORTS=" "
port_in_use() {
    if command -v ss >/dev/null; then
        [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
# Listening ports come from below the kernel's ephemeral range, so wrk's and
# the proxies' outgoing connections never collide with them.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
PORT_LOW=10000
PORT_SPAN=$((EPHEMERAL_LOW - PORT_LOW))
((PORT_SPAN >= 1000)) || PORT_SPAN=20000
# free_port VAR: sets VAR to a free port (not in a subshell, so the port is
# remembered as taken).
free_port() {
    local p n
    for ((n = 0; n < 200; n++)); do
        p=$((PORT_LOW + RANDOM % PORT_SPAN))
        has_word "$TAKEN_PORTS" "$p" && continue
        port_in_use "$p" && continue
        TAKEN_PORTS+="$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free port found"
}

# start NAME LOGFILE CMD... : run CMD pinned to the server core, in the background.
start() {
    local name=$1 logf=$2
    shift 2
    taskset -c "$SERVER_CPU" "$@" >"$logf" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
    log "started $name (pid $LAST_PID): $*"
}

# wait_http NAME PID URL LOGFILE: until URL answers with any HTTP status.
wait_http() {
    local name=$1 pid=$2 url=$3 logf=$4 n
    for ((n = 0; n < START_TIMEOUT * 10; n++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logf" >&2 || true
            die "$name exited during start-up (log above)"
        fi
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logf" >&2 || true
    die "$name did not answer $url within ${START_TIMEOUT}s"
}

# start_servers "SERVERS": chooses ports, starts the demo origin, then every
# server named. Sets ORIGIN_PORT, RC_PORT, RC_ADMIN_PORT, NGINX_PORT,
# BARE_PORT, VARNISH_PORT and RINGCACHE_IO_USED.
start_servers() {
    local servers=$1
    free_port ORIGIN_PORT
    free_port RC_PORT
    free_port RC_ADMIN_PORT
    free_port NGINX_PORT
    free_port BARE_PORT
    free_port VARNISH_PORT

    if [[ $ORIGIN == ringcache ]]; then
        start origin "$WORK/origin.log" "$RINGCACHE_BIN" origin --listen "127.0.0.1:$ORIGIN_PORT" --threads 1
    else
        start origin "$WORK/origin.log" python3 "$BENCH_DIR/stub_origin.py" --listen "127.0.0.1:$ORIGIN_PORT"
    fi
    wait_http origin "$LAST_PID" "http://127.0.0.1:$ORIGIN_PORT/__origin/stats" "$WORK/origin.log"

    RINGCACHE_IO_USED=""
    if has_word "$servers" ringcache; then
        start_ringcache
    fi
    if has_word "$servers" nginx || has_word "$servers" bare; then
        start_nginx
    fi
    if has_word "$servers" varnish; then
        start_varnish
    fi
}

start_ringcache() {
    local n ready_line code rc_pid
    start ringcache "$WORK/ringcache.log" "$RINGCACHE_BIN" serve \
        --listen "127.0.0.1:$RC_PORT" --origin "http://127.0.0.1:$ORIGIN_PORT" \
        --admin "127.0.0.1:$RC_ADMIN_PORT" --workers "${RINGCACHE_WORKERS:-1}" \
        --io "$RINGCACHE_IO" --memory "$MEMORY"
    rc_pid=$LAST_PID
    for ((n = 0; ; n++)); do
        if ! kill -0 "$rc_pid" 2>/dev/null; then
            tail -n 20 "$WORK/ringcache.log" >&2 || true
            die "ringcache exited during start-up (log above)"
        fi
        grep -q 'ready: ' "$WORK/ringcache.log" && break
        ((n < START_TIMEOUT * 10)) || die "ringcache printed no 'ready:' line within ${START_TIMEOUT}s"
        sleep 0.1
    done
    ready_line=$(grep -m1 'ready: ' "$WORK/ringcache.log")
    RINGCACHE_IO_USED=$(sed -n 's/.* io=\([a-z_]*\).*/\1/p' <<<"$ready_line")
    log "ringcache: $ready_line"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$RC_ADMIN_PORT/healthz" || true)
    [[ $code == 200 ]] || die "ringcache admin /healthz answered '$code', not 200"
}

start_nginx() {
    # The cache lives in memory when /dev/shm is there, as the others' do.
    if [[ -d /dev/shm && -w /dev/shm ]]; then
        CACHE_DIR=$(mktemp -d /dev/shm/ringcache-bench-nginx.XXXXXX)
    else
        CACHE_DIR=$WORK/nginx-cache
        mkdir -p "$CACHE_DIR"
    fi
    local user_line="# (not root: workers run as the invoking user)"
    if ((EUID == 0)); then
        user_line="user root root;"
    fi
    # MEMORY in nginx's size syntax: 256MiB -> 256m, 1GiB -> 1g, bytes as they are.
    local max_size
    max_size=$(sed -e 's/[iI]\?[bB]$//' <<<"$MEMORY" | tr 'KMG' 'kmg')
    local fill_1024 fill_1013
    fill_1024=$(printf '%*s' 1024 '' | tr ' ' 'x')
    fill_1013=$(printf '%*s' 1013 '' | tr ' ' 'x')
    sed -e "s|@DIR@|$WORK|g" -e "s|@CACHE_DIR@|$CACHE_DIR|g" \
        -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@NGINX_PORT@|$NGINX_PORT|g" \
        -e "s|@BARE_PORT@|$BARE_PORT|g" -e "s|@USER_LINE@|$user_line|" \
        -e "s|@MAX_SIZE@|$max_size|g" \
        -e "s|@FILL_1024@|$fill_1024|" -e "s|@FILL_1013@|$fill_1013|" \
        "$BENCH_DIR/nginx.conf.in" >"$WORK/nginx.conf"
    "$NGINX_BIN" -t -q -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/nginx-t.log" ||
        {
            cat "$WORK/nginx-t.log" >&2
            die "generated nginx.conf does not pass nginx -t"
        }
    start nginx "$WORK/nginx.log" "$NGINX_BIN" -c "$WORK/nginx.conf" -p "$WORK"
    wait_http nginx "$LAST_PID" "http://127.0.0.1:$BARE_PORT/" "$WORK/nginx.log"
}

start_varnish() {
    sed -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" "$BENCH_DIR/varnish.vcl" >"$WORK/varnish.vcl"
    # -F: foreground, so the pid we hold is the manager's; -j none: no
    # privilege separation (works as root in a container and as a user).
    start varnish "$WORK/varnish.log" "$VARNISHD_BIN" -F -j none -n "$WORK/varnish" \
        -a "127.0.0.1:$VARNISH_PORT" -f "$WORK/varnish.vcl" -s "malloc,${MEMORY%iB}" \
        -p thread_pools=1
    wait_http varnish "$LAST_PID" "http://127.0.0.1:$VARNISH_PORT/__bench_ready" "$WORK/varnish.log"
}

server_port() {
    case $1 in
        ringcache) echo "$RC_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        varnish) echo "$VARNISH_PORT" ;;
        bare) echo "$BARE_PORT" ;;
        origin) echo "$ORIGIN_PORT" ;;
    esac
}

# The origin's request counter (every request but /__origin/ ones).
origin_requests() {
    curl -s --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/__origin/stats" |
        grep -o '"requests": *[0-9]*' | head -n1 | grep -o '[0-9]*$' || echo 0
}

# Zeroes the origin's counters (also its bounded per-path table); fails
# unless the origin confirms.
origin_reset() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST \
        "http://127.0.0.1:$ORIGIN_PORT/__origin/reset" || true)
    [[ $code == 2?? ]]
}

# The origin's request counter, or nothing when the stats cannot be read
# (their per-path table makes them large after a miss-heavy run).
origin_count() {
    local n
    n=$(curl -s --max-time 10 "http://127.0.0.1:$ORIGIN_PORT/__origin/stats" |
        grep -o '"requests": *[0-9]*' | head -n1 | grep -o '[0-9]*$' || true)
    [[ -n $n ]] && echo "$n"
    return 0
}

# write_env FILE EXTRA...: machine, load, versions, and EXTRA lines.
write_env() {
    local f=$1 line
    shift
    {
        echo "date: $(date -Is)"
        echo "git: $(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "host: $(uname -n); kernel: $(uname -r)"
        echo "cpus: ${NCPU:-?} ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))"
        echo "memory: $(grep -m1 MemTotal /proc/meminfo | tr -s ' ')"
        echo "loadavg at start: $(cat /proc/loadavg)"
        echo "pinning: servers and origin on CPU $SERVER_CPU, load generator on CPU $CLIENT_CPU"
        echo "wrk: $(wrk -v 2>&1 | head -n1)"
        [[ -n ${NGINX_BIN:-} ]] && echo "nginx: $("$NGINX_BIN" -v 2>&1)"
        [[ -n ${VARNISHD_BIN:-} ]] && echo "varnishd: $("$VARNISHD_BIN" -V 2>&1 | head -n1)"
        [[ -x ${RINGCACHE_BIN:-} ]] && echo "ringcache: $("$RINGCACHE_BIN" --version 2>&1 | head -n1)"
        command -v python3 >/dev/null && echo "python3: $(python3 --version 2>&1)"
        command -v gnuplot >/dev/null && echo "gnuplot: $(gnuplot --version 2>&1)"
        echo "ringcache io: ${RINGCACHE_IO_USED:-n/a} (asked: $RINGCACHE_IO); workers: ${RINGCACHE_WORKERS:-1}; memory: $MEMORY; origin: $ORIGIN"
        for line in "$@"; do echo "$line"; done
    } >"$f"
}

# save_counters DIR: what each cache and the origin say they did.
save_counters() {
    local dir=$1 servers=$2
    curl -s --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/__origin/stats" >"$dir/origin-stats.json" || true
    if has_word "$servers" ringcache; then
        curl -s --max-time 2 "http://127.0.0.1:$RC_ADMIN_PORT/metrics" >"$dir/ringcache-metrics.txt" || true
    fi
    if has_word "$servers" varnish && command -v varnishstat >/dev/null; then
        varnishstat -n "$WORK/varnish" -1 >"$dir/varnishstat.txt" 2>&1 || true
    fi
}

# ---------------------------------------------------------------- herd

# herd_once SERVER ROUND CLIENTS KEYS DELAY_MS TAG OUT: resets the origin,
# fires CLIENTS requests at each of KEYS cold keys on SERVER at once (the
# client pinned to CLIENT_CPU), then reads the origin's per-path counts.
# Appends one line to OUT: the client's HERD_RESULT line plus
# fetches_per_key_max=... fetches_per_key_mean=... origin_requests=...
# The client's raw output and its per-request dump go in OUT's directory.
# Needs HERD_TIMEOUT.
herd_once() {
    local server=$1 round=$2 clients=$3 keys=$4 delay=$5 tag=$6 out=$7 port prefix raw line
    port=$(server_port "$server")
    # Keys nobody asked for before: the run's tag, round and server are in the path.
    prefix="/api/items/herd-$tag-r$round-$server-"
    # Raw client output goes beside OUT.
    raw="$(dirname "$out")/herd-$tag-r$round-$server.txt"
    origin_reset || log "$server: the origin did not confirm the reset of its counters"
    timeout $((HERD_TIMEOUT + 30)) taskset -c "$CLIENT_CPU" \
        python3 "$BENCH_DIR/herd_client.py" --port "$port" --prefix "$prefix" \
        --query "size=1024&max_age=86400&delay_ms=$delay" --clients "$clients" \
        --keys "$keys" --timeout "$HERD_TIMEOUT" --dump "${raw%.txt}-requests.txt" >"$raw" 2>&1 ||
        log "$server: herd client exited non-zero (see $raw)"
    line=$(grep -m1 '^HERD_RESULT ' "$raw" || echo "HERD_RESULT ok=0 errors=$((clients * keys)) p50_ms=0 p99_ms=0 max_ms=0 spread_ms=0")
    # Settle: a late fetch still counts.
    sleep 0.2
    local counts
    counts=$(curl -s --max-time 2 "http://127.0.0.1:$ORIGIN_PORT/__origin/stats" |
        python3 -c '
import json, sys
stats = json.load(sys.stdin)
prefix, keys = sys.argv[1], int(sys.argv[2])
per_key = [stats["by_path"].get(prefix + str(k), 0) for k in range(keys)]
print("fetches_per_key_max=%d fetches_per_key_mean=%.2f origin_requests=%d"
      % (max(per_key), sum(per_key) / keys, stats["requests"]))
' "$prefix" "$keys" 2>/dev/null || echo "fetches_per_key_max=-1 fetches_per_key_mean=-1 origin_requests=-1")
    echo "server=$server tag=$tag round=$round clients=$clients keys=$keys ${line#HERD_RESULT } $counts" >>"$out"
    log "  herd $tag round $round $server: ${line#HERD_RESULT } $counts"
}

# herd_table OUT TITLE SERVERS DELAY_MS: median over rounds per server, markdown.
herd_table() {
    awk -v title="$2" -v order="$3" -v delay="$4" "$AWK_MEDIAN"'
        {
            delete f
            for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
            s = f["server"]
            runs[s]++
            clients = f["clients"]; keys = f["keys"]
            p50[s] = p50[s] " " f["p50_ms"]; p99[s] = p99[s] " " f["p99_ms"]
            mx[s] = mx[s] " " f["max_ms"]; fm[s] = fm[s] " " f["fetches_per_key_mean"]
            if (f["fetches_per_key_max"] + 0 > fmax[s] + 0) fmax[s] = f["fetches_per_key_max"]
            err[s] += f["errors"]
            if (!(s in lo) || f["p99_ms"] + 0 < lo[s]) lo[s] = f["p99_ms"] + 0
            if (!(s in hi) || f["p99_ms"] + 0 > hi[s]) hi[s] = f["p99_ms"] + 0
        }
        END {
            printf "\n### %s\n\n", title
            printf "%d clients x %d cold keys at once, origin delay %d ms, medians over the rounds.\n\n", clients, keys, delay
            printf "| server | origin fetches/key (median of mean, max) | p50 ms | p99 ms (min-max) | max ms | p99 - delay ms | errors | runs |\n"
            printf "|---|---|---|---|---|---|---|---|\n"
            n = split(order, names, " ")
            for (i = 1; i <= n; i++) {
                s = names[i]
                if (!(s in runs)) continue
                q = median(p99[s])
                printf "| %s | %.2f, %d | %.1f | %.1f (%.1f-%.1f) | %.1f | %+.1f | %d | %d |\n", s, median(fm[s]), fmax[s], median(p50[s]), q, lo[s], hi[s], median(mx[s]), q - delay, err[s], runs[s]
            }
        }' "$1"
}
