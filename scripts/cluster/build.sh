#!/usr/bin/env bash
# Build the local Kubernetes control plane's binaries from pinned sources (issue 13):
# kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (Kubernetes
# through a generated wrapper module), etcd (wrapper module), kwok and helm
# (go install), plus kwok's stage file. Everything goes to a cache keyed by the
# Kubernetes version (see lib.sh); a binary whose recorded version matches the pin
# is skipped, so a second run takes a second. The first run takes ~20 minutes on 2
# cores and fetches sources through the Go module proxy only.
#
# Usage: scripts/cluster/build.sh [--print-bin-dir]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ${1:-} == --print-bin-dir ]]; then
  printf '%s\n' "$K8S_BIN"
  exit 0
fi
[[ $# -eq 0 ]] || die "usage: $0 [--print-bin-dir]"

SRC=$K8S_CACHE/src
STAGES=$K8S_BIN/kwok-stages.yaml

# version_of NAME: the pinned source version a binary is built from.
missing=()
for name in "${CLUSTER_BINARIES[@]}" kwok-stages.yaml; do
  is_current "$name" || missing+=("$name")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  say "cluster binaries up to date in $K8S_BIN"
  exit 0
fi

find_go
mkdir -p "$K8S_BIN" "$SRC"
# One build at a time per machine and version (two worktrees running `make test`
# at once must not build twice or write the same files).
exec 9>"$K8S_CACHE/.build.lock"
if ! flock -n 9; then
  say "another build of the cluster binaries is running (lock $K8S_CACHE/.build.lock); waiting for it..."
  flock 9
fi

say "building the local Kubernetes control plane into $K8S_BIN"
say "  Kubernetes $K8S_VERSION (staging $K8S_STAGING_VERSION), etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION"
say "  with $("$GO" version) ($(nproc) cores); GOMODCACHE=$GOMODCACHE GOCACHE=$GOCACHE"
say "  missing or outdated: ${missing[*]}"
say "  the first build takes ~20 minutes on 2 cores; later runs skip it"

TIMES=$K8S_CACHE/build-times.txt
total_start=$SECONDS

# progress LABEL LOG PID: report every 20 s how far a running go command is, from
# its -v/-x output (one line per package compiled or module fetched), until PID ends.
progress() {
  local label=$1 log=$2 pid=$3 started=$SECONDS n
  while kill -0 "$pid" 2>/dev/null; do
    for _ in {1..20}; do
      sleep 1
      kill -0 "$pid" 2>/dev/null || return 0
    done
    n=$(grep -c . "$log" 2>/dev/null || true)
    say "  ... $label: $((SECONDS - started)) s, ${n:-0} packages/modules so far"
  done
}

# run LABEL LOG CMD...: run a go command with its output in LOG and progress lines;
# on failure show the log's tail and stop.
run() {
  local label=$1 log=$2 rc=0 pid
  shift 2
  "$@" >"$log" 2>&1 &
  pid=$!
  progress "$label" "$log" "$pid" &
  local progress_pid=$!
  wait "$pid" || rc=$?
  kill "$progress_pid" 2>/dev/null || true
  wait "$progress_pid" 2>/dev/null || true
  if [[ $rc -ne 0 ]]; then
    say "error: $label failed (exit $rc); last lines of $log:"
    tail -n 40 "$log" >&2
    exit "$rc"
  fi
}

# install_binary NAME BUILT START: move a finished binary into place atomically and
# record its version and build time (a half-written binary is never picked up).
install_binary() {
  local name=$1 built=$2 start=$3 secs size
  secs=$((SECONDS - start))
  mv -f "$built" "$K8S_BIN/$name"
  version_of "$name" >"$K8S_BIN/.$name.version"
  size=$(du -m "$K8S_BIN/$name" | cut -f1)
  say "  built $name in ${secs} s (${size} MB)"
  printf '%s\t%s s\t%s MB\t%s\n' "$name" "$secs" "$size" "$(date -u +%FT%TZ)" >>"$TIMES"
}

k8s_ldflags() {
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local flags="-s -w" pkg
  # kubectl reports client-go's version, the servers component-base's: set both.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

# --- Kubernetes: a wrapper module that requires k8s.io/kubernetes and replaces each
# staging module (k8s.io/<x> => ./staging/... in Kubernetes' go.mod, which `go
# install pkg@version` refuses) with its published v0.x twin.
k8s_wrapper() {
  local dir=$SRC/kubernetes stamp
  stamp="$K8S_VERSION staging $K8S_STAGING_VERSION"
  if [[ -f $dir/go.sum && -f $dir/.version && $(<"$dir/.version") == "$stamp" ]]; then
    return 0
  fi
  local start=$SECONDS
  say "  generating the Kubernetes wrapper module in $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    "$GO" mod init cdcflow.local/k8s-build >/dev/null 2>&1
    local gomod
    run "download k8s.io/kubernetes@$K8S_VERSION" "$dir/download.log" \
      "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION"
    gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' "$dir/download.log")
    [[ -f $gomod ]] || die "could not find k8s.io/kubernetes@$K8S_VERSION's go.mod (see $dir/download.log)"
    "$GO" mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local staging n=0
    while read -r staging; do
      "$GO" mod edit -replace="$staging=$staging@$K8S_STAGING_VERSION"
      n=$((n + 1))
    done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod")
    [[ $n -gt 0 ]] || die "no staging replace lines found in $gomod"
    say "  replaced $n staging modules with their $K8S_STAGING_VERSION releases"
    cat >tools.go <<GO
//go:build tools

// Package tools pins the commands built from k8s.io/kubernetes (generated by
// cdcflow's scripts/cluster/build.sh; not part of any repository).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    GOFLAGS="-mod=mod ${GOFLAGS:-}" run "go mod tidy (Kubernetes wrapper)" "$dir/tidy.log" "$GO" mod tidy -x
  )
  printf '%s\n' "$stamp" >"$dir/.version"
  say "  Kubernetes wrapper module ready in $((SECONDS - start)) s"
  printf 'k8s-wrapper-module\t%s s\t-\t%s\n' "$((SECONDS - start))" "$(date -u +%FT%TZ)" >>"$TIMES"
}

build_k8s() {  # build_k8s NAME
  local name=$1 start=$SECONDS
  is_current "$name" && return 0
  k8s_wrapper
  say "[build] $name (k8s.io/kubernetes $K8S_VERSION)"
  (
    cd "$SRC/kubernetes"
    CGO_ENABLED=0 run "$name" "$SRC/$name.log" \
      "$GO" build -v -trimpath -ldflags "$(k8s_ldflags)" -o "$K8S_BIN/.$name.tmp" "k8s.io/kubernetes/cmd/$name"
  )
  install_binary "$name" "$K8S_BIN/.$name.tmp" "$start"
}

# --- etcd: its server module has replace lines too, so it is built from a wrapper.
build_etcd() {
  local start=$SECONDS dir=$SRC/etcd-$ETCD_VERSION
  is_current etcd && return 0
  say "[build] etcd $ETCD_VERSION"
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    "$GO" mod init cdcflow.local/etcd-build >/dev/null 2>&1
    GOFLAGS="-mod=mod ${GOFLAGS:-}" run "go get go.etcd.io/etcd/server/v3@$ETCD_VERSION" "$dir/get.log" \
      "$GO" get -x "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    CGO_ENABLED=0 GOFLAGS="-mod=mod ${GOFLAGS:-}" run etcd "$dir/build.log" \
      "$GO" build -v -trimpath -ldflags "-s -w" -o "$K8S_BIN/.etcd.tmp" go.etcd.io/etcd/server/v3
  )
  install_binary etcd "$K8S_BIN/.etcd.tmp" "$start"
}

# --- kwok and helm: plain `go install pkg@version` into a private GOBIN.
go_install() {  # go_install NAME PKG VERSION LDFLAGS
  local name=$1 pkg=$2 version=$3 ldflags=$4 start=$SECONDS gobin=$SRC/gobin-$1
  is_current "$name" && return 0
  say "[build] $name $version ($pkg)"
  rm -rf "$gobin"
  mkdir -p "$gobin"
  CGO_ENABLED=0 GOBIN=$gobin run "$name" "$SRC/$name.log" \
    "$GO" install -v -trimpath -ldflags "$ldflags" "$pkg@$version"
  install_binary "$name" "$gobin/$name" "$start"
  rmdir "$gobin"
}

# --- kwok's node and pod stages, taken from the kwok module's own kustomize files
# (kwok exits with "no stages found" without them).
kwok_stages() {
  is_current kwok-stages.yaml && return 0
  local dir f out=$K8S_BIN/.kwok-stages.tmp
  dir=$(cd "$SRC" && GOFLAGS="-mod=mod ${GOFLAGS:-}" "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -d $dir ]] || die "could not locate the sigs.k8s.io/kwok@$KWOK_VERSION module folder"
  : >"$out"
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f $dir/kustomize/stage/$f ]] || die "kwok $KWOK_VERSION has no kustomize/stage/$f"
    { printf -- '---\n# from sigs.k8s.io/kwok@%s kustomize/stage/%s\n' "$KWOK_VERSION" "$f"; cat "$dir/kustomize/stage/$f"; } >>"$out"
  done
  mv -f "$out" "$STAGES"
  version_of kwok-stages.yaml >"$K8S_BIN/.kwok-stages.yaml.version"
  say "  kwok stages written to $STAGES"
}

for name in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  build_k8s "$name"
done
build_etcd
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" \
  "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
go_install helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION" \
  "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
kwok_stages

say "cluster binaries built in $((SECONDS - total_start)) s total ($K8S_BIN; times in $TIMES)"
say "  sizes: binaries $(du -sh "$K8S_BIN" | cut -f1), Go build cache $(du -sh "$GOCACHE" 2>/dev/null | cut -f1), module cache $(du -sh "$GOMODCACHE" 2>/dev/null | cut -f1)"
