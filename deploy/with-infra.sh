#!/usr/bin/env bash
# Run a command with a nats-server and Cassandra 5.0 up, installing them first if
# needed; stops again whatever this script started (on success, failure or ^C).
#
#   deploy/with-infra.sh [--nats] [--cql] -- COMMAND [ARGS...]
#
# Without --nats/--cql both are started. Used by `make test` so that one
# build of the workspace (with the distributed feature) runs every suite
# against one database start, instead of a start and a build per suite.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
want_nats=0
want_cql=0
while [ $# -gt 0 ]; do
    case "$1" in
        --nats) want_nats=1 ;;
        --cql) want_cql=1 ;;
        --) shift; break ;;
        *) echo "with-infra: unknown option $1 (usage: with-infra.sh [--nats] [--cql] -- COMMAND...)" >&2; exit 2 ;;
    esac
    shift
done
[ $# -gt 0 ] || { echo "with-infra: no command given" >&2; exit 2; }
if [ $want_nats = 0 ] && [ $want_cql = 0 ]; then
    want_nats=1
    want_cql=1
fi

started_nats=0
started_cql=0
cleanup() {
    if [ $started_nats = 1 ]; then "$here/nats.sh" stop || true; fi
    if [ $started_cql = 1 ]; then "$here/cassandra.sh" stop || true; fi
}
trap cleanup EXIT

if [ $want_nats = 1 ]; then
    "$here/nats.sh" install
    if ! "$here/nats.sh" status >/dev/null 2>&1; then
        started_nats=1
        "$here/nats.sh" start
    fi
fi
if [ $want_cql = 1 ]; then
    "$here/cassandra.sh" install
    if ! "$here/cassandra.sh" status >/dev/null 2>&1; then
        started_cql=1
        "$here/cassandra.sh" start
    fi
fi

# Not exec: the trap has to run after the command.
"$@"
