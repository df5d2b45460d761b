#!/usr/bin/env bash
# One command: build the images (cached), generate the cluster file and the
# nginx configuration from it, and bring up three nodes and nginx on a
# private network. Prints the proxy's URL and how to get a token.
#
#   scripts/cluster-up.sh            # project "countiq", subnet 172.28.18.0/24
#   COUNTIQ_PROJECT=x COUNTIQ_SUBNET=172.28.19 scripts/cluster-up.sh
#   scripts/cluster-down.sh          # stop and remove (volumes too)
# COUNTIQ_BIN and COUNTIQ_IMAGE: see scripts/build-images.sh (the tests use
# the binary `cargo test` built, under another tag).
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${COUNTIQ_PROJECT:-countiq}"
export COUNTIQ_SUBNET="${COUNTIQ_SUBNET:-172.28.18}"
export COUNTIQ_CLUSTER_DIR="${COUNTIQ_CLUSTER_DIR:-$PWD/target/cluster/$PROJECT}"
# Waiting for the three nodes to report healthy, at most.
READY_TIMEOUT_S=90

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$PROJECT" -f deploy/compose.yaml "$@"
    else
        docker-compose -p "$PROJECT" -f deploy/compose.yaml "$@"
    fi
}

scripts/build-images.sh
BIN="${COUNTIQ_BIN:-target/release/countiq}"
mkdir -p "$COUNTIQ_CLUSTER_DIR"
cat >"$COUNTIQ_CLUSTER_DIR/cluster.toml" <<TOML
# CountIQ cluster membership (static). Every node and the proxy read it;
# changing it over existing data is refused (README "Cluster").
[[node]]
id = "node1"
addr = "$COUNTIQ_SUBNET.11:8080"

[[node]]
id = "node2"
addr = "$COUNTIQ_SUBNET.12:8080"

[[node]]
id = "node3"
addr = "$COUNTIQ_SUBNET.13:8080"
TOML
"$BIN" cluster proxy-config --cluster "$COUNTIQ_CLUSTER_DIR/cluster.toml" \
    >"$COUNTIQ_CLUSTER_DIR/countiq.conf"
if [ -z "${COUNTIQ_JWT_SECRET:-}" ]; then
    SECRET_FILE="$COUNTIQ_CLUSTER_DIR/jwt.secret"
    if [ ! -s "$SECRET_FILE" ]; then
        (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$SECRET_FILE")
    fi
    COUNTIQ_JWT_SECRET="$(cat "$SECRET_FILE")"
fi
export COUNTIQ_JWT_SECRET

compose up -d >/dev/null
deadline=$((SECONDS + READY_TIMEOUT_S))
for node in node1 node2 node3; do
    id="$(compose ps -q "$node")"
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "cluster-up: $node not healthy after ${READY_TIMEOUT_S}s" >&2
            docker logs --tail 30 "$id" >&2
            exit 1
        fi
        sleep 0.5
    done
done
PORT="$(compose port nginx 8080 | sed 's/.*://')"
echo "proxy: http://127.0.0.1:$PORT"
echo "token: COUNTIQ_JWT_SECRET=\$(cat $COUNTIQ_CLUSTER_DIR/jwt.secret) target/release/countiq token --owner alice"
