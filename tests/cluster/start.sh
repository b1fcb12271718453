#!/usr/bin/env bash
# gemctl's test cluster: an idempotent single-node SLURM (Debian slurm-wlm 22.05) that runs in a sandbox as root,
# without systemd or cgroups. Installs the packages if missing, writes /etc/slurm/{slurm,slurmdbd}.conf, starts
# munged, mariadbd, slurmdbd, slurmctld and slurmd, then waits until the node is idle. Re-running while up is a no-op.
# Env: GEMCTL_SLURM_BASE (state + logs, default /tmp/gemctl-slurm),
#      GEMCTL_SLURM_DBD=1 (0 = no accounting: sacct then fails and submitit never sees cancelled/killed jobs end).
# Exit status 3 = cannot run here (not root, no apt-get): tests skip on it.
set -euo pipefail
BASE=${GEMCTL_SLURM_BASE:-/tmp/gemctl-slurm}
WITH_DBD=${GEMCTL_SLURM_DBD:-1}
ST=$BASE/state; LOG=$BASE/log
t0=$(date +%s.%N)
say() { echo "[gemctl-slurm $(date +%T)] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && ! grep -q '^[^ ]* ([^)]*) Z' "/proc/$(cat "$1")/stat" 2>/dev/null; }
waitfor() { local n=$1; shift; for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; echo "timeout waiting for: $*" >&2; return 1; }

# 0. can we run at all? (daemons need root; missing packages need apt-get)
[ "$(id -u)" = 0 ] || { echo "gemctl test cluster: needs root (daemons run as root, config in /etc/slurm)" >&2; exit 3; }

# 1. packages
pkgs="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
missing=""; for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || { echo "gemctl test cluster: missing$missing and no apt-get" >&2; exit 3; }
  say "installing:$missing"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } ||
    { echo "gemctl test cluster: could not install$missing (apt-get failed: offline?)" >&2; exit 3; }
fi

# 2. config
H=$(hostname -s)
mkdir -p "$ST/ctld" "$ST/d" "$LOG" /etc/slurm
read -r CPUS SOCK CORES THREADS MEM < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
  /^CPUs=/{c=$2} /^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{k=$2} /^ThreadsPerCore=/{t=$2} /^RealMemory=/{m=$2}
  END{print c, s, k, t, int(m*0.95)}')
if [ "$WITH_DBD" = 1 ]; then ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"; else ACCT="AccountingStorageType=accounting_storage/none"; fi
new_conf=$(cat <<EOF
ClusterName=gemctl
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# requeued jobs wait cred_expire+1 s before they may restart (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$ACCT
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without this a job that gives no --mem takes the whole node's memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# defaults sched_interval=60, bf_interval=30: a requeued job would wait up to ~60 s more after BeginTime
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
KillWait=5
StateSaveLocation=$ST/ctld
SlurmdSpoolDir=$ST/d
SlurmctldPidFile=$ST/slurmctld.pid
SlurmdPidFile=$ST/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$H NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=$SOCK CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM State=UNKNOWN
# debug: the default, no time limit. short: same node, 5-minute MaxTime (tests refuse a longer --time before submit).
# Any other partition name is refused by sbatch ("invalid partition specified").
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=short Nodes=$H MaxTime=5 State=UP OverSubscribe=NO
EOF
)
conf_changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > /etc/slurm/slurm.conf; conf_changed=1
fi
if [ "$WITH_DBD" = 1 ]; then
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$ST/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
fi

# 3. munge
[ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! alive /run/munge/munged.pid; then
  say "starting munged"; rm -f /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged
fi
waitfor 20 sh -c 'munge -n | unmunge'

# 4. accounting: mariadbd (private datadir, socket only) + slurmdbd
if [ "$WITH_DBD" = 1 ]; then
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! alive /run/mysqld/mysqld.pid; then
    if [ ! -d "$ST/mysql/mysql" ]; then
      say "initialising mariadb datadir"
      mariadb-install-db --user=mysql --datadir="$ST/mysql" --auth-root-authentication-method=socket \
        --skip-test-db --innodb-log-file-size=16M >"$LOG/mariadb-install.log" 2>&1
    fi
    say "starting mariadbd"; rm -f /run/mysqld/mysqld.sock
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$ST/mysql" --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --skip-networking --log-error="$ST/mysql/error.log" \
      --innodb-buffer-pool-size=64M --innodb-log-file-size=16M </dev/null >/dev/null 2>&1 &
  fi
  waitfor 60 mariadb-admin --socket=/run/mysqld/mysqld.sock ping
  if ! alive "$ST/slurmdbd.pid"; then say "starting slurmdbd"; slurmdbd; fi
  waitfor 60 sacctmgr -n show cluster
fi

# 5. slurmctld + slurmd
if alive "$ST/slurmctld.pid"; then
  [ $conf_changed = 1 ] && { say "config changed: scontrol reconfigure"; scontrol reconfigure; }
else
  say "starting slurmctld"; slurmctld
fi
waitfor 60 scontrol ping
if ! alive "$ST/slurmd.pid"; then say "starting slurmd"; slurmd; fi

# 6. wait for the node to be idle (resume it if it came up down/drained)
for i in $(seq 1 120); do
  s=$(sinfo -h -n "$H" -o %T 2>/dev/null | head -1)
  case "$s" in
    idle|mixed|allocated) break ;;
    down*|drain*|fail*) scontrol update nodename="$H" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
[ "$i" -lt 120 ] || { echo "node never became idle (state=$s)"; tail -20 "$LOG/slurmctld.log" "$LOG/slurmd.log"; exit 1; }
sinfo
say "SLURM ready in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s"
