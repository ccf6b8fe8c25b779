#!/usr/bin/env bash
# libvirtd for the libvirt tests, started as root as DESIGN.md measured it
# (virtlogd first, then libvirtd; no systemd needed).
#
#   scripts/libvirtd.sh start   prints shell exports (eval them):
#     VMB_LIBVIRT_URI=qemu:///system   (the tests' switch)
#     VMB_LIBVIRTD_PIDS="PID PID"      (what `stop` ends: only what start started)
#   scripts/libvirtd.sh stop "PIDS"
#
# A libvirtd already running is used as it is and left running.
set -euo pipefail
uri=qemu:///system

answers() { timeout 10 virsh -c "$uri" version >/dev/null 2>&1; }

case "${1:-}" in
  start)
    [ "$(id -u)" -eq 0 ] || { echo "libvirtd: the libvirt tests need root" >&2; exit 1; }
    command -v libvirtd >/dev/null || { echo "libvirtd: not installed (scripts/setup.sh installs it)" >&2; exit 1; }
    pids=
    if ! answers; then
      # One that is still shutting down (it may take 30 s): let it go first.
      for _ in $(seq 1 120); do pgrep -x libvirtd >/dev/null || break; answers && break; sleep 0.5; done
    fi
    if ! answers; then
      if ! pgrep -x virtlogd >/dev/null; then
        virtlogd >/var/tmp/vmbackup-virtlogd.log 2>&1 </dev/null &
        pids="$pids $!"
      fi
      if ! pgrep -x libvirtd >/dev/null; then
        libvirtd >/var/tmp/vmbackup-libvirtd.log 2>&1 </dev/null &
        pids="$pids $!"
      fi
      for _ in $(seq 1 120); do answers && break; sleep 0.5; done
      if ! answers; then
        echo "libvirtd: does not answer; log:" >&2
        tail -20 /var/tmp/vmbackup-libvirtd.log >&2
        for pid in $pids; do kill "$pid" 2>/dev/null || true; done  # nothing of ours is left running
        exit 1
      fi
    fi
    echo "export VMB_LIBVIRT_URI=$uri"
    echo "export VMB_LIBVIRTD_PIDS=\"${pids# }\""
    ;;
  stop)
    for pid in ${2:-}; do
      kill "$pid" 2>/dev/null || true
    done
    ;;
  *)
    echo "usage: scripts/libvirtd.sh start | stop PIDS" >&2
    exit 2
    ;;
esac
