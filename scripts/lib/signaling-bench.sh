# shellcheck shell=bash
# What the scripts that run one benchmark of signaling/benches share; each sources it first, with
# the benchmark's name: `source "$(dirname "$0")/lib/signaling-bench.sh" broadcast_flood`.
# It sets strict mode and the repository's root as working directory, builds the benchmark in
# release (quietly; when that fails, again, to show the compiler's errors, which the runs below
# do not), and defines bench_run and bench_report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BENCH_NAME=$1
cargo build --release -p signaling --bench "$BENCH_NAME" >/dev/null 2>&1 ||
  cargo build --release -p signaling --bench "$BENCH_NAME"

# Runs the benchmark with the flags given (cargo itself says nothing).
bench_run() {
  cargo bench -q -p signaling --bench "$BENCH_NAME" -- "$@"
}

# Runs the benchmark like bench_run and keeps its report only: no stderr, no blank lines.
bench_report() {
  bench_run "$@" 2>/dev/null | grep -v '^$'
}
