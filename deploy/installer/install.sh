#!/bin/sh
# static-macvlan-install: puts the static-macvlan CNI plugin and its node-local etcd settings on a
# node. The `static-macvlan/cni` image runs it as the installer DaemonSet
# (deploy/kustomize/base/installer). It runs as root but without any capability and without
# privilege: the host directories it writes are root's own, so plain file permissions suffice.
#
# Usage: static-macvlan-install [run|once|check]
#   run (default)  install, then re-check every STATIC_MACVLAN_INSTALL_RESYNC_SECONDS (60) until
#                  stopped, so that a rotated client certificate or a deleted binary is put back
#   once           install and exit
#   check          exit 0 when the plugin and its settings are in place (the readiness probe)
#
# Settings (the static-macvlan-settings ConfigMap):
#   STATIC_MACVLAN_ETCD_ENDPOINTS   comma-separated http:// or https:// URLs (required)
#   STATIC_MACVLAN_PREFIX           etcd key prefix (default /static-macvlan)
#   STATIC_MACVLAN_ETCD_CA_FILE, STATIC_MACVLAN_ETCD_CERT_FILE, STATIC_MACVLAN_ETCD_KEY_FILE
#                                   client TLS files as mounted in this container; copied next to
#                                   etcd.json, which names the copies
#   STATIC_MACVLAN_PRIMARY_CNI      "true": also write 00-static-macvlan.conflist, making macvlan
#                                   the node's pod network (components/primary-cni); otherwise a
#                                   conflist of that name is removed
#   STATIC_MACVLAN_PRIMARY_SUBNET   the VlanSubnet of that conflist (default lan)
#   STATIC_MACVLAN_PRIMARY_CNI_VERSION  its cniVersion (default 1.0.0, which every runtime in use
#                                   reads; the plugin also speaks 1.1.0)
# Paths (defaults match the DaemonSet's mounts; the tests point them at a temporary directory):
#   CNI_BIN_DIR (/opt/cni/bin), CNI_NET_DIR (/etc/cni/net.d),
#   PLUGIN_SRC (/usr/local/bin/static-macvlan),
#   HOST_CNI_NET_DIR: how the host names CNI_NET_DIR, for the paths written into the files
#   (default: CNI_NET_DIR, as the DaemonSet mounts the host directory at the same path).
set -eu
# Everything this script creates is private until it says otherwise: the etcd settings and the
# client key must never be readable by other users of the node, not even for an instant.
umask 077
# Endpoint lists are split on commas below; never expand them as globs.
set -f

CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_NET_DIR=${CNI_NET_DIR:-/etc/cni/net.d}
HOST_CNI_NET_DIR=${HOST_CNI_NET_DIR:-$CNI_NET_DIR}
PLUGIN_SRC=${PLUGIN_SRC:-/usr/local/bin/static-macvlan}
# A directory, not files directly in net.d: runtimes load every *.conf, *.conflist and *.json
# there as a network configuration.
SUB_DIR=$CNI_NET_DIR/static-macvlan.d
HOST_SUB_DIR=$HOST_CNI_NET_DIR/static-macvlan.d
CONFLIST=$CNI_NET_DIR/00-static-macvlan.conflist
RESYNC=${STATIC_MACVLAN_INSTALL_RESYNC_SECONDS:-60}

