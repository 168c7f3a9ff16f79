#!/usr/bin/env bash
# Start a local Kubernetes control plane on loopback (issue 13): etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok with a few fake
# nodes, from the binaries scripts/cluster/build.sh put in the cache. Every start is
# a fresh cluster: new CA and certificates, empty etcd, free ports on 127.0.0.1.
#
# The state folder gets: kubeconfig (admin), pki/, logs/<component>.log, volumes/
# (hostPath PersistentVolumes), pids ("name pid" lines, read by stop.sh) and
# cluster.env (KEY=VALUE: server URL, ports, paths; read by tests/control_plane.py).
#
# Usage: scripts/cluster/start.sh [--state-dir DIR] [--nodes N] [--stop-with-pid PID]
#   (default state folder: .cdcflow/cluster in the repository; 3 nodes)
#   --stop-with-pid: stop the cluster (and delete the state folder) when process PID
#   ends, however it ends (the test fixture passes pytest's PID: a killed test run
#   leaves no cluster behind)
# Extra flags per component: CDCFLOW_ETCD_ARGS, CDCFLOW_KUBE_APISERVER_ARGS,
# CDCFLOW_KUBE_CONTROLLER_MANAGER_ARGS, CDCFLOW_KUBE_SCHEDULER_ARGS, CDCFLOW_KWOK_ARGS.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(cd "$CLUSTER_SCRIPTS/../.." && pwd)/.cdcflow/cluster
NODES=3
OWNER_PID=
while [[ $# -gt 0 ]]; do
  case $1 in
    --state-dir) STATE=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --stop-with-pid) OWNER_PID=$2; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: $0 [--state-dir DIR] [--nodes N] [--stop-with-pid PID])" ;;
  esac
done
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes wants a positive number, not '$NODES'"
[[ -z $OWNER_PID ]] || kill -0 "$OWNER_PID" 2>/dev/null || die "--stop-with-pid: no process $OWNER_PID"
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)

# Address ranges inside 127.0.0.0/8: no Service or pod address can point off this
# machine, even one used by mistake (nothing listens on them; kwok runs no pods).
SERVICE_RANGE=127.200.0.0/24
SERVICE_FIRST_IP=127.200.0.1
POD_RANGE=127.201.0.0/24
# A node is alive while kwok renews its Lease (every quarter of this; kwokctl's default).
NODE_LEASE_SECONDS=40

for name in "${CLUSTER_BINARIES[@]}" kwok-stages.yaml; do
  [[ -e $K8S_BIN/$name ]] ||
    die "$K8S_BIN/$name is missing: build the cluster binaries first with 'make cluster-build' (scripts/cluster/build.sh; ~20 minutes the first time, once per machine)"
  # A pin changed in versions.env since the build (etcd, kwok and helm share one folder):
  # never start a cluster of other versions than the pinned ones.
  is_current "$name" ||
    die "$K8S_BIN/$name is not the pinned version ($(version_of "$name")): rebuild with 'make cluster-build'"
done

if [[ -f $STATE/pids ]]; then
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE"; then
      say "a cluster is already running from $STATE ($name is PID $pid); stop it with 'make cluster-down' (scripts/cluster/stop.sh --state-dir $STATE)"
      printf 'export KUBECONFIG=%s\n' "$STATE/kubeconfig"
      exit 0
    fi
  done <"$STATE/pids"
fi

started=$SECONDS
# A fresh cluster each time; the previous run's logs go with it.
rm -rf "${STATE:?}"/{pki,logs,etcd,volumes,apiserver,service-accounts,helm,pids,cluster.env,nodes.yaml,*kubeconfig}
mkdir -p "$STATE"/{pki,logs,etcd,volumes,apiserver}
: >"$STATE/pids"

# If anything below fails, stop what was started: a half-up cluster is never left.
complete=0
cleanup() {
  if [[ $complete -ne 1 ]]; then
    "$CLUSTER_SCRIPTS/stop.sh" --state-dir "$STATE" --quiet || true
  fi
}
trap cleanup EXIT

