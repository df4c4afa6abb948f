#!/usr/bin/env bash
# Try the README's "Operations (systemd)" section against a real systemd.
#
#   sudo deploy/systemd-trial.sh [BINARY]      (default target/release/ringcache)
#
# Boots systemd as PID 1 of a private PID and mount namespace (the network is
# the host's: the shipped units listen on 127.0.0.1:8080 and :9180, and the
# demo origin runs on 127.0.0.1:8081), with tmpfs over every directory the
# trial or that systemd would write to, so the host's files and its enabled
# services are left alone. Then it follows the README as an operator would:
# install the binary, the configuration and both units, `enable --now`, and
# checks what the README promises:
#   - Type=notify start, STATUS= line;
#   - `systemctl restart` twice under wrk load: no connection error, no
#     non-2xx answer, the store reopened warm, the origin asked nothing new;
#   - `systemctl reload` after an edit: the one log line names the change;
#   - reloads faster than the watchdog interval do not starve the watchdog;
#   - the access log written to the unit's LogsDirectory, reopened on SIGUSR1;
#   - `systemctl stop` flushes the store clean, and the socket unit, still
#     listening, starts the service again on the next connection, warm.
# Prints one line per check; exits 1 when one fails, 0 with SKIPPED when
# this machine cannot boot systemd in a namespace (not root, no systemd,
# no unshare, a kernel that refuses).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="$(realpath "${1:-target/release/ringcache}")"
LISTEN=127.0.0.1:8080
ADMIN=127.0.0.1:9180
ORIGIN=127.0.0.1:8081
KEYS=300
BOOT_TIMEOUT=30

skip() { echo "SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (it boots systemd in a namespace)"
[ -x /lib/systemd/systemd ] || skip "no /lib/systemd/systemd"
for c in unshare nsenter curl wrk; do
    command -v "$c" >/dev/null || skip "$c is not installed"
done
[ -x "$BIN" ] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
for a in $LISTEN $ADMIN $ORIGIN; do
    if curl -s -o /dev/null --max-time 1 "http://$a/"; then
        skip "$a is in use on this machine"
    fi
done

work="$(mktemp -d)"
ns_unshare=""
origin_pid=""
wrk_pid=""
made_etc=""
failed=0
cleanup() {
    [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null || true
    [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null || true
    if [ -n "$ns_unshare" ]; then
        # SIGKILL to the namespace's PID 1 ends every process in it.
        init="$(pgrep -P "$ns_unshare" || true)"
        [ -n "$init" ] && kill -9 "$init" 2>/dev/null || true
        wait "$ns_unshare" 2>/dev/null || true
    fi
    [ -n "$made_etc" ] && rmdir /etc/ringcache 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

check() { # check NAME CONDITION-COMMAND...
    local name="$1"
    shift
    if "$@"; then
        echo "ok    $name"
    else
        echo "FAIL  $name"
        failed=1
    fi
}

# Mount points must exist on the host; /etc/ringcache is the only one that
# may not (removed again at the end when this script made it).
if [ ! -d /etc/ringcache ]; then
    mkdir /etc/ringcache
    made_etc=1
fi

# shellcheck disable=SC2016
unshare --pid --fork --mount --mount-proc --propagation private sh -c '
    for d in /tmp /var/tmp /run /var/log /var/lib /etc/systemd/system \
             /usr/local/bin /etc/ringcache; do
        mount -t tmpfs -o mode=0755 tmpfs "$d" || exit 1
    done
    chmod 1777 /tmp /var/tmp
    exec /lib/systemd/systemd --system --unit=basic.target
' >"$work/systemd.out" 2>&1 &
ns_unshare=$!

ns_init=""
deadline=$((SECONDS + BOOT_TIMEOUT))
state=""
while [ $SECONDS -lt $deadline ]; do
    ns_init="$(pgrep -P "$ns_unshare" || true)"
    if [ -n "$ns_init" ]; then
        state="$(timeout 5 nsenter -t "$ns_init" -a systemctl is-system-running 2>/dev/null || true)"
        case "$state" in running | degraded) break ;; esac
    fi
    kill -0 "$ns_unshare" 2>/dev/null || break
    sleep 0.5
done
case "$state" in
running | degraded) ;;
*) skip "systemd did not boot in a namespace here (state: ${state:-none}; $(tail -n 3 "$work/systemd.out" | tr '\n' ' '))" ;;
esac
echo "systemd $(systemctl --version | head -n 1 | cut -d' ' -f2) booted in a private namespace ($state)"

nsx() { timeout 120 nsenter -t "$ns_init" -a "$@"; }
journal() { nsx journalctl -u ringcache --no-pager -o cat "$@"; }
# Checks (grep reads to the end: no SIGPIPE for pipefail to see).
journal_has() { journal "${@:2}" | grep -F -- "$1" >/dev/null; } # PATTERN [journalctl args]
journal_lacks() { ! journal_has "$1"; }
ns_file_has() { nsx grep -qF -- "$2" "$1"; }
status_text_set() { [ -n "$(nsx systemctl show -p StatusText --value ringcache)" ]; }
no_line_with() { ! grep -q -- "$1" "$work/wrk.out"; }
origin_requests() {
    curl -s "http://$ORIGIN/__origin/stats" | sed -n 's/^{"requests": \([0-9]*\).*/\1/p'
}

"$BIN" origin --listen "$ORIGIN" >"$work/origin.log" 2>&1 &
origin_pid=$!
for _ in $(seq 50); do
    curl -s -o /dev/null "http://$ORIGIN/__origin/stats" && break
    sleep 0.1
done

# The README's install steps. Files go in through stdin: the checkout may
# sit under a directory the namespace covers with a tmpfs (/tmp).
put() { # put SRC DEST MODE
    nsx sh -c "cat >'$2' && chmod $3 '$2'" <"$1"
}
put "$BIN" /usr/local/bin/ringcache 755
put systemd/ringcache.toml /etc/ringcache/ringcache.toml 644
put systemd/ringcache.service /etc/systemd/system/ringcache.service 644
put systemd/ringcache.socket /etc/systemd/system/ringcache.socket 644
nsx systemctl daemon-reload
nsx systemctl enable --now ringcache.socket ringcache.service 2>/dev/null
check "enable --now: ringcache.service active" \
    test "$(nsx systemctl is-active ringcache.service)" = active
check "Type=notify: STATUS= set" \
    status_text_set

for i in $(seq 0 $((KEYS - 1))); do
    curl -s -o /dev/null "http://$LISTEN/api/items/$i?max_age=3600"
done
filled="$(origin_requests)"
check "fill: $KEYS keys through the proxy, origin saw $filled" test "$filled" -ge "$KEYS"

cat >"$work/keys.lua" <<EOF
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/items/" .. (n % $KEYS) .. "?max_age=3600")
end
EOF
wrk -t1 -c32 -d12s -s "$work/keys.lua" "http://$LISTEN/" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
sleep 3
nsx systemctl restart ringcache.service
sleep 3
nsx systemctl restart ringcache.service
wait "$wrk_pid" || true
wrk_pid=""
requests="$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$work/wrk.out")"
echo "      wrk: ${requests:-?} requests across two restarts"
check "restart x2 under load: no socket errors" no_line_with 'Socket errors'
check "restart x2 under load: no non-2xx answers" no_line_with 'Non-2xx'
check "restart x2 under load: origin asked nothing new" test "$(origin_requests)" = "$filled"
check "restart: store reopened after a clean stop" \
    journal_has "reopened after a clean stop: $KEYS items recovered"

