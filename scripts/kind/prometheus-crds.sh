#!/usr/bin/env bash
# Print the folder holding the Prometheus Operator's CRDs (PodMonitor, PrometheusRule...)
# (prometheus-operator v0.85.0, a release of the Prometheus Operator), fetched once through the Go module proxy into
# cdcflow's Go module cache (the prometheus-operator module carries them under
# example/prometheus-operator-crd/). The chart tests install them in the test control
# plane, so the chart's PodMonitors and PrometheusRule meet the real schemas.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"
PROMETHEUS_OPERATOR_VERSION=v0.85.0
case "${1:-}" in
  -h|--help) printf 'Usage: %s\nPrints the folder of the monitoring.coreos.com CRDs (prometheus-operator %s).\n' "$0" "$PROMETHEUS_OPERATOR_VERSION"; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1" ;;
esac
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
[ -x "$go" ] || die "Go is needed to fetch the prometheus-operator module (GO=/path/to/go)"
module=github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION
dir=$(cd /tmp && GOMODCACHE="${CDCFLOW_GOMODCACHE:-$CDCFLOW_CACHE/go/mod}" GOFLAGS=-mod=mod \
  "$go" mod download -json "$module" | sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')
if [ -z "$dir" ] || ! [ -d "$dir/example/prometheus-operator-crd" ]; then
  die "go mod download $module gave no CRD folder"
fi
printf '%s\n' "$dir/example/prometheus-operator-crd"
