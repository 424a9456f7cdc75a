#!/usr/bin/env bash
# The CLI's file transfer, two builds side by side: `peer send-file` to `peer recv-file` of a
# random file, direct and relay-only (through our relay), the builds alternating run by run.
# Wall time of send-file, from its start to its exit (joining, connecting, sending, the
# receiver's checksum, leaving). Relay and signaling come from the new build, on free ports.
#   scripts/bench-file-transfer.sh OLD_BIN_DIR [NEW_BIN_DIR]     # NEW defaults to target/debug
#   RUNS=5 SIZE_MIB=16 scripts/bench-file-transfer.sh /tmp/old/target/debug
# An old build: `git worktree add /tmp/old REV && (cd /tmp/old && cargo build --bins)`.
# Both peers, the relay and signaling share this machine's cores: compare the two columns.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: $0 OLD_BIN_DIR [NEW_BIN_DIR]}
NEW=${2:-target/debug}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-16}
source scripts/lib/scratch.sh
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$work/file.bin"

# Starts `$@` with stdout to $work/$name.out (its PID kept for the cleanup).
start() {
  local name=$1
  shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
}

# The first line of $work/$name.out matching $pattern, once there.
ready_line() {
  local name=$1 pattern=$2
  for _ in $(seq 100); do
    if grep -m1 -E "$pattern" "$work/$name.out"; then return; fi
    sleep 0.1
  done
  echo "$name did not start" >&2
  exit 1
}

start relay "$NEW/relay" --listen 127.0.0.1:0 --relay-ip 127.0.0.1 --turn-secret bench \
  --allow-loopback-peers --admin-listen none
relay=$(ready_line relay '^listening udp ')
relay=${relay#listening udp }
start signaling "$NEW/signaling" --listen 127.0.0.1:0 --turn-url "turn:$relay?transport=udp" \
  --turn-secret bench --admin-listen none
signaling=$(ready_line signaling '^listening on ')
signaling=${signaling#listening on http://}

# One transfer with the peers of $1 in mode $2: the wall time of send-file, or FAIL.
transfer() {
  local bin=$1 mode=$2 extra=() room="bench-$RANDOM$RANDOM"
  [ "$mode" = relay-only ] && extra=(--relay-only)
  "$bin/peer" recv-file "ws://$signaling/ws/$room" "$work/out.bin" --bind 127.0.0.1 \
    "${extra[@]}" >"$work/recv.out" 2>&1 &
  local receiver=$!
  sleep 0.5
  local started ended
  started=$(date +%s.%N)
  if timeout 120 "$bin/peer" send-file "ws://$signaling/ws/$room" "$work/file.bin" \
    --bind 127.0.0.1 "${extra[@]}" >"$work/send.out" 2>&1 && wait "$receiver" &&
    cmp -s "$work/file.bin" "$work/out.bin"; then
    ended=$(date +%s.%N)
    echo "$ended - $started" | bc | xargs printf '%.2f s'
  else
    kill "$receiver" 2>/dev/null || true
    printf 'FAIL'
  fi
}

printf '%s MiB, %s runs each, old = %s, new = %s\n' "$SIZE_MIB" "$RUNS" "$OLD" "$NEW"
printf '%-10s %-4s %-10s %-10s\n' mode run old new
for mode in direct relay-only; do
  for run in $(seq "$RUNS"); do
    old=$(transfer "$OLD" "$mode")
    new=$(transfer "$NEW" "$mode")
    printf '%-10s %-4s %-10s %-10s\n' "$mode" "$run" "$old" "$new"
  done
done
