#!/usr/bin/env bash
# Upload benchmark (Ferry vs aws s3 cp, rclone, qemu-img + aws) against a local Swift; see bench/README.md.
exec bash "$(dirname "$0")/run-storage.sh" upload "$@"
