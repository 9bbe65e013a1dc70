#!/usr/bin/env bash
# Import benchmark (ferry import vs aws s3 cp + qemu-img convert) against a local Swift; see bench/README.md.
exec bash "$(dirname "$0")/run-storage.sh" import "$@"
