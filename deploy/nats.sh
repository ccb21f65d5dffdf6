#!/usr/bin/env bash
# Install and run a local nats-server with JetStream for Natter's distributed-mode tests.
#
#   deploy/nats.sh install                 go install nats-server into $NATTER_INFRA_DIR/bin (once)
#   deploy/nats.sh start  [--port P] [--dir D] [--http-port H] [--clean]
#   deploy/nats.sh stop   [--port P] [--dir D]
#   deploy/nats.sh status [--port P] [--dir D]
#   deploy/nats.sh check  [--port P]       handshake + JetStream account-info request
#
# Environment: NATTER_INFRA_DIR, NATS_SERVER_VERSION (go module version, default latest),
# NATS_PORT (4222), NATS_HTTP_PORT (0 = monitoring off), NATS_DIR (default
# $NATTER_INFRA_DIR/nats/run-PORT), NATS_START_TIMEOUT (seconds, 30).
set -euo pipefail

LOG_TAG=nats
# shellcheck source=common.sh
# shellcheck source-path=SCRIPTDIR
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

NATS_MODULE=github.com/nats-io/nats-server/v2
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-latest}"
BIN_DIR="$NATTER_INFRA_DIR/bin"
NATS_BIN="$BIN_DIR/nats-server"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit "${1:-2}"
}

do_install() {
    if [ -x "$NATS_BIN" ]; then
        log "already installed: $("$NATS_BIN" --version 2>&1)"
        return 0
    fi
    with_lock "$NATTER_INFRA_DIR/.nats-install.lock" install_locked
    log "installed: $("$NATS_BIN" --version 2>&1)"
}

install_locked() {
    [ -x "$NATS_BIN" ] && return 0   # another run finished it while we waited
    command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to install nats-server)"
    local t0 tmp
    t0=$(now_ms)
    tmp="$BIN_DIR/.go-install.$$"
    mkdir -p "$tmp"
    log "go install $NATS_MODULE@$NATS_SERVER_VERSION"
    if ! GOBIN="$tmp" GOFLAGS="${GOFLAGS:--buildvcs=false}" go install "$NATS_MODULE@$NATS_SERVER_VERSION"; then
        rm -rf "$tmp"
        die "go install of nats-server failed"
    fi
    mv -f "$tmp/nats-server" "$NATS_BIN"
    rm -rf "$tmp"
    log "install took $(elapsed_s "$t0")s"
}

