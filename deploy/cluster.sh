#!/usr/bin/env bash
# A local distributed Natter: nats-server, Apache Cassandra 5.0, `natter migrate`, then one
# process per role (two gateways, one message, one presence, one conversation), each with its
# own log. `make cluster` / `make cluster-down` call this.
#
#   deploy/cluster.sh up      build natter (--features distributed), start everything, print how to connect
#   deploy/cluster.sh down    stop the natter processes, then NATS and Cassandra if `up` started them
#   deploy/cluster.sh status  one line per process
#
# Environment: NATTER_CLUSTER_DIR (default ./natter-cluster: config, secrets, logs, pids),
# NATTER_BIN (use this binary instead of building one), CARGO_PROFILE (release),
# NATTER_CLUSTER_KEYSPACE (natter_local), plus what deploy/nats.sh and deploy/cassandra.sh read.
#
# Ports on 127.0.0.1: gateway-1 ws 7100 grpc 7101, gateway-2 ws 7110 grpc 7111, message grpc 7201,
# presence grpc 7301, conversation grpc 7401; NATS 4222, CQL 9042.
set -euo pipefail

LOG_TAG=cluster
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$DEPLOY_DIR")"
# shellcheck source=common.sh
# shellcheck source-path=SCRIPTDIR
. "$DEPLOY_DIR/common.sh"

DIR="${NATTER_CLUSTER_DIR:-$REPO_DIR/natter-cluster}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR";; esac
PROFILE="${CARGO_PROFILE:-release}"
KEYSPACE="${NATTER_CLUSTER_KEYSPACE:-natter_local}"
CONFIG="$DIR/natter.toml"
# name:ws:grpc, in start order (the gateways need the other roles' addresses, not their
# presence: their gRPC clients connect lazily, but starting them first avoids noisy retries).
PROCESSES="message::7201 presence::7301 conversation::7401 gateway-1:7100:7101 gateway-2:7110:7111"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit "${1:-2}"
}

natter_bin() {
    if [ -n "${NATTER_BIN:-}" ]; then
        echo "$NATTER_BIN"
        return
    fi
    local dir="$PROFILE"
    [ "$PROFILE" = dev ] && dir=debug
    echo "$REPO_DIR/target/$dir/natter"
}

build() {
    [ -n "${NATTER_BIN:-}" ] && return 0
    log "building natter ($PROFILE, --features distributed)"
    (cd "$REPO_DIR" && cargo build --locked --profile "$PROFILE" -p natter-server --features distributed --bin natter)
}

