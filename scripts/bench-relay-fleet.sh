#!/usr/bin/env bash
# The relay fleet's figures in BENCHMARKS.md, in one run: balance of rooms over relays, the
# share of rooms that moves when a relay joins or leaves, relay egress of a relay-only call on
# one shared relay against two, and the time from kill -9 of a call's relay to data flowing
# again. Needs redis-server (scripts/install-test-deps.sh installs it). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
cargo test --release -p e2e --test it fleet_benchmark -- --ignored --nocapture 2>/dev/null \
  | grep -E '^(balance|relay |egress|  +one |failover)'
