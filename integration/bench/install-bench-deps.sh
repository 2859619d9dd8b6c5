#!/usr/bin/env bash
# Installs what the packet-rate harness (integration/bench/bench.py) needs. Idempotent:
# packages already present are skipped, so re-running is cheap.
#
#   dpdk-testpmd (dpdk-dev) + the virtio-user / vhost PMDs: generator and ceiling subject
#   openvswitch-switch-dpdk: the OVS-DPDK subject (ovs-vswitchd-dpdk, ovsdb-server, ovs-vsctl)
#   gcc, pkg-config, libdpdk-dev: pairgen.c (the vNIC sweep's generator), compiled by bench.py
#   python3-matplotlib: the PNG of the scaling curves (optional: bench.py skips the plot without it)
set -euo pipefail

pkgs=(dpdk-dev libdpdk-dev gcc pkg-config librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
      openvswitch-switch-dpdk python3-matplotlib)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # --no-install-recommends: openvswitch-switch-dpdk would otherwise pull a large stack.
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian package installs the DPDK build as an alternative; the harness calls it by path.
test -x /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
echo "bench deps ok"
