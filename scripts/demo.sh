#!/usr/bin/env bash
# The main job: a guided local demo on an embedded default. On a fresh Debian machine (as root) it
# installs what is missing, builds the binaries, starts a throw-away etcd, builds a small simulated
# LAN out of network namespaces (a switch, two nodes, pods), mirrors the sample VlanSubnet and
# MacPool with `static-macvlan-operator apply`, and runs the real CNI plugin exactly as a container
# runtime does. Every step is checked; any failure exits non-zero. Everything it created is removed
# on exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "the demo creates network namespaces: run it as root" >&2
  exit 1
fi
./scripts/install-deps.sh
echo "==> building static-macvlan and static-macvlan-operator (release)"
cargo build --release -q -p static-macvlan-cni -p static-macvlan-operator
plugin=$root/target/release/static-macvlan
operator=$root/target/release/static-macvlan-operator

tag="smv-demo-$$"
lan="$tag-lan"
work=$(mktemp -d "/tmp/$tag.XXXXXX")
namespaces=()
etcd_pid=""
metrics_pid=""

cleanup() {
  set +e
  [ -n "$metrics_pid" ] && kill "$metrics_pid" 2>/dev/null && wait "$metrics_pid" 2>/dev/null
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null
  for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "interrupted: cleaning up"; exit 130' INT TERM

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '    $ %s\n' "$*"; }
in_lan() { ip netns exec "$lan" "$@"; }
netns() { ip netns add "$1"; namespaces+=("$1"); ip -n "$1" link set lo up; }

step "a LAN: switch namespace $lan with bridge br0 (10.230.0.1, the router and etcd's host)"
netns "$lan"
ip -n "$lan" link add br0 type bridge
ip -n "$lan" addr add 10.230.0.1/24 dev br0
ip -n "$lan" link set br0 up

declare -A node_ip=([a]=10.230.0.11 [b]=10.230.0.12)
for n in a b; do
  ns="$tag-node-$n"
  netns "$ns"
  # The node's physical NIC is a veth end named eth0; its peer is a port of the switch.
  ip link add eth0 netns "$ns" type veth peer name "port-$n" netns "$lan"
  ip -n "$lan" link set "port-$n" master br0 up
  ip -n "$ns" addr add "${node_ip[$n]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  echo "    node-$n: namespace $ns, eth0 ${node_ip[$n]}/24"
done

step "etcd inside the LAN namespace at http://10.230.0.1:2379 (data in $work)"
# Started without the in_lan function, so that $! is etcd itself (a function would run in a
# subshell, and killing that would leave etcd running).
ip netns exec "$lan" etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls http://10.230.0.1:2379,http://127.0.0.1:2379 \
  --advertise-client-urls http://10.230.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 --auto-compaction-retention=1 \
  --logger=zap --log-outputs=stderr --log-level=error 2>"$work/etcd.log" &
etcd_pid=$!
export ETCDCTL_API=3
for _ in $(seq 50); do
  in_lan etcdctl --endpoints http://127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
in_lan etcdctl --endpoints http://127.0.0.1:2379 endpoint health
export STATIC_MACVLAN_ETCD_ENDPOINTS=http://127.0.0.1:2379

step "mirror the sample VlanSubnets and MacPool into etcd (what the operator does from kubectl apply)"
show "static-macvlan-operator apply -f deploy/kustomize/samples/vlansubnets.yaml -f deploy/kustomize/samples/macpool.yaml"
in_lan "$operator" apply -f deploy/kustomize/samples/vlansubnets.yaml -f deploy/kustomize/samples/macpool.yaml

step "the operator's metrics, served from etcd alone (no Kubernetes API here)"
show "static-macvlan-operator serve-metrics --metrics-addr 127.0.0.1:9464 &"
ip netns exec "$lan" "$operator" serve-metrics --metrics-addr 127.0.0.1:9464 --interval-seconds 1 2>"$work/metrics.log" &
metrics_pid=$!

netconf() {
  # $1 = network name; extra JSON members may follow (e.g. runtimeConfig)
  local extra=${2:-}
  printf '{"cniVersion":"1.1.0","name":"%s","type":"static-macvlan","subnet":"lan",' "$1"
  printf '"etcd":{"endpoints":["http://10.230.0.1:2379"]},"capabilities":{"ips":true,"mac":true}%s}' "$extra"
}

