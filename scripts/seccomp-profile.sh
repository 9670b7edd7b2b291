#!/usr/bin/env bash
# Writes dist/seccomp.json: the container runtime's default seccomp profile (containers-common's
# /usr/share/containers/seccomp.json, which podman uses) plus the three io_uring system calls
# tapwire's data path needs. Usage: scripts/seccomp-profile.sh [DEFAULT_PROFILE]
set -euo pipefail
cd "$(dirname "$0")/.."
default="${1:-/usr/share/containers/seccomp.json}"
[ -f "$default" ] || { echo "no default profile at $default (apt-get install golang-github-containers-common, which podman brings, or pass its path)" >&2; exit 1; }
python3 - "$default" dist/seccomp.json <<'PY'
import json, sys
profile = json.load(open(sys.argv[1]))
calls = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
for rule in profile["syscalls"]:
    rule["names"] = [n for n in rule["names"] if n not in calls]
profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
profile["syscalls"].append({
    "names": calls,
    "action": "SCMP_ACT_ALLOW",
    "comment": "tapwire: its data path is io_uring",
})
with open(sys.argv[2], "w") as f:
    json.dump(profile, f, indent=2)
    f.write("\n")
PY
echo "wrote dist/seccomp.json from $default"
