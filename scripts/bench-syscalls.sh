#!/usr/bin/env bash
# What one operation costs the nodes, counted rather than timed: a TLS
# cluster of NODES nodes (1 at RF 1 with the default worker threads, or 3
# at RF 3 / LOCAL_QUORUM with one worker thread each, as in
# scripts/bench-cluster.sh), `isthmus bench` driving each workload closed
# loop, and `perf stat` on the node processes counting context switches,
# CPU time and the system calls that carry messages and wake-ups. Prints
# per workload:
#
#   workload=c ops=... ops_per_s=... p99_us=... p999_us=...
#     context-switches/op=0.62 node_us/op=63.91 writev/op=2.06 ...
#
# Counts per operation move far less from run to run than throughput on
# two shared cores: compare binaries with them (BIN=... for one not built
# from this tree).
#
#   NODES=3 WORKLOADS="a c" DURATION=8 THREADS=16 bash scripts/bench-syscalls.sh
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-3}
WORKLOADS=${WORKLOADS:-a c}
DURATION=${DURATION:-8}
THREADS=${THREADS:-16}
KEYS=${KEYS:-100000}
VALUE=${VALUE:-100}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=${CARGO_TARGET_DIR:-target}/release/isthmus
fi
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
case "$NODES" in
  1) rf=1 workers="" ;;
  3) rf=3 workers=$'\n[tuning.runtime]\nworker_threads = 1' ;;
  *) echo "NODES must be 1 or 3" >&2; exit 2 ;;
esac

dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$BIN" certs ca --dir "$dir/certs" >/dev/null
echo "bench-admin-password" >"$dir/certs/admin.pw"
client=(--ca "$dir/certs/ca.pem" --user admin --password-file "$dir/certs/admin.pw")

node() { # id addr seed
  "$BIN" certs node --ca-dir "$dir/certs" --node-id "$1" --dc dc1 >/dev/null
  cat >"$dir/$1.toml" <<EOF
node_id = "$1"
dc = "dc1"
rack = "r-$1"
listen = "$2"
data_dir = "$dir/$1"
seeds = ["$3"]
vnodes = 64
fsync = "interval"
fsync_interval_ms = 5

[tls]
ca = ["$dir/certs/ca.pem"]
cert = "$dir/certs/$1.pem"
key = "$dir/certs/$1.key"

[auth]
bootstrap_admin = "admin"
bootstrap_password_file = "$dir/certs/admin.pw"

[keyspaces.bench]
replication = { dc1 = $rf }
consistency = "LOCAL_QUORUM"
$workers
EOF
  "$BIN" server --config "$dir/$1.toml" 2>"$dir/$1.log" &
  pids+=($!)
}

wait_up() { # addr count
  for _ in $(seq 1 150); do
    up=$("$BIN" status --addr "$1" "${client[@]}" --json 2>/dev/null | grep -o '"status":"Normal","up":true' | wc -l || true)
    [ "$up" -ge "$2" ] && return 0
    sleep 0.2
  done
  echo "cluster at $1 did not come up" >&2
  exit 1
}

addrs=(127.0.0.2:7501 127.0.0.3:7501 127.0.0.4:7501)
node n1 "${addrs[0]}" "${addrs[0]}"
wait_up "${addrs[0]}" 1
for i in $(seq 2 "$NODES"); do node "n$i" "${addrs[$((i - 1))]}" "${addrs[0]}"; done
for i in $(seq 1 "$NODES"); do wait_up "${addrs[$((i - 1))]}" "$NODES"; done

bench=("$BIN" bench --addr "${addrs[0]}" "${client[@]}" --keyspace bench --threads "$THREADS"
  --keys "$KEYS" --value-bytes "$VALUE")
"${bench[@]}" --workload a --duration 1 >/dev/null 2>&1
events=context-switches,task-clock
for call in writev write sendto recvfrom read epoll_wait futex; do
  events+=",syscalls:sys_enter_$call"
done
node_pids=$(IFS=,; echo "${pids[*]}")
for w in $WORKLOADS; do
  perf stat -x, -e "$events" -p "$node_pids" -o "$dir/perf.txt" &
  perf_pid=$!
  out=$("${bench[@]}" --workload "$w" --duration "$DURATION" --no-load 2>/dev/null)
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  ops=$(grep -o ' ops=[0-9]*' <<<"$out" | head -1 | cut -d= -f2)
  echo "workload=$w ops=$ops $(grep -o 'ops_per_s=[0-9]*' <<<"$out" | head -1) $(grep -o 'p99[9]*_us=[0-9]*' <<<"$out" | head -2 | tr '\n' ' ')"
  # perf's CSV: value, unit, event; task-clock is in milliseconds.
  awk -F, -v ops="$ops" '$1 ~ /^[0-9.]+$/ && ops > 0 {
      n = $3; v = $1; sub("syscalls:sys_enter_", "", n)
      if (n == "task-clock") { n = "node_us"; v *= 1000 }
      printf "  %s/op=%.2f", n, v / ops
    } END { print "" }' "$dir/perf.txt"
done
