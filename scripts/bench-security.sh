#!/usr/bin/env bash
# What TLS and authentication cost: scripts/bench-cluster.sh (1 node, and
# 3 nodes at RF 3 / LOCAL_QUORUM; YCSB a, b, c) with plaintext links and
# anonymous clients, then with TLS on every link and clients logged in, on
# this machine. On two shared cores one run of a case varies by 10-30%
# from the next, more than the cost measured, so the two modes alternate
# for ROUNDS rounds (the order flipping each round) and each case compares
# the medians. Prints every round's figures, then one line per case:
#
#   ratio security_<nodes>_<workload> TLS_OPS PLAINTEXT_OPS TLS_OVER_PLAINTEXT
#
#   ROUNDS=3 THREADS=16 DURATION=10 KEYS=20000 bash scripts/bench-security.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  order="plaintext tls"
  [ $((round % 2)) = 0 ] && order="tls plaintext"
  for mode in $order; do
    echo "== round $round: $mode"
    SECURITY=$mode REDIS=0 bash scripts/bench-cluster.sh >"$out/$mode.$round.log" 2>&1 ||
      { cat "$out/$mode.$round.log"; exit 1; }
  done
done

ops() { # mode: "case ops" for every round
  for log in "$out/$1".*.log; do
    grep -E '^== isthmus|ops_per_s=' "$log" |
      awk '/^== isthmus/ { nodes = ($3 == "1") ? "1node" : "3nodes"; w = $NF; next }
           { for (i = 1; i <= NF; i++) if ($i ~ /^ops_per_s=/) { split($i, v, "="); print nodes "_" w, v[2] } }'
  done
}
median() { # mode: "case median" per case
  ops "$1" | sort -k1,1 -k2,2n |
    awk '{ v[$1] = v[$1] " " $2; n[$1]++ }
         END { for (c in v) { split(substr(v[c], 2), a, " "); print c, a[int((n[c] + 1) / 2)] } }' | sort
}
for mode in plaintext tls; do
  ops "$mode" | sort | awk -v m="$mode" '{ r[$1] = r[$1] " " $2 } END { for (c in r) print "rounds", m, c, r[c] }' | sort
done
join <(median tls) <(median plaintext) |
  awk '{ printf "ratio security_%s %s %s %.3f\n", $1, $2, $3, $2 / $3 }'
