#!/usr/bin/env bash
# Install and run a single-node Apache Cassandra 5.0 (the CQL backend's test database).
#
#   deploy/cassandra.sh install            jars from Maven Central + a python CQL client (once)
#   deploy/cassandra.sh start  [--port P] [--dir D] [--storage-port S] [--clean]
#   deploy/cassandra.sh stop   [--port P] [--dir D]
#   deploy/cassandra.sh status [--port P] [--dir D]
#   deploy/cassandra.sh cql    [--port P] 'CQL STATEMENT'   run one statement, print rows
#
# Environment: NATTER_INFRA_DIR, CASSANDRA_VERSION (5.0.9), CASSANDRA_PORT (9042),
# CASSANDRA_STORAGE_PORT (default PORT-2042, i.e. 7000 for 9042), CASSANDRA_DIR (default
# $NATTER_INFRA_DIR/cassandra/run-PORT), CASSANDRA_HEAP (768M), CASSANDRA_JAVA_HOME (a JDK 17;
# found under /usr/lib/jvm otherwise), CASSANDRA_START_TIMEOUT (seconds, 180).
set -euo pipefail

LOG_TAG=cassandra
# shellcheck source=common.sh
# shellcheck source-path=SCRIPTDIR
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

CASSANDRA_VERSION="${CASSANDRA_VERSION:-5.0.9}"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
HOME_DIR="$NATTER_INFRA_DIR/cassandra"
INSTALL_DIR="$HOME_DIR/$CASSANDRA_VERSION"
LIB_DIR="$INSTALL_DIR/lib"
DONE_MARKER="$INSTALL_DIR/.installed"
PY_DIR="$HOME_DIR/pyclient"
PY="$PY_DIR/bin/python"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit "${1:-2}"
}

# ---------------------------------------------------------------------------- java

java_major() {
    # 'openjdk version "17.0.15" 2025-04-15' -> 17 ; '"1.8.0_402"' -> 8
    local v
    v="$("$1" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -1)"
    case "$v" in 1.*) v="${v#1.}";; esac
    echo "${v%%[.+-]*}"
}

