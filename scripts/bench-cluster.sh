#!/usr/bin/env bash
# One run, three systems on this machine: `isthmus bench` (YCSB a, b, c)
# against a 1-node cluster (RF 1) and a 3-node cluster (RF 3, LOCAL_QUORUM),
# real processes on loopback, then redis-benchmark against a local
# redis-server with the same value size and concurrency (AOF with fsync
# every second, the closest redis comes to Isthmus' default 5 ms log sync).
#
#   THREADS=16 DURATION=20 VALUE=100 KEYS=100000 bash scripts/bench-cluster.sh
#
# Nodes run as they are deployed: TLS on every link and clients logged in
# (SECURITY=tls, the default). SECURITY=plaintext runs them with
# insecure_plaintext and anonymous access, to measure what security costs
# (scripts/bench-security.sh runs both in one run). REDIS=0 skips redis.
# LATENCY=1 also runs workload a open loop (`isthmus bench --rate`) at 50%
# and 80% of the peak just measured, on each cluster (`== latency` blocks).
#
# WORKERS1 and WORKERS3 set `[tuning.runtime] worker_threads` of each
# node of the one-node and the three-node cluster: by default the one node
# runs one thread per CPU and the three nodes one thread each, as nodes
# sharing a machine's CPUs should (three nodes of two threads on two CPUs
# spend a fifth to a quarter of their time switching). `default` keeps
# the node's default.
#
# After each closed-loop workload a `cpu` line gives the CPU time spent
# per operation: by the node processes (`node_us_per_op`, from their
# /proc/PID/stat) and by the whole machine (`machine_us_per_op`, from
# /proc/stat: nodes, load tool and kernel), and how busy the machine was.
#
# CLUSTERS ("1 3") picks the clusters to run and WORKLOADS ("a b c") the
# workloads. SYSCALLS=1 also counts, for each closed-loop workload, what
# the node processes spend per operation with `perf stat` (a `syscalls`
# line): CPU time, context switches and the system calls that carry
# messages and wake-ups. Counts per operation move far less from run to
# run than throughput on two shared cores: compare binaries with them
# (scripts/bench-syscalls.sh runs just that).
#
# redis-server and redis-benchmark come from apt (`apt-get install
# redis-server`); the script skips redis when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-16}
DURATION=${DURATION:-20}
VALUE=${VALUE:-100}
KEYS=${KEYS:-100000}
SECURITY=${SECURITY:-tls}
REDIS=${REDIS:-1}
LATENCY=${LATENCY:-0}
WORKERS1=${WORKERS1:-default}
WORKERS3=${WORKERS3:-1}
CLUSTERS=${CLUSTERS:-1 3}
WORKLOADS=${WORKLOADS:-a b c}
SYSCALLS=${SYSCALLS:-0}
if [ "$SYSCALLS" != 0 ] && ! command -v perf >/dev/null; then
  echo "SYSCALLS=1 needs perf (apt-get install linux-perf)" >&2
  exit 2
fi

# BIN: an isthmus binary to measure instead of building this tree's.
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=${CARGO_TARGET_DIR:-target}/release/isthmus
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

client=()
if [ "$SECURITY" = tls ]; then
  "$BIN" certs ca --dir "$dir/certs" >/dev/null
  echo "bench-admin-password" >"$dir/certs/admin.pw"
  client=(--ca "$dir/certs/ca.pem" --user admin --password-file "$dir/certs/admin.pw")
elif [ "$SECURITY" != plaintext ]; then
  echo "SECURITY must be tls or plaintext" >&2
  exit 2
else
  client=(--insecure-plaintext)
fi

security_toml() { # id
  if [ "$SECURITY" = tls ]; then
    [ -f "$dir/certs/$1.pem" ] || "$BIN" certs node --ca-dir "$dir/certs" --node-id "$1" --dc dc1 >/dev/null
    printf '[tls]\nca = ["%s"]\ncert = "%s"\nkey = "%s"\n\n[auth]\nbootstrap_admin = "admin"\nbootstrap_password_file = "%s"\n' \
      "$dir/certs/ca.pem" "$dir/certs/$1.pem" "$dir/certs/$1.key" "$dir/certs/admin.pw"
  else
    printf 'insecure_plaintext = true\n\n[auth]\nanonymous_full_access = true\n'
  fi
}

node() { # id addr seed rf workers
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
$(security_toml "$1")

[keyspaces.bench]
replication = { dc1 = $4 }
consistency = "LOCAL_QUORUM"
EOF
  if [ "$5" != default ]; then
    printf '\n[tuning.runtime]\nworker_threads = %s\n' "$5" >>"$dir/$1.toml"
  fi
  "$BIN" server --config "$dir/$1.toml" 2>"$dir/$1.log" &
  pids+=($!)
}

wait_up() { # addr count: that many members up and on the ring (not joining)
  for _ in $(seq 1 150); do
    up=$("$BIN" status --addr "$1" "${client[@]}" --json 2>/dev/null | grep -o '"status":"Normal","up":true' | wc -l || true)
    [ "$up" -ge "$2" ] && return 0
    sleep 0.2
  done
  echo "cluster at $1 did not come up" >&2
  exit 1
}

TICK=$(getconf CLK_TCK)
node_ticks() { # user + system time of the node processes, in clock ticks
  local t=0 p
  for p in "${pids[@]}"; do
    # Fields after the command name: utime and stime are the 12th and 13th.
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}
machine_ticks() { # busy and total ticks of all CPUs
  awk '/^cpu / { total = 0; for (i = 2; i <= NF; i++) total += $i; print total - $5 - $6, total }' /proc/stat
}

