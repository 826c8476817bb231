#!/usr/bin/env bash
# Every comparison of the performance goals in one invocation, printing
#
#   ratio NAME OURS PEER OURS_OVER_PEER
#
# lines (throughput: higher is better; `_p99_ms`: lower is better). Run by
# hand, on an otherwise idle machine if the figures are to mean anything;
# docs/performance.md has the method, the settings of both sides and the
# latest figures.
#
#   bash scripts/bench-all.sh
#
# Parts, each skipped when its variable is 0:
#   REDIS=1     Isthmus' Redis front door against redis-server, both driven
#               by redis-benchmark (SET and GET, unpipelined), the same
#               durability class: Isthmus `fsync = "interval"` 5 ms against
#               AOF `appendfsync everysec` (each write handed to the OS
#               before it is answered, fsynced within a second at most)
#   PIPELINE=1  the same with `-P 16`
#   ALWAYS=1    Isthmus `fsync = "always"` against `appendfsync always`
#   CLUSTER=1   scripts/bench-cluster.sh (YCSB a, b, c through the native
#               client, one node against three at RF 3, LOCAL_QUORUM),
#               with a `cpu` line per cluster and workload: CPU time per
#               operation of the node processes and of the whole machine
#   LATENCY=1   with CLUSTER, workload a open loop (a fixed schedule,
#               latency from when each operation was due) at 50% and 80%
#               of each cluster's peak, printed as `latency ...` lines
#   ENGINE=1    the engine against fjall (core/benches/engine.rs)
#   ROCKSDB=1   the engine against RocksDB's db_bench (Debian's
#               rocksdb-tools), when db_bench is installed
#
# Settings: CLIENTS (50), REQUESTS (200000), VALUE (100 bytes), KEYS
# (100000, redis-benchmark's -r), SECURITY (plaintext: no TLS and anonymous
# clients on the front door, as redis-server runs; tls: TLS and a logged-in
# user on Isthmus' side, redis-benchmark over TLS against redis-server with
# TLS too), CLUSTER_SECURITY (tls: the cluster comparison as nodes are
# deployed, TLS on every link and clients logged in; or plaintext), BIN (a binary to measure; default: this tree's, built), ENGINE_KEYS (1000000), CLUSTER_DURATION (15 s), THREADS (16).
# Each redis comparison runs Isthmus and redis-server back to back, so the
# two share the machine's state of the moment.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS=${REDIS:-1}
PIPELINE=${PIPELINE:-1}
ALWAYS=${ALWAYS:-1}
CLUSTER=${CLUSTER:-1}
LATENCY=${LATENCY:-1}
ENGINE=${ENGINE:-1}
ROCKSDB=${ROCKSDB:-1}
CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-200000}
VALUE=${VALUE:-100}
KEYS=${KEYS:-100000}
SECURITY=${SECURITY:-plaintext}
CLUSTER_SECURITY=${CLUSTER_SECURITY:-tls}
ENGINE_KEYS=${ENGINE_KEYS:-1000000}
CLUSTER_DURATION=${CLUSTER_DURATION:-15}
THREADS=${THREADS:-16}
ISTHMUS_PORT=${ISTHMUS_PORT:-7711}
REDIS_PORT=${REDIS_PORT:-7712}

# BIN: an isthmus binary to measure instead of building this tree's.
BUILT=${BIN:+1}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/isthmus}
dir=$(mktemp -d)
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop
  rm -rf "$dir"
}
trap cleanup EXIT

ratio() { # name ours peer
  awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "ratio %s %s %s %.3f\n", n, a, b, (b > 0 ? a / b : 0) }'
}

