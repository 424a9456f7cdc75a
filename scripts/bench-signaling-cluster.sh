#!/usr/bin/env bash
# One signaling node against a 3-node cluster on one Redis, side by side, in one run.
#   scripts/bench-signaling-cluster.sh            # the figures in BENCHMARKS.md
#   CONNECTIONS=2000 DURATION=5 scripts/bench-signaling-cluster.sh   # a quick look
# Needs redis-server (scripts/install-test-deps.sh installs it). Everything runs on loopback:
# nodes, Redis and the load client share this machine's cores, so compare the ratios.
source "$(dirname "$0")/lib/signaling-bench.sh" signaling_load
CONNECTIONS=${CONNECTIONS:-10000}
ROOMS=${ROOMS:-$((CONNECTIONS / 2))}
PAIRS=${PAIRS:-50}
DURATION=${DURATION:-10}
RATES=${RATES:-"5000 10000 20000 40000"}
for nodes in 1 3; do
  echo "=== $nodes node(s): $CONNECTIONS idle connections, latency at 5000 msg/s$([ "$nodes" -gt 1 ] && echo ', then kill -9 of node 2')"
  extra=(); [ "$nodes" -gt 1 ] && extra=(--failover)
  bench_report --nodes "$nodes" --connections "$CONNECTIONS" --rooms "$ROOMS" --pairs "$PAIRS" \
        --rate 5000 --duration "$DURATION" "${extra[@]}"
done
for nodes in 1 3; do
  echo "=== $nodes node(s): highest sustained rate ($PAIRS pairs, 5 s per rate)"
  for rate in $RATES; do
    bench_report --nodes "$nodes" --connections $((PAIRS * 2)) --rooms "$PAIRS" --pairs "$PAIRS" \
          --rate "$rate" --duration 5 | grep -E '^(traffic|relay latency)' | tr '\n' ' '
    echo
  done
done
