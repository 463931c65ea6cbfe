"""bench/gpu_check.sh and bench/train_step.py on this CPU: the script's syntax, shellcheck, and its CPU rehearsal
(every part but the GPU itself) writing the one JSON of figures."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.train.helpers import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None and not os.path.exists(os.path.join(os.path.dirname(
    sys.executable), "shellcheck")), reason="shellcheck is not installed")
def test_gpu_check_passes_shellcheck():
    exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    r = subprocess.run([exe, "-x", str(SCRIPT)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout


def test_gpu_check_without_a_gpu_refuses_in_one_line(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert r.returncode == 2 and "error: no CUDA GPU here" in r.stdout


@pytest.mark.slow
def test_gpu_check_cpu_rehearsal_writes_one_json_of_figures(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "GPU_CHECK_ALLOW_CPU": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["exit"]["planner"] == figures["exit"]["train_step"] == figures["exit"]["gpu_tests"] == "0"
    assert figures["environment"]["attention_path"].startswith("sdpa (Transformer Engine not importable")
    assert figures["planner_4m_32_nodes"]["cp"] == 32
    (bench,) = figures["train_step"]
    assert bench["hf"] is not None and bench["ratio_tokens_per_s"] > 0
    assert set(bench["error_pct"]) == {"step_time", "saved_activations"}  # no CUDA peak to compare on CPU
    # the planner's held activations against what autograd holds in our step (docs/planner.md)
    assert abs(bench["error_pct"]["saved_activations"]) <= 25
    assert figures["gpu_tests"]["tests"] > 0 and figures["gpu_tests"]["failures"] == 0
