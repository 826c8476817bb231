#!/usr/bin/env bash
# Builds the example merge functions in examples/resolvers to
# wasm32-unknown-unknown; the .wasm files land in
# ${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
for manifest in examples/resolvers/*/Cargo.toml; do
  [ -f "$manifest" ] || continue
  packages+=(-p "$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -1)")
done
if [ ${#packages[@]} -gt 0 ]; then
  cargo build --release --target wasm32-unknown-unknown "${packages[@]}"
fi
