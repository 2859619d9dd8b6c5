#!/usr/bin/env bash
# vdfw in two minutes: three VMs, the payments policies, an allowed, a dropped and a rejected
# connection, and the flow-log lines that explain them.
#
#   sudo integration/scripts/demo.sh
#
# Needs root (QEMU with shared memory, vhost-user sockets) and a Rust toolchain (cargo). On a
# fresh Debian 12 it first installs QEMU, busybox and friends (install-deps.sh, ~1-2 min once)
# and builds the guest image (build-guest.sh, ~10 s once). Everything it starts runs in its own
# process group and scratch directory, both removed on exit, Ctrl-C included.
#
# Environment: CARGO_TARGET_DIR (default: <repo>/target), VDFW_RELEASE=1 to build vdfwd in
# release mode, NO_COLOR=1 for plain output.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

say() { printf '\033[1m%s\033[0m\n' "$*"; }
if [ -n "${NO_COLOR:-}" ] || [ ! -t 1 ]; then say() { printf '%s\n' "$*"; }; fi

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (sudo integration/scripts/demo.sh): QEMU guests and vhost-user need it" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo.sh: cargo not found: install Rust first (https://rustup.rs), then run this again" >&2
  exit 1
fi

WORK=$(mktemp -d /tmp/vdfw-demo.XXXXXX)
DEMO_PID=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
    # The demo leads its own process group (setsid): vdfwd and every QEMU are in it.
    kill -TERM -- "-$DEMO_PID" 2>/dev/null || true
    sleep 1
    kill -KILL -- "-$DEMO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "[1/4] Dependencies (QEMU, busybox, DPDK testpmd, iproute2)"
bash integration/scripts/install-deps.sh

say "[2/4] Guest image (Debian cloud kernel + busybox initramfs)"
bash integration/scripts/build-guest.sh | sed -n 's/^build-guest: /      /p'

say "[3/4] Building vdfwd, vdfwctl and the demo driver"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROFILE=()
if [ "${VDFW_RELEASE:-0}" = 1 ]; then PROFILE=(--release); fi
cargo build -q "${PROFILE[@]}" --bin vdfwd --bin vdfwctl
cargo build -q "${PROFILE[@]}" -p vdfw-integration --example demo
DIR=debug
if [ "${VDFW_RELEASE:-0}" = 1 ]; then DIR=release; fi

say "[4/4] The demo"
# TMPDIR: the driver's scratch directories (vdfwd's config, sockets, state; guest logs) go
# under $WORK, which the trap removes whatever happens.
TMPDIR=$WORK CARGO=$(command -v cargo) setsid "$CARGO_TARGET_DIR/$DIR/examples/demo" &
DEMO_PID=$!
wait "$DEMO_PID"