# redis-benchmark's CSV: "test","rps","avg","min","p50","p95","p99","max".
# Prints "TEST RPS P99" per test.
bench_redis() { # port pipeline [tls args...]
  local port=$1 pipeline=$2
  shift 2
  redis-benchmark -h 127.0.0.1 -p "$port" "$@" -t set,get -c "$CLIENTS" -n "$REQUESTS" -d "$VALUE" \
    -r "$KEYS" -P "$pipeline" --csv 2>/dev/null |
    tr -d '"' | awk -F, '$1 == "SET" || $1 == "GET" { printf "%s %.0f %s\n", $1, $2, $7 }'
}

tls_client=()
if [ "$SECURITY" = tls ]; then
  "$BIN" certs ca --dir "$dir/certs" >/dev/null
  "$BIN" certs node --ca-dir "$dir/certs" --node-id n1 --dc dc1 >/dev/null
  echo "bench-admin-password" >"$dir/certs/admin.pw"
elif [ "$SECURITY" != plaintext ]; then
  echo "SECURITY must be plaintext or tls" >&2
  exit 2
fi

isthmus_up() { # fsync: interval | always
  rm -rf "$dir/n1"
  {
    printf 'node_id = "n1"\ndc = "dc1"\nrack = "r1"\nlisten = "127.0.0.1:%s"\n' "$((ISTHMUS_PORT + 100))"
    printf 'data_dir = "%s/n1"\nseeds = ["127.0.0.1:%s"]\nvnodes = 64\n' "$dir" "$((ISTHMUS_PORT + 100))"
    if [ "$1" = always ]; then
      printf 'fsync = "always"\n'
    else
      printf 'fsync = "interval"\nfsync_interval_ms = 5\n'
    fi
    if [ "$SECURITY" = tls ]; then
      printf '[tls]\nca = ["%s"]\ncert = "%s"\nkey = "%s"\n\n' \
        "$dir/certs/ca.pem" "$dir/certs/n1.pem" "$dir/certs/n1.key"
      printf '[auth]\nbootstrap_admin = "admin"\nbootstrap_password_file = "%s"\n\n' "$dir/certs/admin.pw"
    else
      printf 'insecure_plaintext = true\n\n[auth]\nanonymous_full_access = true\n\n'
    fi
    printf '[redis]\nenabled = true\nlisten = "127.0.0.1:%s"\ndatabases = ["bench"]\n\n' "$ISTHMUS_PORT"
    printf '[keyspaces.bench]\nreplication = { dc1 = 1 }\nconsistency = "LOCAL_QUORUM"\n'
  } >"$dir/n1.toml"
  "$BIN" server --config "$dir/n1.toml" 2>"$dir/n1.log" &
  pids+=($!)
  local auth=()
  [ "$SECURITY" = tls ] && auth=(--tls --cacert "$dir/certs/ca.pem" --user admin --pass bench-admin-password)
  for _ in $(seq 1 150); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$ISTHMUS_PORT" "${auth[@]}" --no-auth-warning SET bench-up 1 2>/dev/null)" = OK ]; then
      return 0
    fi
    sleep 0.2
  done
  echo "isthmus did not come up; its log:" >&2
  cat "$dir/n1.log" >&2
  exit 1
}

redis_up() { # appendfsync: everysec | always
  rm -rf "$dir/redis"
  mkdir -p "$dir/redis"
  local tls=(--port "$REDIS_PORT")
  [ "$SECURITY" = tls ] && tls=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$dir/certs/n1.pem"
    --tls-key-file "$dir/certs/n1.key" --tls-ca-cert-file "$dir/certs/ca.pem" --tls-auth-clients no
    --requirepass bench-admin-password)
  redis-server "${tls[@]}" --dir "$dir/redis" --save '' --appendonly yes --appendfsync "$1" \
    --daemonize no >"$dir/redis.log" 2>&1 &
  pids+=($!)
  sleep 1
}

