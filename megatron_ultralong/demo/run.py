"""The demo's stages in order, and the ablation's extra CPT + SFT runs; returns the result write_report reads.

    result = run_demo(Path("runs/demo"), "full", ablation=False)
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List

from .plan import PLANS, DemoPlan, StageSize, rope_variants
from .report import by_length, write_report
from .stages import StageRun, export, reimport, train_stage

SEED = 0
PREEMPT_AFTER = 3
"""CPT steps logged before the demo sends SIGUSR1; the trainer saves on the signal (plan.cpt_interval: its
periodic checkpoints)."""


def say(msg: str) -> None:
    print(msg, flush=True)


def _quiet_libraries() -> None:
    """Keep the demo's output to what it shows: no CPU-fallback notices, no weight-loading bars (each tool's own
    log under logs/ keeps everything)."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _stage_args(recipe: str, size: StageSize, plan: DemoPlan, data_paths: str, tokenizer: str,
                extra: List[str] = ()) -> List[str]:
    args = ["--config", recipe, f"data.paths=[{data_paths}]", f"data.tokenizer={tokenizer}",
            f"train.max_steps={size.steps}", f"train.global_batch_size={size.batch}",
            f"train.micro_batch_size={size.micro_batch or size.batch}", f"optim.lr={size.lr}",
            f"optim.min_lr={size.lr / 10}", f"optim.lr_warmup_steps={size.warmup}", f"train.seed={SEED + 1234}",
            "data.num_workers=0"]
    args += [f"model.{k}={v}" for k, v in plan.model.items()]
    return args + list(extra)


def _summary(run: StageRun) -> dict:
    return {**asdict(run), "tokens_per_s": run.tokens_per_s}


class Demo:
    """One demo run's folders and timings."""

    def __init__(self, out: Path, variant: str):
        self.out, self.plan, self.variant = out, PLANS[variant], variant
        self.logs = out / "logs"
        self.stages: List[dict] = []
        self.t0 = time.perf_counter()

    def timed(self, name: str, fn: Callable):
        t = time.perf_counter()
        value = fn()
        self.stages.append({"name": name, "seconds": time.perf_counter() - t})
        return value

    def train(self, name: str, recipe: str, size: StageSize, data_paths: str, tokenizer: str, extra=(),
              nproc: int = 1, preempt_after=None) -> StageRun:
        run = train_stage(name, _stage_args(recipe, size, self.plan, data_paths, tokenizer, list(extra)),
                          str(self.out / name), self.logs, say, nproc=nproc, preempt_after=preempt_after)
        self.stages.append(_summary(run))
        say(f"    {name}: {run.steps} steps, loss {run.loss_first:.3f} -> {run.loss_last:.3f}, "
            f"{run.tokens_per_s:,.0f} tokens/s, {run.seconds:.0f} s")
        return run


def _evaluate(hf_dir: str, tokenizer: str, plan: DemoPlan, questions, label: str) -> tuple:
    from .scoring import Scorer

    scorer = Scorer(hf_dir, tokenizer)
    lengths = [m * plan.window for m in plan.niah_lengths]
    grid = scorer.niah(lengths, plan.niah_depths, plan.niah_samples, SEED,
                       log=lambda m: say(f"      {m}") if m.split()[2].startswith("depth=1.00") else None)
    short = scorer.short_tasks(questions)
    say(f"    {label}: NIAH " + ", ".join(f"{n}: {v:.0%}" for n, v in by_length(grid).items()) +
        f"; short-task score {short['score']:.3f} " + str({t: round(v, 2) for t, v in short["by_task"].items()}))
    return grid, short


def _recheck(hf_dir: str, tokenizer: str, grid: dict, cells: int) -> dict:
    """Re-run the last ``cells`` cells of the target length through a freshly loaded transformers model."""
    from ..eval.niah import build_sample
    from .scoring import Scorer

    scorer = Scorer(hf_dir, tokenizer)
    target = max(grid["lengths"])
    picked = [c for c in grid["cells"] if c["length"] == target][-cells:]
    same = 0
    for c in picked:
        sample = build_sample(scorer.tok, c["length"], c["depth"], c["answers"][0]["passkey"])
        same += scorer.generate(sample.prompt_ids).strip()[:40] == c["answers"][0]["output"]
    return {"hf_dir": hf_dir, "cells": len(picked), "same": same}


def _cpt_and_sft(demo: Demo, tag: str, data, cpt_extra: List[str], preempt: bool) -> tuple:
    """One CPT (CP=2) + SFT + export; returns (the export's summary, the exported folder)."""
    plan, out = demo.plan, demo.out
    cpt_name, sft_name = f"{tag}cpt", f"{tag}sft"
    interval = [f"checkpoint.interval={plan.cpt_interval if preempt else plan.cpt.steps}"]
    extra = [f"yarn.target_length={plan.target_length}", f"data.seq_length={plan.target_length}",
             f"yarn.original_max_position_embeddings={plan.window}", f"checkpoint.init_from={out / 'base_mcore'}",
             "checkpoint.keep_last=1"] + interval + cpt_extra
    cpt = demo.train(cpt_name, "demo_cpt", plan.cpt, data.cpt_mixture, data.tokenizer, extra, nproc=2,
                     preempt_after=PREEMPT_AFTER if preempt else None)
    same_model = [o for o in cpt_extra if o.startswith("model.")]  # SFT keeps the CPT checkpoint's rope
    sft = demo.train(sft_name, "demo_sft", plan.sft, data.sft_chat, data.tokenizer,
                     [f"checkpoint.init_from={cpt.checkpoints}", f"checkpoint.interval={plan.sft.steps}", *same_model])
    hf = str(out / f"{tag}hf")
    shutil.rmtree(hf, ignore_errors=True)
    exported = demo.timed(f"{tag}export", lambda: export(sft.checkpoints, hf, plan.target_length, demo.logs))
    return exported, hf


