#!/usr/bin/env bash
# Runs every vdfw test on a Debian 12 machine, as root:
# installs what the tests need (idempotent), builds the test guest, then runs the
# workspace's tests (unit, property, and the integration tests that boot QEMU guests),
# then the packet-rate harness's smoke mode against vdfwd with its firewall.
set -euo pipefail
cd "$(dirname "$0")/../.."

integration/scripts/install-deps.sh
integration/bench/install-bench-deps.sh
integration/scripts/build-guest.sh

# The QEMU-guest tests serialise themselves; unit tests run in parallel.
cargo test --workspace --locked

# Smoke of the packet-rate harness (~30 s with a debug build): testpmd generator -> vdfwd.
# Fails if vdfwd forwards nothing of the allowed flow (either direction) or anything the
# denying policy forbids. Results go to a temporary dir, not into the checkout.
smoke_out=$(mktemp -d /tmp/vdfw-bench-smoke.XXXXXX)
python3 integration/bench/bench.py --smoke --deadline-min 5 --out "$smoke_out"
rm -rf "$smoke_out"
