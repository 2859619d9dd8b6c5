#!/usr/bin/env bash
# Install everything the integration tests need on Debian 12 (bookworm), non-interactively.
#
# Idempotent: when every package is already installed this is a fast no-op (a dpkg-query, no apt
# call). `apt-get update` runs only when a package is missing and apt's lists are absent or older
# than a day. Must run as root.
set -euo pipefail

# --- package groups -------------------------------------------------------------------------------
# Guests: QEMU under TCG, a busybox initramfs packed with cpio.
GUEST_PKGS=(qemu-system-x86 busybox-static cpio)
# DPDK testpmd: an independent vhost-user backend / virtio-user frontend (dpdk-testpmd is in dpdk-dev).
DPDK_PKGS=(dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23)
# Network namespaces, bridges, TAPs, the kernel-firewall baseline.
NET_PKGS=(iproute2 nftables)
# Tools build-guest.sh uses (gzip, find) — present on any Debian, listed so a minimal image works.
TOOL_PKGS=(gzip findutils)
# libvirt (tests/libvirt.rs): libvirtd with the QEMU driver and virsh. No systemd here: the test
# harness (src/libvirt.rs) creates the users and directories and starts virtlogd/libvirtd itself.
LIBVIRT_PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
# Later tests (not needed yet): add them here when their tests land, e.g.
#   ETCD_PKGS=(etcd-server etcd-client)
LATER_PKGS=()

PKGS=("${GUEST_PKGS[@]}" "${DPDK_PKGS[@]}" "${NET_PKGS[@]}" "${TOOL_PKGS[@]}" "${LIBVIRT_PKGS[@]}"
  "${LATER_PKGS[@]}")

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: must run as root (apt-get install)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps.sh: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps.sh: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Refresh apt's lists only when they are missing or stale (a fresh machine has none).
lists_fresh() {
  local newest
  newest=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n1)
  [ -n "$newest" ]
}
if ! lists_fresh; then
  apt-get update -q
fi

if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  # A stale list can name a version that is gone from the mirror: refresh once and retry.
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
echo "install-deps.sh: done"
