# shellcheck shell=bash
# Shared by the kind scripts (sourced, not run): names, versions and the tools they use.
KIND_VERSION=v0.33.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-cdcflow}"
KIND_CONFIG="${KIND_CONFIG:-$REPO_ROOT/kind-config.yaml}"
CDCFLOW_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cdcflow"
KIND_BIN_DIR="$CDCFLOW_CACHE/kind/$KIND_VERSION/bin"
# The node image kind-config.yaml pins (every node uses the same one).
NODE_IMAGE="$(sed -nE 's/^ *image: *([^ #]+).*/\1/p' "$KIND_CONFIG" | head -1)"
OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-cdcflow-system}"
PIPELINE_NAMESPACE="${PIPELINE_NAMESPACE:-default}"
PIPELINE="viewing-logs"  # examples/pipeline.yaml's name
TAG="${TAG:-$(sed -nE 's/^version = "([^"]+)"/\1/p' "$REPO_ROOT/pyproject.toml" | head -1)}"
export CLUSTER KIND_CONFIG TAG NODE_IMAGE PIPELINE OPERATOR_NAMESPACE PIPELINE_NAMESPACE

say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# A tool from PATH, else from cdcflow's caches (kubectl and helm from `make cluster-build`).
tool() {
  local name=$1 found
  if found=$(command -v "$name"); then printf '%s\n' "$found"; return 0; fi
  for found in "$KIND_BIN_DIR/$name" "$CDCFLOW_CACHE"/k8s/*/bin/"$name"; do
    [ -x "$found" ] && { printf '%s\n' "$found"; return 0; }
  done
  return 1
}

# kind from PATH or the cache; else built once from the Go module proxy (~1-2 min).
ensure_kind() {
  if tool kind >/dev/null; then tool kind; return 0; fi
  local go=${GO:-}
  [ -n "$go" ] || go=$(command -v go || true)
  [ -n "$go" ] || { [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go; }
  [ -n "$go" ] || die "kind is not installed and there is no Go to build it: install kind $KIND_VERSION (https://kind.sigs.k8s.io) or Go"
  say "building kind $KIND_VERSION from the Go module proxy into $KIND_BIN_DIR (once)"
  mkdir -p "$KIND_BIN_DIR"
  CGO_ENABLED=0 GOBIN="$KIND_BIN_DIR" GOMODCACHE="${CDCFLOW_GOMODCACHE:-$CDCFLOW_CACHE/go/mod}" \
    GOCACHE="${CDCFLOW_GOCACHE:-$CDCFLOW_CACHE/go/build}" \
    nice "$go" install "sigs.k8s.io/kind@$KIND_VERSION" >&2 || die "building kind failed (output above)"
  printf '%s\n' "$KIND_BIN_DIR/kind"
}
