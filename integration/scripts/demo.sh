#!/usr/bin/env bash
# The newcomer demo, as root on Debian 12: installs what it needs (idempotent), builds the
# test guest and vdfwd, then runs integration/examples/demo.rs: vdfwd with
# configs/demo/vdfwd.toml and the Antrea payments policies, three QEMU guests booted through it,
# an allowed, a dropped and a rejected connection, and the flow-log lines that explain them.
set -euo pipefail
cd "$(dirname "$0")/../.."

integration/scripts/install-deps.sh
integration/scripts/build-guest.sh
echo "==> Building vdfwd and the demo (first run: a few minutes)"
cargo build --quiet --bin vdfwd
exec cargo run --quiet -p vdfw-integration --example demo
