#!/usr/bin/env bash
# Build (or reuse) the test guest: a Debian cloud kernel and a busybox initramfs.
#
# Output (cached; rebuilt only when an input changes):
#   $CACHE/vmlinuz             the kernel, extracted from the linux-image-*-cloud-amd64 package
#   $CACHE/initramfs.cpio.gz   busybox-static + virtio modules + guest/init + guest/profile
# CACHE defaults to integration/.cache/guest (gitignored); override with VDFW_GUEST_CACHE.
# Prints `KERNEL=...` and `INITRD=...` on stdout (progress goes to stderr) so callers can parse it.
#
# Needs: apt (the kernel is downloaded with `apt-get download`, never installed), dpkg-deb,
# busybox-static, cpio, gzip — see install-deps.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
GUEST_SRC="$HERE/../guest"
CACHE=${VDFW_GUEST_CACHE:-"$HERE/../.cache/guest"}
mkdir -p "$CACHE/kernel"
CACHE=$(cd "$CACHE" && pwd)

log() { echo "build-guest: $*" >&2; }

# Serialise concurrent builders (parallel test binaries may all call this).
exec 9>"$CACHE/.lock"
flock 9

# Virtio modules, in load order (virtio_ring before virtio, or "Unknown symbol").
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net)

BUSYBOX=/bin/busybox
for tool in "$BUSYBOX" cpio gzip dpkg-deb; do
  command -v "$tool" >/dev/null || { log "missing $tool: run integration/scripts/install-deps.sh"; exit 1; }
done
if ! dpkg-query -W -f='${db:Status-Status}' busybox-static 2>/dev/null | grep -qx installed; then
  log "busybox-static is not installed (a dynamic busybox cannot run in the initramfs): run install-deps.sh"
  exit 1
fi

# --- kernel package: reuse a downloaded one, else resolve the current name and download it ---------
deb=$(ls "$CACHE"/kernel/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
  resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
  pkg=$(resolve)
  if [ -z "$pkg" ]; then
    log "apt lists lack linux-image-cloud-amd64: apt-get update"
    apt-get update -q >&2
    pkg=$(resolve)
  fi
  [ -n "$pkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
  log "downloading $pkg"
  (cd "$CACHE/kernel" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2)
  deb=$(ls "$CACHE"/kernel/"$pkg"_*.deb | head -n1)
fi

# --- cache check -------------------------------------------------------------------------------------
stamp=$( {
  sha256sum "$0" "$GUEST_SRC/init" "$GUEST_SRC/profile" "$BUSYBOX" | awk '{print $1}'
  basename "$deb"
} | sha256sum | awk '{print $1}')
if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$stamp" ] \
   && [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initramfs.cpio.gz" ]; then
  echo "KERNEL=$CACHE/vmlinuz"
  echo "INITRD=$CACHE/initramfs.cpio.gz"
  exit 0
fi

# --- build -------------------------------------------------------------------------------------------
log "building guest from $(basename "$deb")"
work="$CACHE/work"
rm -rf "$work"
mkdir -p "$work/pkg" "$work/root"
dpkg-deb -x "$deb" "$work/pkg"

kernel=$(ls "$work"/pkg/boot/vmlinuz-* | head -n1)
kver=${kernel##*/vmlinuz-}
moddir="$work/pkg/lib/modules/$kver"

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,lib/modules/vdfw}
cp "$BUSYBOX" "$root/bin/busybox"
# Applet links made here rather than with `busybox --install` at boot: saves time under TCG.
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
for m in "${MODULES[@]}"; do
  ko=$(find "$moddir" -name "$m.ko" | head -n1)
  [ -n "$ko" ] || { log "module $m.ko not found in $kver (compressed modules are not supported)"; exit 1; }
  cp "$ko" "$root/lib/modules/vdfw/"
done
install -m 0755 "$GUEST_SRC/init" "$root/init"
install -m 0644 "$GUEST_SRC/profile" "$root/etc/profile"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$CACHE/initramfs.cpio.gz.tmp"
cp "$kernel" "$CACHE/vmlinuz.tmp"
mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
mv "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
echo "$stamp" > "$CACHE/stamp"
rm -rf "$work"
log "built: kernel $kver, initramfs $(du -h "$CACHE/initramfs.cpio.gz" | cut -f1)"

echo "KERNEL=$CACHE/vmlinuz"
echo "INITRD=$CACHE/initramfs.cpio.gz"
