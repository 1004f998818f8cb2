# syntax=docker/dockerfile:1
#
# The two images of static-macvlan, from one build (BuildKit, the default builder of Docker 23+):
#
#   docker build --target operator -t static-macvlan/operator:0.1.0 .
#   docker build --target cni      -t static-macvlan/cni:0.1.0 .
#
# Multi-arch: `docker buildx build --platform linux/amd64,linux/arm64 --target …`; every platform
# builds natively (under emulation if need be), so no cross toolchain is involved.
#
# Both binaries are linked statically against musl. The CNI plugin is copied onto the nodes and
# runs there, against whatever C library the host has: a binary linked against this image's glibc
# would fail on hosts with an older one. It is also position-dependent (.cargo/config.toml), as
# the reference plugins are: it starts once per pod ADD and DEL, and a static-pie binary spends
# a fifth of its start relocating itself. The operator, long-running, stays position-independent
# (RUSTFLAGS replaces the config's flags) and runs on a distroless/static base with nothing else
# in it.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# protobuf-compiler: etcd-client compiles etcd's protobufs at build time.
# musl-tools: musl-gcc, for the C and assembly parts of ring on the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binaries are copied out of the
# cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" -p static-macvlan-cni \
 && RUSTFLAGS="-C relocation-model=pie" \
      cargo build --release --locked --target "$target" -p static-macvlan-operator \
 && mkdir -p /out \
 && cp "target/$target/release/static-macvlan" "target/$target/release/static-macvlan-operator" /out/

# The CNI installer DaemonSet (deploy/kustomize/base/installer): the plugin plus the script that
# puts it and its etcd settings on the node. A shell and coreutils are all the script needs.
FROM debian:bookworm-slim AS cni
COPY --from=build /out/static-macvlan /usr/local/bin/static-macvlan
COPY --chmod=0755 deploy/installer/install.sh /usr/local/bin/static-macvlan-install
LABEL org.opencontainers.image.title="static-macvlan CNI plugin and installer" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/static-macvlan-install"]
CMD ["run"]

# The operator (deploy/kustomize/base/operator), as the distroless non-root user 65532.
FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/static-macvlan-operator /usr/local/bin/static-macvlan-operator
USER 65532:65532
EXPOSE 9464
LABEL org.opencontainers.image.title="static-macvlan operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["/usr/local/bin/static-macvlan-operator"]
CMD ["run"]
