#!/usr/bin/env bash
# Online-migration benchmark (ferry migrate vs dd|gzip|nc and rsync over a 100 Mbit/s veth pair in
# network namespaces); see bench/README.md. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v rsync >/dev/null || need+=(rsync)
command -v tc >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
bash scripts/setup.sh   # Debian packages (qemu-utils, fdisk, ...), npm dependencies, build
exec node dist/bench/online.js "$@"
