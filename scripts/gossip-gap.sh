#!/usr/bin/env bash
# The worst gap between a node's gossip heartbeats (its runtime has two
# worker threads) while a resolver that burns its whole fuel budget on
# every merge is bound to a keyspace under concurrent writes and reads of
# siblings, beside the same figure with a cheap resolver (lww).
# Prints `gossip_gap_ms worst=N baseline=M`. ISTHMUS_GAP_SECS sets each
# run's length (15 s by default). Needs the example resolvers built
# (bash scripts/build-resolvers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p isthmus --test merge_pool gossip_gap_figure -- --ignored --nocapture 2>&1 |
    grep -E '^(hostile:|gossip_gap_ms )'