secret_file() {
    local f="$DIR/$1"
    if [ ! -s "$f" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$f")
    fi
    cat "$f"
}

write_config() {
    mkdir -p "$DIR/logs" "$DIR/run"
    local token_secret api_key
    token_secret="$(secret_file token_secret)"
    api_key="$(secret_file api_key)"
    (umask 077 && cat >"$CONFIG.tmp" <<EOF
# Written by deploy/cluster.sh on every \`up\`; edits are overwritten. Each process gets its
# addresses from NATTER_SERVER__LISTEN / NATTER_SERVER__GRPC_LISTEN.
[server]
data_dir = "$DIR/run"
shutdown_grace_secs = 10

[auth]
token_secret = "$token_secret"
api_key = "$api_key"

[nats]
urls = ["nats://127.0.0.1:${NATS_PORT:-4222}"]

[cql]
contact_points = ["127.0.0.1:${CASSANDRA_PORT:-9042}"]
keyspace = "$KEYSPACE"
# One local node: ONE is all there is.
consistency = "ONE"
serial_consistency = "SERIAL"
replication = "simple:1"

[cluster]
message_addr = "http://127.0.0.1:7201"
presence_addr = "http://127.0.0.1:7301"
conversation_addr = "http://127.0.0.1:7401"
EOF
    )
    mv -f "$CONFIG.tmp" "$CONFIG"
}

pid_file() { echo "$DIR/$1.pid"; }

running() {
    local pid
    pid="$(read_pid "$(pid_file "$1")")"
    if pid_is "$pid" "$CONFIG"; then echo "$pid"; fi
}

start_process() {
    local name="$1" ws="$2" grpc="$3" role="${1%%-*}" bin logfile pid deadline
    if [ -n "$(running "$name")" ]; then
        log "$name already running"
        return 0
    fi
    bin="$(natter_bin)"
    logfile="$DIR/logs/$name.log"
    rotate_log "$logfile"
    port_open "$grpc" && die "port $grpc (grpc of $name) is in use by another process"
    if [ -n "$ws" ] && port_open "$ws"; then die "port $ws (ws of $name) is in use by another process"; fi
    pid="$(NATTER_SERVER__LISTEN="127.0.0.1:${ws:-0}" NATTER_SERVER__GRPC_LISTEN="127.0.0.1:$grpc" \
        spawn_detached "$logfile" "$bin" --config "$CONFIG" "$role")"
    echo "$pid" >"$(pid_file "$name")"
    deadline=$(( $(date +%s) + 60 ))
    until grep -q '^natter ready' "$logfile"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail "$logfile"
            die "$name exited during startup (log: $logfile)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log_tail "$logfile"
            die "$name did not become ready within 60s (log: $logfile)"
        fi
        sleep 0.1
    done
    log "$(grep -m1 '^natter ready' "$logfile") pid $pid"
}

do_up() {
    local t0 name ws grpc spec
    t0=$(now_ms)
    build
    [ -x "$(natter_bin)" ] || die "no natter binary at $(natter_bin)"
    mkdir -p "$DIR"
    "$DEPLOY_DIR/nats.sh" install
    if ! "$DEPLOY_DIR/nats.sh" status >/dev/null 2>&1; then
        "$DEPLOY_DIR/nats.sh" start
        touch "$DIR/started-nats"
    fi
    "$DEPLOY_DIR/cassandra.sh" install
    if ! "$DEPLOY_DIR/cassandra.sh" status >/dev/null 2>&1; then
        "$DEPLOY_DIR/cassandra.sh" start
        touch "$DIR/started-cassandra"
    fi
    write_config
    "$(natter_bin)" --config "$CONFIG" migrate >>"$DIR/logs/migrate.log" 2>&1 \
        || { show_log_tail "$DIR/logs/migrate.log"; die "natter migrate failed"; }
    log "$(tail -n 1 "$DIR/logs/migrate.log")"
    for spec in $PROCESSES; do
        IFS=: read -r name ws grpc <<<"$spec"
        start_process "$name" "$ws" "$grpc"
    done
    log "cluster up in $(elapsed_s "$t0")s; config $CONFIG, logs $DIR/logs"
    cat <<EOF

Gateways:   ws://127.0.0.1:7100/ws  and  ws://127.0.0.1:7110/ws
Backend:    grpc on 127.0.0.1:7101 and 127.0.0.1:7111 (authorization: Bearer \$(cat $DIR/api_key))
A token:    $(natter_bin) --config $CONFIG token --user alice
Stop:       make cluster-down
EOF
}

do_down() {
    local spec name pid names=()
    for spec in $PROCESSES; do names=("${spec%%:*}" "${names[@]}"); done   # reverse order: gateways first
    for name in "${names[@]}"; do
        pid="$(running "$name")"
        if [ -n "$pid" ]; then
            stop_pid "$pid" "$CONFIG" 30
            log "stopped $name (pid $pid)"
        fi
        rm -f "$(pid_file "$name")"
    done
    if [ -f "$DIR/started-nats" ]; then
        "$DEPLOY_DIR/nats.sh" stop
        rm -f "$DIR/started-nats"
    fi
    if [ -f "$DIR/started-cassandra" ]; then
        "$DEPLOY_DIR/cassandra.sh" stop
        rm -f "$DIR/started-cassandra"
    fi
}

do_status() {
    local spec name pid rc=0
    for spec in $PROCESSES; do
        name="${spec%%:*}"
        pid="$(running "$name")"
        if [ -n "$pid" ]; then echo "$name: running, pid $pid"; else echo "$name: not running"; rc=3; fi
    done
    "$DEPLOY_DIR/nats.sh" status || rc=3
    "$DEPLOY_DIR/cassandra.sh" status || rc=3
    return "$rc"
}

case "${1:-}" in
    up) do_up;;
    down) do_down;;
    status) do_status;;
    -h|--help|help) usage 0;;
    *) usage;;
esac
