#!/usr/bin/env bash
# Runs the whole stack locally with embedded defaults: signaling + STUN/TURN relay + web demo.
#   scripts/run.sh [extra signaling flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --locked --bin signaling -- --with-relay "$@"
