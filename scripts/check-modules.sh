#!/usr/bin/env bash
# No import cycles between the modules of any crate of ours.
#
#   bash scripts/check-modules.sh                  # reads the sources (CI)
#   bash scripts/check-modules.sh --cargo-modules  # cargo-modules' graph
#
# The second needs cargo-modules 0.27 (`cargo install cargo-modules
# --version '~0.27' --locked`; 0.27 is the newest that Rust 1.95 builds)
# and takes about a minute a crate; both report the same modules.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
if [[ "${1:-}" == "--cargo-modules" ]]; then
    check() {
        local what="$1"; shift
        printf '%-22s ' "$what:"
        cargo modules dependencies "$@" --no-externs --no-sysroot --no-fns \
            --no-traits --no-types --no-owns 2>/dev/null \
            | python3 scripts/check-module-cycles.py --dot || status=1
    }
    for package in isthmus-core isthmus-client isthmus-dc-bridge isthmus-resolvers isthmus-sdk-wasm isthmus-server isthmus-testkit; do
        check "$package" -p "$package" --lib
    done
    check "isthmus (bin)" -p isthmus --bin isthmus
else
    for src in core/src client/src dc-bridge/src resolvers/src sdk-wasm/src server/src testkit/src src; do
        printf '%-22s ' "$src:"
        python3 scripts/check-module-cycles.py --src "$src" || status=1
    done
fi
exit $status
