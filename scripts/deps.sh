#!/usr/bin/env bash
# Installs the Debian packages tapwire and its tests use, if any is missing (needs root).
# Usage: scripts/deps.sh run|test
set -euo pipefail
want=(dnsmasq-base dnsmasq-utils iproute2 nftables)
if [ "${1:-run}" = test ]; then
  want+=(busybox haproxy frr iputils-ping procps iperf3 python3 systemd podman runc mmdebstrap)
fi
missing=()
for pkg in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} — run as root, or: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "apt-get update reported errors (a mirror mid-sync?); continuing" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
