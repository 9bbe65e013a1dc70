#!/usr/bin/env bash
# Shared runner of the storage benchmarks: installs what they need (awscli, rclone, GNU time, and
# through setup.sh qemu-utils, fdisk and the Swift packages), builds Ferry, and runs
# dist/bench/NAME.js with the remaining arguments.
#   bash bench/run-storage.sh upload|import [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: run-storage.sh upload|import [--runs N]}
shift
need=()
[ -x /usr/bin/aws ] || need+=(awscli)
[ -x /usr/bin/rclone ] || need+=(rclone)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
bash scripts/setup.sh   # Debian packages (qemu-utils, fdisk, Swift, …), npm dependencies, build
exec node "dist/bench/$name.js" "$@"
