#!/usr/bin/env bash
# Runs every vdfw test on a Debian 12 machine, as root:
# installs what the tests need (idempotent), builds the test guest, then runs the
# workspace's tests (unit, property, and the integration tests that boot QEMU guests).
set -euo pipefail
cd "$(dirname "$0")/../.."

integration/scripts/install-deps.sh
integration/scripts/build-guest.sh

# The QEMU-guest tests serialise themselves; unit tests run in parallel.
cargo test --workspace --locked
