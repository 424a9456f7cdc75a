#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine, only where it is missing.
# Idempotent: a machine that already has everything spends a few seconds here.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need_apt=()
command -v turnutils_uclient >/dev/null || need_apt+=(coturn)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v iptables >/dev/null || need_apt+=(iptables)
command -v conntrack >/dev/null || need_apt+=(conntrack)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v haproxy >/dev/null || need_apt+=(haproxy)
[ -x /usr/sbin/squid ] || command -v squid >/dev/null || need_apt+=(squid)
command -v pebble >/dev/null || need_apt+=(pebble)
python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${need_apt[*]} and not root: install them first" >&2
    exit 1
  fi
  echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Browser tests drive Debian's Chromium with playwright-core (never a downloaded browser).
if [ -f tests/browser/package.json ] && { [ ! -d tests/browser/node_modules/playwright-core ] \
    || [ ! -d tests/browser/node_modules/y-webrtc ] || [ ! -d tests/browser/node_modules/peerjs ] \
    || [ ! -d tests/browser/node_modules/esbuild ]; }; then
  echo "install-test-deps: npm install (tests/browser)" >&2
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi

# The aiortc interop tests run a Python peer (tests/aiortc/peer.py) in its own virtualenv, with
# the pinned packages of tests/aiortc/requirements.txt (wheels only: nothing is compiled).
venv=tests/aiortc/.venv
if ! cmp -s tests/aiortc/requirements.txt "$venv/requirements.txt"; then
  echo "install-test-deps: pip install (tests/aiortc)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
    -r tests/aiortc/requirements.txt
  cp tests/aiortc/requirements.txt "$venv/requirements.txt"
fi
