#!/usr/bin/env bash
# What an Allocate costs the relay once its port range is used up (each is answered 508):
# our relay and coturn (Debian `turnserver`), one worker each, side by side, for ranges of
# several sizes. A refused Allocate used to try a bind on every port of the range.
#
#   scripts/bench-relay-full-range.sh               # ranges of 200, 400 and 2000 ports
#   RANGES="400" OLD=path/to/old/relay scripts/bench-relay-full-range.sh   # also another build
#
# Load: `relay-bench full-range` fills the range with allocations from as many client sockets,
# then sends authenticated Allocates from one more at 200/s for 3 s; CPU from /proc/PID/stat.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
command -v turnserver >/dev/null || { echo "needs coturn (apt-get install coturn)" >&2; exit 1; }
cargo build --release --locked -p relay --bins >&2
BIN=$CARGO_TARGET_DIR/release
. scripts/lib/scratch.sh
ulimit -n 8192

# start KIND PORT LOW HIGH: a server with relay ports LOW-HIGH, one worker; its PID on stdout.
start() {
  local kind=$1 port=$2 low=$3 high=$4 log=$work/$1-$3.log
  case $kind in
    ours|old)
      local relay=$BIN/relay
      [ "$kind" = old ] && relay=$OLD
      "$relay" --listen "127.0.0.1:$port" --no-tcp --admin-listen none --workers 1 --drain-timeout 0s \
        --user bench:bench --realm relay --relay-ports "$low-$high" --user-quota 100000 \
        --total-quota 0 --unauth-rate 0 >"$log" 2>&1 &
      ;;
    coturn)
      turnserver -n --listening-ip 127.0.0.1 --listening-port "$port" --relay-ip 127.0.0.1 \
        --min-port "$low" --max-port "$high" --user bench:bench --realm relay --lt-cred-mech \
        --relay-threads 1 --no-tls --no-dtls --no-tcp --no-cli --no-stdout-log \
        --log-file "$log" --simple-log >/dev/null 2>&1 &
      ;;
  esac
  pids+=($!)
  echo $!
}

kinds="ours coturn"
[ -n "${OLD:-}" ] && kinds="old ours coturn"
# stop PID: SIGTERM, then wait (up to 10 s) until it is gone with its ports.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do [ -d "/proc/$1" ] || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

printf '%-8s %-7s %s\n' server ports result
low=20000
for ports in ${RANGES:-200 400 2000}; do
  for kind in $kinds; do
    port=$(free_port)
    pid=$(start "$kind" "$port" "$low" $((low + ports - 1)))
    sleep 1.5
    result=$("$BIN/relay-bench" full-range --server "127.0.0.1:$port" --pid "$pid" --rate 200 --secs 3 2>&1 | tail -1)
    printf '%-8s %-7s %s\n' "$kind" "$ports" "$result"
    stop "$pid"
    # A range of its own for each run: no socket of the last server's is in the way.
    low=$((low + ports))
  done
done
