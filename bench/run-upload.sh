#!/usr/bin/env bash
# Builds Ferry (TypeScript -> dist/) and runs the upload benchmark against a local Swift S3 server
# (Ferry vs aws s3 cp and rclone; arguments passed on, e.g. `--runs 3`). See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/bin/aws ] || need+=(awscli)
[ -x /usr/bin/rclone ] || need+=(rclone)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
bash scripts/s3-server.sh install
npx tsc -p tsconfig.json
exec node dist/bench/upload.js "$@"
