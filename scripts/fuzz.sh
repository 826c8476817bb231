#!/usr/bin/env bash
# Run every cargo-fuzz target of every crate, one after another, for
# SECONDS_PER_TARGET seconds each (default 300), and print each target's
# final libFuzzer line (runs, coverage, execs per second).
#
#   bash scripts/fuzz.sh                          # all targets, 5 minutes each
#   SECONDS_PER_TARGET=30 bash scripts/fuzz.sh    # a quick pass
#   bash scripts/fuzz.sh core/fuzz                # one crate's targets
#   FUZZ_TARGET_DIR=/tmp/fuzz bash scripts/fuzz.sh   # one build directory for all
#                                                 # crates (their dependencies build once)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# A crash stops the script: libFuzzer leaves the input under
# <crate>/fuzz/artifacts/<target>/, and the crate's proptest twin is where
# it goes as a regression case. Not run by CI (too long); the twins are.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${SECONDS_PER_TARGET:-300}"
dirs=("$@")
if [[ ${#dirs[@]} -eq 0 ]]; then
    dirs=(client/fuzz core/fuzz dc-bridge/fuzz resolvers/fuzz)
fi
results=()
target_dir=()
if [[ -n "${FUZZ_TARGET_DIR:-}" ]]; then
    target_dir=(--target-dir "$FUZZ_TARGET_DIR")
fi
for dir in "${dirs[@]}"; do
    for target in $(cd "$dir" && cargo +nightly fuzz list); do
        echo "== $dir $target (${seconds}s)"
        log="$(mktemp)"
        status=0
        (cd "$dir" && cargo +nightly fuzz run "${target_dir[@]}" "$target" -- -max_total_time="$seconds") >"$log" 2>&1 || status=$?
        if [[ $status -ne 0 ]]; then
            tail -40 "$log"
            echo "!! $dir $target failed (exit $status); the whole log: $log"
            exit 1
        fi
        grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs' "$log" || true
        results+=("$dir $target: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)")
        rm -f "$log"
    done
done
echo
echo "== final counts"
printf '%s\n' "${results[@]}"
