#!/usr/bin/env bash
# sbatch slurm/eval_perplexity.sh --hf hf/llama31-8b-4m --data data/heldout_idx/books --lengths 131072,1048576 \
#     --out eval/ppl_4m
# Perplexity vs context length on held-out long documents with an exported HF model: runs
# tools/eval_perplexity.py with the arguments given here, unchanged (python tools/eval_perplexity.py --help).
# Writes <out>/perplexity.json and perplexity.png.
# A Megatron checkpoint on several nodes (one torchrun per node, one worker per GPU, world = tp·cp; GPUs per
# target length: docs/eval.md): sbatch --nodes=2 --gpus-per-node=8 slurm/eval_perplexity.sh --ckpt CKPT --tp 8 --cp 2 ...
#SBATCH --job-name=ultralong-eval-ppl
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm/logs/%x-%j.out
# tools/eval_perplexity.py runs the model on one GPU. No preemption signal: an evaluation is not resumable, a
# requeue (node failure) starts it over. Container mode and python: see slurm/common.sh and docs/slurm.md.
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

ultralong_eval_tool eval_perplexity.py "$@"
