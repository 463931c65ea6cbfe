# shellcheck shell=bash
# source slurm/common.sh      (from slurm/cpt_*.sh, sft.sh, eval_niah.sh; not a command of its own)
#
# What the stage scripts share: bare or container mode, the srun line, the preemption trap and the requeue.
#   ultralong_train <recipe> <its run dir> <its init_from or ""> [section.key=value ...]
#   ultralong_eval <script under tools/> [args ...]
#
# Environment (all optional; sbatch passes your environment to the job):
#   ULTRALONG_CONTAINER_IMAGE   run in this image with pyxis/enroot (srun --container-image); unset: bare mode
#   ULTRALONG_CONTAINER_MOUNTS  extra mounts, comma-separated SRC:DST[:FLAGS] (the checkout and the submit
#                               directory are always mounted at their own paths)
#   ULTRALONG_ENV_SETUP         bare mode: a file sourced first on the batch node (module load, venv activate, ...)
#   ULTRALONG_PYTHON            python of the environment on the nodes or in the image (default python3)
#   ULTRALONG_RECIPE            a recipe (.yaml path or packaged name) in place of the stage's own; it runs as
#                               the stage (gets the stage's train.run_dir; sft.sh's init_from too)
#   ULTRALONG_SRUN_ARGS         extra srun options, space-separated (e.g. "--mpi=pmix --container-remap-root")
#   ULTRALONG_MASTER_ADDR/PORT  torchrun rendezvous (default: the job's first node, port 29500 + job id % 10000)
#   ULTRALONG_DRY_RUN=1         print the srun command instead of running it (works outside a job, too)
#   launch/torchrun.sh's own (ULTRALONG_NPROC_PER_NODE, ULTRALONG_TRAIN_MODULE, NCCL_*, ...) reach every node.
# Before srun, ultralong_train runs `python -m megatron_ultralong.train --dry-run` on the batch node (in container
# mode: one task in the image): bad input is one error line and exit 2 before the training step starts.
# Preemption: each training script asks for `--signal=B:USR1@<lead>` (the planner's one step + one save + 60 s,
# see its header). The trap below passes USR1 (or a TERM sent to this shell) to the training step as USR1,
# waits for it to save a checkpoint and exit 75, then runs `scontrol requeue`; the requeued job resumes from
# <checkpoint dir>/latest. Any other exit code ends the job with that code.

: "${ULTRALONG_HOME:?slurm/common.sh is sourced by the slurm/*.sh scripts, which set ULTRALONG_HOME}"

ultralong_log() { echo "[ultralong $(date '+%F %T')] $*"; }
ultralong_die() { echo "error: $*" >&2; exit 2; }

_ul_dry_run() { [[ ${ULTRALONG_DRY_RUN:-0} == 1 ]]; }

# The job's shape; outside a job only a dry run makes sense (it shows a one-node command).
_ul_job() {
  if [[ -z ${SLURM_JOB_ID:-} ]]; then
    _ul_dry_run || ultralong_die "not inside a SLURM job: submit with sbatch slurm/<script>.sh [overrides...]," \
      "or print the command it would run with ULTRALONG_DRY_RUN=1 bash slurm/<script>.sh"
    SLURM_JOB_ID=0 SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=${HOSTNAME%%.*} SLURM_CPUS_ON_NODE=$(nproc)
  fi
  _UL_NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  # torchrun's rendezvous: the job's first node, computed here because a container may have no scontrol. A
  # MASTER_ADDR/PORT exported in the submitting shell (sbatch passes it on) would be stale: it is not used.
  local hosts=("$SLURM_JOB_NODELIST")
  if command -v scontrol >/dev/null; then mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST"); fi
  export MASTER_ADDR=${ULTRALONG_MASTER_ADDR:-${hosts[0]:-}}
  [[ $MASTER_ADDR =~ ^[A-Za-z0-9._-]+$ ]] || ultralong_die "cannot tell the first node of '$SLURM_JOB_NODELIST'" \
    "without scontrol; export ULTRALONG_MASTER_ADDR=<first node>"
  export MASTER_PORT=${ULTRALONG_MASTER_PORT:-$(( 29500 + SLURM_JOB_ID % 10000 ))}
}

