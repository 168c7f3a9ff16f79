#!/usr/bin/env bash
# `make engine-down`: stop the private daemon by its PID (never by name: other engines on
# the machine are left alone). Its data root (images, build cache) stays in the cache.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"

if [ ! -f "$ENGINE_PID" ]; then
  say "no private daemon running ($ENGINE_PID absent)"
  exit 0
fi
pid="$(cat "$ENGINE_PID")"
if ! kill -0 "$pid" 2>/dev/null; then
  say "stale pid file (pid $pid is gone): removed"
  rm -f "$ENGINE_PID" "$ENGINE_SOCK"
  exit 0
fi
kill -TERM "$pid"
for _ in $(seq 1 30); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 1
done
if kill -0 "$pid" 2>/dev/null; then
  say "dockerd (pid $pid) still running after 30 s: sending KILL"
  kill -KILL "$pid"
fi
rm -f "$ENGINE_PID" "$ENGINE_SOCK"
say "stopped dockerd (pid $pid)"