def run_demo(out: Path, variant: str = "full", ablation: bool = False) -> dict:
    """Every stage; writes the report files under ``out`` and returns the result."""
    from .data import build_demo_data
    from .scoring import held_out_questions

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _quiet_libraries()
    demo = Demo(out, variant)
    demo.logs.mkdir()
    plan = demo.plan
    w = plan.window
    say(f"[demo 1/8] data: corpus, tokenizer, indexed datasets, CPT mixture, chat sets -> {out / 'data'}")
    data = demo.timed("data", lambda: build_demo_data(out / "data", plan, SEED, log=say))
    questions = held_out_questions(plan.short_questions, SEED)

    say(f"[demo 2/8] base model: pretrain from scratch at W={w} ({plan.base.steps} steps x {plan.base.batch} x {w})")
    base = demo.train("base", "demo_base", plan.base, data.base_corpus, data.tokenizer,
                      [f"checkpoint.interval={plan.base.steps}"])
    say("[demo 3/8] base SFT at W (lookup / add / copy chat tasks, assistant-only loss)")
    base_sft = demo.train("base_sft", "demo_base_sft", plan.base_sft, data.base_chat, data.tokenizer,
                          [f"checkpoint.init_from={base.checkpoints}", f"checkpoint.interval={plan.base_sft.steps}"])
    say("[demo 4/8] export to HF (--verify) and re-import: the demo's aligned model, as a user imports Llama")
    base_hf = str(out / "base_hf")
    demo.timed("base export + import", lambda: (export(base_sft.checkpoints, base_hf, w, demo.logs),
                                                reimport(base_hf, str(out / "base_mcore"), demo.logs)))

    say(f"[demo 5/8] before: passkey grid {w}..{plan.target_length} x {len(plan.niah_depths)} depths, short tasks")
    niah_before, short_before = demo.timed("eval before", lambda: _evaluate(base_hf, data.tokenizer, plan,
                                                                              questions, "before"))

    say(f"[demo 6/8] CPT: YaRN x{plan.factor} (alpha=1, beta=4), {plan.cpt.steps} steps x {plan.cpt.batch} x "
        f"{plan.target_length}, CP=2 under torchrun; SIGUSR1 after step {PREEMPT_AFTER}, relaunch resumes")
    say("[demo 7/8] SFT on the CPT checkpoint (its YaRN inherited), then export --verify")
    exported, final_hf = _cpt_and_sft(demo, "", data, [], preempt=True)

    say("[demo 8/8] after: the same grid and questions")
    niah_after, short_after = demo.timed("eval after", lambda: _evaluate(final_hf, data.tokenizer, plan, questions,
                                                                          "after"))
    recheck = _recheck(final_hf, data.tokenizer, niah_after, plan.recheck_cells)
    say(f"    re-check through transformers (reloaded {final_hf}): {recheck['same']}/{recheck['cells']} cells agree")

    result = {"variant": variant, "seed": SEED, "cpus": os.cpu_count(), "window": w,
              "target_length": plan.target_length, "niah_before": niah_before, "niah_after": niah_after,
              "short_before": short_before, "short_after": short_after, "recheck": recheck,
              "export": exported, "data": data.summary, "stages": demo.stages}
    if ablation:
        result["ablation"] = _ablation(demo, data, questions)
    result["wall_time_s"] = time.perf_counter() - demo.t0
    heatmap = out / "niah_before_after.png"
    from ..eval.plots import niah_heatmaps_side_by_side

    niah_heatmaps_side_by_side([("before (base, no YaRN)", niah_before), ("after (YaRN CPT + SFT)", niah_after)],
                               str(heatmap), title=f"Passkey retrieval, toy Llama: W={w} -> {plan.target_length}",
                               window=w)
    result["paths"] = {"heatmap": str(heatmap), "report": str(out / "REPORT.md"),
                       "base_hf": base_hf, "final_hf": final_hf, "cpt_checkpoints": str(out / "cpt" / "checkpoints"),
                       "sft_checkpoints": str(out / "sft" / "checkpoints"), "logs": str(demo.logs)}
    text = write_report(out, result)
    say("\n" + text)
    return result


def _ablation(demo: Demo, data, questions) -> List[dict]:
    """The same CPT + SFT budget per RoPE variant, NIAH + short tasks after each."""
    from ..config import load_recipe

    model = load_recipe("demo_model").model
    head_dim = model.hidden_size // model.num_attention_heads
    rows = []
    for i, v in enumerate(rope_variants(demo.plan, head_dim, model.rope_theta)):
        say(f"[ablation {i + 1}/5] {v.name}: {' '.join(v.overrides)}")
        _, hf = _cpt_and_sft(demo, f"ablation/{v.name}/", data, list(v.overrides), preempt=False)
        grid, short = _evaluate(hf, data.tokenizer, demo.plan, questions, v.name)
        rows.append({"name": v.name, "overrides": list(v.overrides), "niah": grid, "short": short})
    return rows
