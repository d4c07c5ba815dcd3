#!/usr/bin/env bash
# Start a throw-away Slurm cluster on this host for bastion's system tests: one munged, one slurmctld and
# N slurmd "nodes" (n1..nN, all 127.0.0.1), every daemon's PID saved under $BASTION_SLURM_DIR/pids.
# Stop it with scripts/slurm/stop_cluster.sh (same BASTION_SLURM_DIR).
#
# Exit status: 0 cluster up (clients need: source "$BASTION_SLURM_DIR/env.sh"); 77 Slurm cannot be had on
# this machine (not root, or no slurm-wlm and no apt) -- the reason is printed; anything else: a real failure.
#
# Settings (environment):
#   BASTION_SLURM_DIR    config, state, logs and PIDs        [${TMPDIR:-/tmp}/bastion-slurm-ci]
#   BASTION_SLURM_NODES  virtual nodes                       [4]
#   BASTION_SLURM_CPUS   CPUs each node advertises           [4] (the host's cores are shared)
#   BASTION_SLURM_PORT   slurmctld port; nodes use PORT+1..PORT+N  [16917]
#   BASTION_SLURM_REQUEUE_EXIT  exit status Slurm requeues by itself (RequeueExit) [42]
#   BASTION_SLURM_CRED_EXPIRE   seconds a requeued job waits before it may start again (>= 5) [5]
set -euo pipefail

DIR=${BASTION_SLURM_DIR:-${TMPDIR:-/tmp}/bastion-slurm-ci}
NODES=${BASTION_SLURM_NODES:-4}
CPUS=${BASTION_SLURM_CPUS:-4}
PORT=${BASTION_SLURM_PORT:-16917}
REQUEUE_EXIT=${BASTION_SLURM_REQUEUE_EXIT:-42}
CRED_EXPIRE=${BASTION_SLURM_CRED_EXPIRE:-5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTS_TAG="# bastion-slurm-ci"

say() { echo "[start_cluster] $*" >&2; }
unavailable() { echo "SLURM UNAVAILABLE: $*" >&2; exit 77; }

have_slurm() { command -v slurmctld && command -v slurmd && command -v munged && command -v sbatch; } >/dev/null

# ---- packages: Debian's slurm-wlm and munge -----------------------------------------------------------
if ! have_slurm; then
  [ "$(id -u)" = 0 ] || unavailable "slurm-wlm is not installed and installing it needs root"
  command -v apt-get >/dev/null || unavailable "slurm-wlm is not installed and there is no apt-get"
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || unavailable "apt-get update failed (no package mirror reachable?)"
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
    || unavailable "apt-get install slurm-wlm munge failed"
  have_slurm || unavailable "slurm-wlm installed but its daemons are not on PATH"
fi
# the daemons run as root (slurmd starts jobs as their user) and the node names go into /etc/hosts
[ "$(id -u)" = 0 ] || unavailable "the daemons of a multi-node Slurm on one host must run as root"

CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/socket

write_conf() {
  local last=$((NODES)) names="n[1-$NODES]" ports="$((PORT + 1))-$((PORT + NODES))"
  [ "$NODES" = 1 ] && { names=n1; ports=$((PORT + 1)); }
  cat <<CONF
# written by bastion scripts/slurm/start_cluster.sh ($last nodes on this host)
ClusterName=bastionci
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/pids/slurmctld.own.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.own.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# one host, no cgroups: track job processes by parentage, bind nothing
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
RequeueExit=$REQUEUE_EXIT
MailProg=/bin/true
KillWait=10
MinJobAge=3600
InactiveLimit=0
OverTimeLimit=0
SlurmdTimeout=30
SlurmctldTimeout=30
NodeName=$names NodeHostname=localhost NodeAddr=127.0.0.1 Port=$ports CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

pid_alive() { # pidfile expected-command
  [ -s "$1" ] || return 1
  local pid; pid=$(cat "$1")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

cluster_answers() {
  pid_alive "$DIR/pids/munged.pid" munged && pid_alive "$DIR/pids/slurmctld.pid" slurmctld || return 1
  for i in $(seq 1 "$NODES"); do pid_alive "$DIR/pids/slurmd-n$i.pid" slurmd || return 1; done
  SLURM_CONF=$CONF timeout 10 scontrol ping 2>/dev/null | grep -q UP
}

# ---- already up with this very configuration? -------------------------------------------------------
if [ -f "$CONF" ] && cmp -s <(write_conf) "$CONF" && cluster_answers; then
  say "already running under $DIR"
  exit 0
fi

t0=$(date +%s)
if [ -d "$DIR" ]; then
  BASTION_SLURM_DIR=$DIR bash "$HERE/stop_cluster.sh" >/dev/null 2>&1 || true
  rm -rf "$DIR"
fi
mkdir -p "$DIR"/{state,log,pids,munge}
for i in $(seq 1 "$NODES"); do mkdir -p "$DIR/spool/n$i"; done
chmod 755 "$DIR" "$DIR/munge"   # munged refuses a socket directory others can write to
chmod 700 "$DIR/state"
write_conf >"$CONF"
printf 'export SLURM_CONF=%q\n' "$CONF" >"$DIR/env.sh"
export SLURM_CONF=$CONF

# node names must resolve for srun and for torchrun's rendezvous on the first node
# (rewritten in place, not renamed: container runtimes often bind-mount /etc/hosts)
hosts=$(grep -v -- "$HOSTS_TAG\$" /etc/hosts || true)
printf '%s\n127.0.0.1 %s %s\n' "$hosts" "$(seq -f 'n%g' -s ' ' 1 "$NODES")" "$HOSTS_TAG" >/etc/hosts 2>/dev/null \
  || unavailable "cannot write /etc/hosts to make the node names n1..n$NODES resolve"

# ---- daemons: each in the foreground of its own background job, so $! is the daemon ---------------------
head -c 1024 /dev/urandom >"$DIR/munge/key"
chmod 400 "$DIR/munge/key"
munged --foreground --key-file="$DIR/munge/key" --socket="$SOCKET" --pid-file="$DIR/munge/munged.own.pid" \
  --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed" </dev/null >>"$DIR/log/munged.out" 2>&1 &
echo $! >"$DIR/pids/munged.pid"
for _ in $(seq 100); do [ -S "$SOCKET" ] && break; sleep 0.05; done
munge -S "$SOCKET" -n | unmunge -S "$SOCKET" >/dev/null || { say "munged is not answering"; exit 1; }

slurmctld -D -i -f "$CONF" </dev/null >>"$DIR/log/slurmctld.out" 2>&1 &
echo $! >"$DIR/pids/slurmctld.pid"
for _ in $(seq 200); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.05; done
for i in $(seq 1 "$NODES"); do
  slurmd -D -N "n$i" -f "$CONF" </dev/null >>"$DIR/log/slurmd-n$i.out" 2>&1 &
  echo $! >"$DIR/pids/slurmd-n$i.pid"
done

deadline=$(( $(date +%s) + 60 ))
until [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" = "$NODES" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    say "nodes did not become idle within 60 s"; sinfo -N -l >&2 || true; tail -n 5 "$DIR"/log/*.log >&2 || true
    exit 1
  fi
  sleep 0.2
done
say "up: $NODES nodes, SLURM_CONF=$CONF, $(( $(date +%s) - t0 )) s"
