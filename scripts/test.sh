#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and property tests, and (as root) the
# network-namespace scenarios. Not root: the scenarios print "skipped: needs root".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/deps.sh test
fi
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# A short fuzz pass over every parser (longer: scripts/fuzz.sh SECONDS).
bash scripts/fuzz.sh "${TAPWIRE_FUZZ_SECONDS:-20}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
# Nothing a test made may outlive it.
if [ "$(id -u)" -eq 0 ]; then
  left=$(ip netns list | grep -E '^tw[rg][0-9]' || true)
  if [ -n "$left" ]; then
    echo "tests left network namespaces behind: $left" >&2
    exit 1
  fi
fi
