#!/usr/bin/env bash
# No import cycles between the modules of any crate of ours: cargo-modules
# prints each crate's module graph ("uses" edges only) and
# check-module-cycles.py looks for strongly connected components in it.
# Needs cargo-modules 0.27 (`cargo install cargo-modules --version '~0.27'
# --locked`; 0.27 is the newest that Rust 1.95 builds).
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
check() {
    local what="$1"; shift
    printf '%-28s ' "$what:"
    cargo modules dependencies "$@" --no-externs --no-sysroot --no-fns \
        --no-traits --no-types --no-owns 2>/dev/null \
        | python3 scripts/check-module-cycles.py || status=1
}
for package in isthmus-core isthmus-client isthmus-dc-bridge isthmus-resolvers isthmus-sdk-wasm; do
    check "$package" -p "$package" --lib
done
check "isthmus (bin)" -p isthmus --bin isthmus
exit $status
