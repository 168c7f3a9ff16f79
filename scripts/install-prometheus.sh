#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package, 2.42) when promtool
# is missing, so the alert-rule tests (promtool check/test rules) and the scrape test
# (a real `prometheus` process) can run.
#
# Why this shape:
# * CI and fresh machines start without Prometheus; the tests skip when promtool is
#   absent, so this script must run BEFORE pytest or those tests prove nothing.
# * The Debian package's postinst runs `invoke-rc.d prometheus start` (sysv init script)
#   or `deb-systemd-invoke start prometheus.service`. Both honour /usr/sbin/policy-rc.d,
#   so while installing we put one there that answers 101 ("action forbidden") unless the
#   machine already has one. The tests start their own Prometheus on a free port with a
#   temporary storage dir; a system service on :9090 would only get in the way.
# * Never fails the build: when it cannot install (not root, no apt-get, no package) it
#   prints "skipping: ..." and exits 0, and the tests then skip with a reason.
set -u

log() { echo "install-prometheus: $*"; }

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  log "already installed: $(promtool --version 2>&1 | head -n 1)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  log "skipping: promtool is missing and this is not root (run: sudo $0)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "skipping: promtool is missing and apt-get is not available on this machine"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
POLICY=/usr/sbin/policy-rc.d
OUR_POLICY=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\n# temporary, from cdcflow scripts/install-prometheus.sh\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  OUR_POLICY=1
fi
cleanup() { if [ "$OUR_POLICY" -eq 1 ]; then rm -f "$POLICY"; fi; }
trap cleanup EXIT

install_package() {
  apt-get install -y -q --no-install-recommends prometheus >/tmp/install-prometheus.log 2>&1
}

if ! install_package; then
  log "first attempt failed, refreshing package lists (apt-get update)"
  apt-get update -q >>/tmp/install-prometheus.log 2>&1 || true
  if ! install_package; then
    log "skipping: apt-get could not install prometheus (see /tmp/install-prometheus.log)"
    tail -n 5 /tmp/install-prometheus.log
    exit 0
  fi
fi

# Belt and braces: if a service was started anyway (a policy-rc.d that allowed it),
# stop it and keep it from starting at boot.
PIDFILE=/run/prometheus/prometheus.pid
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
elif [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  log "stopping the prometheus service the package started"
  /etc/init.d/prometheus stop >/dev/null 2>&1 || kill "$(cat "$PIDFILE")" || true
fi
if command -v update-rc.d >/dev/null 2>&1; then
  update-rc.d prometheus disable >/dev/null 2>&1 || true
fi

if ! command -v promtool >/dev/null 2>&1; then
  log "skipping: the prometheus package installed but promtool is not on PATH"
  exit 0
fi
log "installed: $(promtool --version 2>&1 | head -n 1)"