# Cassandra 5.0 runs on JDK 11 or 17, not 21+; we use 17 (the flags below are jvm17's).
find_java() {
    local c seen=" "
    local candidates=("${CASSANDRA_JAVA_HOME:-}" "${JAVA_HOME:-}")
    for c in /usr/lib/jvm/*17* /usr/lib/jvm/*; do candidates+=("$c"); done
    if command -v java >/dev/null 2>&1; then
        candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
    fi
    for c in "${candidates[@]}"; do
        [ -n "$c" ] && [ -x "$c/bin/java" ] || continue
        c="$(readlink -f "$c")"
        case "$seen" in *" $c "*) continue;; esac
        seen="$seen$c "
        if [ "$(java_major "$c/bin/java")" = 17 ]; then
            echo "$c/bin/java"
            return 0
        fi
    done
    die "no JDK 17 found (looked at CASSANDRA_JAVA_HOME, JAVA_HOME, /usr/lib/jvm/*, PATH); install openjdk-17-jdk-headless or set CASSANDRA_JAVA_HOME"
}

# ---------------------------------------------------------------------------- install

do_install() {
    local t0
    t0=$(now_ms)
    if [ -f "$DONE_MARKER" ]; then
        log "cassandra $CASSANDRA_VERSION already installed ($(ls "$LIB_DIR" | wc -l) jars in $LIB_DIR)"
    else
        with_lock "$HOME_DIR/.install.lock" install_jars
        log "cassandra $CASSANDRA_VERSION installed in $(elapsed_s "$t0")s ($(ls "$LIB_DIR" | wc -l) jars, $(du -sh "$LIB_DIR" | cut -f1))"
    fi
    if [ -x "$PY" ] && "$PY" -c 'import cassandra' 2>/dev/null; then
        log "python cql client already installed ($("$PY" -c 'import cassandra; print(cassandra.__version__)'))"
    else
        t0=$(now_ms)
        if with_lock "$HOME_DIR/.pyclient.lock" install_pyclient; then
            log "python cql client installed in $(elapsed_s "$t0")s"
        else
            log "warning: could not install the python cql client; start will fall back to port + log checks"
        fi
    fi
    log "java: $(find_java)"
}

install_jars() {
    [ -f "$DONE_MARKER" ] && return 0
    command -v mvn >/dev/null 2>&1 || die "mvn is not on PATH (needed to fetch cassandra from maven central)"
    local java
    java="$(find_java)"
    mkdir -p "$INSTALL_DIR"
    rm -rf "$LIB_DIR"
    cat >"$INSTALL_DIR/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<!-- written by deploy/cassandra.sh: only used to fetch cassandra-all and its dependencies -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>natter.infra</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM
    log "fetching org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION and dependencies with maven"
    # JAVA_HOME for maven itself; the local repository stays under NATTER_INFRA_DIR too.
    if ! JAVA_HOME="$(dirname "$(dirname "$java")")" mvn -q -B -f "$INSTALL_DIR/pom.xml" \
        -Dmaven.repo.local="$HOME_DIR/m2" \
        "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DoutputDirectory="$LIB_DIR" -DincludeScope=runtime 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e '/^$/d' >&2; then   # maven 3.8 -q still prints colour resets
        die "maven could not fetch cassandra $CASSANDRA_VERSION"
    fi
    ls "$LIB_DIR"/cassandra-all-*.jar >/dev/null 2>&1 || die "cassandra-all jar missing from $LIB_DIR"
    ls "$LIB_DIR"/jamm-*.jar >/dev/null 2>&1 || die "jamm jar missing from $LIB_DIR"
    echo "$CASSANDRA_VERSION" >"$DONE_MARKER"
}

install_pyclient() {
    [ -x "$PY" ] && "$PY" -c 'import cassandra' 2>/dev/null && return 0
    command -v python3 >/dev/null 2>&1 || { log "python3 not found"; return 1; }
    rm -rf "$PY_DIR"
    python3 -m venv "$PY_DIR" || return 1
    "$PY_DIR/bin/pip" install -q --disable-pip-version-check 'cassandra-driver>=3.29' || { rm -rf "$PY_DIR"; return 1; }
}

have_pyclient() { [ -x "$PY" ] && "$PY" -c 'import cassandra' 2>/dev/null; }

# Run one CQL statement against 127.0.0.1:PORT; print a header line and tab-separated rows.
run_cql() {
    local port="$1" query="$2" timeout_s="${3:-10}"
    "$PY" - "$port" "$query" "$timeout_s" <<'PYEOF'
import logging, sys, warnings
warnings.filterwarnings("ignore")
logging.basicConfig(level=logging.CRITICAL)
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import WhiteListRoundRobinPolicy
port, query, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy(["127.0.0.1"]),
                           request_timeout=timeout)
cluster = Cluster(["127.0.0.1"], port=port, connect_timeout=timeout,
                  execution_profiles={EXEC_PROFILE_DEFAULT: profile})
try:
    session = cluster.connect()
    rows = session.execute(query)
    if rows.column_names:
        print("\t".join(rows.column_names))
    for row in rows:
        print("\t".join("" if v is None else str(v) for v in row))
finally:
    cluster.shutdown()
PYEOF
}

# ---------------------------------------------------------------------------- options

PORT="${CASSANDRA_PORT:-9042}"
STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-}"
DIR="${CASSANDRA_DIR:-}"
HEAP="${CASSANDRA_HEAP:-768M}"
CLEAN=0
ARGS=()
parse_opts() {
    ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) need_value "$@"; PORT="$2"; shift 2;;
            --port=*) PORT="${1#*=}"; shift;;
            --dir) need_value "$@"; DIR="$2"; shift 2;;
            --dir=*) DIR="${1#*=}"; shift;;
            --storage-port) need_value "$@"; STORAGE_PORT="$2"; shift 2;;
            --storage-port=*) STORAGE_PORT="${1#*=}"; shift;;
            --clean) CLEAN=1; shift;;
            -h|--help) usage 0;;
            --) shift; ARGS+=("$@"); break;;
            -*) die "unknown option: $1";;
            *) ARGS+=("$1"); shift;;
        esac
    done
    check_port "$PORT"
    if [ -z "$STORAGE_PORT" ]; then
        # 9042 -> 7000, 19042 -> 17000: distinct per instance, never equal to PORT.
        STORAGE_PORT=$((PORT - 2042))
        [ "$STORAGE_PORT" -ge 1024 ] || STORAGE_PORT=$((PORT + 1))
    fi
    check_port "$STORAGE_PORT"
    [ "$STORAGE_PORT" != "$PORT" ] || die "storage port and cql port are both $PORT"
    DIR="${DIR:-$HOME_DIR/run-$PORT}"
    case "$DIR" in /*) ;; *) DIR="$PWD/$DIR";; esac
    PID_FILE="$DIR/cassandra.pid"
    LOG_FILE="$DIR/cassandra.log"
    CONF_DIR="$DIR/conf"
    CONF_FILE="$CONF_DIR/cassandra.yaml"
    DATA_DIR="$DIR/data"
}

running_pid() {
    local pid
    pid="$(read_pid "$PID_FILE")"
    if pid_is "$pid" "$CONF_FILE"; then echo "$pid"; fi
}

# ---------------------------------------------------------------------------- config

write_config() {
    mkdir -p "$CONF_DIR/triggers" "$DATA_DIR"/{data,commitlog,saved_caches,hints,cdc_raw}
    cat >"$CONF_FILE.tmp" <<YAML
# written by deploy/cassandra.sh on every start; edits are overwritten.
# A single-node test cluster on loopback. Keys use the 4.1+/5.0 names.
cluster_name: natter-test
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
num_tokens: 1
# a fresh cluster needs no compatibility with 4.x sstables/messaging
storage_compatibility_mode: NONE

listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $STORAGE_PORT
native_transport_port: $PORT
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$STORAGE_PORT"

data_file_directories:
  - $DATA_DIR/data
commitlog_directory: $DATA_DIR/commitlog
saved_caches_directory: $DATA_DIR/saved_caches
hints_directory: $DATA_DIR/hints
cdc_raw_directory: $DATA_DIR/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_snapshot: false
# Paxos v2 (Cassandra 4.1+): two round trips per conditional update instead of four; Natter's
# log appends, idempotency records and registries are conditional updates.
paxos_variant: v2
YAML
    mv -f "$CONF_FILE.tmp" "$CONF_FILE"
    cat >"$CONF_DIR/logback.xml" <<'XML'
<!-- written by deploy/cassandra.sh: INFO to stdout, which start sends to the log file -->
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
XML
}

# The JPMS flags of Cassandra 5.0's conf/jvm17-server.options (without them the JVM dies at
# start with no stack trace), plus the few settings of jvm-server.options a test node needs.
jvm17_flags() {
    local m
    for m in \
        java.base/jdk.internal.misc \
        java.management.rmi/com.sun.jmx.remote.internal.rmi \
        java.rmi/sun.rmi.registry \
        java.rmi/sun.rmi.server \
        java.sql/java.sql \
        java.base/java.lang.ref \
        jdk.unsupported/sun.misc \
        jdk.compiler/com.sun.tools.javac.file \
        jdk.attach/sun.tools.attach; do
        printf -- '--add-exports=%s=ALL-UNNAMED\n' "$m"
    done
    for m in \
        java.base/java.lang.module \
        java.base/jdk.internal.loader \
        java.base/jdk.internal.ref \
        java.base/jdk.internal.reflect \
        java.base/jdk.internal.math \
        java.base/jdk.internal.module \
        java.base/jdk.internal.util.jar \
        jdk.management/com.sun.management.internal \
        java.base/sun.nio.ch \
        java.base/java.io \
        java.base/java.lang.reflect \
        jdk.compiler/com.sun.tools.javac \
        java.base/java.lang \
        java.base/java.util; do
        printf -- '--add-opens=%s=ALL-UNNAMED\n' "$m"
    done
}

# ---------------------------------------------------------------------------- commands

do_start() {
    parse_opts "$@"
    local pid t0 java jamm timeout_s="${CASSANDRA_START_TIMEOUT:-180}"
    pid="$(running_pid)"
    if [ -n "$pid" ]; then
        log "already running: pid $pid, cql on 127.0.0.1:$PORT (dir $DIR)"
        return 0
    fi
    rm -f "$PID_FILE"
    [ -f "$DONE_MARKER" ] || do_install
    java="$(find_java)"
    jamm="$(ls "$LIB_DIR"/jamm-*.jar | head -1)"
    local p
    for p in "$PORT" "$STORAGE_PORT"; do
        if port_open "$p"; then
            die "port $p is already in use by another process (not ours: no live pid in $PID_FILE)"
        fi
    done
    if [ "$CLEAN" = 1 ]; then
        log "--clean: removing $DATA_DIR"
        rm -rf "$DATA_DIR"
    fi
    write_config
    rm -rf "$DIR/tmp"
    mkdir -p "$DIR/tmp"

    local -a jvm
    mapfile -t jvm < <(jvm17_flags)
    jvm+=(
        "-Xms$HEAP" "-Xmx$HEAP"
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
        -XX:+CrashOnOutOfMemoryError "-XX:ErrorFile=$DIR/hs_err_pid%p.log"
        -XX:+PerfDisableSharedMem
        # native libs (lz4, snappy, jna) unpack here, not in /tmp, and do not pile up after kill -9
        "-Djava.io.tmpdir=$DIR/tmp"
        -Djava.net.preferIPv4Stack=true
        -Djdk.attach.allowAttachSelf=true
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
        "-javaagent:$jamm"
        "-Dcassandra.config=file://$CONF_FILE"
        "-Dlogback.configurationFile=file://$CONF_DIR/logback.xml"
        "-Dcassandra.logdir=$DIR"
        "-Dcassandra.storagedir=$DATA_DIR"
        "-Dcassandra.triggers_dir=$CONF_DIR/triggers"
        -Dcassandra-foreground=yes
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.ring_delay_ms=100
        -Dcassandra.superuser_setup_delay_ms=0
        -cp "$CONF_DIR:$LIB_DIR/*"
        org.apache.cassandra.service.CassandraDaemon
    )

    rotate_log "$LOG_FILE"
    t0=$(now_ms)
    pid="$(cd "$DIR" && spawn_detached "$LOG_FILE" "$java" "${jvm[@]}")"
    echo "$pid" >"$PID_FILE"
    log "starting pid $pid (cql 127.0.0.1:$PORT, storage $STORAGE_PORT, heap $HEAP, log $LOG_FILE)"

    local use_py=0 deadline version=""
    have_pyclient && use_py=1
    [ "$use_py" = 1 ] || log "python cql client missing: waiting for the cql port and log line only"
    deadline=$(( $(date +%s) + timeout_s ))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PID_FILE"
            show_log_tail "$LOG_FILE" 60
            die "cassandra exited during startup (see $LOG_FILE)"
        fi
        if grep -q "Starting listening for CQL clients" "$LOG_FILE" && port_open "$PORT"; then
            if [ "$use_py" = 0 ]; then break; fi
            if version="$(run_cql "$PORT" "SELECT release_version FROM system.local" 5 2>/dev/null | tail -n 1)" \
                && [ -n "$version" ]; then
                break
            fi
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_log_tail "$LOG_FILE" 60
            log "stopping pid $pid after failed start"
            stop_pid "$pid" "$CONF_FILE" 30
            rm -f "$PID_FILE"
            die "cassandra did not answer cql on 127.0.0.1:$PORT within ${timeout_s}s"
        fi
        sleep 0.5
    done
    local rss
    rss="$(awk '/^VmRSS/ {printf "%d MiB", $2/1024}' "/proc/$pid/status" 2>/dev/null || echo '?')"
    log "started pid $pid in $(elapsed_s "$t0")s: cql on 127.0.0.1:$PORT${version:+, release_version $version}, rss $rss (dir $DIR)"
}

do_stop() {
    parse_opts "$@"
    local pid t0
    pid="$(running_pid)"
    if [ -z "$pid" ]; then
        rm -f "$PID_FILE"
        log "not running (dir $DIR)"
        return 0
    fi
    t0=$(now_ms)
    stop_pid "$pid" "$CONF_FILE" 60
    rm -f "$PID_FILE"
    log "stopped pid $pid in $(elapsed_s "$t0")s"
}

do_status() {
    parse_opts "$@"
    local pid rss
    pid="$(running_pid)"
    if [ -z "$pid" ]; then
        echo "cassandra: not running (dir $DIR)"
        return 3
    fi
    rss="$(awk '/^VmRSS/ {printf "%d MiB", $2/1024}' "/proc/$pid/status" 2>/dev/null || echo '?')"
    if port_open "$PORT"; then
        echo "cassandra: running, pid $pid, cql on 127.0.0.1:$PORT, rss $rss (dir $DIR)"
    else
        echo "cassandra: pid $pid alive but cql port 127.0.0.1:$PORT not open yet (dir $DIR)"
        return 1
    fi
}

do_cql() {
    parse_opts "$@"
    [ "${#ARGS[@]}" -eq 1 ] || die "usage: cassandra.sh cql [--port P] 'CQL STATEMENT'"
    have_pyclient || die "python cql client not installed: run deploy/cassandra.sh install"
    run_cql "$PORT" "${ARGS[0]}" 30
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    install) do_install;;
    start) do_start "$@";;
    stop) do_stop "$@";;
    status) do_status "$@";;
    cql) do_cql "$@";;
    -h|--help|help) usage 0;;
    "") usage 2;;
    *) die "unknown command: $cmd (try: install, start, stop, status, cql)";;
esac
