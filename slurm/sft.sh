#!/usr/bin/env bash
# sbatch slurm/sft.sh data.paths=[<sft .jsonl>] data.tokenizer=<tokenizer dir> [section.key=value ...]
# SFT of the 4M model (recipe sft: tp 8, dp = 4 nodes × 8 / 8 = 4; 8K-token chat samples). Starts from the 4M
# stage (checkpoint.init_from=runs/cpt_4m/checkpoints unless you pass another one); writes runs/sft_4m.
#SBATCH --job-name=ultralong-sft
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --signal=B:USR1@180
#SBATCH --time=03:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# Sizes from the planner (docs/planner.md; python tools/plan.py --model llama3.1-8b --target-length 8192
# --global-batch 128 --recompute selective --nodes 4): step ≈ 6 s, save ≈ 112 s (8B × 14 B at 1 GB/s).
# --signal lead = step + save + 60 s margin, rounded up to 30 s; --time = (954 steps × step + saves × save)
# × 1.25 + 10 min start-up, rounded up to 30 min; 954 steps = the 1e9-token budget in full 8K windows.
# tests/test_planner.py keeps them equal to the planner's.
# One task per node runs launch/torchrun.sh, which starts one worker per GPU. USR1 180 s before the time limit:
# checkpoint, exit 75, requeue; the next run resumes from runs/sft_4m/checkpoints/latest. Logs: slurm/logs/ (submit
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

ultralong_train sft runs/sft_4m "runs/cpt_4m/checkpoints" "$@"
