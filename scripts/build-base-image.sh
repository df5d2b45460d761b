#!/usr/bin/env bash
# Builds countiq-base:local, the root file system every CountIQ image starts
# FROM, without pulling anything from an image registry: debootstrap makes a
# minimal Debian bookworm (--variant=minbase) from Debian's own packages and
# `docker import` turns the directory into an image.
#
# Idempotent: does nothing when the image exists (COUNTIQ_REBUILD_BASE=1
# forces a rebuild); installs debootstrap with apt-get only when missing.
# A lock makes concurrent callers (two test runs) build it once.
set -euo pipefail

IMAGE="${COUNTIQ_BASE_IMAGE:-countiq-base:local}"
SUITE=bookworm
# The same mirror the host's apt uses; override for another one.
MIRROR="${COUNTIQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# curl: the image's HEALTHCHECK; ca-certificates: apt over https if a
# mirror needs it. Nothing else beyond minbase.
INCLUDE="curl,ca-certificates"

exec 9>/tmp/countiq-base-image.lock
flock 9

if [ "${COUNTIQ_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE exists"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing debootstrap (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

ROOT="$(mktemp -d /tmp/countiq-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap $SUITE into $ROOT (minbase + $INCLUDE)"
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
    tail -n 30 "$ROOT.log" >&2
    exit 1
}
rm -f "$ROOT.log"
# Keep the image small: no apt lists or caches (a build stage that needs
# packages runs apt-get update itself).
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb
tar -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "built $IMAGE"
