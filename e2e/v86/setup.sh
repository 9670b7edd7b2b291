#!/usr/bin/env bash
# Installs what the v86 end-to-end test needs: the pinned npm packages and the guest image.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm
fi
npm ci --no-audit --no-fund --loglevel=error
bash build-guest.sh
