#!/usr/bin/env bash
# What one operation costs the nodes, counted rather than timed:
# scripts/bench-cluster.sh with SYSCALLS=1 on one cluster (NODES=1: one
# node at RF 1; NODES=3: three at RF 3 / LOCAL_QUORUM), no redis. After
# each workload's `cpu` line comes a `syscalls` line, per operation:
#
#   syscalls nodes=3 workload=c context-switches_per_op=0.62 node_us_per_op=63.91 writev_per_op=2.06 ...
#
# Compare binaries with it (BIN=... for one not built from this tree).
#
#   NODES=3 WORKLOADS="a c" DURATION=8 THREADS=16 bash scripts/bench-syscalls.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTERS=${NODES:-3} WORKLOADS=${WORKLOADS:-a c} DURATION=${DURATION:-8} SYSCALLS=1 REDIS=0 \
  exec bash scripts/bench-cluster.sh