log() {
    printf '%s static-macvlan-install: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# The temp file being written, removed if we stop half-way.
staged=""
cleanup() {
    if [ -n "$staged" ]; then rm -f "$staged"; fi
}
trap cleanup EXIT
trap 'exit 0' TERM INT

# same MODE DEST: DEST exists with exactly this mode.
same_mode() {
    [ -f "$2" ] && [ "$(stat -c %a "$2")" = "${1#0}" ]
}

# stage DEST: a new temp file in DEST's directory. Same directory, so that the final rename(2) is
# atomic: a runtime executing the plugin, or reading a file, sees the old or the new one, never a
# half-written one.
stage() {
    staged=$(mktemp "${1%/*}/.static-macvlan.tmp.XXXXXX") || die "create a temp file beside $1"
}

# commit MODE DEST: chmod the staged file, then rename it over DEST.
commit() {
    chmod "$1" "$staged"
    mv -f "$staged" "$2"
    staged=""
    log "installed $2 (mode $1)"
}

# install_copy SRC MODE DEST: copy SRC to DEST atomically unless DEST already is the same.
install_copy() {
    if same_mode "$2" "$3" && cmp -s "$1" "$3"; then return 0; fi
    stage "$3"
    cp "$1" "$staged"
    commit "$2" "$3"
}

# install_text MODE DEST TEXT: write TEXT (plus a newline) to DEST atomically unless unchanged.
install_text() {
    if same_mode "$1" "$2" && printf '%s\n' "$3" | cmp -s - "$2"; then return 0; fi
    stage "$2"
    printf '%s\n' "$3" >"$staged"
    commit "$1" "$2"
}

# json_string VALUE WHAT: VALUE as a JSON string. Values needing escapes are refused rather than
# escaped: none of a URL, a key prefix or a path should contain them.
json_string() {
    case $1 in
    *[\"\\]* | *[![:print:]]*)
        die "$2 contains a quote, a backslash or a control character: $1"
        ;;
    esac
    printf '"%s"' "$1"
}

endpoints_json() {
    [ -n "${STATIC_MACVLAN_ETCD_ENDPOINTS:-}" ] ||
        die "STATIC_MACVLAN_ETCD_ENDPOINTS is not set (the settings ConfigMap names the etcd endpoints)"
    out=""
    old_ifs=$IFS
    IFS=', '
    for ep in $STATIC_MACVLAN_ETCD_ENDPOINTS; do
        [ -n "$ep" ] || continue
        case $ep in
        http://?* | https://?*) ;;
        *) die "STATIC_MACVLAN_ETCD_ENDPOINTS: $ep is not an http:// or https:// URL" ;;
        esac
        out="$out${out:+, }$(json_string "$ep" STATIC_MACVLAN_ETCD_ENDPOINTS)"
    done
    IFS=$old_ifs
    [ -n "$out" ] || die "STATIC_MACVLAN_ETCD_ENDPOINTS names no endpoint"
    printf '[%s]' "$out"
}

# tls_file VAR NAME KEY: copies the file named by the setting VAR to static-macvlan.d/NAME (mode
# 0600) and appends `"KEY": "<host path of the copy>"` to $tls for etcd.json. Without the setting,
# removes a copy left by an earlier configuration: a private key must not linger unused on a node.
tls_file() {
    eval "src=\${$1:-}"
    if [ -z "$src" ]; then
        rm -f "$SUB_DIR/$2"
        return 0
    fi
    install_copy "$src" 0600 "$SUB_DIR/$2"
    tls="$tls,
  \"$3\": $(json_string "$HOST_SUB_DIR/$2" HOST_CNI_NET_DIR)"
}

install() {
    # Everything is checked before anything on the node changes.
    [ -f "$PLUGIN_SRC" ] || die "the plugin binary $PLUGIN_SRC is missing from the image"
    [ -d "$CNI_BIN_DIR" ] || die "$CNI_BIN_DIR is not a directory (mount the host's CNI bin dir)"
    [ -d "$CNI_NET_DIR" ] || die "$CNI_NET_DIR is not a directory (mount the host's CNI conf dir)"
    if [ "${STATIC_MACVLAN_ETCD_CERT_FILE:+set}" != "${STATIC_MACVLAN_ETCD_KEY_FILE:+set}" ]; then
        die "STATIC_MACVLAN_ETCD_CERT_FILE and STATIC_MACVLAN_ETCD_KEY_FILE go together"
    fi
    for var in STATIC_MACVLAN_ETCD_CA_FILE STATIC_MACVLAN_ETCD_CERT_FILE STATIC_MACVLAN_ETCD_KEY_FILE; do
        eval "src=\${$var:-}"
        if [ -n "$src" ] && [ ! -s "$src" ]; then
            die "$var: $src does not exist or is empty (is the client-certificate Secret mounted?)"
        fi
    done
    prefix=${STATIC_MACVLAN_PREFIX:-/static-macvlan}
    case $prefix in
    /*) ;;
    *) die "STATIC_MACVLAN_PREFIX must start with /: $prefix" ;;
    esac
    endpoints=$(endpoints_json)
    case $endpoints in
    *'"https://'*)
        # The plugin refuses https without a CA; say so here, before the node looks ready.
        [ -n "${STATIC_MACVLAN_ETCD_CA_FILE:-}" ] ||
            die "STATIC_MACVLAN_ETCD_CA_FILE is required for https endpoints"
        ;;
    esac
    prefix=$(json_string "$prefix" STATIC_MACVLAN_PREFIX)
    etcd_json=$(json_string "$HOST_SUB_DIR/etcd.json" HOST_CNI_NET_DIR)
    primary=${STATIC_MACVLAN_PRIMARY_CNI:-false}
    if [ "$primary" = true ]; then
        subnet=${STATIC_MACVLAN_PRIMARY_SUBNET:-lan}
        case $subnet in
        "" | *[!a-z0-9.-]*) die "STATIC_MACVLAN_PRIMARY_SUBNET must be a VlanSubnet name: $subnet" ;;
        esac
        version=${STATIC_MACVLAN_PRIMARY_CNI_VERSION:-1.0.0}
        case $version in
        "" | *[!0-9.]*) die "STATIC_MACVLAN_PRIMARY_CNI_VERSION must be a version like 1.0.0: $version" ;;
        esac
    fi

    # Order matters: the binary, then its settings, then (primary mode) the conflist, so that a
    # runtime never finds a network configuration naming something not yet in place.

    # 1. The plugin.
    install_copy "$PLUGIN_SRC" 0755 "$CNI_BIN_DIR/static-macvlan"

    # 2. The etcd client settings, and the TLS files they name, readable by root only.
    mkdir -p "$SUB_DIR"
    chmod 0700 "$SUB_DIR"
    tls=""
    tls_file STATIC_MACVLAN_ETCD_CA_FILE ca.crt caFile
    tls_file STATIC_MACVLAN_ETCD_CERT_FILE tls.crt certFile
    tls_file STATIC_MACVLAN_ETCD_KEY_FILE tls.key keyFile
    install_text 0600 "$SUB_DIR/etcd.json" "{
  \"endpoints\": $endpoints,
  \"prefix\": $prefix$tls
}"

    # 3. Primary-network mode: our conflist sorts first, so the runtime uses it for every pod.
    if [ "$primary" = true ]; then
        install_text 0644 "$CONFLIST" "{
  \"cniVersion\": \"$version\",
  \"name\": \"static-macvlan\",
  \"plugins\": [
    {
      \"type\": \"static-macvlan\",
      \"subnet\": \"$subnet\",
      \"etcdConfigFile\": $etcd_json,
      \"capabilities\": {\"ips\": true, \"mac\": true}
    }
  ]
}"
    elif [ -e "$CONFLIST" ]; then
        rm -f "$CONFLIST"
        log "removed $CONFLIST (STATIC_MACVLAN_PRIMARY_CNI is not true)"
    fi
}

check() {
    [ -x "$CNI_BIN_DIR/static-macvlan" ] && [ -s "$SUB_DIR/etcd.json" ] || return 1
    if [ "${STATIC_MACVLAN_PRIMARY_CNI:-false}" = true ]; then
        [ -s "$CONFLIST" ] || return 1
    fi
}

case ${1:-run} in
run)
    case $RESYNC in
    "" | *[!0-9]* | 0) die "STATIC_MACVLAN_INSTALL_RESYNC_SECONDS must be a positive integer: $RESYNC" ;;
    esac
    # Leftovers of a run killed between stage and commit.
    set +f
    rm -f "$CNI_BIN_DIR"/.static-macvlan.tmp.* "$CNI_NET_DIR"/.static-macvlan.tmp.* \
        "$SUB_DIR"/.static-macvlan.tmp.*
    set -f
    install
    log "installed; re-checking every ${RESYNC}s"
    while :; do
        # In the background, so that SIGTERM ends the wait at once.
        sleep "$RESYNC" &
        wait $! || true
        install
    done
    ;;
once) install ;;
check) check ;;
*)
    echo "usage: static-macvlan-install [run|once|check]" >&2
    exit 2
    ;;
esac
