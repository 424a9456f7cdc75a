#!/usr/bin/env bash
# How long Redis is held up by one read of a cluster node's session index, the set each node
# reads at every reconciliation (every --node-lease or 4 x --redis-timeout) and that another
# node reads to adopt a dead node's sessions: one SMEMBERS (what nodes did before) against the
# SSCAN ... COUNT 1000 calls that read it now. Redis serves one command at a time, so that is
# how long every other node's request waits behind it.
#   scripts/bench-index-scan.sh                  # the figures in BENCHMARKS.md
#   SESSIONS=20000 scripts/bench-index-scan.sh
# Needs redis-server and redis-cli; runs a Redis of its own on a free loopback port.
set -euo pipefail
SESSIONS=${SESSIONS:-100000}
ROUNDS=${ROUNDS:-5}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do cli PING >/dev/null 2>&1 && break; sleep 0.1; done
key='sig:node:bench.0123456789abcdef:sessions'
awk -v n="$SESSIONS" -v key="$key" \
  'BEGIN { for (i = 0; i < n; i++) printf "SADD %s \"room-%d\\t%016x\"\n", key, i % 5000, i }' |
  cli >/dev/null
echo "index of $(cli SCARD "$key") sessions, $ROUNDS reads each way"
cli CONFIG RESETSTAT >/dev/null
for _ in $(seq "$ROUNDS"); do
  cli SMEMBERS "$key" >/dev/null
  cursor=0
  while :; do
    cursor=$(cli SSCAN "$key" "$cursor" COUNT 1000 | awk 'NR == 1')
    [ "$cursor" = 0 ] && break
  done
done
cli INFO commandstats | tr -d '\r' | grep -E '^cmdstat_(smembers|sscan):' |
  sed -E 's/^cmdstat_([a-z]+):calls=([0-9]+),usec=([0-9]+),usec_per_call=([0-9.]+).*/\1: \2 calls, \4 us per call (Redis busy for each), \3 us in all/'
