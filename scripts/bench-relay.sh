#!/usr/bin/env bash
# Relay benchmark: our relay, coturn (Debian `turnserver`) and a bare UDP forwarder, one after
# the other on loopback under the same loads, printed side by side.
#
#   scripts/bench-relay.sh                 # everything (about 4 minutes)
#   QUICK=1 scripts/bench-relay.sh         # fewer load levels
#
# Loads (all from this machine, sharing its cores with the server under test):
#   - turnutils_uclient (coturn's load generator): M clients x N messages of 100 B through the
#     relay to turnutils_peer and back (channels); highest level with zero loss wins.
#   - relay-bench channel-load: 8 TURN clients blasting ChannelData at a fixed rate to a sink;
#     highest rate with zero loss. The same tool in --raw mode drives the bare forwarder.
#   - relay-bench binding-load: STUN Binding requests, 4 sockets x 32 outstanding.
#   - RSS per allocation: uclient -h holding ~1000 allocations; (RSS - idle RSS) / allocations.
# CPU seconds per million packets come from /proc/PID/stat (utime+stime) over the uclient runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
command -v turnserver >/dev/null && command -v turnutils_uclient >/dev/null || {
  echo "bench-relay: needs coturn (apt-get install coturn)" >&2; exit 1; }
cargo build --release --locked -p relay --bins >&2
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
TICK=$(getconf CLK_TCK)

PEER_PORT=$(free_port)
turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >/dev/null 2>&1 &
PIDS+=($!)

if [ -n "${QUICK:-}" ]; then
  UCLIENT_LEVELS="10 40"; LOAD_RATES="50000 150000"
else
  UCLIENT_LEVELS="10 20 40 80 120"; LOAD_RATES="50000 100000 150000 200000 250000 300000 400000"
fi

# start_server ours|coturn PORT -> pid on stdout
start_server() {
  local kind=$1 port=$2 log=$WORK/$1.log
  case $kind in
    ours)
      "$BIN/relay" --listen "127.0.0.1:$port" --no-tcp --admin-listen 127.0.0.1:0 --allow-loopback-peers \
        --user bench:bench --realm relay --relay-ports 40000-47999 --user-quota 100000 --total-quota 0 \
        --unauth-rate 0 >"$log" 2>&1 &
      ;;
    coturn)
      turnserver -n --listening-ip 127.0.0.1 --listening-port "$port" --relay-ip 127.0.0.1 \
        --min-port 40000 --max-port 47999 --user bench:bench --realm relay --lt-cred-mech \
        --allow-loopback-peers --no-tls --no-dtls --no-tcp --no-cli --no-stdout-log \
        --log-file "$log" --simple-log >/dev/null 2>&1 &
      ;;
  esac
  local pid=$!
  PIDS+=($pid)
  sleep 1.5
  echo "$pid"
}

stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; sleep 0.5; }

# uclient_run PORT M -> "lost pps elapsed packets"
uclient_run() {
  local port=$1 m=$2 n=1000 out
  local t0 t1; t0=$(now)
  out=$(timeout -s KILL 120 turnutils_uclient -c -p "$port" -u bench -w bench -e 127.0.0.1 -r "$PEER_PORT" \
        -m "$m" -n "$n" -l 100 -z 1 127.0.0.1 2>&1 || true)
  t1=$(now)
  local lost sent recv
  lost=$(grep -o 'Total lost packets [0-9]*' <<<"$out" | awk '{print $4}' | tail -1)
  sent=$(grep -o 'tot_send_bytes ~ [0-9]*' <<<"$out" | awk '{print $3}' | tail -1)
  recv=$(grep -o 'tot_recv_bytes ~ [0-9]*' <<<"$out" | awk '{print $3}' | tail -1)
  [ -z "$lost" ] && lost=-1
  [ -z "$recv" ] && recv=0
  # Each 100-byte message is relayed twice (client -> peer, peer -> client).
  local packets=$(( (${sent:-0} + recv) / 100 ))
  local elapsed; elapsed=$(echo "$t1 - $t0" | bc -l)
  echo "$lost $(echo "$packets / $elapsed" | bc -l | cut -d. -f1) $elapsed $packets"
}

