"""The demo's sizes: the full run (`make demo`), the smoke run (`make demo DEMO=smoke`) and the ablation's RoPE
variants (`make demo ABLATION=1`). One table per choice; the stages read nothing else.

    plan = PLANS["full"]; plan.target_length     # 16 × plan.window
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class StageSize:
    """One training stage's budget."""

    steps: int
    """Optimizer steps."""
    batch: int
    """Global batch (sequences per step)."""
    lr: float
    """Peak learning rate (cosine to 10 %)."""
    warmup: int = 1
    """Warmup steps."""
    micro_batch: int = 0
    """Sequences per forward pass and rank; 0: the whole batch at once (1.2× faster than 8 for the toy at W on
    CPU)."""


@dataclass(frozen=True)
class DemoPlan:
    """Everything that differs between the full demo and its smoke variant."""

    window: int
    """W: the base model's pretraining window (its original_max_position_embeddings)."""
    factor: int
    """YaRN factor of the one CPT step: target length = factor × W."""
    base_documents: int
    """Short documents (one fact recalled four times) the base model pretrains on."""
    prose_documents: int
    """Prose-only documents (the short, down-sampled source of the CPT mixture; in the base corpus too)."""
    long_documents: int
    """Long documents (facts recalled far away) of the CPT mixture."""
    long_recalls: int
    """Recalls of each fact in a long document (the long-range signal per CPT token)."""
    cpt_short_documents: int
    """Short documents of the base corpus that go into the CPT mixture too (its general-corpus share)."""
    chat_samples: int
    """Chat samples of each SFT stage (lookup / add / copy)."""
    base: StageSize
    """Base pretraining at W."""
    base_sft: StageSize
    """Base SFT at W (the "aligned" model)."""
    cpt: StageSize
    """One-step CPT at factor × W, CP=2."""
    sft: StageSize
    """SFT on the CPT checkpoint (its YaRN inherited)."""
    cpt_interval: int
    """Checkpoint interval of the preempted CPT run (full: 50, as one every 2 steps cost ~40 s of 117; smoke: 2, whose
    saves keep the 6-step run going until SIGUSR1 lands)."""
    niah_lengths: Tuple[int, ...]
    """Passkey grid lengths, as multiples of W."""
    niah_depths: Tuple[float, ...]
    """Passkey grid depths."""
    niah_samples: int
    """Passkeys per (length, depth) cell."""
    short_questions: int
    """Held-out questions per short task."""
    recheck_cells: int
    """Grid cells re-run through transformers on the reloaded export."""
    model: Dict[str, object] = field(default_factory=dict)
    """model.* overrides of the demo's model card (the smoke run shrinks it)."""

    @property
    def target_length(self) -> int:
        """factor × W."""
        return self.factor * self.window


DEPTHS_11 = tuple(i / 10 for i in range(11))

PLANS: Dict[str, DemoPlan] = {
    "full": DemoPlan(window=128, factor=16, base_documents=40000, prose_documents=3000, long_documents=600,
                     long_recalls=10, cpt_short_documents=1500,
                     chat_samples=6000,
                     base=StageSize(steps=3500, batch=32, lr=5e-3, warmup=30),
                     base_sft=StageSize(steps=200, batch=32, lr=2e-3, warmup=10),
                     cpt=StageSize(steps=200, batch=2, lr=1e-3, warmup=5, micro_batch=1),
                     sft=StageSize(steps=100, batch=32, lr=1e-3, warmup=5), cpt_interval=50,
                     niah_lengths=(1, 2, 4, 8, 16), niah_depths=DEPTHS_11, niah_samples=2, short_questions=40,
                     recheck_cells=3),
    "smoke": DemoPlan(window=128, factor=4, base_documents=600, prose_documents=100, long_documents=24,
                      long_recalls=3, cpt_short_documents=100,
                      chat_samples=200,
                      base=StageSize(steps=12, batch=8, lr=5e-3), base_sft=StageSize(steps=4, batch=8, lr=2e-3),
                      cpt=StageSize(steps=6, batch=2, lr=2e-3, micro_batch=1),
                      sft=StageSize(steps=4, batch=8, lr=1e-3), cpt_interval=2,
                      niah_lengths=(1, 4), niah_depths=(0.0, 1.0), niah_samples=1, short_questions=3,
                      recheck_cells=1, model={"num_layers": 1, "hidden_size": 64, "ffn_hidden_size": 128}),
}


@dataclass(frozen=True)
class RopeVariant:
    """One row of the ablation: how the CPT stage scales RoPE (same data, steps and SFT for every row)."""

    name: str
    """Row label."""
    overrides: Tuple[str, ...]
    """Recipe overrides of the CPT stage."""


def rope_variants(plan: DemoPlan, head_dim: int, theta: float) -> List[RopeVariant]:
    """The ablation's rows: no scaling, linear interpolation, NTK-aware θ, YaRN β=4 (the paper's), YaRN β=32."""
    s = plan.factor
    ntk_theta = theta * s ** (head_dim / (head_dim - 2))  # "NTK-aware" θ' = θ·s^(d/(d-2))
    off = ("yarn.enabled=false", f"model.max_position_embeddings={plan.target_length}")
    change = ("checkpoint.allow_rope_change=true",)
    return [
        RopeVariant("none", off),
        RopeVariant("linear", off + change + ("model.rope_type=linear", f"model.rope_factor={float(s)}")),
        RopeVariant("ntk", off + change + (f"model.rope_theta={ntk_theta:.6g}",)),
        RopeVariant("yarn-b4", ("yarn.beta_fast=4.0",)),
        RopeVariant("yarn-b32", ("yarn.beta_fast=32.0",)),
    ]