# One comparison: Isthmus, then redis-server, back to back.
compare() { # suffix isthmus_fsync redis_fsync pipeline
  local suffix=$1 pipeline=$4 ours peer args=()
  [ "$SECURITY" = tls ] && args=(--tls --cacert "$dir/certs/ca.pem" --user admin -a bench-admin-password)
  isthmus_up "$2"
  ours=$(bench_redis "$ISTHMUS_PORT" "$pipeline" "${args[@]}")
  stop
  local rargs=()
  [ "$SECURITY" = tls ] && rargs=(--tls --cacert "$dir/certs/ca.pem" -a bench-admin-password)
  redis_up "$3"
  peer=$(bench_redis "$REDIS_PORT" "$pipeline" "${rargs[@]}")
  stop
  for t in SET GET; do
    local o p name
    o=$(awk -v t="$t" '$1 == t' <<<"$ours")
    p=$(awk -v t="$t" '$1 == t' <<<"$peer")
    name=$(tr 'A-Z' 'a-z' <<<"$t")
    ratio "redis_${name}_ops$suffix" "$(cut -d' ' -f2 <<<"$o")" "$(cut -d' ' -f2 <<<"$p")"
    ratio "redis_${name}_p99_ms$suffix" "$(cut -d' ' -f3 <<<"$o")" "$(cut -d' ' -f3 <<<"$p")"
  done
}

if [ "$REDIS" != 0 ] || [ "$PIPELINE" != 0 ] || [ "$ALWAYS" != 0 ]; then
  if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "== redis comparisons skipped: redis-server not installed (apt-get install redis-server)"
    REDIS=0 PIPELINE=0 ALWAYS=0
  elif [ -z "$BUILT" ]; then
    cargo build --release -q --bin isthmus
  fi
fi
[ "$REDIS" != 0 ] && compare "" interval everysec 1
[ "$PIPELINE" != 0 ] && compare _p16 interval everysec 16
[ "$ALWAYS" != 0 ] && compare _always always always 1

if [ "$CLUSTER" != 0 ]; then
  # One node against three, in one run of scripts/bench-cluster.sh.
  # Three nodes started at once can each form a ring of their own (both
  # first nodes log "forming it"), and then the load fails: one more try.
  for attempt in 1 2; do
    if BIN=$BIN SECURITY=$CLUSTER_SECURITY THREADS=$THREADS DURATION=$CLUSTER_DURATION REDIS=0 LATENCY=$LATENCY \
      bash scripts/bench-cluster.sh >"$dir/cluster.log" 2>&1; then
      break
    fi
    echo "== cluster comparison, attempt $attempt failed: $(grep -E '^error|did not' "$dir/cluster.log" | head -1)"
    [ "$attempt" = 2 ] && exit 1
  done
  awk '/^== isthmus/ { nodes = ($3 == "1") ? 1 : 3; w = $NF; next }
       /^== latency/ { w = "open"; next }
       w != "open" { for (i = 1; i <= NF; i++) if ($i ~ /^ops_per_s=/) { split($i, v, "="); ops[nodes "_" w] = v[2] } }
       END { for (w in ops) if (w ~ /^1_/) { x = substr(w, 3); if (("3_" x) in ops)
               printf "ratio cluster3_over_node1_%s %.0f %.0f %.3f\n", x, ops["3_" x], ops[w], ops["3_" x] / ops[w] } }' \
    "$dir/cluster.log" | sort
  # latency nodes=N load=P% rate=R, then p50/p99/p999 in ms of reads,
  # writes (the put of an update alone) and whole updates (read + put).
  awk '/^== latency/ { nodes = $3; load = $4; next }
       /^== isthmus/ { load = ""; next }
       load != "" && /open_loop_rate=/ { for (i = 1; i <= NF; i++) { split($i, v, "=");
           if (v[1] == "open_loop_rate") rate = v[2]; if (v[1] == "ops_per_s") got = v[2]; if (v[1] == "errors") err = v[2] }
         line = sprintf("latency nodes=%s load=%s rate=%s achieved=%s errors=%s", nodes, load, rate, got, err); kinds = ""; next }
       load != "" && /^bench: errors / { kinds = $3; for (i = 4; i <= NF; i++) kinds = kinds "," $i; next }
       load != "" && /^bench: (read|write|update) / { for (i = 3; i <= NF; i++) { split($i, v, "=");
           if (v[1] ~ /^p/) line = line sprintf(" %s_%s_ms=%.2f", $2, substr(v[1], 1, length(v[1]) - 3), v[2] / 1000) }
         if ($2 == "write") { print line (kinds != "" ? " error_kinds=" kinds : ""); load = "" } }' "$dir/cluster.log"
  # CPU per operation: node processes, and the whole machine.
  grep '^cpu ' "$dir/cluster.log" || true