declare -A R
measure() {
  local kind=$1 port pid
  port=$(free_port)
  pid=$(start_server "$kind" "$port")
  echo "== $kind (pid $pid, port $port)" >&2

  # uclient load levels: relayed packets/s at zero loss, CPU per million packets.
  local best=0 ticks=0 pkts=0
  for m in $UCLIENT_LEVELS; do
    local c0 c1 res lost pps elapsed packets
    c0=$(cpu_ticks "$pid")
    res=$(uclient_run "$port" "$m")
    c1=$(cpu_ticks "$pid")
    read -r lost pps elapsed packets <<<"$res"
    echo "   uclient -m $m: lost=$lost relayed_pps=$pps packets=$packets cpu_ticks=$((c1 - c0))" >&2
    ticks=$((ticks + c1 - c0)); pkts=$((pkts + packets))
    if [ "$lost" = 0 ] && [ "$pps" -gt "$best" ]; then best=$pps; fi
  done
  R[$kind,uclient]=$best
  R[$kind,cpu]=$( [ "$pkts" -gt 0 ] && echo "scale=2; ($ticks / $TICK) / ($pkts / 1000000)" | bc -l || echo n/a)

  # Fixed-rate ChannelData load: highest zero-loss rate (two tries per level: the machine is
  # shared), and CPU per million packets over the zero-loss runs.
  local lbest=0 lticks=0 lpkts=0
  for rate in $LOAD_RATES; do
    local line lost achieved got c0 c1 ok=0
    for _try in 1 2; do
      c0=$(cpu_ticks "$pid")
      line=$("$BIN/relay-bench" channel-load --server "127.0.0.1:$port" --user bench --password bench \
              --clients 8 --rate "$rate" --secs 3 --size 100 2>"$WORK/load.err" | tail -1) || {
        echo "   channel-load failed: $(head -3 "$WORK/load.err")" >&2; line="failed"; }
      c1=$(cpu_ticks "$pid")
      lost=$(awk '{print $6}' <<<"$line"); achieved=$(awk '{print $10}' <<<"$line"); got=$(awk '{print $4}' <<<"$line")
      echo "   channel-load $rate/s: $line cpu_ticks=$((c1 - c0))" >&2
      if [ "$lost" = 0 ]; then ok=1; lbest=$achieved; lticks=$((lticks + c1 - c0)); lpkts=$((lpkts + got)); break; fi
    done
    [ $ok = 1 ] || break
  done
  R[$kind,load]=$lbest
  R[$kind,lcpu]=$( [ "$lpkts" -gt 0 ] && echo "scale=2; ($lticks / $TICK) / ($lpkts / 1000000)" | bc -l || echo n/a)

  # STUN Binding throughput.
  local b
  b=$("$BIN/relay-bench" binding-load --server "127.0.0.1:$port" --sockets 4 --window 32 --secs 3 | awk '{print $6}')
  echo "   binding: $b/s" >&2
  R[$kind,binding]=$b
  stop_server "$pid"

  # RSS per allocation: a fresh server, ~1000 held allocations.
  port=$(free_port)
  pid=$(start_server "$kind" "$port")
  local idle held count
  idle=$(rss_kib "$pid")
  timeout -s KILL 60 turnutils_uclient -c -h -p "$port" -u bench -w bench -e 127.0.0.1 -r "$PEER_PORT" \
    -m 500 -n 1 -l 100 -z 1000 127.0.0.1 >/dev/null 2>&1 &
  local upid=$!
  PIDS+=($upid)
  # Relay sockets of the server itself (uclient's own ports may fall in the range too).
  relay_sockets() { ss -Huanp "sport >= :40000 and sport <= :47999" | grep -c "pid=$1," || true; }
  count=0
  for _ in $(seq 1 60); do
    sleep 0.5
    count=$(relay_sockets "$pid")
    [ "$count" -ge 1000 ] && break
  done
  sleep 2
  count=$(relay_sockets "$pid")
  held=$(rss_kib "$pid")
  kill "$upid" 2>/dev/null || true
  R[$kind,allocs]=$count
  R[$kind,rss]=$(echo "scale=1; ($held - $idle) * 1024 / $count / 1000" | bc -l)
  R[$kind,idle]=$idle
  echo "   rss: idle ${idle} KiB, ${held} KiB with $count allocations" >&2
  stop_server "$pid"
}

measure ours
measure coturn

# The ceiling: a bare recvmmsg -> sendmmsg forwarder under the same fixed-rate load (--raw).
SINK=$(free_port)
"$BIN/relay-bench" forwarder --listen 127.0.0.1:0 --to "127.0.0.1:$SINK" >"$WORK/fwd.out" 2>&1 &
PIDS+=($!)
sleep 0.5
FWD=$(awk '/listening udp/{print $3}' "$WORK/fwd.out")
fbest=0
for rate in $LOAD_RATES 600000 800000; do
  ok=0
  for _try in 1 2; do
    line=$("$BIN/relay-bench" channel-load --raw --server "$FWD" --sink "127.0.0.1:$SINK" --clients 8 --rate "$rate" --secs 3 --size 100 | tail -1)
    echo "   forwarder $rate/s: $line" >&2
    lost=$(awk '{print $6}' <<<"$line"); achieved=$(awk '{print $10}' <<<"$line")
    if [ "$lost" = 0 ]; then fbest=$achieved; ok=1; break; fi
  done
  [ $ok = 1 ] || break
done

ratio() { if [ "${2:-0}" != 0 ]; then echo "scale=2; $1 / $2" | bc -l; else echo "n/a"; fi; }
printf '\n%-46s %14s %14s %14s\n' "metric (loopback, 2 cores shared with the load)" "ours" "coturn" "forwarder"
printf '%-46s %14s %14s %14s\n' "uclient relayed packets/s at zero loss" "${R[ours,uclient]}" "${R[coturn,uclient]}" "-"
printf '%-46s %14s %14s %14s\n' "channel-load relayed packets/s at zero loss" "${R[ours,load]}" "${R[coturn,load]}" "$fbest"
printf '%-46s %14s %14s %14s\n' "server CPU s per million packets (uclient)" "${R[ours,cpu]}" "${R[coturn,cpu]}" "-"
printf '%-46s %14s %14s %14s\n' "server CPU s per million packets (channel-load)" "${R[ours,lcpu]}" "${R[coturn,lcpu]}" "-"
printf '%-46s %14s %14s %14s\n' "RSS KB per held allocation" "${R[ours,rss]} (${R[ours,allocs]})" "${R[coturn,rss]} (${R[coturn,allocs]})" "-"
printf '%-46s %14s %14s %14s\n' "STUN Binding requests/s" "${R[ours,binding]}" "${R[coturn,binding]}" "-"
printf '\nours/coturn: uclient %sx, channel-load %sx, binding %sx; ours/forwarder ceiling: %s\n' \
  "$(ratio "${R[ours,uclient]}" "${R[coturn,uclient]}")" "$(ratio "${R[ours,load]}" "${R[coturn,load]}")" \
  "$(ratio "${R[ours,binding]}" "${R[coturn,binding]}")" "$(ratio "${R[ours,load]}" "$fbest")"
