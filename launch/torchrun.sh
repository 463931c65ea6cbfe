#!/usr/bin/env bash
# bash launch/torchrun.sh --config <recipe> data.paths=[...] data.tokenizer=... [section.key=value ...]  # one node
# srun --ntasks-per-node=1 bash launch/torchrun.sh --config cpt_4m data.paths=[...] data.tokenizer=... [...]  # per node
#
# Starts `python -m megatron_ultralong.train` under torchrun on this node. Inside an srun step the node count, this
# node's rank and the rendezvous host come from SLURM (MASTER_ADDR = first host of the node list, MASTER_PORT from
# the job id); outside SLURM it is one node. A SIGUSR1/SIGTERM to this script reaches every worker (torchrun forwards
# neither) as soon as the worker has its handler installed; the workers save a checkpoint and exit 75. This script
# exits with the trainer's code (0 done, 75 preempted: requeue, 2 bad input, 1 failure) although torchrun itself
# reports every worker failure as 1 (rank 0's <run dir>/exit_status.json keeps the real one).
#
# Environment (all optional):
#   ULTRALONG_PYTHON          python of the environment to run (default: python3 on PATH)
#   ULTRALONG_NPROC_PER_NODE  workers per node (default: SLURM's GPUs on this node, else visible GPUs, else 1)
#   MASTER_ADDR, MASTER_PORT  rendezvous (default: first node of the job, 29500 + job id % 10000)
#   ULTRALONG_STATUS_WAIT_S   seconds a node other than 0 waits for rank 0's exit status (default 30)
#   ULTRALONG_TRAIN_MODULE    module torchrun runs (default megatron_ultralong.train)
#   ULTRALONG_DRY_RUN=1       print the environment and the torchrun command instead of running them
#   CUDA/NCCL/torch variables set below keep a value you export yourself.
# shellcheck disable=SC2317  # on_signal and its helpers run from traps, which shellcheck cannot see
set -euo pipefail

ULTRALONG_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${ULTRALONG_PYTHON:-python3}
TRAIN_MODULE=${ULTRALONG_TRAIN_MODULE:-megatron_ultralong.train}
HOST=${HOSTNAME%%.*}

log() { echo "[launch $HOST] $*"; }
die() { echo "error: $*" >&2; exit 2; }

# ------------------------------------------------------------------ where this node sits
nnodes=1
node_rank=0
if [[ -n ${SLURM_STEP_ID:-} ]]; then  # inside srun (the batch shell also has SLURM_PROCID, but no step id)
  nnodes=${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-1}}
  node_rank=${SLURM_NODEID:-0}
  ntasks=${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-$nnodes}}
  [[ $ntasks == "$nnodes" ]] || die "srun started $ntasks tasks on $nnodes nodes; torchrun needs one task per node:" \
    "srun --ntasks-per-node=1 bash launch/torchrun.sh ..."
fi

if [[ -z ${MASTER_ADDR:-} ]]; then
  if (( nnodes == 1 )); then
    MASTER_ADDR=127.0.0.1
  elif command -v scontrol >/dev/null; then
    mapfile -t hosts < <(scontrol show hostnames "${SLURM_STEP_NODELIST:-$SLURM_JOB_NODELIST}")
    MASTER_ADDR=${hosts[0]}
  else
    die "MASTER_ADDR is not set and there is no scontrol here (a container?) to read the node list;" \
      "export MASTER_ADDR=\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n1) before srun"
  fi
fi
MASTER_PORT=${MASTER_PORT:-$(( 29500 + ${SLURM_JOB_ID:-0} % 10000 ))}

gpu_count() {
  if [[ -n ${SLURM_GPUS_ON_NODE:-} && ${SLURM_GPUS_ON_NODE} != 0 ]]; then echo "$SLURM_GPUS_ON_NODE"
  elif [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then local d; IFS=, read -ra d <<< "$CUDA_VISIBLE_DEVICES"; echo "${#d[@]}"
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then nvidia-smi -L | grep -c '^GPU'
  else echo 1  # CPU: one gloo worker
  fi
}
nproc=${ULTRALONG_NPROC_PER_NODE:-$(gpu_count)}

# ------------------------------------------------------------------ environment defaults (H100, NCCL)
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}   # Megatron: TP/SP comm is issued in order
export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}  # frees async-collective buffers sooner
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # less fragmentation, long seqs
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # torchrun's own default, set so it does not warn
export PYTHONUNBUFFERED=1                     # log lines reach the SLURM log as they happen
# torchrun must not answer a TERM that reaches it too (srun/scancel signal every process of a step) by killing
# the workers: it then handles only these (PET_* is how torchrun reads --signals-to-handle; older torch ignores it)
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGINT,SIGHUP,SIGQUIT}
export PYTHONPATH=$ULTRALONG_HOME${PYTHONPATH:+:$PYTHONPATH}  # this checkout's code, also inside a container

