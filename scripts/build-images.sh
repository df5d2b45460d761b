#!/usr/bin/env bash
# Builds the cluster's images, all locally, nothing pulled:
#   countiq-base:local   Debian bookworm minbase (scripts/build-base-image.sh)
#   countiq:local        the node (deploy/Dockerfile), with the host's release build
#   countiq-nginx:local  nginx + njs (deploy/nginx/Dockerfile)
# Cached: the base is built once; docker's layer cache keeps the others
# while the binary and deploy/ are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-base-image.sh
cargo build --release --locked --bin countiq --quiet
CTX="$(mktemp -d /tmp/countiq-image.XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
cp target/release/countiq deploy/Dockerfile "$CTX/"
docker build --quiet -t countiq:local "$CTX" >/dev/null
docker build --quiet -t countiq-nginx:local deploy/nginx >/dev/null
echo "images: countiq:local countiq-nginx:local"
