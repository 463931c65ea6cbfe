"""Metrics: jsonl truncation on resume, FLOP accounting, progress line."""
import io
import json

import pytest

from megatron_ultralong.config import load_recipe
from megatron_ultralong.train.metrics import RECORD_KEYS, MetricsLogger, train_flops_per_token, truncate_jsonl


def test_truncate_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')
    assert truncate_jsonl(str(path), 5) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert truncate_jsonl(str(path), 5) == 0


def test_flops_per_token_of_llama_8b_at_1m_is_6n_plus_attention():
    cfg = load_recipe("cpt_1m")
    n_matmul = 32 * (4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336) + 4096 * 128256
    attention = 32 * 2 * 1048576 * 4096
    assert train_flops_per_token(cfg) == pytest.approx(6 * n_matmul + 3 * attention)
    # at 1M tokens attention dominates: more than 10x the 6N term
    assert 3 * attention > 10 * 6 * n_matmul


def test_logger_writes_full_precision_records_and_a_progress_line(tmp_path):
    cfg = load_recipe("toy_cpt", [f"train.run_dir={tmp_path}", "train.tensorboard=false", "train.max_steps=4",
                                  "train.log_interval=2"])
    out = io.StringIO()
    log = MetricsLogger(cfg, enabled=True, start_step=0, stream=out)
    loss = 1 / 3
    for step in (1, 2):
        log.write({"step": step, "loss": loss, "lr": 1e-3, "grad_norm": None, "tokens": 512, "loss_tokens": 500,
                   "tokens_per_s": 12345.0, "mfu": None, "mem_gb": 0.5, "step_time_s": 0.04})
    log.close()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert list(recs[0]) == list(RECORD_KEYS) and recs[1]["loss"] == loss  # exact float round trip
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("step 2/4 | loss 0.3333") and "ETA" in lines[0]
    assert "gnorm -" in lines[0] and "12.3k tok/s" in lines[0]


def test_disabled_logger_writes_nothing(tmp_path):
    cfg = load_recipe("toy_cpt", [f"train.run_dir={tmp_path}"])
    log = MetricsLogger(cfg, enabled=False)
    log.write({"step": 1})
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists()
