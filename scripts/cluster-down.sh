#!/usr/bin/env bash
# Stops and removes the compose project of scripts/cluster-up.sh, with its volumes.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT="${COUNTIQ_PROJECT:-countiq}"
export COUNTIQ_SUBNET="${COUNTIQ_SUBNET:-172.28.18}"
export COUNTIQ_CLUSTER_DIR="${COUNTIQ_CLUSTER_DIR:-$PWD/target/cluster/$PROJECT}"
export COUNTIQ_JWT_SECRET="${COUNTIQ_JWT_SECRET:-unused-for-down}"
if docker compose version >/dev/null 2>&1; then
    docker compose -p "$PROJECT" -f deploy/compose.yaml down -v --timeout 30
else
    docker-compose -p "$PROJECT" -f deploy/compose.yaml down -v --timeout 30
fi
