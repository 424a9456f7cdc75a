#!/usr/bin/env bash
# A room of big broadcasts beside a probe pair in another room: one node, then three on one
# Redis, in one run (signaling/benches/broadcast_flood.rs says what it measures).
#   scripts/bench-broadcast-flood.sh                  # the figures in BENCHMARKS.md
#   SENDERS=8 DURATION=10 scripts/bench-broadcast-flood.sh
# Needs redis-server (scripts/install-test-deps.sh installs it). Everything runs on loopback and
# shares this machine's cores: compare the ratios.
source "$(dirname "$0")/lib/signaling-bench.sh" broadcast_flood
ROOM_SIZE=${ROOM_SIZE:-32}
SENDERS=${SENDERS:-3}
BYTES=${BYTES:-64000}
RATE=${RATE:-50}
DURATION=${DURATION:-20}
run() {
  bench_report --room-size "$ROOM_SIZE" --senders "$SENDERS" --bytes "$BYTES" --rate "$RATE" \
    --duration "$DURATION" "$@"
}
for nodes in 1 3; do
  echo "=== $nodes node(s), default limits (a broadcast costs a token per KiB)"
  run --nodes "$nodes"
done
# 64 times the message rate and burst: a 64 KB broadcast then passes as often as a one-token
# message does with the defaults, which is what every broadcast cost before (one token).
echo "=== 3 nodes, one token per broadcast (limits x 64)"
run --nodes 3 --server-args "--rate-limit 3200 --rate-burst 12800"
# Sixteen such rooms at once (48 broadcasters), one node, then three: a cluster node's calls to
# Redis queue on one connection, and the probe's wait behind them (BENCHMARKS.md).
for nodes in 1 3; do
  echo "=== $nodes node(s), 16 rooms of 28 with 3 broadcasters each"
  run --nodes "$nodes" --rooms 16 --room-size 28
done
