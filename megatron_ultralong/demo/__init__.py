"""`make demo`: the paper's effect at toy scale on CPU, through the same trainer, converters and evaluation.

    python -m megatron_ultralong.demo [--out runs/demo] [--variant full|smoke] [--ablation]

Stages: data → base model pretrained at W → base SFT → export + re-import (the "Llama-3.1-8B-Instruct" of the
demo) → passkey grid + short tasks (before) → one-step YaRN CPT at 16·W with CP=2 (a preemption and resume
included) → SFT → export --verify → passkey grid + short tasks (after) → REPORT.md, report.json, heatmaps.
What each stage shows and why the toy is built this way: docs/demo.md.
"""
from .run import run_demo

__all__ = ["run_demo"]