# cni NODE POD-NS COMMAND CONTAINER IFNAME NAMESPACE POD UID [netconf-extra]: the plugin run the way
# a runtime runs it, on the node: environment plus the netconf on stdin.
cni() {
  local node=$1 podns=$2 cmd=$3 cid=$4 ifname=$5 kns=$6 kpod=$7 uid=$8 extra=${9:-}
  netconf lan "$extra" | ip netns exec "$tag-node-$node" env -i PATH="$PATH" \
    STATIC_MACVLAN_NODE="node-$node" CNI_COMMAND="$cmd" CNI_CONTAINERID="$cid" \
    CNI_NETNS="/var/run/netns/$podns" CNI_IFNAME="$ifname" CNI_PATH=/opt/cni/bin \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=$kns;K8S_POD_NAME=$kpod;K8S_POD_UID=$uid" \
    "$plugin" 2>>"$work/plugin.log"
}

pod() { # pod NAME: a pod sandbox namespace
  netns "$tag-pod-$1"
}

step "ADD demo/web-0 on node-a: automatic IP and MAC"
pod web-0
show "CNI_COMMAND=ADD CNI_IFNAME=net1 ... static-macvlan < netconf"
cni a "$tag-pod-web-0" ADD c-web-0 net1 demo web-0 uid-web-0 | tee "$work/web-0.json" | jq -c '{ips: [.ips[].address], mac: .interfaces[0].mac}'
web_ip=$(jq -r '.ips[0].address' "$work/web-0.json" | cut -d/ -f1)

step "ADD demo/db-0 on node-b: static IP 10.230.0.50 and MAC 02:00:0a:e6:00:32 (Multus runtimeConfig)"
pod db-0
cni b "$tag-pod-db-0" ADD c-db-0 net1 demo db-0 uid-db-0 \
  ',"runtimeConfig":{"ips":["10.230.0.50/24"],"mac":"02:00:0a:e6:00:32"}' | jq -c '{ips: [.ips[].address], mac: .interfaces[0].mac}'
show "ip -n db-0 -br addr show net1"
ip -n "$tag-pod-db-0" -br addr show net1
ip -n "$tag-pod-db-0" -br link show net1

step "ADD legacy/app-0 on node-b with the original project's annotations (static-ip, static-mac, vlan)"
# In a cluster the operator mirrors the pod (uid, node, labels, our annotations) into etcd; the
# plugin reads the mirror, never the API server. Here the demo writes it the way the operator does.
mirror='{"uid":"uid-app-0","node":"node-b","labels":{"app":"legacy"},"annotations":{"static-ip":"10.230.0.60","static-mac":"02:00:0a:e6:00:3c","vlan":"lan"}}'
show "etcdctl put /static-macvlan/pods/legacy/app-0 '$mirror'"
in_lan etcdctl --endpoints http://127.0.0.1:2379 put /static-macvlan/pods/legacy/app-0 "$mirror" >/dev/null
pod app-0
cni b "$tag-pod-app-0" ADD c-app-0 eth0 legacy app-0 uid-app-0 | jq -c '{ips: [.ips[].address], mac: .interfaces[0].mac}'
ip -n "$tag-pod-app-0" -br addr show eth0

step "a sticky AllocationRule: VMs in namespace vms keep their address across re-creation"
rule=$(cat <<'YAML'
apiVersion: staticmacvlan.io/v1alpha1
kind: AllocationRule
metadata:
  name: vms-sticky
spec:
  priority: 10
  match: "pod.namespace == 'vms'"
  subnet: lan
  sticky:
    holdSeconds: 300
YAML
)
echo "$rule" | sed 's/^/    /'
echo "$rule" | in_lan "$operator" apply -f -
pod vm-1
cni a "$tag-pod-vm-1" ADD c-vm-1-a net1 vms vm-1 uid-vm-1-a | tee "$work/vm-1.json" | jq -c '{ips: [.ips[].address], mac: .interfaces[0].mac}'
vm_ip=$(jq -r '.ips[0].address' "$work/vm-1.json")
vm_mac=$(jq -r '.interfaces[0].mac' "$work/vm-1.json")
echo "    the VM is deleted: DEL, and its address is held for vms/vm-1"
cni a "$tag-pod-vm-1" DEL c-vm-1-a net1 vms vm-1 uid-vm-1-a
in_lan etcdctl --endpoints http://127.0.0.1:2379 get --print-value-only "/static-macvlan/ips/lan/${vm_ip%/*}" | jq -c '{ip, state, sticky}'
echo "    re-created with a new pod UID on the other node:"
ip netns del "$tag-pod-vm-1"; netns "$tag-pod-vm-1"
cni b "$tag-pod-vm-1" ADD c-vm-1-b net1 vms vm-1 uid-vm-1-b | tee "$work/vm-1b.json" | jq -c '{ips: [.ips[].address], mac: .interfaces[0].mac}'
[ "$(jq -r '.ips[0].address' "$work/vm-1b.json")" = "$vm_ip" ] && [ "$(jq -r '.interfaces[0].mac' "$work/vm-1b.json")" = "$vm_mac" ] \
  || { echo "the re-created VM did not get $vm_ip / $vm_mac back" >&2; exit 1; }
