#!/usr/bin/env bash
# Builds tapwire and runs it on the default: ws://127.0.0.1:8086/, TAP tapwire0 with
# 10.86.0.1/16, DHCP/DNS from a managed dnsmasq. Extra arguments go to `tapwire run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh run
cargo build --release --locked
exec ./target/release/tapwire run "$@"
