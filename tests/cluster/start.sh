#!/usr/bin/env bash
# gemctl's test cluster: an idempotent SLURM (Debian slurm-wlm 22.05) run as root without systemd or cgroups,
# entirely from a private directory. Nothing is written under /etc or /run, and a SLURM this script did not start
# is never contacted: own slurm.conf (SLURM_CONF), own ports, own munged socket and key, own mariadbd.
#   start.sh [single]  one node (this machine) on loopback
#   start.sh multi     two nodes n1, n2: each slurmd in its own network namespace on a private bridge
# Installs the packages if missing, starts munged, mariadbd, slurmdbd, slurmctld and the slurmd(s), then waits until
# every node is idle. Re-running while up is a no-op. Clients use the cluster with SLURM_CONF=<base>/etc/slurm.conf.
# Env: GEMCTL_SLURM_BASE (prefix of the private directory: <prefix>-<shape>, default /tmp/gemctl-slurm),
#      GEMCTL_SLURM_PORT (first of four ports: slurmctld, slurmd, slurmdbd, mariadbd; default 16817 / 16827).
#      GEMCTL_SLURM_NET (multi: the bridge's /24, default 10.213.0).
# Exit status 3 = cannot run here (not root, no apt-get): the SLURM tests skip. Under CI=true that is a failure (1).
set -euo pipefail
cd "$(dirname "$0")"
. ./lib.sh
shape_env "${1:-single}"
t0=$(date +%s.%N)
say() { echo "[gemctl-slurm $SHAPE $(date +%T)] $*"; }
cannot() { echo "gemctl test cluster: $*" >&2; [ "${CI:-}" = true ] && exit 1; exit 3; }

# 0. can we run at all? (daemons run as root; missing packages need apt-get)
[ "$(id -u)" = 0 ] || cannot "not root (the SLURM daemons run as root)"
pkgs="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
[ -n "$NODES" ] && pkgs="$pkgs iproute2 util-linux"
missing=""; for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || cannot "missing$missing and no apt-get"
  say "installing:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

lock
# munged and mariadbd run as their own users: they must reach the private directory
for u in munge mysql; do
  runuser -u "$u" -- test -x "$BASE" || { echo "gemctl test cluster: user $u cannot reach $BASE; use a GEMCTL_SLURM_BASE under a directory others may traverse (e.g. /tmp)" >&2; exit 1; }
done