echo "    same IP $vm_ip and MAC $vm_mac"
echo "    a late DEL from the old incarnation frees nothing:"
cni a "$tag-pod-vm-1" DEL c-vm-1-a net1 vms vm-1 uid-vm-1-a
in_lan "$operator" ipam who "${vm_ip%/*}" | sed 's/^/    /'

step "a second pod asking for the same address is refused, and nothing is left behind"
pod thief
if out=$(cni a "$tag-pod-thief" ADD c-thief net1 demo thief uid-thief ',"runtimeConfig":{"ips":["10.230.0.50/24"]}'); then
  echo "the conflicting ADD succeeded: $out" >&2
  exit 1
fi
echo "$out" | jq .
if ip -n "$tag-pod-thief" link show net1 >/dev/null 2>&1; then
  echo "a link was left in the refused pod" >&2
  exit 1
fi
echo "    no net1 in the refused pod's namespace"

step "pods on two nodes reach each other across the LAN"
show "ip netns exec web-0 ping -c 2 10.230.0.50"
ip netns exec "$tag-pod-web-0" ping -c 2 -W 2 10.230.0.50
show "ip netns exec db-0 ping -c 2 $web_ip"
ip netns exec "$tag-pod-db-0" ping -c 2 -W 2 "$web_ip"

step "the node reaches its own pod through the host shim (subnet lan has hostShim: true)"
show "ip -n node-a route show dev smv-* (the plugin's /32 route)"
ip -n "$tag-node-a" route | grep -F "$web_ip" || { echo "no host route to $web_ip" >&2; exit 1; }
show "ip netns exec node-a ping -c 2 $web_ip"
ip netns exec "$tag-node-a" ping -c 2 -W 2 "$web_ip"

step "CHECK demo/web-0 (interface, addresses, routes and the reservation in etcd)"
prev=$(cat "$work/web-0.json")
cni a "$tag-pod-web-0" CHECK c-web-0 net1 demo web-0 uid-web-0 ",\"prevResult\":$prev" && echo "    CHECK ok"

step "what the operator's CLI shows"
show "static-macvlan-operator ipam show"
in_lan "$operator" ipam show
show "static-macvlan-operator ipam who 10.230.0.50"
in_lan "$operator" ipam who 10.230.0.50

step "Prometheus' view: the operator's /metrics"
show "curl -s http://127.0.0.1:9464/metrics | grep ^static_macvlan_"
sleep 1.5
in_lan curl -sf http://127.0.0.1:9464/metrics | grep -E '^static_macvlan_(subnet_addresses|reservations_(created|released)_total|etcd_up)' | sed 's/^/    /'
in_lan curl -sf http://127.0.0.1:9464/metrics | grep -q 'static_macvlan_reservations_created_total{subnet="lan"}' \
  || { echo "the metrics do not count the reservations" >&2; exit 1; }

step "what etcd holds"
show "etcdctl get --prefix --keys-only /static-macvlan/"
in_lan etcdctl --endpoints http://127.0.0.1:2379 get --prefix --keys-only /static-macvlan/ | sed '/^$/d; s/^/    /'
show "etcdctl get /static-macvlan/ips/lan/10.230.0.50"
in_lan etcdctl --endpoints http://127.0.0.1:2379 get --print-value-only /static-macvlan/ips/lan/10.230.0.50 | jq -c .

step "a DEL from an old sandbox of db-0 frees nothing; the real DEL frees everything"
cni b "$tag-pod-db-0" DEL c-db-0-old net1 demo db-0 uid-db-0
in_lan "$operator" ipam who 10.230.0.50 >/dev/null && echo "    10.230.0.50 still held by demo/db-0"
cni b "$tag-pod-db-0" DEL c-db-0 net1 demo db-0 uid-db-0
cni b "$tag-pod-app-0" DEL c-app-0 eth0 legacy app-0 uid-app-0
cni b "$tag-pod-vm-1" DEL c-vm-1-b net1 vms vm-1 uid-vm-1-b
# The VM's address stays held for its key until the hold expires; release it now with the CLI.
in_lan "$operator" ipam release --ip "${vm_ip%/*}" --subnet lan | sed 's/^/    /'
cni a "$tag-pod-web-0" DEL c-web-0 net1 demo web-0 uid-web-0
cni a "$tag-pod-web-0" DEL c-web-0 net1 demo web-0 uid-web-0 && echo "    DEL twice is fine"
left=$(in_lan etcdctl --endpoints http://127.0.0.1:2379 get --prefix --keys-only /static-macvlan/ips/ | sed '/^$/d' | wc -l)
[ "$left" -eq 0 ] || { echo "$left reservations left after DEL" >&2; exit 1; }
echo "    no reservation left"
in_lan "$operator" ipam show

step "demo finished; removing namespaces, links and etcd"