bench() { # label nodes addr workers
  # The load phase is not measured: run it alone first.
  "$BIN" bench --addr "$3" "${client[@]}" --keyspace bench --workload a --threads "$THREADS" \
    --duration 1 --keys "$KEYS" --value-bytes "$VALUE" >/dev/null
  for w in $WORKLOADS; do
    echo "== isthmus $1, $SECURITY, worker threads per node: $4, workload $w"
    if [ "$SYSCALLS" != 0 ]; then
      events=context-switches,task-clock
      for call in writev write sendto recvfrom read epoll_wait futex; do
        events+=",syscalls:sys_enter_$call"
      done
      perf stat -x, -e "$events" -p "$(IFS=,; echo "${pids[*]}")" -o "$dir/perf.txt" &
      perf_pid=$!
    fi
    n0=$(node_ticks)
    read -r b0 t0 < <(machine_ticks)
    out=$("$BIN" bench --addr "$3" "${client[@]}" --keyspace bench --workload "$w" --threads "$THREADS" \
      --duration "$DURATION" --keys "$KEYS" --value-bytes "$VALUE" --no-load)
    n1=$(node_ticks)
    read -r b1 t1 < <(machine_ticks)
    echo "$out"
    ops=$(grep -o ' ops=[0-9]*' <<<"$out" | head -1 | cut -d= -f2)
    awk -v n="$((n1 - n0))" -v b="$((b1 - b0))" -v t="$((t1 - t0))" -v ops="$ops" -v tick="$TICK" \
      -v label="$2" -v w="$w" 'BEGIN { if (ops > 0 && t > 0)
        printf "cpu nodes=%s workload=%s ops=%d node_us_per_op=%.1f machine_us_per_op=%.1f machine_busy_pct=%.0f\n",
          label, w, ops, n * 1e6 / tick / ops, b * 1e6 / tick / ops, 100 * b / t }'
    if [ "$SYSCALLS" != 0 ]; then
      kill -INT "$perf_pid"
      wait "$perf_pid" 2>/dev/null || true
      # perf's CSV: value, unit, event; task-clock is in milliseconds.
      awk -F, -v ops="$ops" -v label="$2" -v w="$w" '
        BEGIN { printf "syscalls nodes=%s workload=%s", label, w }
        $1 ~ /^[0-9.]+$/ && ops > 0 {
          n = $3; v = $1; sub("syscalls:sys_enter_", "", n)
          if (n == "task-clock") { n = "node_us"; v *= 1000 }
          printf " %s_per_op=%.2f", n, v / ops
        } END { print "" }' "$dir/perf.txt"
    fi
    if [ "$LATENCY" != 0 ] && [ "$w" = a ]; then
      # Open loop at a share of the peak just measured: latency from when
      # each operation was due (no coordinated omission).
      peak=$(grep -o 'ops_per_s=[0-9]*' <<<"$out" | head -1 | cut -d= -f2)
      for pct in 50 80; do
        echo "== latency $2 $pct% of $peak ops/s, $SECURITY, workload a"
        "$BIN" bench --addr "$3" "${client[@]}" --keyspace bench --workload a --rate $((peak * pct / 100)) \
          --duration "$DURATION" --keys "$KEYS" --value-bytes "$VALUE" --no-load
      done
    fi
  done
}

for nodes in $CLUSTERS; do
  case "$nodes" in
    1)
      node n1 127.0.0.1:7501 127.0.0.1:7501 1 "$WORKERS1"
      wait_up 127.0.0.1:7501 1
      bench "1 node (RF 1)" 1 127.0.0.1:7501 "$WORKERS1"
      ;;
    3)
      node n1 127.0.0.2:7501 127.0.0.2:7501 3 "$WORKERS3"
      # The seed first: two nodes that start together may each find no
      # ring and form one of their own.
      wait_up 127.0.0.2:7501 1
      node n2 127.0.0.3:7501 127.0.0.2:7501 3 "$WORKERS3"
      node n3 127.0.0.4:7501 127.0.0.2:7501 3 "$WORKERS3"
      # Every node, not only the first: each must know the users before
      # the client, which spreads its requests, logs in there.
      for a in 127.0.0.2:7501 127.0.0.3:7501 127.0.0.4:7501; do wait_up "$a" 3; done
      bench "3 nodes (RF 3, LOCAL_QUORUM)" 3 127.0.0.2:7501 "$WORKERS3"
      ;;
    *)
      echo "CLUSTERS holds 1 and/or 3, not $nodes" >&2
      exit 2
      ;;
  esac
  for p in "${pids[@]}"; do kill "$p"; done
  wait 2>/dev/null || true
  pids=()
done

if [ "$REDIS" = 0 ]; then
  :
elif command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
  redis-server --port 7601 --dir "$dir" --save '' --appendonly yes --appendfsync everysec \
    --daemonize no >"$dir/redis.log" 2>&1 &
  pids+=($!)
  sleep 1
  requests=$((THREADS * 20000))
  echo "== redis-benchmark (AOF, fsync every second): SET and GET, $VALUE-byte values, $THREADS clients, $KEYS keys"
  redis-benchmark -p 7601 -t set,get -d "$VALUE" -c "$THREADS" -n "$requests" -r "$KEYS" -q \
    | tr '\r' '\n' | grep 'requests per second'
else
  echo "== redis-benchmark skipped: redis-server not installed (apt-get install redis-server)"
fi
