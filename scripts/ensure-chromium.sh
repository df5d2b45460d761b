#!/usr/bin/env bash
# Makes sure Debian's `chromium` is installed, for the test that renders
# `countiq load --report` in headless Chromium (load/tests/report_html.rs).
# Idempotent: does nothing when `chromium` is already on PATH. Uses sudo only
# when not root. Exits non-zero if it cannot install; the test then fails
# with a message naming this script (it never passes silently).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
else
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium
command -v chromium >/dev/null
