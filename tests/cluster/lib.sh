# Sourced by start.sh and stop.sh: a shape's private paths and ports, and pid-file helpers.
# Everything a shape runs or writes lives under $BASE; daemons are only ever signalled through pid files there.

# shape_env SHAPE: sets the shape's layout and exports SLURM_CONF for the client tools this script calls.
shape_env() {
  SHAPE=$1
  case "$SHAPE" in
    # single: one node named after this machine, on loopback.
    single) PORT=${GEMCTL_SLURM_PORT:-16817}; NODES="" ;;
    # multi: two nodes, each slurmd in its own network/mount/UTS namespace on the bridge BRIDGE (NET.0/24).
    multi)  PORT=${GEMCTL_SLURM_PORT:-16827}; NODES="n1 n2" ;;
    *) echo "unknown shape '$SHAPE': use single or multi" >&2; exit 2 ;;
  esac
  # ports (GEMCTL_SLURM_PORT overrides the first): slurmctld, slurmd, slurmdbd, mariadbd: away from a system SLURM's 6817-6819
  CTLD_PORT=$PORT; SLURMD_PORT=$((PORT + 1)); DBD_PORT=$((PORT + 2)); DB_PORT=$((PORT + 3))
  BRIDGE=gemctl-br0; NET=10.213.0
  BASE=${GEMCTL_SLURM_BASE:-/tmp/gemctl-slurm}-$SHAPE
  ETC=$BASE/etc      # slurm.conf, slurmdbd.conf, hosts (multi)
  ST=$BASE/state     # controller state, slurmd spool, accounting database
  LOG=$BASE/log
  RUN=$BASE/run      # pid files of the slurm daemons and namespace holders
  MUNGE=$BASE/munge  # munged's key, socket, pid, log, seed (owned by the munge user)
  DB=$BASE/mysql     # mariadbd's pid file
  export SLURM_CONF=$ETC/slurm.conf
}

# node_addr NODE: the node's address on the bridge (n1 -> NET.11).
node_addr() { echo "$NET.$((10 + ${1#n}))"; }

# alive PIDFILE COMM: the pid file names a live (non-zombie) process called COMM.
alive() {
  local p
  p=$(cat "$1" 2>/dev/null) && [ -n "$p" ] || return 1  # a daemon removes its own pid file as it exits
  [ -r "/proc/$p/stat" ] || return 1
  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f1)" != Z ]
}

# stop_pidfile PIDFILE COMM: SIGTERM the process in PIDFILE if it is COMM, SIGKILL after 30 s; remove the file.
stop_pidfile() {
  local f=$1 comm=$2 p
  if alive "$f" "$comm"; then
    p=$(cat "$f"); echo "stopping $comm (pid $p)"; kill -TERM "$p"
    for _ in $(seq 1 60); do alive "$f" "$comm" || break; sleep 0.5; done
    if alive "$f" "$comm"; then echo "  $comm did not stop, SIGKILL"; kill -KILL "$p"; fi
  fi
  rm -f "$f"
}

# waitfor N CMD...: retry CMD every 0.5 s, at most N times.
waitfor() {
  local n=$1; shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "timeout waiting for: $*" >&2; return 1
}