nsx sed -i 's/^head_bytes_max = .*/head_bytes_max = "8KiB"/' /etc/ringcache/ringcache.toml
nsx systemctl reload ringcache.service
check "reload: one line names the change" \
    journal_has 'reload: applied limits.head_bytes_max 16KiB → 8KiB'

# Reloads every second against a 3 s watchdog.
nsx mkdir -p /etc/systemd/system/ringcache.service.d
printf '[Service]\nWatchdogSec=3s\n' >"$work/watchdog.conf"
put "$work/watchdog.conf" /etc/systemd/system/ringcache.service.d/watchdog.conf 644
nsx systemctl daemon-reload
nsx systemctl restart ringcache.service
for _ in $(seq 8); do
    nsx systemctl reload ringcache.service
    sleep 1
done
check "watchdog: 8 reloads in 8 s with WatchdogSec=3s, no restart" \
    test "$(nsx systemctl show -p NRestarts --value ringcache.service)" = 0
check "watchdog: no timeout in the journal" \
    journal_lacks 'Watchdog timeout'

# The access log in the unit's LogsDirectory, rotated as logrotate would.
nsx sed -i -e 's/^mode = "off"/mode = "full"/' \
    -e 's|^path = "-"|path = "/var/log/ringcache/access.log"|' /etc/ringcache/ringcache.toml
nsx systemctl restart ringcache.service
curl -s -o /dev/null "http://$LISTEN/api/items/1?max_age=3600"
sleep 1.5 # flush_interval = 1s: the line is in the file before it moves
nsx mv /var/log/ringcache/access.log /var/log/ringcache/access.log.1
nsx systemctl kill -s USR1 ringcache.service
sleep 0.5
curl -s -o /dev/null "http://$LISTEN/api/items/2?max_age=3600"
sleep 1.5 # flush_interval = 1s
check "access log: a line in /var/log/ringcache/access.log.1 before SIGUSR1" \
    ns_file_has /var/log/ringcache/access.log.1 '"/api/items/1?max_age=3600"'
check "access log: SIGUSR1 reopened the path, the next line is in the new file" \
    ns_file_has /var/log/ringcache/access.log '"/api/items/2?max_age=3600"'

nsx systemctl stop ringcache.service 2>/dev/null
check "stop: store flushed and marked clean" \
    journal_has 'flushed and marked clean' -n 5
cache_status="$(curl -s -D - -o /dev/null "http://$LISTEN/api/items/7?max_age=3600" | tr -d '\r' | sed -n 's/^Cache-Status: //Ip')"
# The first answer may come before systemd has read READY=1.
active=""
for _ in $(seq 50); do
    active="$(nsx systemctl is-active ringcache.service || true)"
    [ "$active" = active ] && break
    sleep 0.2
done
check "socket unit starts the service on the next connection, warm (${cache_status:-no answer}; $active)" \
    bash -c "[[ '$cache_status' == *'; hit'* ]] && [ '$active' = active ]"

if [ "$failed" != 0 ]; then
    echo "--- journal (last 40 lines)"
    journal -n 40 || true
    exit 1
fi
echo "all checks passed"
