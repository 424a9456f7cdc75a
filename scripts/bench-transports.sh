#!/usr/bin/env bash
# WebSocket, SSE + POST and long-polling side by side on one release signaling server per run:
# signal latency at a fixed rate, HTTP requests per signal, and server RSS per idle session.
#   scripts/bench-transports.sh                       # the figures in BENCHMARKS.md
#   IDLE=200 DURATION=3 scripts/bench-transports.sh   # a quick look
#   TRANSPORTS=sse,long-poll scripts/bench-transports.sh
# Client and server share this machine's cores (loopback): compare the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
PAIRS=${PAIRS:-20}
DURATION=${DURATION:-10}
IDLE=${IDLE:-1000}
TRANSPORTS=${TRANSPORTS:-websocket,sse,long-poll}
cargo build --release -p signaling --bench http_transports >/dev/null 2>&1 ||
  cargo build --release -p signaling --bench http_transports
cargo bench -q -p signaling --bench http_transports -- \
  --rate "$RATE" --pairs "$PAIRS" --duration "$DURATION" --idle "$IDLE" --transports "$TRANSPORTS"
