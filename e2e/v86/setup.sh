#!/usr/bin/env bash
# Installs what the v86 end-to-end tests need: the pinned npm packages (v86, ws, puppeteer-core,
# which downloads no browser), Debian's chromium for the browser test, and the guest image.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm
fi
if ! command -v chromium >/dev/null; then
  apt-get install -y -qq --no-install-recommends chromium
fi
npm ci --no-audit --no-fund --loglevel=error
bash build-guest.sh
