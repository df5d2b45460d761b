#!/usr/bin/env bash
# The one command that runs every test: unit, contract, crash, storage,
# proptest and the loom models (loom-tests is an ordinary workspace member).
# Long soaks are opt-in:
#   COUNTIQ_SOAK=1 scripts/test.sh     # 500 kill -9 rounds instead of 20, etc.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
