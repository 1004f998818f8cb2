#!/usr/bin/env bash
# The plugin's benchmarks on the binary as it ships: static, against musl, position-dependent
# (see the Dockerfile and .cargo/config.toml). Its start-up is part of every ADD and DEL, and a
# dynamically linked glibc build starts about 0.6 ms slower here. Needs root (namespaces) and
# the musl target (`rustup target add x86_64-unknown-linux-musl`, `apt-get install musl-tools`);
# without it, the glibc release build is measured and the script says so.
#
#   scripts/bench-plugin.sh            # ADD/DEL vs macvlan+host-local, then the cost of 100 rules
#   scripts/bench-plugin.sh cni_bench  # only one of them (cni_bench or rules)
set -euo pipefail
cd "$(dirname "$0")/.."

target="$(uname -m)-unknown-linux-musl"
dir="${CARGO_TARGET_DIR:-target}"
[[ "$dir" == /* ]] || dir="$PWD/$dir"
if rustup target list --installed 2>/dev/null | grep -qx "$target" && command -v musl-gcc >/dev/null; then
  cargo build --release --target "$target" -p static-macvlan-cni
  plugin="$dir/$target/release/static-macvlan"
else
  echo "bench-plugin: no $target target (or musl-gcc): measuring the glibc build, which is" \
       "not what ships" >&2
  cargo build --release -p static-macvlan-cni
  plugin="$dir/release/static-macvlan"
fi
export STATIC_MACVLAN_PLUGIN="$plugin"
echo "plugin: $plugin"
which="${1:-all}"
if [[ "$which" == all || "$which" == cni_bench ]]; then
  cargo test --release -p static-macvlan-integration --test cni_bench -- --ignored --nocapture
fi
if [[ "$which" == all || "$which" == rules ]]; then
  cargo test --release -p static-macvlan-integration --test cni_policy bench_add_with_100_rules \
    -- --ignored --nocapture
fi
