#!/usr/bin/env bash
# `make kind-up`: a kind cluster with cdcflow running in it, from this checkout.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$0")/common.sh"

usage() {
  cat <<USAGE
Usage: scripts/kind/up.sh [--dry-run] [--help]

Creates the kind cluster "$CLUSTER" from kind-config.yaml (reused when it exists), builds
the workers, flink and operator images (scripts/engine/images.sh) and loads them into it, installs
the chart helm/cdcflow (CRD applied server-side first), applies examples/mongodb.yaml (a
one-node MongoDB replica set and Secret mongo) and examples/pipeline.yaml, and waits until
Pipeline $PIPELINE is Ready. Host ports (kind-config.yaml): RabbitMQ UI 15672, ClickHouse
HTTP 8123, and with PROMETHEUS=1 Grafana 3000 and Prometheus 9090.

Environment:
  PROMETHEUS=1     also install kube-prometheus-stack (Prometheus, Grafana with the cdcflow
                   dashboards, the chart's PodMonitors and alert rules)
  CLUSTER=name     kind cluster name (default cdcflow)
  TAG=version      image tag (default: pyproject's version, $TAG)
  SKIP_IMAGES=1    do not build the images (they must exist in your docker)
  TIMEOUT=600s     how long to wait for the Pipeline to be Ready

--dry-run prints the commands instead of running them (nothing is created).
Needs: docker (or \`make engine\`), kind $KIND_VERSION (built from the Go proxy when
missing), kubectl and helm (PATH, or the ones \`make cluster-build\` built). Undo: make kind-down.
USAGE
}

dry_run=0
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    *) usage >&2; die "unknown argument: $arg" ;;
  esac
done

# Run a step, or print it under --dry-run.
run() {
  if [ "$dry_run" -eq 1 ]; then printf '+ %s\n' "$*"; return 0; fi
  say "$*"
  "$@"
}

timeout_wait="${TIMEOUT:-600s}"
prometheus="${PROMETHEUS:-0}"
images=("cdcflow/workers:$TAG" "cdcflow/flink:$TAG" "cdcflow/operator:$TAG")

if [ "$dry_run" -eq 1 ]; then
  kind=kind kubectl=kubectl helm=helm
else
  kind=$(ensure_kind)
  kubectl=$(tool kubectl) || die "kubectl not found: install it, or run \`make cluster-build\`"
  helm=$(tool helm) || die "helm not found: install it, or run \`make cluster-build\`"
  docker version >/dev/null 2>&1 || die "no docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-unset}): start yours, or \`eval \"\$(make -s engine)\"\` for the private one"
  # The one thing kind cannot do without a registry: its node image. Stop here, before
  # anything is created, with what to do about it.
  if ! docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
    say "pulling the kind node image $NODE_IMAGE"
    if ! pull_log=$(docker pull "$NODE_IMAGE" 2>&1); then
      die "kind needs its node image $NODE_IMAGE and it cannot be pulled here:
  $(printf '%s' "$pull_log" | tail -1)
On a machine that can pull it: docker pull $NODE_IMAGE && docker save $NODE_IMAGE -o kindest-node.tar;
here: docker load -i kindest-node.tar, then make kind-up again."
    fi
  fi
fi

# 1. The cluster (kept when it exists: kind-up is rerunnable).
if [ "$dry_run" -eq 0 ] && "$kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "cluster $CLUSTER exists: reusing it"
else
  run "$kind" create cluster --name "$CLUSTER" --config "$KIND_CONFIG" --wait 120s
fi
run "$kubectl" config use-context "kind-$CLUSTER"

# 2. Images: built here, loaded into every node (no registry involved).
if [ "${SKIP_IMAGES:-0}" != 1 ]; then
  run env IMAGES="workers flink operator" TAG="$TAG" "$REPO_ROOT/scripts/engine/images.sh"
fi
run "$kind" load docker-image --name "$CLUSTER" "${images[@]}"

# 3. Monitoring first, so that its CRDs exist when the chart's PodMonitors come.
chart_args=()
if [ "$prometheus" = 1 ]; then
  run "$helm" repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
  run "$helm" upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --namespace monitoring --create-namespace --wait --timeout 10m \
    --set grafana.service.type=NodePort --set grafana.service.nodePort=30000 \
    --set prometheus.service.type=NodePort --set prometheus.service.nodePort=30090 \
    --set grafana.sidecar.dashboards.enabled=true --set grafana.sidecar.dashboards.searchNamespace=ALL \
    --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
    --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false
  chart_args=(--set monitoring.podMonitors.enabled=true --set monitoring.prometheusRule.enabled=true)
fi

# 4. The chart. The CRD is applied first: helm installs crds/ once and never upgrades it.
run "$kubectl" apply --server-side --force-conflicts -f "$REPO_ROOT/helm/cdcflow/crds/pipeline.yaml"
run "$helm" upgrade --install cdcflow "$REPO_ROOT/helm/cdcflow" --namespace "$OPERATOR_NAMESPACE" \
  --create-namespace --wait --timeout 5m --set image.tag="$TAG" "${chart_args[@]}"

# 5. A MongoDB to capture, the example Pipeline, and the UI ports.
run "$kubectl" apply -n "$PIPELINE_NAMESPACE" -f "$REPO_ROOT/examples/mongodb.yaml"
run "$kubectl" rollout status -n "$PIPELINE_NAMESPACE" statefulset/mongodb --timeout "$timeout_wait"
run "$kubectl" apply -n "$PIPELINE_NAMESPACE" -f "$REPO_ROOT/examples/pipeline.yaml"
run "$kubectl" apply -n "$PIPELINE_NAMESPACE" -f "$REPO_ROOT/scripts/kind/ui-services.yaml"
run "$kubectl" wait -n "$PIPELINE_NAMESPACE" --for=condition=Ready "pipeline/$PIPELINE" --timeout "$timeout_wait"
run "$kubectl" get -n "$PIPELINE_NAMESPACE" pipelines

[ "$dry_run" -eq 1 ] && exit 0
say "Pipeline $PIPELINE is Ready."
say "  kubectl get pl --watch"
say "  RabbitMQ UI: http://127.0.0.1:15672 (user cdcflow; password: kubectl get secret $PIPELINE-rabbitmq-credentials -o jsonpath='{.data.password}' | base64 -d)"
say "  ClickHouse HTTP: http://127.0.0.1:8123 (password: kubectl get secret $PIPELINE-clickhouse-credentials -o jsonpath='{.data.password}' | base64 -d)"
if [ "$prometheus" = 1 ]; then
  say "  Grafana: http://127.0.0.1:3000 (admin / kubectl -n monitoring get secret kube-prometheus-stack-grafana -o jsonpath='{.data.admin-password}' | base64 -d)"
  say "  Prometheus: http://127.0.0.1:9090"
fi
say "  tear down: make kind-down"
