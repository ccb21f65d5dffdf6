# shellcheck shell=bash
# Helpers shared by deploy/nats.sh and deploy/cassandra.sh. Sourced, not executed.
#
# All state lives under NATTER_INFRA_DIR (default: $HOME/.cache/natter-infra), outside the
# work tree, so every clone of the repository reuses the same installs.

NATTER_INFRA_DIR="${NATTER_INFRA_DIR:-${HOME:?HOME is not set}/.cache/natter-infra}"
LOG_TAG="${LOG_TAG:-infra}"

log() { printf '%s: %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# Milliseconds since the epoch, for timings.
now_ms() { date +%s%3N; }
# Seconds elapsed since a now_ms value, with one decimal.
elapsed_s() {
    local d=$(( $(now_ms) - $1 ))
    printf '%d.%d' $((d / 1000)) $(((d % 1000) / 100))
}

# Run a command while holding an exclusive lock on a file, so two concurrent runs (e.g. two CI
# jobs sharing NATTER_INFRA_DIR) do not install into the same place at once.
with_lock() {
    local lock="$1"; shift
    mkdir -p "$(dirname "$lock")"
    if command -v flock >/dev/null 2>&1; then
        ( flock -w 1800 9 || die "timed out waiting for lock $lock"; "$@" ) 9>"$lock"
    else
        "$@"
    fi
}

# The pid stored in a pid file, or nothing.
read_pid() {
    [ -f "$1" ] || return 0
    tr -dc '0-9' <"$1"
}

# True when the process is alive and its command line contains the given marker (protects
# against acting on a recycled pid).
pid_is() {
    local pid="$1" marker="$2"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ -r "/proc/$pid/cmdline" ] || return 0   # no procfs: trust kill -0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Stop a process: SIGTERM, wait up to N seconds, then SIGKILL.
stop_pid() {
    local pid="$1" marker="$2" wait_s="$3" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < wait_s * 10; i++)); do
        pid_is "$pid" "$marker" || return 0
        sleep 0.1
    done
    log "pid $pid did not exit after ${wait_s}s, sending sigkill"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    die "pid $pid survived sigkill"
}

# Start a command detached from this shell (own session, stdin closed, output appended to a log
# file) and print its pid. setsid without -f execs in place when the caller is not a process
# group leader, which a background job of a script never is, so $! is the server's own pid.
spawn_detached() {
    local logfile="$1"; shift
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" >>"$logfile" 2>&1 </dev/null &
    else
        nohup "$@" >>"$logfile" 2>&1 </dev/null &
    fi
    echo $!
}

# Keep the previous log as LOG.1 and start a fresh one.
rotate_log() {
    [ -f "$1" ] && mv -f "$1" "$1.1"
    : >"$1"
}

show_log_tail() {
    local f="$1" n="${2:-40}"
    [ -f "$f" ] || return 0
    printf '%s: ---- last %s lines of %s ----\n' "$LOG_TAG" "$n" "$f" >&2
    tail -n "$n" "$f" >&2
    printf '%s: ---- end of log ----\n' "$LOG_TAG" >&2
}

need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "option $1 needs a value"; }

check_port() {
    case "$1" in ''|*[!0-9]*) die "bad port: '$1'";; esac
    [ "$1" -ge 1 ] && [ "$1" -le 65535 ] || die "bad port: $1"
}
