#!/usr/bin/env bash
# Stop a local control plane started by start.sh: each recorded PID (newest first)
# gets SIGTERM, then SIGKILL if it is still there after 20 s; then wait until the
# cluster's ports are free, so that the next start can bind them. Only processes
# whose command line names this state folder are signalled (a recycled PID of some
# other program is left alone).
#
# Usage: scripts/cluster/stop.sh [--state-dir DIR] [--purge] [--quiet]
#   --purge  also delete the state folder (certificates, etcd data, logs, volumes)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(cd "$CLUSTER_SCRIPTS/../.." && pwd)/.cdcflow/cluster
PURGE=0
QUIET=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --state-dir) STATE=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    --quiet) QUIET=1; shift ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: $0 [--state-dir DIR] [--purge] [--quiet])" ;;
  esac
done
info() { [[ $QUIET -eq 1 ]] || say "$@"; }

if [[ ! -d $STATE ]]; then
  info "no cluster state in $STATE: nothing to stop"
  exit 0
fi
STATE=$(cd "$STATE" && pwd)

# ours PID: alive, started for this state folder, and not this very process (the
# watchdog execs this script) or its parent.
ours() {
  [[ $1 != "$$" && $1 != "$PPID" ]] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$STATE"
}

stopped=0
if [[ -f $STATE/pids ]]; then
  mapfile -t entries < <(tac "$STATE/pids")
  for entry in "${entries[@]}"; do
    read -r name pid <<<"$entry"
    if ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 20))
      while ours "$pid" && [[ $SECONDS -lt $deadline ]]; do sleep 0.1; done
      if ours "$pid"; then
        say "warning: $name (PID $pid) ignored SIGTERM for 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while ours "$pid"; do sleep 0.1; done
      fi
      info "  stopped $name (PID $pid)"
      stopped=$((stopped + 1))
    fi
  done
  rm -f "$STATE/pids"
fi

# The ports are free once no socket listens on them any more.
if [[ -f $STATE/cluster.env ]]; then
  ports=()
  while IFS='=' read -r key value; do
    [[ $key == *_PORT ]] && ports+=("$value")
  done <"$STATE/cluster.env"
  deadline=$((SECONDS + 30))
  for port in "${ports[@]}"; do
    while ss -Htln "sport = :$port" | grep -q .; do
      if [[ $SECONDS -ge $deadline ]]; then
        say "warning: port $port is still in use 30 s after the cluster stopped"
        break
      fi
      sleep 0.2
    done
  done
fi

what="cluster stopped"
[[ $stopped -gt 0 ]] || what="no cluster was running from $STATE"
if [[ $PURGE -eq 1 ]]; then
  rm -rf "$STATE"
  info "$what; removed $STATE"
else
  info "$what (state and logs kept in $STATE)"
fi
