#!/usr/bin/env bash
# Runs the whole stack locally with embedded defaults: signaling + STUN/TURN relay + web demo.
#   scripts/run.sh [extra signaling flags]
#   scripts/run.sh --lan [extra signaling flags]
# --lan: for phones and other machines on the same network. Browsers allow the camera only on a
# secure origin, so signaling serves HTTPS/WSS on 0.0.0.0:8443 with a certificate generated at
# start-up (each device shows a warning once: accept it), and the relay is given this host's LAN
# address. Open the printed https://LAN-IP:8443/ address on each device.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--lan" ]]; then
  shift
  lan_ip="$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')"
  if [[ -z "$lan_ip" ]]; then
    echo "run.sh --lan: no LAN address found (no default route)" >&2
    exit 1
  fi
  echo "LAN mode: open https://$lan_ip:8443/ on each device (accept the certificate warning once)"
  exec cargo run --release --locked --bin signaling -- --with-relay \
    --listen 0.0.0.0:8443 --tls-self-signed --relay-listen "$lan_ip:3478" --relay-host "$lan_ip" "$@"
fi
exec cargo run --release --locked --bin signaling -- --with-relay "$@"