# _UL_SRUN: srun with one task per node, in the container when ULTRALONG_CONTAINER_IMAGE is set.
_ul_srun_prefix() {
  local tasks_per_node=$1 mounts extra
  # --ntasks too: srun would otherwise take SLURM_NTASKS of the job (e.g. 8 per node) and ignore the per-node count
  _UL_SRUN=(srun --nodes="$_UL_NODES" --ntasks="$(( _UL_NODES * tasks_per_node ))"
            --ntasks-per-node="$tasks_per_node" --cpus-per-task="$(( ${SLURM_CPUS_ON_NODE:-1} / tasks_per_node ))")
  if [[ -n ${ULTRALONG_CONTAINER_IMAGE:-} ]]; then
    mounts=$ULTRALONG_HOME:$ULTRALONG_HOME
    if [[ $PWD != "$ULTRALONG_HOME" && $PWD != "$ULTRALONG_HOME"/* ]]; then mounts+=,$PWD:$PWD; fi
    if [[ -n ${ULTRALONG_CONTAINER_MOUNTS:-} ]]; then mounts+=,$ULTRALONG_CONTAINER_MOUNTS; fi
    _UL_SRUN+=(--container-image="$ULTRALONG_CONTAINER_IMAGE" --container-mounts="$mounts"
               --container-workdir="$PWD")
  fi
  read -ra extra <<< "${ULTRALONG_SRUN_ARGS:-}"
  _UL_SRUN+=("${extra[@]}")
}

_ul_check_overrides() {
  local arg
  for arg in "$@"; do
    [[ $arg =~ ^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+= ]] || ultralong_die "argument '$arg': arguments after" \
      "the script are dotted overrides such as train.max_steps=10 (python -m megatron_ultralong.train --help-config)"
  done
}

_ul_setup_env() {
  if [[ -n ${ULTRALONG_ENV_SETUP:-} ]]; then
    [[ -f $ULTRALONG_ENV_SETUP ]] || ultralong_die "ULTRALONG_ENV_SETUP=$ULTRALONG_ENV_SETUP: no such file"
    set +u  # activate scripts (conda, modules) read unset variables
    # shellcheck disable=SC1090
    source "$ULTRALONG_ENV_SETUP"
    set -u
  fi
  export PYTHONPATH=$ULTRALONG_HOME${PYTHONPATH:+:$PYTHONPATH}
}

# ------------------------------------------------------------------ the step, the trap, the exit code
_UL_STEP_PID=""
_UL_SIGNAL=""
_UL_FORWARDED=""
_UL_INTERRUPTED=0

# shellcheck disable=SC2317  # runs from the traps below
_ul_on_signal() {  # once: the first USR1 (time limit near) or TERM (preemption, scancel --full) asks for a save
  _UL_INTERRUPTED=1
  [[ -z $_UL_SIGNAL ]] || return 0
  _UL_SIGNAL=$1
  ultralong_log "SIG$1: asking the job step to save a checkpoint and stop"
  _ul_forward_signal
}

# USR1 to srun, once there is a step: srun passes it to every process of the step (TERM would make srun kill it)
_ul_forward_signal() {
  [[ -n $_UL_STEP_PID && -z $_UL_FORWARDED ]] || return 0
  _UL_FORWARDED=1
  kill -USR1 "$_UL_STEP_PID" 2>/dev/null || true
}

# From here on a USR1/TERM to the batch shell is remembered (and passed to the step once there is one).
_ul_trap_signals() {
  trap '_ul_on_signal USR1' USR1
  trap '_ul_on_signal TERM' TERM
}

# Run "$@" as a job step in the background (bash runs traps only between commands) and wait for it; sets _UL_RC.
_ul_run_step() {
  if [[ -n $_UL_SIGNAL ]]; then  # signalled before the step started: nothing new to save, requeue
    ultralong_log "SIG$_UL_SIGNAL before the training step started"
    _UL_RC=75
    return 0
  fi
  "$@" &
  _UL_STEP_PID=$!
  if [[ -n $_UL_SIGNAL ]]; then _ul_forward_signal; fi  # it came while the step was being started
  while :; do
    if wait "$_UL_STEP_PID"; then _UL_RC=0; else _UL_RC=$?; fi
    if (( _UL_RC > 128 && _UL_INTERRUPTED )); then _UL_INTERRUPTED=0; continue; fi  # the trap cut wait short
    break
  done
}

_ul_print_command() {
  echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
  printf '%q ' "$@"
  echo
}

# The trainer's --dry-run (recipe, world size = nodes × workers per node, data, tokenizer, init_from; prints the layout
# and memory per GPU) before the training step, on this batch node (bare mode) or in one task of the image
# (container mode): one error line and exit 2 here, before any GPU work. Its train module is the one torchrun runs.
_ul_dry_run_check() {
  local python=${ULTRALONG_PYTHON:-python3} check=(--dry-run --nodes "$_UL_NODES") step=()
  local per_node=${ULTRALONG_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}  # what launch/torchrun.sh starts per node
  if [[ $per_node != 0 ]]; then check+=(--gpus-per-node "$per_node"); fi  # none: one CPU worker per node
  if [[ -n ${ULTRALONG_CONTAINER_IMAGE:-} ]]; then
    local nodes=$_UL_NODES job_srun=("${_UL_SRUN[@]}")
    _UL_NODES=1
    _ul_srun_prefix 1  # one task on the first node, in the image
    step=("${_UL_SRUN[@]}")
    _UL_NODES=$nodes _UL_SRUN=("${job_srun[@]}")
  else  # the python is on this node too: one error line here beats one per node
    command -v "$python" >/dev/null || ultralong_die "ULTRALONG_PYTHON=$python: not found on ${HOSTNAME%%.*};" \
      "export ULTRALONG_PYTHON=<your environment's python> (or ULTRALONG_ENV_SETUP=<file that activates it>)"
  fi
  "${step[@]}" "$python" -m "${ULTRALONG_TRAIN_MODULE:-megatron_ultralong.train}" "${check[@]}" "$@" || exit $?
}

# ultralong_train <recipe> <its run dir> <its init_from or ""> [overrides...]: train, requeue on exit 75.
# The stage's recipe holds its run dir and init_from; they are passed only to a recipe put in its place
# (ULTRALONG_RECIPE), which then runs as that stage ("" keeps the replacement's own init_from).
ultralong_train() {
  local stage=$1 recipe=${ULTRALONG_RECIPE:-$1} run_dir=$2 init_from=$3 args mode
  shift 3
  _ul_check_overrides "$@"
  args=(--config "$recipe")
  if [[ $recipe != "$stage" ]]; then
    args+=("train.run_dir=$run_dir")
    if [[ -n $init_from ]]; then args+=("checkpoint.init_from=$init_from"); fi
  fi
  args+=("$@")  # the user's overrides come last and win
  _ul_job
  _ul_srun_prefix 1
  local cmd=("${_UL_SRUN[@]}" bash "$ULTRALONG_HOME/launch/torchrun.sh" "${args[@]}")
  if _ul_dry_run; then _ul_print_command "${cmd[@]}"; return 0; fi

  _ul_trap_signals
  _ul_setup_env
  mode="bare"
  if [[ -n ${ULTRALONG_CONTAINER_IMAGE:-} ]]; then mode="container $ULTRALONG_CONTAINER_IMAGE"; fi
  ultralong_log "job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, $_UL_NODES node(s), $mode: ${args[*]}"
  _ul_dry_run_check "${args[@]}"
  _ul_run_step "${cmd[@]}"
  case $_UL_RC in
    0) ultralong_log "training finished (train.max_steps reached)" ;;
    75)
      ultralong_log "checkpoint saved; requeueing job $SLURM_JOB_ID (it resumes from the latest checkpoint)"
      trap '' USR1 TERM  # SLURM answers the requeue with TERM to this script: nothing left to do but exit
      scontrol requeue "$SLURM_JOB_ID" || ultralong_log "requeue refused (submitted with --no-requeue?):" \
        "resubmit the same command to resume"
      ;;
    *) ultralong_log "training step failed with exit code $_UL_RC; not requeued" ;;
  esac
  exit "$_UL_RC"
}

# ultralong_eval <tool> [args...]: one task on the first node, no requeue (an evaluation starts over).
ultralong_eval() {
  local tool=$1 mode="bare"
  shift
  [[ -f $ULTRALONG_HOME/tools/$tool ]] || ultralong_die "tools/$tool does not exist in $ULTRALONG_HOME: this" \
    "checkout has no such evaluation tool yet; update the checkout"
  _ul_job
  _UL_NODES=1
  _ul_srun_prefix 1
  local cmd=("${_UL_SRUN[@]}" "${ULTRALONG_PYTHON:-python3}" "$ULTRALONG_HOME/tools/$tool" "$@")
  if _ul_dry_run; then _ul_print_command "${cmd[@]}"; return 0; fi
  _ul_setup_env  # no trap: a signal ends the evaluation (the job's end stops the step)
  if [[ -n ${ULTRALONG_CONTAINER_IMAGE:-} ]]; then mode="container $ULTRALONG_CONTAINER_IMAGE"; fi
  ultralong_log "job $SLURM_JOB_ID, $mode: tools/$tool $*"
  _ul_run_step "${cmd[@]}"
  ultralong_log "tools/$tool exited $_UL_RC"
  exit "$_UL_RC"
}

# ultralong_eval_sharded <tool> [args...]: an evaluation of a Megatron checkpoint (--ckpt ... --tp T --cp C) on
# every node of the job: one torchrun per node, one worker per GPU (world size nodes × GPUs = T·C), rendezvous on
# the first node. The tool checks its input on every rank before any weight is read (one error line, exit 2).
ultralong_eval_sharded() {
  local tool=$1 mode="bare" per_node
  shift
  [[ -f $ULTRALONG_HOME/tools/$tool ]] || ultralong_die "tools/$tool does not exist in $ULTRALONG_HOME: this" \
    "checkout has no such evaluation tool yet; update the checkout"
  _ul_job
  per_node=${ULTRALONG_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
  _ul_srun_prefix 1
  local cmd=("${_UL_SRUN[@]}" "${ULTRALONG_PYTHON:-python3}" -m torch.distributed.run --nnodes="$_UL_NODES"
             --nproc-per-node="$per_node" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
             "$ULTRALONG_HOME/tools/$tool" "$@")
  if _ul_dry_run; then _ul_print_command "${cmd[@]}"; return 0; fi
  _ul_setup_env
  if [[ -n ${ULTRALONG_CONTAINER_IMAGE:-} ]]; then mode="container $ULTRALONG_CONTAINER_IMAGE"; fi
  ultralong_log "job $SLURM_JOB_ID, $_UL_NODES node(s) × $per_node worker(s), $mode: tools/$tool $*"
  _ul_run_step "${cmd[@]}"
  ultralong_log "tools/$tool exited $_UL_RC"
  exit "$_UL_RC"
}

# ultralong_eval_tool <tool> [args...]: ultralong_eval_sharded with --ckpt, else ultralong_eval (an HF folder).
ultralong_eval_tool() {
  local arg
  for arg in "$@"; do
    if [[ $arg == --ckpt || $arg == --ckpt=* ]]; then ultralong_eval_sharded "$@"; fi
  done
  ultralong_eval "$@"
}