cmd=("$PYTHON" -m torch.distributed.run --nnodes="$nnodes" --node-rank="$node_rank" --nproc-per-node="$nproc"
     --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" -m "$TRAIN_MODULE" "$@")

if [[ ${ULTRALONG_DRY_RUN:-0} == 1 ]]; then
  log "dry run: env CUDA_DEVICE_MAX_CONNECTIONS=$CUDA_DEVICE_MAX_CONNECTIONS" \
    "TORCH_NCCL_AVOID_RECORD_STREAMS=$TORCH_NCCL_AVOID_RECORD_STREAMS" \
    "PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF NCCL_DEBUG=$NCCL_DEBUG OMP_NUM_THREADS=$OMP_NUM_THREADS" \
    "PET_SIGNALS_TO_HANDLE=$PET_SIGNALS_TO_HANDLE PYTHONPATH=$PYTHONPATH"
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi

# ------------------------------------------------------------------ signals: pass USR1/TERM on to the workers
worker_pid=""  # torchrun; the workers are its children (each in a session of its own)
signalled=""
interrupted=0
deliverer=""

children_of() {  # pids whose parent is $1 (no procps needed, also in a slim container)
  local stat line rest ppid
  for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null < "$stat" || continue
    rest=${line##*) }  # fields after "pid (comm) "
    read -r _ ppid _ <<< "$rest"
    if [[ $ppid == "$1" ]]; then echo "${stat//[^0-9]/}"; fi
  done
}

catches() {  # true when process $1 has a handler for signal number $2 (its SigCgt mask)
  local key mask
  while read -r key mask; do
    if [[ $key == SigCgt: ]]; then (( (16#$mask >> ($2 - 1)) & 1 )); return; fi
  done 2>/dev/null < "/proc/$1/status"
  return 1
}

# Each worker gets the signal once, as soon as it has a handler for it: a worker still importing ignores it
# (inherited, see below), and torchrun may not have started every worker yet. Stopped when torchrun exits.
start_delivery() {
  [[ -z $deliverer ]] || return 0
  (
    trap '' USR1  # srun signals every process of the step: this loop must outlive a second USR1
    declare -A sent=()
    signo=$(kill -l "$signalled")
    while :; do
      for pid in $(children_of "$worker_pid"); do
        if [[ -z ${sent[$pid]:-} ]] && catches "$pid" "$signo"; then
          kill -s "$signalled" "$pid" 2>/dev/null || true
          sent[$pid]=1
        fi
      done
      sleep 0.2
    done
  ) &
  deliverer=$!
}

on_signal() {  # the first USR1 (time limit near) or TERM asks for a checkpoint; later ones change nothing
  interrupted=1
  [[ -z $signalled ]] || return 0
  signalled=$1
  log "SIG$1: asking the workers to save a checkpoint and stop"
  if [[ -n $worker_pid ]]; then start_delivery; fi
}
# from here on: a signal during the checks below is remembered, not fatal
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

# ------------------------------------------------------------------ check, run, translate the exit code
command -v "$PYTHON" >/dev/null || die "ULTRALONG_PYTHON=$PYTHON: not found; point it at your environment's python"
# one-line error and exit 2 on a bad recipe, override, world size or init_from
run_dir=$("$PYTHON" "$ULTRALONG_HOME/launch/preflight.py" --world-size "$(( nnodes * nproc ))" "$@") || exit $?
status_file=$run_dir/exit_status.json  # rank 0's {"code", "reason", "step"}
if (( node_rank == 0 )); then rm -f "$status_file"; fi
start=$(date +%s)

if [[ -n $signalled ]]; then  # nothing started, nothing to save: the latest checkpoint is where the next run resumes
  log "SIG$signalled before the workers started: exiting 75 (requeue)"
  exit 75
fi
# torchrun and the workers start with USR1/TERM ignored (inherited through exec), so a signal that arrives while
# they import cannot kill them; the trainer installs its own handlers, torchrun none for these two
( trap '' USR1 TERM; exec "${cmd[@]}" ) &
worker_pid=$!
if [[ -n $signalled ]]; then start_delivery; fi  # it came between the check above and the start
log "node $node_rank/$nnodes: torchrun started, $nproc workers, rendezvous $MASTER_ADDR:$MASTER_PORT, run dir $run_dir"

while :; do
  if wait "$worker_pid"; then rc=0; else rc=$?; fi
  if (( rc > 128 )) && (( interrupted )); then interrupted=0; continue; fi  # a trap interrupted wait
  break
done
if [[ -n $deliverer ]]; then kill "$deliverer" 2>/dev/null || true; fi

code=$rc
if (( rc != 0 )); then  # torchrun says 1 for any worker failure: rank 0's exit status says which
  wait_s=${ULTRALONG_STATUS_WAIT_S:-30}
  if (( node_rank == 0 )); then wait_s=2; fi  # rank 0 wrote it before its torchrun could exit
  for (( i = 0; i <= wait_s; i++ )); do
    recorded=$("$PYTHON" - "$status_file" "$start" <<'PY' 2>/dev/null || true
import json, os, sys
path, start = sys.argv[1], float(sys.argv[2])
if os.path.getmtime(path) >= start - 5:  # written by this launch, not an earlier one
    print(int(json.load(open(path))["code"]))
PY
)
    if [[ -n $recorded ]]; then break; fi
    if (( i < wait_s )); then sleep 1; fi
  done
  # rank 0 may have finished (0) while another rank failed: then torchrun's 1 stands
  if [[ -n ${recorded:-} && $recorded != 0 ]]; then code=$recorded; fi
fi
case $code in
  "$rc") log "torchrun exited $rc" ;;
  75) log "torchrun exited $rc (any worker exit is a failure to it); trainer: 75, checkpoint saved, requeue" ;;
  *) log "torchrun exited $rc; trainer exit code $code" ;;
esac
exit "$code"
