#!/usr/bin/env bash
# `make kind-down`: delete the kind cluster that `make kind-up` created (and nothing else).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"

case "${1:-}" in
  -h|--help)
    printf 'Usage: scripts/kind/down.sh\n\nDeletes the kind cluster "%s" (CLUSTER=name), its nodes and their volumes.\nImages in your docker and the caches stay.\n' "$CLUSTER"
    exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (see --help)" ;;
esac
kind=$(tool kind) || die "kind is not installed (nothing kind-up made can exist without it)"
if ! "$kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "no kind cluster named $CLUSTER: nothing to delete"
  exit 0
fi
"$kind" delete cluster --name "$CLUSTER"
