#!/usr/bin/env bash
# sbatch slurm/eval_lm.sh --hf hf/llama31-8b-4m --hf-base hf/llama31-8b-instruct --suite paper \
#   --confirm-run-unsafe-code --out eval/lm_4m
# Short tasks (MMLU, MMLU-Pro, MATH, GSM8K, HumanEval, ...) through lm-evaluation-harness on exported HF models:
# runs tools/eval_lm.py with the arguments given here, unchanged (python tools/eval_lm.py --help); needs the eval
# extra. Writes <out>/results.json (and results_base.json with --hf-base) and retention.md.
#SBATCH --job-name=ultralong-eval-lm
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# tools/eval_lm.py runs one model at a time on one GPU (--hf, then --hf-base). No preemption signal: an
# evaluation is not resumable, a requeue (node failure) starts it over. Container mode and python: see
# slurm/common.sh and docs/slurm.md.
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

ultralong_eval eval_lm.py "$@"
