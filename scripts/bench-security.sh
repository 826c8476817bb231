#!/usr/bin/env bash
# What TLS and authentication cost: scripts/bench-cluster.sh (1 node, and
# 3 nodes at RF 3 / LOCAL_QUORUM; YCSB a, b, c) with plaintext links and
# anonymous clients, then with TLS on every link and clients logged in, in
# one run on this machine. Prints one line per case:
#
#   ratio security_<nodes>_<workload> TLS_OPS PLAINTEXT_OPS TLS_OVER_PLAINTEXT
#
#   THREADS=16 DURATION=15 bash scripts/bench-security.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for mode in plaintext tls; do
  SECURITY=$mode REDIS=0 bash scripts/bench-cluster.sh 2>&1 | tee "$out/$mode.log"
done

ops() { # mode
  grep -E '^== isthmus|ops_per_s=' "$out/$1.log" |
    awk '/^== isthmus/ { nodes = ($3 == "1") ? "1node" : "3nodes"; w = $NF; next }
         { for (i = 1; i <= NF; i++) if ($i ~ /^ops_per_s=/) { split($i, v, "="); print nodes "_" w, v[2] } }'
}
join <(ops tls | sort) <(ops plaintext | sort) |
  awk '{ printf "ratio security_%s %s %s %.3f\n", $1, $2, $3, $2 / $3 }'
