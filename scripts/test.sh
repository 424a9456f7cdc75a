#!/usr/bin/env bash
# The full test suite: what CI runs (.ci/run) and what a developer runs before pushing.
#   scripts/test.sh
# Installs missing test dependencies (apt, npm), checks formatting, lints and doc links,
# builds the workspace once, runs every Rust test (unit, integration, end-to-end, NAT
# namespaces), then the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { printf '\n==> %s (at %d s)\n' "$*" "$((SECONDS - start))" >&2; }

# A clean CI clone is built once: incremental caches would only add gigabytes to its disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

step "install test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# signaling without the in-process relay (docs/signaling.md, "How it is built").
cargo clippy -p signaling --no-default-features --features server --locked -- -D warnings

step "cargo doc (a broken doc link, or one to a private item, fails)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# One build of every target (binaries the end-to-end tests spawn, and the tests themselves):
# `--all-targets` resolves features the way `cargo test` does, so the test step compiles nothing.
step "cargo build"
cargo build --workspace --all-targets --locked
du -sh target >&2 || true

step "cargo test"
# The NAT tests build network namespaces; as root (CI) they must run, never skip.
if [ "$(id -u)" -eq 0 ]; then export E2E_REQUIRE_NETNS=1; fi
cargo test --workspace --locked --no-fail-fast

step "signaling integration tests again, on a 3-node cluster sharing a Redis"
# The same suite must hold on one node and on three (clients spread over the nodes); the
# cluster-only tests already ran above. The test binary built above is run directly: a
# `cargo test -p signaling` would resolve features differently and rebuild half the tree.
it_bin=$(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if (m.get("reason") == "compiler-artifact" and m["target"]["name"] == "it"
            and "/signaling#" in m["package_id"] and m.get("executable")):
        print(m["executable"])
')
[ -x "$it_bin" ] || { echo "test.sh: the signaling integration test binary was not found" >&2; exit 1; }
(cd signaling && SIGNALING_IT_NODES=3 "$it_bin" --skip cluster::)

if [ -f tests/browser/run.mjs ]; then
  step "browser tests (headless Chromium)"
  node tests/browser/run.mjs
  step "browser tests of the compatibility endpoints (real y-webrtc + Yjs from npm)"
  node tests/browser/compat.mjs
fi

step "all tests passed in $((SECONDS - start)) s"
