#!/usr/bin/env bash
# Install what bench/run.sh needs from Debian's packages, only what is missing
# (idempotent: a second run installs nothing). PostgreSQL server binaries are
# taken from /usr/lib/postgresql/<major>/bin (Debian's postgresql-15), or
# /usr/local/bin when those exist (as on the peers' machine).
set -euo pipefail

need=()
command -v redis-server    >/dev/null || need+=(redis-server)
command -v redis-cli       >/dev/null || need+=(redis-tools)
command -v wrk             >/dev/null || need+=(wrk)
command -v psql            >/dev/null || need+=(postgresql-client-15)
command -v pgbench         >/dev/null || need+=(postgresql-15)   # Debian 12 ships pgbench here
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null \
  || [[ -x /usr/local/bin/postgres ]] || need+=(postgresql-15)
command -v curl            >/dev/null || need+=(curl)
command -v jq              >/dev/null || need+=(jq)
command -v openssl         >/dev/null || need+=(openssl)
command -v shellcheck      >/dev/null || need+=(shellcheck)
command -v valgrind        >/dev/null || need+=(valgrind)       # bench/instructions.sh

if ((${#need[@]})); then
  if [[ "$(id -u)" != 0 ]]; then
    echo "missing packages: ${need[*]} (run as root to install)" >&2
    exit 1
  fi
  apt-get update
  # sort -u: postgresql-15 may be listed twice.
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi

# initdb refuses to run as root; pglib-style helpers run it as 'postgres'.
if ! id postgres >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
  useradd --system --no-create-home postgres
fi
command -v cargo >/dev/null || { echo "cargo not found (needed for CountIQ and the axum ceiling)" >&2; exit 1; }
echo "setup ok"
