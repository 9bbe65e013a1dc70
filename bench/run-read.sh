#!/usr/bin/env bash
# Builds Ferry (TypeScript -> dist/) and runs the read-throughput benchmark; arguments are passed
# on (e.g. `bash bench/run-read.sh --runs 5`). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # Debian packages (qemu-utils, fdisk, ...), npm dependencies, build
exec node dist/bench/read.js "$@"
