# shellcheck shell=bash
# shellcheck disable=SC2034  # variables here are used by the scripts that source this file
# Shared by build.sh, start.sh and stop.sh: pinned versions, cache paths, messages.
# Sourced, never run.

CLUSTER_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
source "$CLUSTER_SCRIPTS/versions.env"

CDCFLOW_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cdcflow
# Everything built for one Kubernetes version lives under one folder, so that two
# versions can sit side by side and `rm -rf` of one folder forgets a version.
K8S_CACHE=$CDCFLOW_CACHE/k8s/$K8S_VERSION
K8S_BIN=$K8S_CACHE/bin
# Go's module and build caches are cdcflow's own (not ~/go and ~/.cache/go-build),
# so their size is measurable and removing the cdcflow cache removes everything.
export GOMODCACHE=${CDCFLOW_GOMODCACHE:-$CDCFLOW_CACHE/go/mod}
export GOCACHE=${CDCFLOW_GOCACHE:-$CDCFLOW_CACHE/go/build}
export GOPATH=${CDCFLOW_GOPATH:-$CDCFLOW_CACHE/go/path}
# Never switch toolchains behind the user's back: the pinned sources were checked
# with the installed Go; a too-old Go gets a clear message instead.
export GOTOOLCHAIN=local

# The binaries a cluster needs, in build order.
CLUSTER_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm)

# The version each built file is stamped with (build.sh writes $K8S_BIN/.NAME.version).
version_of() {
  case $1 in
    etcd) echo "$ETCD_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kwok-stages.yaml) echo "$KWOK_VERSION" ;;
    *) echo "$K8S_VERSION staging $K8S_STAGING_VERSION" ;;
  esac
}

is_current() {  # is_current NAME: built and from the pinned version
  [[ -e $K8S_BIN/$1 && -f $K8S_BIN/.$1.version && $(<"$K8S_BIN/.$1.version") == "$(version_of "$1")" ]]
}

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# find_go: sets GO to a usable go binary or exits with what to do.
find_go() {
  GO=${GO:-}
  if [[ -z $GO ]]; then
    GO=$(command -v go || true)
    [[ -z $GO && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
  fi
  if [[ -z $GO || ! -x $GO ]]; then
    die "Go $GO_MIN_VERSION or newer is needed to build the local Kubernetes control plane
  (kube-apiserver $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION are
  built from source once per machine) but no 'go' was found on PATH or at /usr/local/go/bin/go.
  Install Go from https://go.dev/dl/ (or your distribution), or set GO=/path/to/go."
  fi
  local have
  have=$("$GO" env GOVERSION 2>/dev/null) || die "'$GO env GOVERSION' failed: is $GO a Go toolchain?"
  have=${have#go}
  if [[ $(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n1) != "$GO_MIN_VERSION" ]]; then
    die "$GO is Go $have; Kubernetes $K8S_VERSION needs Go $GO_MIN_VERSION or newer. Install a newer Go or set GO=/path/to/go."
  fi
}
