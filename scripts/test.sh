#!/usr/bin/env bash
# The whole test suite: setup (Debian packages, npm deps, build), typecheck, lint, then every test
# file under dist/test with node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== typecheck"
npx tsc -p tsconfig.json --noEmit
echo "== lint"
npx eslint src test bench
echo "== tests"
node --test --test-concurrency=2 dist/test/*.test.js
