#!/usr/bin/env bash
# WebSocket, SSE + POST and long-polling side by side on one release signaling server per run:
# signal latency at a fixed rate, HTTP requests per signal, and server RSS per idle session.
#   scripts/bench-transports.sh                       # the figures in BENCHMARKS.md
#   IDLE=200 DURATION=3 scripts/bench-transports.sh   # a quick look
#   TRANSPORTS=sse,long-poll scripts/bench-transports.sh
# Client and server share this machine's cores (loopback): compare the ratios.
source "$(dirname "$0")/lib/signaling-bench.sh" http_transports
RATE=${RATE:-1000}
PAIRS=${PAIRS:-20}
DURATION=${DURATION:-10}
IDLE=${IDLE:-1000}
TRANSPORTS=${TRANSPORTS:-websocket,sse,long-poll}
bench_run --rate "$RATE" --pairs "$PAIRS" --duration "$DURATION" --idle "$IDLE" \
  --transports "$TRANSPORTS"
