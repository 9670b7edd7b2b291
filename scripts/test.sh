#!/usr/bin/env bash
# The whole test suite: formatting, lints, a short fuzz pass, unit and property tests, and (as
# root) the network-namespace scenarios and real v86 guests.
#
# Skips: as root every test must run (TAPWIRE_NO_SKIP=1 makes a skip a failure). Not root,
# the root-only tests skip. Either way the script ends by printing how many tests skipped and
# why, and what passing tests asked to be seen (a retried download): each appends a line to
# TAPWIRE_TEST_REPORT.
set -euo pipefail
cd "$(dirname "$0")/.."
TAPWIRE_TEST_REPORT=$(mktemp /tmp/tapwire-test-report.XXXXXX)
export TAPWIRE_TEST_REPORT
report() {
  local skipped
  skipped=$(grep -c '^skipped' "$TAPWIRE_TEST_REPORT" || true)
  echo "== tests skipped: $skipped"
  grep '^skipped' "$TAPWIRE_TEST_REPORT" | cut -f3 | sort | uniq -c | sort -rn | sed 's/^/   /' || true
  if grep -q '^notice' "$TAPWIRE_TEST_REPORT"; then
    echo "== notices from passing tests:"
    grep '^notice' "$TAPWIRE_TEST_REPORT" | cut -f2,3 | sed 's/^/   /'
  fi
  rm -f "$TAPWIRE_TEST_REPORT"
}
trap report EXIT
# What tests leave behind is what appeared during this run: namespaces and dnsmasq processes
# that were there before it belong to another run (alive, or killed mid-way) and are not ours
# to judge or delete.
ours_netns() { ip netns list | grep -oE '^tw[rg][0-9]+' | sort || true; }
ours_dnsmasq() { pgrep -a dnsmasq | grep -E -- '--interface=twt[0-9]' | sort || true; }
if [ "$(id -u)" -eq 0 ]; then
  netns_before=$(ours_netns)
  dnsmasq_before=$(ours_dnsmasq)
  if [ -n "$netns_before" ]; then
    echo "note: test namespaces from another run are present and not counted: $(echo $netns_before)" >&2
  fi
fi
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/deps.sh test
  # Real v86 guests: pinned npm packages and a guest image built from Debian packages
  # (cached in e2e/v86/cache).
  bash e2e/v86/setup.sh
  export TAPWIRE_NO_SKIP=1
fi
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# The scenarios run the test tools (tapwire-guest, tapwire-swarm) as binaries: build them all.
cargo build --locked --workspace
# A short fuzz pass over every parser (longer: scripts/fuzz.sh SECONDS).
bash scripts/fuzz.sh "${TAPWIRE_FUZZ_SECONDS:-20}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast
else
  cargo test --locked --workspace --no-fail-fast
fi
# Nothing a test made may outlive it.
if [ "$(id -u)" -eq 0 ]; then
  left=$(comm -13 <(echo "$netns_before") <(ours_netns) | grep . || true)
  if [ -n "$left" ]; then
    echo "tests left network namespaces behind: $(echo $left)" >&2
    exit 1
  fi
  stray=$(comm -13 <(echo "$dnsmasq_before") <(ours_dnsmasq) | grep . || true)
  if [ -n "$stray" ]; then
    echo "tests left dnsmasq processes behind: $stray" >&2
    exit 1
  fi
fi
