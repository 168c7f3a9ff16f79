# shellcheck shell=bash
# Shared by the engine scripts: where the private engine lives. Sourced, not run.
ENGINE_DIR="${CDCFLOW_ENGINE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cdcflow/engine}"
ENGINE_SOCK="$ENGINE_DIR/docker.sock"
ENGINE_PID="$ENGINE_DIR/docker.pid"
ENGINE_LOG="$ENGINE_DIR/dockerd.log"
ENGINE_HOST="unix://$ENGINE_SOCK"
BASE_IMAGE="${CDCFLOW_BASE_IMAGE:-local/debian:bookworm}"
export ENGINE_DIR ENGINE_SOCK ENGINE_PID ENGINE_LOG ENGINE_HOST BASE_IMAGE

say() { printf 'engine: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# The private daemon answers on its socket (its PID file alone could be stale).
engine_running() {
  [ -S "$ENGINE_SOCK" ] && [ -f "$ENGINE_PID" ] && kill -0 "$(cat "$ENGINE_PID")" 2>/dev/null \
    && DOCKER_HOST="$ENGINE_HOST" docker version >/dev/null 2>&1
}
