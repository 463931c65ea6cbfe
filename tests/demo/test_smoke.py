"""`make demo DEMO=smoke`: every stage of the demo at minimal size, through the real tools, and its report."""
import json
import subprocess
import sys

import pytest

from megatron_ultralong.demo.report import REPORT_KEYS
from megatron_ultralong.train import EXIT_OK, EXIT_PREEMPTED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "megatron_ultralong.demo", "--variant", "smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "result.json").read_text()), proc.stdout


def test_smoke_demo_writes_report_json_with_exactly_the_issue_keys(smoke):
    out, result, _ = smoke
    report = json.loads((out / "report.json").read_text())
    assert tuple(report) == REPORT_KEYS
    assert report["window"] == 128 and report["target_length"] == 512
    for key in ("niah_before", "niah_after"):
        assert set(report[key]) == {"128", "512"} and all(0 <= v <= 1 for v in report[key].values())
    assert 0 <= report["short_score_before"] <= 1 and 0 <= report["short_score_after"] <= 1
    assert report["wall_time_s"] > sum(s["seconds"] for s in result["stages"]) * 0.9


def test_smoke_demo_runs_every_stage_through_the_trainer_and_converters(smoke):
    out, result, stdout = smoke
    names = [s["name"] for s in result["stages"]]
    assert names == ["data", "base", "base_sft", "base export + import", "eval before", "cpt", "sft", "export",
                     "eval after"]
    cpt = next(s for s in result["stages"] if s["name"] == "cpt")
    assert cpt["exit_codes"] == [EXIT_PREEMPTED, EXIT_OK] and cpt["preempted_at"] >= 2  # CP=2 torchrun, resumed
    steps = [json.loads(line)["step"] for line in (out / "cpt" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # resumed at the step after the checkpoint: no gap, no repeat
    assert (out / "base_mcore" / "latest").exists()  # re-imported through tools/convert_from_hf.py
    assert result["export"]["rope_scaling"]["rope_type"] == "yarn" and result["export"]["rope_scaling"]["factor"] == 4
    assert result["export"]["max_abs_diff"] < 1e-3  # --verify at the target length
    for s in result["stages"]:
        if "loss_first" in s:
            assert s["steps"] > 0 and s["tokens"] > 0


def test_smoke_demo_draws_the_grids_side_by_side_and_rechecks_through_transformers(smoke):
    out, result, stdout = smoke
    assert (out / "niah_before_after.png").stat().st_size > 10_000
    assert result["recheck"]["cells"] == 1 and result["recheck"]["same"] == 1
    md = (out / "REPORT.md").read_text()
    assert "## Passkey retrieval" in md and "## Short tasks" in md and str(out / "niah_before_after.png") in md
    assert "| before (aligned base, no YaRN) |" in stdout  # the console shows the report's tables
