#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine (as root: the tests create network
# namespaces). Installs etcd, iproute2, protoc and the reference CNI plugins when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
# The official CNI client, built offline from Debian's sources, for the cnitool test.
./scripts/build-cnitool.sh "${CARGO_TARGET_DIR:-target}/cnitool"
# The end-to-end tests run the real binaries, so build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
