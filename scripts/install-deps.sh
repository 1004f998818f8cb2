#!/usr/bin/env bash
# Installs what the build, the tests and the demo need on a fresh Debian machine, only when missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have etcd || need+=(etcd-server)
have etcdctl || need+=(etcd-client)
have ip || need+=(iproute2)
have protoc || need+=(protobuf-compiler)
have jq || need+=(jq)
have ping || need+=(iputils-ping)
have curl || need+=(curl)
[ -x /usr/lib/cni/macvlan ] || need+=(containernetworking-plugins)
# The deploy tests build the kustomize overlays with `kubectl kustomize`. Debian's own kubectl
# (kubernetes-client) is old; a newer kubectl already on the machine is kept.
have kubectl || need+=(kubernetes-client)

if ((${#need[@]})); then
  echo "==> installing: ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to apt-get install ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! have cargo; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
