# The container image of an Isthmus node, for builders other than
# scripts/image.sh (which makes the same image with buildah, from scratch,
# without pulling a base image). A static (musl) server build in an image
# that holds nothing else: no shell, no libc, no CA bundle (a node trusts
# the CA files its [tls] table names).
#
#   docker build -t isthmus:0.1.0 .
#   docker run --rm isthmus:0.1.0 --version
FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked \
        --no-default-features --target x86_64-unknown-linux-musl --bin isthmus \
    && mkdir -p /out/var/lib/isthmus /out/etc/isthmus /out/tmp \
    && chmod 1777 /out/tmp \
    && cp target/x86_64-unknown-linux-musl/release/isthmus /out/isthmus \
    && strip --strip-debug /out/isthmus

FROM scratch
COPY --from=build /out/isthmus /usr/local/bin/isthmus
COPY --from=build --chown=10001:10001 /out/var/lib/isthmus /var/lib/isthmus
COPY --from=build /out/etc/isthmus /etc/isthmus
COPY --from=build /out/tmp /tmp
USER 10001:10001
WORKDIR /var/lib/isthmus
EXPOSE 7401/tcp 9401/tcp
VOLUME /var/lib/isthmus
ENTRYPOINT ["/usr/local/bin/isthmus"]
CMD ["server", "--config", "/etc/isthmus/isthmus.toml"]
