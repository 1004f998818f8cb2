#!/bin/sh
# Builds the official CNI client, cnitool, offline from Debian packages: golang-go, the libcni
# sources of golang-github-appc-cni-dev, and cnitool/cnitool.go from the source package
# golang-github-appc-cni (apt-get source), compiled in GOPATH mode with GOPROXY=off.
#
#   scripts/build-cnitool.sh [OUT_DIR]      (default: target/cnitool; needs root for apt)
#
# The cni_cnitool test looks for OUT_DIR/cnitool (or $STATIC_MACVLAN_CNITOOL, or cnitool in PATH).
set -eu

out=${1:-target/cnitool}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -x "$out/cnitool" ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# apt-get source needs deb-src entries; derive them from the deb ones.
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
        > /etc/apt/sources.list.d/debian-src.sources
fi
apt-get update -qq
apt-get install -y -qq golang-go golang-github-appc-cni-dev dpkg-dev >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -qq golang-github-appc-cni >/dev/null
src=$(find . -maxdepth 3 -path '*/cnitool/cnitool.go' | head -n 1)
[ -n "$src" ] || { echo "cnitool/cnitool.go not found in the source package" >&2; exit 1; }

GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off GOCACHE="$work/cache" \
    go build -o "$out/cnitool" "$src"
echo "built $out/cnitool"
