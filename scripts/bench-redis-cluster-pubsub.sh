#!/usr/bin/env bash
# What a Redis Cluster's bus adds to a cluster node's deliveries, measured on Redis alone: a
# script PUBLISHes to a channel (as the signaling scripts do) at a steady rate, and a subscriber
# timestamps each message. Side by side: one standalone redis-server; a 3-master Redis Cluster
# with the script on the subscriber's master; and on another master (the message crosses the
# cluster bus, as two thirds of a 3-master cluster's signals do).
#   scripts/bench-redis-cluster-pubsub.sh               # 5000 msg/s for 5 s, as in BENCHMARKS.md
#   RATE=1000 SECONDS_EACH=3 scripts/bench-redis-cluster-pubsub.sh
# Needs redis-server, redis-cli and python3. Private servers on free loopback ports, removed at
# the end.
set -euo pipefail
RATE=${RATE:-5000}
SECONDS_EACH=${SECONDS_EACH:-5}
source "$(dirname "$0")/lib/scratch.sh"

# start NAME PORT [ARGS...]: a redis-server in $work/NAME, not daemonized, its PID kept.
start() {
  local name=$1 port=$2; shift 2
  mkdir -p "$work/$name"
  (cd "$work/$name" && exec redis-server --port "$port" --bind 127.0.0.1 --save '' \
      --appendonly no --logfile log.txt "$@") &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "redis-server on $port did not start" >&2; exit 1
}

single=$(free_port)
start single "$single"
masters=()
for i in 1 2 3; do
  port=$(free_port); bus=$(free_port)
  start "m$i" "$port" --cluster-enabled yes --cluster-port "$bus" --cluster-config-file nodes.conf
  masters+=("$port")
done
redis-cli --cluster create "${masters[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 200); do
  redis-cli -p "${masters[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1
done

python3 - "$RATE" "$SECONDS_EACH" "$single" "${masters[@]}" <<'EOF'
import socket, subprocess, sys, threading, time

rate, secs, single, masters = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), [int(p) for p in sys.argv[4:]]

def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out

def master_of(key):
    """The port of the master that holds `key`'s slot."""
    slot = int(subprocess.check_output(["redis-cli", "-p", str(masters[0]), "cluster", "keyslot", key]))
    # CLUSTER NODES: "id addr flags master ping pong epoch state slot-ranges..."
    for line in subprocess.check_output(["redis-cli", "-p", str(masters[0]), "cluster", "nodes"]).decode().splitlines():
        fields = line.split()
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        for r in fields[8:]:
            lo, _, hi = r.partition("-")
            if int(lo) <= slot <= int(hi or lo):
                return port
    raise SystemExit(f"no master holds slot {slot}")

def measure(sub_port, pub_port, key):
    sub = connect(sub_port)
    inbox = sub.makefile("rb")
    sub.sendall(command("SUBSCRIBE", "bench:ch"))
    for _ in range(6):
        inbox.readline()
    pub = connect(pub_port)
    def drain_replies():
        replies = pub.makefile("rb")
        while replies.readline():
            pass
    threading.Thread(target=drain_replies, daemon=True).start()
    script = "return redis.call('PUBLISH', 'bench:ch', ARGV[1])"
    count = rate * secs
    def send():
        start = time.perf_counter()
        for i in range(count):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            pub.sendall(command("EVAL", script, 1, key, "%.9f" % time.perf_counter()))
    threading.Thread(target=send, daemon=True).start()
    ms = []
    for _ in range(count):
        for _ in range(6):
            inbox.readline()
        ms.append((time.perf_counter() - float(inbox.readline())) * 1000)
    sub.close(); pub.close()
    ms.sort()
    return f"p50 {ms[len(ms) // 2]:.2f} ms, p99 {ms[int(len(ms) * 0.99)]:.2f} ms, max {ms[-1]:.2f} ms"

keys = {}
for i in range(1000):
    key = f"bench:{{room{i}}}"
    keys.setdefault(master_of(key), key)
    if len(keys) == len(masters):
        break
subscriber = masters[0]
other = next(port for port in masters if port != subscriber)
print(f"PUBLISH from a script, {rate} msg/s for {secs} s, subscriber timestamps each message:")
print(f"  standalone redis-server:                 {measure(single, single, 'bench:k')}")
print(f"  3-master cluster, the subscriber's master: {measure(subscriber, subscriber, keys[subscriber])}")
print(f"  3-master cluster, another master (bus):  {measure(subscriber, other, keys[other])}")
EOF
