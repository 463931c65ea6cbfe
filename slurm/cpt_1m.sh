#!/usr/bin/env bash
# sbatch slurm/cpt_1m.sh data.paths=[<mixture .json>] data.tokenizer=<tokenizer dir> [section.key=value ...]
# CPT 128K -> 1M tokens from Llama-3.1-8B-Instruct (recipe cpt_1m: tp 8 × cp 16 × dp 2 = 256 H100, 32 nodes).
# Starts from the recipe's checkpoint.init_from (ckpt/llama31-8b, made by tools/convert_from_hf.py); writes runs/cpt_1m.
#SBATCH --job-name=ultralong-cpt-1m
#SBATCH --nodes=32
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --signal=B:USR1@270
#SBATCH --time=04:30:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# Sizes from the planner (docs/planner.md; python tools/plan.py --model llama3.1-8b --target-length 1048576
# --gpu h100-80gb --gpus-per-node 8 --nodes 32): step ≈ 88 s, save ≈ 112 s (8B × 14 B at 1 GB/s).
# --signal lead = step + save + 60 s margin, rounded up to 30 s; --time = (120 steps × step + saves × save)
# × 1.25 + 10 min start-up, rounded up to 30 min. tests/test_planner.py keeps them equal to the planner's.
# One task per node runs launch/torchrun.sh, which starts one worker per GPU. USR1 270 s before the time limit:
# checkpoint, exit 75, requeue; the next run resumes from runs/cpt_1m/checkpoints/latest. Logs: slurm/logs/ (submit
# from the checkout root). Container mode, data mounts, python: see slurm/common.sh and docs/slurm.md.
set -euo pipefail

# the checkout: this file's parent folder, or (sbatch runs a copy of it) the folder of the path you submitted
if [[ -z ${ULTRALONG_HOME:-} ]]; then
  ULTRALONG_HOME=$(cd "$(dirname "$0")/.." && pwd)
  if [[ ! -f $ULTRALONG_HOME/slurm/common.sh && -n ${SLURM_JOB_ID:-} ]]; then
    ULTRALONG_HOME=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's|^ *Command=\(/.*\)/slurm/[^/ ]*\.sh\( .*\)*$|\1|p')
  fi
fi
[[ -f $ULTRALONG_HOME/slurm/common.sh ]] \
  || { echo "error: no slurm/common.sh under '$ULTRALONG_HOME'; export ULTRALONG_HOME=<checkout>" >&2; exit 2; }
# shellcheck source=slurm/common.sh
source "$ULTRALONG_HOME/slurm/common.sh"

ultralong_train cpt_1m runs/cpt_1m "" "$@"
