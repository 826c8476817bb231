#!/usr/bin/env bash
# Build the c-max resolver: clang for wasm32 with wasm-ld (Debian: `apt-get
# install clang lld`), no libc (bulk memory: memcpy is memory.copy), a 16 KiB stack (see the ABI docs on stack
# size), only the ABI's exports.
#
#   bash examples/resolvers/c-max/build.sh [OUT]   # default OUT: c_max.wasm beside this script
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/c_max.wasm}"
clang --target=wasm32-unknown-unknown -O2 -nostdlib -ffreestanding -mbulk-memory \
    -Wall -Wextra -Werror \
    -Wl,--no-entry \
    -Wl,-z,stack-size=16384 \
    -Wl,--export=isthmus_abi_version \
    -Wl,--export=isthmus_alloc \
    -Wl,--export=isthmus_merge \
    -Wl,--export=__heap_base \
    -o "$out" "$here/max.c"
echo "$out"
