#!/usr/bin/env bash
# Stops the daemons started by start.sh, by the PIDs in their pid files (never by name).
# --wipe also deletes state (job/node state, accounting DB, logs). Env: GEMCTL_SLURM_BASE as in start.sh.
set -uo pipefail
BASE=${GEMCTL_SLURM_BASE:-/tmp/gemctl-slurm}
ST=$BASE/state; LOG=$BASE/log
stop() {  # name pidfile
  local f=$2 p
  [ -s "$f" ] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null && ! grep -q '^[^ ]* ([^)]*) Z' "/proc/$p/stat" 2>/dev/null; then
    echo "stopping $1 (pid $p)"; kill -TERM "$p"
    for _ in $(seq 1 60); do
      { kill -0 "$p" 2>/dev/null && ! grep -q '^[^ ]* ([^)]*) Z' "/proc/$p/stat" 2>/dev/null; } || break
      sleep 0.5
    done
    if kill -0 "$p" 2>/dev/null && ! grep -q '^[^ ]* ([^)]*) Z' "/proc/$p/stat" 2>/dev/null; then
      echo "  $1 did not stop, SIGKILL"; kill -KILL "$p"
    fi
  fi
  rm -f "$f"
}
# cancel whatever is still queued/running so no slurmstepd outlives slurmd
if [ -s "$ST/slurmctld.pid" ] && kill -0 "$(cat "$ST/slurmctld.pid")" 2>/dev/null; then
  ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${ids// /}" ]; then
    echo "cancelling jobs: $ids"; scancel $ids
    for _ in $(seq 1 20); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
stop slurmd    "$ST/slurmd.pid"
stop slurmctld "$ST/slurmctld.pid"
stop slurmdbd  "$ST/slurmdbd.pid"
stop mariadbd  /run/mysqld/mysqld.pid
stop munged    /run/munge/munged.pid
if [ "${1:-}" = "--wipe" ]; then
  echo "wiping $ST $LOG"; rm -rf "$ST" "$LOG"
fi
