#!/usr/bin/env bash
# Build the container image of an Isthmus node: a static binary (musl) in an
# image built from scratch with buildah, no base image pulled.
#
#   bash scripts/image.sh [TAG]        # default tag: localhost/isthmus:<version>
#
# Needs: rustup (the script adds the x86_64-unknown-linux-musl target), strip
# (binutils),
# musl-tools (musl-gcc, for ring's C and assembly) and buildah (Debian:
# `apt-get install musl-tools buildah`). The image holds only the binary;
# the node trusts the CA files its `[tls]` table names, not a system store,
# so no CA bundle is copied in. `Dockerfile` builds the same image for
# people who build elsewhere.
#
# Not part of `scripts/test.sh`: a release build of the whole server for
# another target takes a long time on a small machine.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
tag=${1:-localhost/isthmus:$version}
target_dir=${CARGO_TARGET_DIR:-target}

rustup target add "$target" >/dev/null
export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
# The server build: no demo, no test harness (see ARCHITECTURE.md).
cargo build --release --locked --no-default-features --target "$target" --bin isthmus
binary="$target_dir/$target/release/isthmus"

if ! file "$binary" | grep -Eq 'statically linked|static-pie linked'; then
    echo "error: $binary is not a static binary:" >&2
    file "$binary" >&2
    exit 1
fi

# buildah inside a container (CI) cannot use overlay mounts or namespaces.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
# The release profile keeps line tables (for backtraces in benchmarks);
# the image carries the binary without them.
cp "$binary" "$staging/isthmus"
strip --strip-debug "$staging/isthmus"

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true; rm -rf "$staging"' EXIT
buildah copy --chmod 0755 "$container" "$staging/isthmus" /usr/local/bin/isthmus >/dev/null
# Directories the node writes to must exist and belong to its user; a
# scratch image has no shell to make them, so they come from a staging tree.
mkdir -p "$staging/var/lib/isthmus" "$staging/etc/isthmus" "$staging/tmp"
chmod 1777 "$staging/tmp"
buildah copy --chown 10001:10001 "$container" "$staging/var/lib/isthmus" /var/lib/isthmus >/dev/null
buildah copy "$container" "$staging/etc/isthmus" /etc/isthmus >/dev/null
buildah copy "$container" "$staging/tmp" /tmp >/dev/null
buildah config \
    --user 10001:10001 \
    --entrypoint '["/usr/local/bin/isthmus"]' \
    --cmd '["server", "--config", "/etc/isthmus/isthmus.toml"]' \
    --port 7401/tcp \
    --port 9401/tcp \
    --volume /var/lib/isthmus \
    --workingdir /var/lib/isthmus \
    --label org.opencontainers.image.title=isthmus \
    --label "org.opencontainers.image.version=$version" \
    "$container"
buildah commit --quiet "$container" "$tag" >/dev/null
echo "built $tag"

# The image's binary must run: `isthmus --version` inside the image when
# this machine can run a container, else outside it.
if out=$(buildah run "$container" -- /usr/local/bin/isthmus --version 2>/dev/null); then
    echo "in the image: $out"
else
    echo "cannot run a container here; the binary outside it: $("$binary" --version)"
fi
buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.User}} {{.OCIv1.Config.ExposedPorts}} {{.OCIv1.Config.Volumes}}' "$tag"
