#!/usr/bin/env bash
# The main job: builds the example merge functions to wasm32 (installing the
# target if needed), then runs `isthmus demo` in release mode. Extra
# arguments go to the demo (see `cargo run --release -- demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
bash scripts/build-resolvers.sh
cargo run --release -- demo "$@"
