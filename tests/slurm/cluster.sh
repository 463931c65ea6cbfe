#!/usr/bin/env bash
# bash tests/slurm/cluster.sh up|down|status
# A real one-node SLURM (slurmctld + slurmd + munge on this host) for the tests in tests/slurm. Debian/Ubuntu, root.
# `up` installs slurm-wlm and munge with apt when missing, writes /etc/slurm/slurm.conf and waits for the node to be
# idle (a slurmctld already running on this host, not started by `up`, is used as it is); `down` stops only the
# daemons `up` started (by their pid files). Both are idempotent.
# Exit codes: 0 ok; 3 this machine cannot host the cluster (not root, no apt, apt failed): tests skip on 3; 1 else.
set -euo pipefail

LAB=${ULTRALONG_SLURM_LAB:-/tmp/ultralong-slurm}   # state, spool, logs and pid files of the test cluster
# a requeued job restarts cred_expire + 1 s after `scontrol requeue` (SLURM's default cred_expire: 120)
CRED_EXPIRE=${ULTRALONG_SLURM_CRED_EXPIRE:-10}

die() { echo "cluster.sh: $*" >&2; exit 1; }
cannot() { echo "cluster.sh: $*" >&2; exit 3; }

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [[ $(id -u) == 0 ]] || cannot "slurm-wlm is not installed and installing it needs root"
  command -v apt-get >/dev/null || cannot "slurm-wlm is not installed and there is no apt-get to install it"
  local apt=(timeout 300 apt-get -qq -o Acquire::Retries=1 -o Acquire::http::Timeout=20)
  { "${apt[@]}" update && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y slurm-wlm munge; } >/dev/null 2>&1 \
    || cannot "apt-get install slurm-wlm munge failed (offline? no such package?)"
}

# a slurmctld this script did not start (e.g. the machine's own): use it as it is
foreign_slurmctld() {
  local comm
  alive "$LAB/slurmctld.pid" && return 1
  for comm in /proc/[0-9]*/comm; do
    [[ $(cat "$comm" 2>/dev/null) == slurmctld ]] && return 0
  done
  return 1
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  mkdir -p "$LAB" /etc/munge /run/munge /var/log/munge /var/lib/munge
  [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
  chmod 400 /etc/munge/munge.key
  munge_ok && return 0
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 40); do
    # ours: `down` stops it; a munged that was already running is left alone
    munge_ok && cp /run/munge/munged.pid "$LAB/munged.pid" && return 0
    sleep 0.25
  done
  die "munged did not start; see /var/log/munge/munged.log"
}

write_conf() {
  local host=$1 cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(free -m | awk '/^Mem:/{print $2}') * 9 / 10 ))
  mkdir -p /etc/slurm "$LAB"/{state,spool,log}
  # JobRequeue=1: jobs may requeue themselves. KillWait=10: TERM -> KILL grace when a job ends or requeues.
  # sched_interval=1: a requeued job starts as soon as its credential expired, not on the next 60 s pass.
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ultralongtest
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
StateSaveLocation=$LAB/state
SlurmdSpoolDir=$LAB/spool
SlurmctldPidFile=$LAB/slurmctld.pid
SlurmdPidFile=$LAB/slurmd.pid
SlurmctldLogFile=$LAB/log/slurmctld.log
SlurmdLogFile=$LAB/log/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { timeout 15 sinfo -h -n "$1" -o %t 2>/dev/null || true; }

up() {
  local host st=""
  host=$(hostname -s)
  install_packages
  if foreign_slurmctld; then
    echo "cluster.sh: using the slurmctld already running on $host (not started here; 'down' leaves it)"
  else
    start_munge
    write_conf "$host"
    if alive "$LAB/slurmctld.pid"; then scontrol reconfigure >/dev/null 2>&1 || true
    else /usr/sbin/slurmctld -i; fi   # -i: ignore job state left by an earlier cluster in $LAB
    alive "$LAB/slurmd.pid" || /usr/sbin/slurmd
  fi
  local deadline=$(( SECONDS + 60 ))
  while (( SECONDS < deadline )); do
    st=$(node_state "$host")
    case $st in
      idle*|mix*|alloc*) echo "SLURM up on $host ($(nproc) CPUs)"; return 0 ;;
      down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $host not ready after 60 s (state '${st:-none}'); see $LAB/log/slurmctld.log and slurmd.log"
}

down() {
  local f pid
  for f in "$LAB/slurmd.pid" "$LAB/slurmctld.pid" "$LAB/munged.pid"; do
    [[ -s $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$f"
  done
  echo "SLURM test cluster stopped"
}

status() {
  if ! alive "$LAB/slurmctld.pid" || ! alive "$LAB/slurmd.pid"; then echo "down"; exit 1; fi
  echo "up: node $(hostname -s) is $(node_state "$(hostname -s)")"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash tests/slurm/cluster.sh up|down|status" >&2; exit 2 ;;
esac
