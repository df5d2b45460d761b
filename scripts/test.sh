#!/usr/bin/env bash
# The one command that runs every test:
#   1. schemathesis against the server's own OpenAPI document
#      (scripts/schemathesis.sh; installs schemathesis from PyPI on first use;
#      COUNTIQ_SKIP_SCHEMATHESIS=1 skips it);
#   2. cargo test over the workspace: unit, contract, crash (kill -9 and
#      SIGTERM of the real binary), storage (torn tail, bit flips, power
#      cuts, faults), proptests, the schedule test, and the loom models
#      (loom-tests is an ordinary workspace member), and the load generator's
#      unit, fake-server and real-server tests (load/, another member).
# Before cargo test, scripts/ensure-chromium.sh installs Debian's chromium
# when it is missing (apt-get, idempotent): the load generator's HTML report
# is rendered in headless Chromium by load/tests/report_html.rs.
# Long soaks are opt-in: COUNTIQ_SOAK=1 scripts/test.sh (500 crash rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${COUNTIQ_SKIP_SCHEMATHESIS:-0}" != "1" ]; then
  scripts/schemathesis.sh
fi
scripts/ensure-chromium.sh
exec cargo test --workspace --locked "$@"