fi

if [ "$ENGINE" != 0 ] || [ "$ROCKSDB" != 0 ]; then
  mkdir -p "$dir/engine"
  # One run of the engine bench: against fjall in the same process
  # (`ratio fill-random OURS FJALL ...`), or Isthmus alone
  # (`ours fill=... read=...`) when only RocksDB is compared.
  only=()
  [ "$ENGINE" = 0 ] && only=(ISTHMUS_BENCH_ONLY_OURS=1)
  env "${only[@]}" ISTHMUS_BENCH_KEYS="$ENGINE_KEYS" ISTHMUS_BENCH_DIR="$dir/engine" \
    cargo bench -q -p isthmus-core --bench engine >"$dir/engine.log" 2>/dev/null
  if [ "$ENGINE" != 0 ]; then
    awk '/^ratio / { $2 = "engine_fjall_" $2; print }' "$dir/engine.log"
  fi
  # Isthmus' figure of one case, from either form.
  ours() { # case: fill-random | read-random | read-missing | durable-write-8
    awk -v c="$1" '$1 == "ratio" && $2 == c { print $3 }
      $1 == "ours" { split("fill-random read-random read-missing durable-write-8", n, " ");
        for (i = 2; i <= 5; i++) { split($i, kv, "="); if (n[i - 1] == c) print kv[2] } }' "$dir/engine.log"
  }
  if [ "$ROCKSDB" != 0 ]; then
    if command -v db_bench >/dev/null; then
      # RocksDB with the same shape: 16-byte keys, 100-byte incompressible
      # values, 64 MiB memtables, a 256 MiB block cache, 10-bit blooms,
      # lz4, the WAL written (not synced) per write; reads of half the
      # keys from one thread; durable writes: 8 threads, each write synced
      # (sync=1, RocksDB's group commit), 1000 each.
      common=(--db="$dir/engine/rocksdb" --key_size=16 --value_size=100 --compression_ratio=1
        --write_buffer_size=67108864 --cache_size=268435456 --bloom_bits=10 --num="$ENGINE_KEYS"
        --compression_type=lz4 --disable_wal=0 --statistics=0)
      rs() { db_bench "${common[@]}" "$@" 2>/dev/null | awk '/micros\/op/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^ops\/sec/) print $i }' | head -1; }
      fill=$(rs --benchmarks=fillrandom --sync=0)
      read=$(rs --benchmarks=readrandom --use_existing_db=1 --reads=$((ENGINE_KEYS / 2)) --threads=1)
      missing=$(rs --benchmarks=readmissing --use_existing_db=1 --reads=$((ENGINE_KEYS / 2)) --threads=1)
      # db_bench counts the ops of all 8 threads together, as the engine bench does.
      durable=$(rs --benchmarks=fillrandom --sync=1 --threads=8 --num=1000)
      ratio engine_rocksdb_fill-random "$(ours fill-random)" "$fill"
      ratio engine_rocksdb_read-random "$(ours read-random)" "$read"
      ratio engine_rocksdb_read-missing "$(ours read-missing)" "$missing"
      ratio engine_rocksdb_durable-write-8 "$(ours durable-write-8)" "$durable"
    else
      echo "== RocksDB comparison skipped: db_bench not installed (apt-get install rocksdb-tools)"
    fi
  fi
fi