# --- Free ports: bound together, so that they are distinct, then released.
read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT KWOK_PORT < <(
  python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
SERVER=https://127.0.0.1:$APISERVER_PORT
# The ports go on record before anything starts, so that stop.sh (also run when a
# start fails half-way) can wait until they are free again.
printf '%s\n' "ETCD_PORT=$ETCD_PORT" "ETCD_PEER_PORT=$ETCD_PEER_PORT" "APISERVER_PORT=$APISERVER_PORT" \
  "KCM_PORT=$KCM_PORT" "SCHEDULER_PORT=$SCHEDULER_PORT" "KWOK_PORT=$KWOK_PORT" >"$STATE/cluster.env"

# --- Certificates (openssl): a CA, the API server's serving certificate, client
# certificates for the admin and the two controllers, the service-account key pair.
PKI=$STATE/pki
ossl() { openssl "$@" 2>>"$STATE/logs/openssl.log" >/dev/null || die "openssl $1 failed; see $STATE/logs/openssl.log"; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" -subj "/CN=cdcflow-local-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
# issue NAME SUBJECT EXTENSIONS
issue() {
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "$2"
  printf '%s\n' "$3" >"$PKI/$1.ext"
  ossl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -out "$PKI/$1.crt" -extfile "$PKI/$1.ext"
}
issue apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$SERVICE_FIRST_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
issue admin "/O=system:masters/CN=cdcflow-admin" "$client_ext"
issue controller-manager "/CN=system:kube-controller-manager" "$client_ext"
issue scheduler "/CN=system:kube-scheduler" "$client_ext"
ossl genrsa -out "$PKI/service-account.key" 2048
ossl rsa -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub"

# kubeconfig FILE USER: a self-contained kubeconfig (certificates embedded).
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cdcflow-local
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$2.crt")
    client-key-data: $(base64 -w0 "$PKI/$2.key")
contexts:
- name: cdcflow-local
  context:
    cluster: cdcflow-local
    user: $2
current-context: cdcflow-local
EOF
  chmod 600 "$1"
}
kubeconfig "$STATE/kubeconfig" admin
kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
kubeconfig "$STATE/scheduler.kubeconfig" scheduler

# --- Processes. Each runs in its own session (setsid: a Ctrl-C in the terminal
# that ran `make cluster` does not reach it) and is recorded for stop.sh.
# Extra flags for a component come from CDCFLOW_<NAME>_ARGS (e.g.
# CDCFLOW_KUBE_APISERVER_ARGS="--feature-gates=..."), split on whitespace.
launch() {  # launch NAME BINARY ARGS...
  local name=$1 var extra=()
  shift
  var=CDCFLOW_$(tr 'a-z-' 'A-Z_' <<<"$name")_ARGS
  read -ra extra <<<"${!var:-}"
  setsid "$@" "${extra[@]}" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  printf '%s %s\n' "$name" "$!" >>"$STATE/pids"
  say "  started $name (PID $!, log $STATE/logs/$name.log)"
}
pid_of() { awk -v n="$1" '$1 == n { print $2 }' "$STATE/pids"; }

# wait_until NAME TIMEOUT WHAT CMD...: poll CMD until it succeeds; if the component
# dies or the time runs out, say which and show the end of its log.
wait_until() {
  local name=$1 timeout=$2 what=$3 pid deadline=$((SECONDS + $2))
  shift 3
  pid=$(pid_of "$name")
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      say "error: $name exited (status $rc) before $what; last lines of $STATE/logs/$name.log:"
      tail -n 30 "$STATE/logs/$name.log" >&2
      exit 1
    fi
    if [[ $SECONDS -ge $deadline ]]; then
      say "error: $name did not become ready ($what) within $timeout s; last lines of $STATE/logs/$name.log:"
      tail -n 30 "$STATE/logs/$name.log" >&2
      exit 1
    fi
    sleep 0.2
  done
}
healthy() { curl --silent --fail --max-time 2 "$@"; }
admin_curl() {
  healthy --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$SERVER$1"
}

say "starting a local Kubernetes $K8S_VERSION control plane in $STATE"
launch etcd "$K8S_BIN/etcd" --name cdcflow --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "cdcflow=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level=warn
wait_until etcd 30 "/health on 127.0.0.1:$ETCD_PORT" healthy "http://127.0.0.1:$ETCD_PORT/health"

launch kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address=127.0.0.1 \
  --endpoint-reconciler-type=none \
  --service-cluster-ip-range="$SERVICE_RANGE" \
  --authorization-mode=RBAC \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --cert-dir="$STATE/apiserver" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/service-account.pub" \
  --service-account-signing-key-file="$PKI/service-account.key" \
  --allow-privileged=true --profiling=false
wait_until kube-apiserver 120 "/readyz on $SERVER" admin_curl /readyz

launch kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig="$STATE/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
  --service-account-private-key-file="$PKI/service-account.key" --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_RANGE" \
  --pvclaimbinder-sync-period=2s --profiling=false
launch kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig="$STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
  --leader-elect=false --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --profiling=false
# Node leases, as kwokctl runs kwok: the heartbeat-with-lease stage posts node status
# only every 10-20 minutes and counts on a Lease renewed every 10 s. Without
# --node-lease-duration-seconds kwok keeps no Lease and patches node status about every
# 55 s, beyond the controller manager's 50 s grace period: now and then it marks a node
# Unknown and every pod on it NotReady, and kwok never makes a Running pod Ready again.
launch kwok "$K8S_BIN/kwok" --kubeconfig="$STATE/kubeconfig" --config="$K8S_BIN/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --node-lease-duration-seconds="$NODE_LEASE_SECONDS" \
  --cidr="$POD_RANGE" --node-ip=127.0.0.1 --server-address="127.0.0.1:$KWOK_PORT"
wait_until kube-controller-manager 60 "/healthz on 127.0.0.1:$KCM_PORT" healthy --insecure "https://127.0.0.1:$KCM_PORT/healthz"
wait_until kube-scheduler 60 "/healthz on 127.0.0.1:$SCHEDULER_PORT" healthy --insecure "https://127.0.0.1:$SCHEDULER_PORT/healthz"
wait_until kwok 60 "/healthz on 127.0.0.1:$KWOK_PORT" healthy "http://127.0.0.1:$KWOK_PORT/healthz"

# --- Fake nodes: plain Node objects with kwok's annotation; kwok marks them Ready
# and keeps their leases, and plays the pods scheduled to them (Running, Ready).
kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig="$STATE/kubeconfig" "$@"; }
for ((i = 0; i < NODES; i++)); do
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: kwok-node-$i
    topology.kubernetes.io/zone: zone-$((i % 3))
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: kwok-$KWOK_VERSION
EOF
done >"$STATE/nodes.yaml"
kubectl_admin apply -f "$STATE/nodes.yaml" >>"$STATE/logs/kubectl.log" 2>&1 ||
  { tail -n 20 "$STATE/logs/kubectl.log" >&2; die "could not create the kwok nodes"; }
