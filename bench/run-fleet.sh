#!/usr/bin/env bash
# Builds Ferry and its agent, then runs the fleet benchmark (root: network namespaces, sshd);
# arguments are passed on (e.g. `bash bench/run-fleet.sh --hosts 16 --link-mbit 200`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # Debian packages (qemu-utils, fdisk, ...), npm dependencies, build
node scripts/build-agent.mjs >/dev/null
exec node dist/bench/fleet.js "$@"
