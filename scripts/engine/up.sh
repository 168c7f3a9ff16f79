#!/usr/bin/env bash
# `make engine`: a private Docker daemon for building and running cdcflow's images on a
# machine without one. Installs Debian's docker.io (and docker-compose, debootstrap) when
# missing, starts dockerd on its own socket, data root and exec root in the cache, with
# --iptables=false --bridge=none so the host's network configuration is never touched,
# and builds the base image once. Prints the `export DOCKER_HOST=...` line to use it.
# A running private daemon is reused.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    die "missing ${need[*]}: run as root, or install them: sudo apt-get install -y ${need[*]}"
  fi
  say "installing ${need[*]} from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 \
    || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y --no-install-recommends "${need[@]}" >&2; }
fi

mkdir -p "$ENGINE_DIR"
if engine_running; then
  say "reusing the private daemon (pid $(cat "$ENGINE_PID"))"
else
  [ "$(id -u)" -eq 0 ] || die "dockerd needs root here: run 'sudo make engine', or use your own docker/podman (set DOCKER_HOST)"
  rm -f "$ENGINE_SOCK" "$ENGINE_PID"
  say "starting dockerd (log: $ENGINE_LOG)"
  # setsid: the daemon outlives this script and the make that ran it.
  setsid dockerd --host "$ENGINE_HOST" --data-root "$ENGINE_DIR/data" \
    --exec-root "$ENGINE_DIR/exec" --pidfile "$ENGINE_PID" \
    --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
    >"$ENGINE_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_running && break
    sleep 1
  done
  engine_running || { tail -20 "$ENGINE_LOG" >&2; die "dockerd did not answer on $ENGINE_SOCK in 60 s (log above)"; }
  say "dockerd up (pid $(cat "$ENGINE_PID"))"
fi

"$(dirname "$0")/base-image.sh"
echo "export DOCKER_HOST=$ENGINE_HOST"