nodes_ready() {
  [[ $(kubectl_admin get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    grep -c '^True$') -eq $NODES ]]
}
wait_until kwok 60 "$NODES kwok nodes Ready" nodes_ready
# Pods need their namespace's "default" ServiceAccount (made by the controller manager).
wait_until kube-controller-manager 60 "the default ServiceAccount" kubectl_admin get serviceaccount default -n default

cat >"$STATE/cluster.env" <<EOF
K8S_VERSION=$K8S_VERSION
SERVER=$SERVER
KUBECONFIG=$STATE/kubeconfig
CA_FILE=$PKI/ca.crt
BIN_DIR=$K8S_BIN
VOLUMES_DIR=$STATE/volumes
NODES=$NODES
SERVICE_RANGE=$SERVICE_RANGE
POD_RANGE=$POD_RANGE
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
KWOK_PORT=$KWOK_PORT
EOF
if [[ -n $OWNER_PID ]]; then
  # A watchdog (recorded like the components, so stop.sh ends it first) that stops
  # the cluster once the owner is gone.
  # shellcheck disable=SC2016  # $1..$3 are the inner bash's arguments
  setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec "$2" --state-dir "$3" --purge --quiet' \
    cdcflow-cluster-watchdog "$OWNER_PID" "$CLUSTER_SCRIPTS/stop.sh" "$STATE" >>"$STATE/logs/watchdog.log" 2>&1 </dev/null &
  printf 'watchdog %s\n' "$!" >>"$STATE/pids"
fi
complete=1
say "cluster up in $((SECONDS - started)) s: $SERVER, $NODES kwok nodes; logs in $STATE/logs"
say "  stop it with: make cluster-down (or scripts/cluster/stop.sh --state-dir $STATE)"
printf 'export KUBECONFIG=%s\n' "$STATE/kubeconfig"
