#!/usr/bin/env bash
# The whole test suite: builds the example resolvers to wasm32 (the host's
# tests load them), then runs every unit, integration, property and doc test
# of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
bash scripts/build-resolvers.sh
cargo test --workspace
