#!/usr/bin/env bash
# Builds Ferry (TypeScript -> dist/) and runs the conversion benchmark; arguments are passed on
# (e.g. `bash bench/run-convert.sh --runs 5 --only qcow2-zlib,vhd-dynamic`). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # Debian packages (qemu-utils, fdisk, ...), npm dependencies, build
exec node dist/bench/convert.js "$@"