# 1. config (rewritten only when it changes; a change restarts this shape's daemons)
H=$(hostname -s)
read -r CPUS SOCK CORES THREADS MEM < <(slurmd -C | head -1 | tr ' ' '\n' | awk -F= '
  /^CPUs=/{c=$2} /^SocketsPerBoard=/{s=$2} /^CoresPerSocket=/{k=$2} /^ThreadsPerCore=/{t=$2} /^RealMemory=/{m=$2}
  END{print c, s, k, t, int(m*0.95)}')
HW="CPUs=$CPUS Boards=1 SocketsPerBoard=$SOCK CoresPerSocket=$CORES ThreadsPerCore=$THREADS"
if [ -z "$NODES" ]; then
  CTLD_ADDR=127.0.0.1; NODELIST=$H
  NODE_LINES="NodeName=$H NodeAddr=127.0.0.1 $HW RealMemory=$MEM State=UNKNOWN"
else
  # both slurmd see the whole machine: each node gets all CPUs (oversubscribed) and half the memory
  CTLD_ADDR=$NET.1; NODELIST=$(echo $NODES | tr ' ' ,); NODE_LINES=""
  for n in $NODES; do
    NODE_LINES="$NODE_LINES
NodeName=$n NodeHostname=$n NodeAddr=$(node_addr "$n") $HW RealMemory=$((MEM / 2)) State=UNKNOWN"
  done
fi
mkdir -p "$ETC" "$ST/ctld" "$ST/d" "$LOG" "$RUN"
conf=$(cat <<EOF
ClusterName=gemctl${NODES:+multi}
SlurmctldHost=$H($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# the private munged; requeued jobs wait cred_expire+1 s before they may restart (default 120)
AuthInfo=socket=$MUNGE/munge.socket,cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# for slurmdbd connections the munge socket is given here, not by AuthInfo
AccountingStoragePass=$MUNGE/munge.socket
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
SlurmdSpoolDir=$ST/d/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
$NODE_LINES
# debug: the default, no time limit. short: same nodes, 5-minute MaxTime (tests refuse a longer --time before submit).
# Any other partition name is refused by sbatch ("invalid partition specified").
PartitionName=debug Nodes=$NODELIST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=short Nodes=$NODELIST MaxTime=5 State=UP OverSubscribe=NO
EOF
)
if [ "$(cat "$SLURM_CONF" 2>/dev/null)" != "$conf" ]; then
  if [ -s "$SLURM_CONF" ]; then say "config changed: restarting this shape's daemons"; bash ./stop.sh "$SHAPE"; fi
  mkdir -p "$ETC" "$RUN"
  printf '%s\n' "$conf" > "$SLURM_CONF"
fi
[ -s "$ST/dbpass" ] || { umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ST/dbpass"; umask 022; }
cat > "$ETC/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ST/dbpass")
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ETC/slurmdbd.conf.new"; mv "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"  # slurmdbd reads it next to SLURM_CONF

# 2. munge: private key, socket, pid, log and seed
install -d -o munge -g munge -m 0755 "$MUNGE"
if [ ! -s "$MUNGE/munge.key" ]; then
  dd if=/dev/urandom of="$MUNGE/munge.key" bs=1 count=1024 status=none
  chown munge:munge "$MUNGE/munge.key"; chmod 400 "$MUNGE/munge.key"
fi
if ! alive "$MUNGE/munged.pid" munged; then
  say "starting munged"; rm -f "$MUNGE"/munge.socket*
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE/munge.socket" --key-file="$MUNGE/munge.key" \
    --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed" 9>&-
fi
waitfor 20 sh -c "munge -n -S '$MUNGE/munge.socket' | unmunge -S '$MUNGE/munge.socket'"

# 3. accounting: mariadbd (private datadir; TCP on loopback only, own port and pid file) + slurmdbd
install -d -o mysql -g mysql -m 0755 "$DB"
if ! alive "$DB/mysqld.pid" mariadbd; then
  if [ ! -d "$ST/mysql/mysql" ]; then
    say "initialising mariadb datadir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$ST/mysql" --auth-root-authentication-method=socket \
      --skip-test-db --innodb-log-file-size=16M >"$LOG/mariadb-install.log" 2>&1
  fi
  need_port "$DB_PORT" mariadbd; say "starting mariadbd"; rm -f "$DB/mysqld.sock"
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$ST/mysql" --socket="$DB/mysqld.sock" \
    --pid-file="$DB/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
    --log-error="$ST/mysql/error.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    </dev/null >/dev/null 2>&1 9>&- &
  waitfor 60 mariadb-admin --no-defaults --socket="$DB/mysqld.sock" ping
  mariadb --no-defaults --socket="$DB/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$ST/dbpass")';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
fi
if ! alive "$RUN/slurmdbd.pid" slurmdbd; then need_port "$DBD_PORT" slurmdbd; say "starting slurmdbd"; slurmdbd 9>&-; fi
waitfor 60 sacctmgr -n show cluster

# 4. multi: one namespace holder per node (network + mount + UTS namespaces; its mount namespace sees a private
# /etc/hosts with the node names, its hostname is the node name), a veth into it, all veths on one bridge.
if [ -n "$NODES" ]; then
  { echo "127.0.0.1 localhost"; echo "$NET.1 $H"; for n in $NODES; do echo "$(node_addr "$n") $n"; done; } > "$ETC/hosts"
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  case "$(ip -o addr show dev "$BRIDGE")" in *"inet $NET.1/24"*) ;; *) ip addr add "$NET.1/24" dev "$BRIDGE" ;; esac
  ip link set "$BRIDGE" up
  for n in $NODES; do
    if ! alive "$RUN/ns-$n.pid" sleep; then
      say "creating namespaces for $n"
      stop_pidfile "$RUN/slurmd-$n.pid" slurmd  # a slurmd left in the old namespaces would keep them, unreachable
      ip link del "$BRIDGE-$n" 2>/dev/null || true
      # slave propagation: later mounts on the machine reach the node, its /etc/hosts bind does not leave it
      setsid unshare -n -m -u --propagation slave sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec sleep infinity' \
        sh "$ETC/hosts" "$n" </dev/null >/dev/null 2>&1 9>&- &
      echo $! > "$RUN/ns-$n.pid"
      waitfor 20 sh -c "[ \"\$(nsenter -t $! -u hostname)\" = $n ]"
      ip link add "$BRIDGE-$n" type veth peer name eth0 netns "$!"
      ip link set "$BRIDGE-$n" master "$BRIDGE" up
      nsenter -t "$!" -n sh -c "ip link set lo up && ip addr add $(node_addr "$n")/24 dev eth0 && ip link set eth0 up"
    fi
  done
fi

# 5. slurmctld + slurmd(s)
if ! alive "$RUN/slurmctld.pid" slurmctld; then need_port "$CTLD_PORT" slurmctld; say "starting slurmctld"; slurmctld 9>&-; fi
waitfor 60 scontrol ping
if [ -z "$NODES" ]; then
  if ! alive "$RUN/slurmd-$H.pid" slurmd; then need_port "$SLURMD_PORT" slurmd; say "starting slurmd"; slurmd 9>&-; fi
  waitfor 30 alive "$RUN/slurmd-$H.pid" slurmd
else
  for n in $NODES; do
    if ! alive "$RUN/slurmd-$n.pid" slurmd; then
      say "starting slurmd $n"; nsenter -t "$(cat "$RUN/ns-$n.pid")" -n -m -u slurmd -N "$n" 9>&-
    fi
  done
  # the daemon writes its pid file once it runs; until then the controller may still list a node's old slurmd idle
  for n in $NODES; do waitfor 30 alive "$RUN/slurmd-$n.pid" slurmd; done
fi

# 6. wait for every node to be idle (resume one that came up down/drained)
ready=0
for _ in $(seq 1 120); do
  states=$(sinfo -h -N -p debug -o '%N %T' 2>/dev/null || true)
  bad=$(echo "$states" | awk '$2 !~ /^(idle|mixed|allocated)$/ {print $1}')
  [ -n "$states" ] && [ -z "$bad" ] && { ready=1; break; }
  for n in $(echo "$states" | awk '$2 ~ /^(down|drain|fail)/ {print $1}'); do
    scontrol update nodename="$n" state=resume 2>/dev/null || true
  done
  sleep 0.5
done
[ $ready = 1 ] || { echo "nodes never became idle: $states" >&2; tail -20 "$LOG"/slurm*.log >&2; exit 1; }
sinfo
say "SLURM ready in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s (SLURM_CONF=$SLURM_CONF)"
