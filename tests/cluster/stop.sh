#!/usr/bin/env bash
# Stops a shape started by start.sh: cancels its jobs, stops its daemons by the pids in its own pid files (never by
# name), and for multi removes the node namespaces, their veths and the bridge.
#   stop.sh [single|multi] [--wipe]    --wipe also deletes the shape's whole private directory (state, DB, logs)
# Env: GEMCTL_SLURM_BASE as in start.sh.
set -uo pipefail
cd "$(dirname "$0")"
. ./lib.sh
shape=single; wipe=0
for a in "$@"; do case "$a" in --wipe) wipe=1 ;; *) shape=$a ;; esac; done
shape_env "$shape"

# cancel whatever is still queued/running so no slurmstepd outlives its slurmd
if alive "$RUN/slurmctld.pid" slurmctld; then
  ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${ids// /}" ]; then
    echo "cancelling jobs: $ids"; scancel $ids
    for _ in $(seq 1 20); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for f in "$RUN"/slurmd-*.pid; do [ -e "$f" ] && stop_pidfile "$f" slurmd; done
stop_pidfile "$RUN/slurmctld.pid" slurmctld
stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
stop_pidfile "$DB/mysqld.pid" mariadbd
stop_pidfile "$MUNGE/munged.pid" munged
if [ -n "$NODES" ]; then
  # a namespace lives as long as its holder: killing it removes the namespace and the veth pair with it
  for n in $NODES; do
    stop_pidfile "$RUN/ns-$n.pid" sleep
    ip link del "gemctl-$n" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then echo "removing bridge $BRIDGE"; ip link del "$BRIDGE"; fi
fi
if [ $wipe = 1 ]; then echo "wiping $BASE"; rm -rf "$BASE"; fi
