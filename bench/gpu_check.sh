#!/usr/bin/env bash
# bash bench/gpu_check.sh            # on one H100/H200 machine, from the checkout root; at most 8 minutes
# The prepared GPU check (issue 17): the gpu-marked tests, bench/train_step.py at 16K/64K/128K tokens (8B width,
# 2 layers) against transformers, the planner's prediction vs measured, the inference bench if there is one. Writes
# one JSON of figures, "$OUT/gpu_check.json" (OUT defaults to runs/gpu_check/), with each part's log beside it.
# Made for a machine with Python 3.12, torch (CUDA) and transformers, but without megatron-core, Transformer Engine
# or network: a cp312 megatron-core==0.16.1 wheel (and the other wheels docs/gpu.md lists) in bench/wheels/ are
# installed into a private folder first. Without TE our step runs its SDPA path, and the JSON says so.
# GPU_CHECK_LENGTHS=16384,65536,131072 and GPU_CHECK_LAYERS=2 change the bench; GPU_CHECK_ALLOW_CPU=1 runs the
# same steps on a CPU at the bench's tiny size (how the test checks this script).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # 8 minutes less the JSON summary
WHEELS=${GPU_CHECK_WHEELS:-bench/wheels}
SITE=${TMPDIR:-/tmp}/ultralong_gpu_check_site
START=$SECONDS

log() { echo "[gpu_check] $*" | tee -a "$OUT/gpu_check.log"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }
# run NAME LIMIT_S CMD...: one part with its own log and exit status (124 = ran out of time)
run() {
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  if ((remaining < 20)); then
    log "$name: skipped, the 8-minute budget is spent"
    echo "skipped" >"$OUT/$name.rc"
    return
  fi
  ((limit > remaining)) && limit=$remaining
  log "$name: up to ${limit}s: $*"
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$rc" >"$OUT/$name.rc"
  log "$name: exit $rc after $((SECONDS - t0))s (log: $OUT/$name.log)"
}

: >"$OUT/gpu_check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -d $WHEELS ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  # --no-deps: the wheels folder brings exactly what the machine lacks (docs/gpu.md); nothing is fetched
  run install 120 "$PY" -m pip install --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH#"$PWD"}"
else
  log "install: no wheels in $WHEELS (see docs/gpu.md); using what is installed"
fi

"$PY" - "$OUT/environment.json" <<'EOF' 2>>"$OUT/gpu_check.log"
import importlib.util, json, sys
import torch
env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.cuda.is_available(),
       "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
for name in ("megatron.core", "transformer_engine", "transformers", "pytest", "einops", "tensorboard"):
    try:
        env[name] = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        env[name] = False
try:
    import megatron.core
    env["megatron_core_version"] = megatron.core.__version__
except Exception as e:  # noqa: BLE001 - reported, not raised
    env["megatron_core_version"] = f"not importable: {e}"
env["attention_path"] = "te" if env["transformer_engine"] and env["cuda"] else \
    "sdpa (Transformer Engine not importable: our step runs its SDPA path)"
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
EOF
log "environment: $(tr -d '\n ' 2>/dev/null < "$OUT/environment.json")"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    && [[ ${GPU_CHECK_ALLOW_CPU:-0} != 1 ]]; then
  log "error: no CUDA GPU here; run on the GPU machine (or GPU_CHECK_ALLOW_CPU=1 for the CPU rehearsal)"
  exit 2
fi
LENGTHS=${GPU_CHECK_LENGTHS:-}
if [[ -z $LENGTHS ]] && "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  LENGTHS=16384,65536,131072
fi

run planner 30 "$PY" tools/plan.py --model llama3.1-8b --target-length 4194304 --gpu h100-80gb --gpus-per-node 8 \
  --nodes 32 --json
run train_step 240 "$PY" bench/train_step.py ${LENGTHS:+--lengths "$LENGTHS"} --layers "${GPU_CHECK_LAYERS:-2}" \
  --json "$OUT/train_step.json"
if [[ -f bench/inference.py ]]; then
  # on a GPU: 128K tokens (its default), ours at CP 1 (and 2 with two GPUs) vs transformers, 8 new tokens
  run inference 90 "$PY" bench/inference.py --new-tokens 8 --json "$OUT/inference.json"
else
  log "inference: no bench/inference.py in this checkout; skipped"
fi
run gpu_tests 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests/gpu tests/train/test_trainer_gpu.py \
  --junitxml "$OUT/gpu_tests.xml"

"$PY" - "$OUT" <<'EOF'
import json, os, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def rc(name):
    try:
        return open(os.path.join(out, f"{name}.rc")).read().strip()
    except OSError:
        return None
summary = {"environment": load("environment.json"), "exit": {n: rc(n) for n in
           ("install", "planner", "train_step", "inference", "gpu_tests")},
           "train_step": load("train_step.json"), "inference": load("inference.json")}
try:
    with open(os.path.join(out, "planner.log")) as f:
        summary["planner_4m_32_nodes"] = json.loads(f.read())[0]
except (OSError, ValueError, IndexError):
    summary["planner_4m_32_nodes"] = None
try:
    root = ET.parse(os.path.join(out, "gpu_tests.xml")).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    summary["gpu_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    summary["gpu_tests"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                      if c.find("failure") is not None or c.find("error") is not None]
except (OSError, ET.ParseError, AttributeError):
    summary["gpu_tests"] = None
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"[gpu_check] figures: {os.path.join(out, 'gpu_check.json')}")
EOF
log "done in $((SECONDS - START))s"
