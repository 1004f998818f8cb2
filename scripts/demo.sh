#!/usr/bin/env bash
# The main job: a local demo on an embedded default. Installs what is missing, builds, starts a
# throw-away etcd on a free loopback port, and walks through reservations; everything it started
# is stopped and removed on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
echo "==> building"
cargo build --release --workspace --bins --examples -q

work=$(mktemp -d /tmp/static-macvlan-demo.XXXXXX)
etcd_pid=""
cleanup() {
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client_port=$(free_port)
peer_port=$(free_port)
endpoint="http://127.0.0.1:${client_port}"
prefix=/static-macvlan

echo "==> starting etcd at ${endpoint} (data in ${work})"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:${peer_port}" --initial-advertise-peer-urls "http://127.0.0.1:${peer_port}" \
  --initial-cluster "demo=http://127.0.0.1:${peer_port}" --auto-compaction-retention=1 \
  --logger=zap --log-outputs=stderr --log-level=error 2>"$work/etcd.log" &
etcd_pid=$!
for _ in $(seq 50); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null

echo
echo "==> reservations through the allocator"
./target/release/examples/walkthrough "$endpoint" "$prefix"

echo
echo "==> what etcd holds: etcdctl get --prefix ${prefix}/"
ETCDCTL_API=3 etcdctl --endpoints "$endpoint" get --prefix "${prefix}/" | paste - - | sed 's/\t/  =  /' | cut -c1-220

echo
echo "demo finished: everything it started is being cleaned up"
