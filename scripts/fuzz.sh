#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 20), starting from the committed seeds.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   e.g. scripts/fuzz.sh 3600 ws_stream
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
shift || true
targets=("$@")
# Default: every target in fuzz/Cargo.toml.
[ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(awk '/^\[\[bin\]\]/ {bin = 1; next} /^\[/ {bin = 0} bin && /^name = / {gsub(/"/, "", $3); print $3}' Cargo.toml)
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
# -O with fuzz/Cargo.toml's release profile: optimised, with debug assertions and overflow
# checks on (-a says so to cargo-fuzz too); every target refuses to run without them.
cargo fuzz build -O -a
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzzing $target for ${seconds}s"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  if ! cargo fuzz run -O -a "$target" "corpus/$target" "${seeds[@]}" -- -max_total_time="$seconds" -print_final_stats=1 >"corpus/$target.log" 2>&1; then
    tail -n 40 "corpus/$target.log" >&2
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "corpus/$target.log" || true
done
