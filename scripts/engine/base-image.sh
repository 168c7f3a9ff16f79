#!/usr/bin/env bash
# The base image the images build FROM on a machine that cannot pull: Debian bookworm
# (python3 is 3.11) made from Debian's packages with debootstrap, from the mirror apt uses,
# then `docker import`. Built once per machine: skipped when the image exists.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"
export DOCKER_HOST="${DOCKER_HOST:-$ENGINE_HOST}"

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE exists"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root: run 'sudo make engine'"
command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install -y debootstrap"

# The mirror apt uses here (deb822 sources or a one-line list).
mirror="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null \
  | grep -v security | head -1 | sed -E 's/^URIs: *//; s/^deb +(\[[^]]*\] +)?//; s/ .*//' || true)"
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d "$ENGINE_DIR/rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
start=$(date +%s)
say "debootstrap bookworm from $mirror (once per machine)"
nice debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$ENGINE_DIR/debootstrap.log" 2>&1 \
  || { tail -20 "$ENGINE_DIR/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
# Smaller and reproducible-ish: no apt lists or caches in the base.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
say "base image $BASE_IMAGE built in $(( $(date +%s) - start )) s"
