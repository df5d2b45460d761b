#!/usr/bin/env bash
# Builds the cluster's images, all locally, nothing pulled:
#   countiq-base:local   Debian bookworm minbase (scripts/build-base-image.sh)
#   countiq:local        the node (deploy/Dockerfile), with the host's release build
#                        (COUNTIQ_BIN: use that binary instead, e.g. the one
#                        `cargo test` built; COUNTIQ_IMAGE: another tag)
#   countiq-nginx:local  nginx + njs (deploy/nginx/Dockerfile)
# Cached: the base is built once; docker's layer cache keeps the others
# while the binary and deploy/ are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-base-image.sh
IMAGE="${COUNTIQ_IMAGE:-countiq:local}"
BIN="${COUNTIQ_BIN:-}"
if [ -z "$BIN" ]; then
    cargo build --release --locked --bin countiq --quiet
    BIN=target/release/countiq
fi
CTX="$(mktemp -d /tmp/countiq-image.XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/countiq"
cp deploy/Dockerfile "$CTX/"
docker build --quiet -t "$IMAGE" "$CTX" >/dev/null
docker build --quiet -t countiq-nginx:local deploy/nginx >/dev/null
echo "images: $IMAGE countiq-nginx:local"