# Option parsing shared by start/stop/status/check.
PORT="${NATS_PORT:-4222}"
HTTP_PORT="${NATS_HTTP_PORT:-0}"
DIR="${NATS_DIR:-}"
CLEAN=0
parse_opts() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) need_value "$@"; PORT="$2"; shift 2;;
            --port=*) PORT="${1#*=}"; shift;;
            --dir) need_value "$@"; DIR="$2"; shift 2;;
            --dir=*) DIR="${1#*=}"; shift;;
            --http-port) need_value "$@"; HTTP_PORT="$2"; shift 2;;
            --http-port=*) HTTP_PORT="${1#*=}"; shift;;
            --clean) CLEAN=1; shift;;
            -h|--help) usage 0;;
            *) die "unknown option: $1";;
        esac
    done
    check_port "$PORT"
    case "$HTTP_PORT" in ''|*[!0-9]*) die "bad --http-port: '$HTTP_PORT'";; esac
    DIR="${DIR:-$NATTER_INFRA_DIR/nats/run-$PORT}"
    case "$DIR" in /*) ;; *) DIR="$PWD/$DIR";; esac
    PID_FILE="$DIR/nats-server.pid"
    LOG_FILE="$DIR/nats-server.log"
    CONF_FILE="$DIR/nats-server.conf"
    STORE_DIR="$DIR/jetstream"
}

running_pid() {
    local pid
    pid="$(read_pid "$PID_FILE")"
    if pid_is "$pid" "$CONF_FILE"; then echo "$pid"; fi
}

write_config() {
    {
        echo "# written by deploy/nats.sh on every start; edits are overwritten"
        echo "server_name: \"natter-test-$PORT\""
        echo "listen: \"127.0.0.1:$PORT\""
        if [ "$HTTP_PORT" -gt 0 ]; then
            echo "http: \"127.0.0.1:$HTTP_PORT\""
        fi
        echo "jetstream {"
        echo "  store_dir: \"$DIR\""
        echo "  # fsync every write before acking: by default JetStream acks before fsync"
        echo "  # (flushes every 2 minutes), so an acked message can be lost on a crash."
        echo "  sync_interval: always"
        echo "}"
    } >"$CONF_FILE.tmp"
    mv -f "$CONF_FILE.tmp" "$CONF_FILE"
}

do_start() {
    parse_opts "$@"
    local pid t0 timeout_s="${NATS_START_TIMEOUT:-30}"
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        log "already running: pid $pid on 127.0.0.1:$PORT (dir $DIR)"
        return 0
    fi
    rm -f "$PID_FILE"
    [ -x "$NATS_BIN" ] || do_install
    if port_open "$PORT"; then
        die "port $PORT is already in use by another process (not ours: no live pid in $PID_FILE)"
    fi
    if [ "$CLEAN" = 1 ]; then
        log "--clean: removing $STORE_DIR"
        rm -rf "$STORE_DIR"
    fi
    mkdir -p "$STORE_DIR"
    write_config
    rotate_log "$LOG_FILE"
    t0=$(now_ms)
    pid="$(spawn_detached "$LOG_FILE" "$NATS_BIN" -c "$CONF_FILE")"
    echo "$pid" >"$PID_FILE"
    local deadline=$(( $(date +%s) + timeout_s ))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            show_log_tail "$LOG_FILE"
            die "nats-server exited during startup (see $LOG_FILE)"
        fi
        if port_open "$PORT"; then break; fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log_tail "$LOG_FILE"
            kill -TERM "$pid" 2>/dev/null || true
            rm -f "$PID_FILE"
            die "nats-server did not accept connections on 127.0.0.1:$PORT within ${timeout_s}s"
        fi
        sleep 0.05
    done
    log "started pid $pid on 127.0.0.1:$PORT in $(elapsed_s "$t0")s (dir $DIR, log $LOG_FILE)"
}

do_stop() {
    parse_opts "$@"
    local pid
    pid="$(running_pid)"
    if [ -z "$pid" ]; then
        rm -f "$PID_FILE"
        log "not running (dir $DIR)"
        return 0
    fi
    stop_pid "$pid" "$CONF_FILE" 30
    rm -f "$PID_FILE"
    log "stopped pid $pid"
}

do_status() {
    parse_opts "$@"
    local pid
    pid="$(running_pid)"
    if [ -z "$pid" ]; then
        echo "nats-server: not running (dir $DIR)"
        return 3
    fi
    if port_open "$PORT"; then
        echo "nats-server: running, pid $pid, nats://127.0.0.1:$PORT (dir $DIR)"
    else
        echo "nats-server: pid $pid alive but 127.0.0.1:$PORT not accepting connections (dir $DIR)"
        return 1
    fi
}

# Speak the NATS protocol over bash's /dev/tcp: read INFO, CONNECT, send a JetStream
# $JS.API.INFO request and wait for its reply. Needs no client library.
do_check() {
    parse_opts "$@"
    local line info="" reply="" deadline
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || die "cannot connect to 127.0.0.1:$PORT"
    IFS= read -r -t 5 info <&3 || die "no INFO from 127.0.0.1:$PORT"
    case "$info" in INFO*) ;; *) die "unexpected greeting: $info";; esac
    # shellcheck disable=SC2016  # $JS.API.INFO is a literal subject
    printf 'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"name":"natter-check"}\r\nSUB _INBOX.natter.check 1\r\nPUB $JS.API.INFO _INBOX.natter.check 0\r\n\r\nPING\r\n' >&3
    deadline=$(( $(date +%s) + 10 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        IFS= read -r -t 5 line <&3 || break
        line="${line%$'\r'}"
        case "$line" in
            PING) printf 'PONG\r\n' >&3;;
            MSG\ *) IFS= read -r -t 5 reply <&3 || true; reply="${reply%$'\r'}"; break;;
            HMSG\ *) IFS= read -r -t 5 reply <&3 || true; reply="HMSG ${reply%$'\r'}"; break;;
            -ERR*) die "server error: $line";;
        esac
    done
    exec 3>&-
    local version
    version="$(printf '%s' "$info" | grep -o '"version":"[^"]*"' | head -1 | cut -d'"' -f4)"
    case "$info" in *'"jetstream":true'*) ;; *) die "server $version on port $PORT has jetstream disabled";; esac
    case "$reply" in
        *'"type":"io.nats.jetstream.api.v1.account_info_response"'*)
            case "$reply" in *'"error"'*) die "jetstream account info returned an error: $reply";; esac
            echo "nats-server $version on 127.0.0.1:$PORT: jetstream enabled, account info ok"
            echo "$reply"
            ;;
        '') die "no reply to \$JS.API.INFO within 10s";;
        *) die "unexpected reply to \$JS.API.INFO: $reply";;
    esac
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    install) do_install;;
    start) do_start "$@";;
    stop) do_stop "$@";;
    status) do_status "$@";;
    check) do_check "$@";;
    -h|--help|help) usage 0;;
    "") usage 2;;
    *) die "unknown command: $cmd (try: install, start, stop, status, check)";;
esac
