#!/usr/bin/env bash
# Write a kubeconfig that authenticates as a ServiceAccount of the local cluster, with
# a token from the TokenRequest API (what a pod's projected token is): code run with
# it has exactly the RBAC granted to that ServiceAccount, e.g. the operator with the
# chart's Role and ClusterRole. Prints the file's path.
#
# Usage: scripts/cluster/sa-kubeconfig.sh [--state-dir DIR] [--duration 24h] NAMESPACE NAME
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(cd "$CLUSTER_SCRIPTS/../.." && pwd)/.cdcflow/cluster
DURATION=24h
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --state-dir) STATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    -h | --help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1'" ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ ${#args[@]} -eq 2 ]] || die "usage: $0 [--state-dir DIR] [--duration 24h] NAMESPACE NAME"
namespace=${args[0]}
name=${args[1]}
[[ -f $STATE/cluster.env && -f $STATE/kubeconfig ]] ||
  die "no running cluster in $STATE: start one with 'make cluster'"

kubectl=$K8S_BIN/kubectl
token=$("$kubectl" --kubeconfig="$STATE/kubeconfig" create token "$name" -n "$namespace" --duration="$DURATION") ||
  die "could not get a token for ServiceAccount $namespace/$name (does it exist?)"
out=$STATE/service-accounts/$namespace.$name.kubeconfig
mkdir -p "$(dirname "$out")"
user=system:serviceaccount:$namespace:$name
# The admin kubeconfig's cluster entry (server and CA), with the token as the user.
"$kubectl" --kubeconfig="$STATE/kubeconfig" config view --raw --minify --flatten \
  -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$out.ca"
server=$("$kubectl" --kubeconfig="$STATE/kubeconfig" config view --minify -o jsonpath='{.clusters[0].cluster.server}')
rm -f "$out"
kc() { "$kubectl" --kubeconfig="$out" config "$@" >/dev/null; }
kc set-cluster cdcflow-local --server="$server" --certificate-authority="$out.ca" --embed-certs=true
kc set-credentials "$user" --token="$token"
kc set-context "$user" --cluster=cdcflow-local --user="$user" --namespace="$namespace"
kc use-context "$user"
rm -f "$out.ca"
chmod 600 "$out"
printf '%s\n' "$out"
