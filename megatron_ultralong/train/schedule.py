"""Learning-rate schedule: linear warmup, then cosine / linear decay to ``optim.min_lr``, or constant.

    sched = LRSchedule(cfg.optim, cfg.train.max_steps)
    sched.apply(optimizer, step)            # before optimizer.step() of step `step` (1-based)
    lr_at(cfg.optim, cfg.train.max_steps, step)

A pure function of the step (resume gets the same LR); the formula: docs/training.md, "Learning-rate schedule".
"""
from __future__ import annotations

import math
from typing import Any, Dict

from ..config import OptimConfig


def lr_at(optim: OptimConfig, max_steps: int, step: int) -> float:
    """Learning rate of optimizer step ``step`` (1-based)."""
    if step < 1:
        raise ValueError(f"step={step}: optimizer steps are numbered from 1")
    warmup = optim.lr_warmup_steps
    if warmup > 0 and step <= warmup:
        return optim.lr * step / warmup
    if optim.lr_schedule == "constant":
        return optim.lr
    progress = (step - warmup) / (max_steps - warmup + 1)
    progress = min(progress, 1.0)  # steps past max_steps (a run extended by override) stay at min_lr
    if optim.lr_schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif optim.lr_schedule == "linear":
        coeff = 1.0 - progress
    else:
        raise ValueError(f"optim.lr_schedule={optim.lr_schedule!r}: must be 'cosine', 'linear' or 'constant'")
    return optim.min_lr + (optim.lr - optim.min_lr) * coeff


class LRSchedule:
    """Sets lr and weight decay on a (Megatron) optimizer's param groups for each step.

    Megatron's param groups carry ``lr_mult`` / ``wd_mult`` (biases and norms get ``wd_mult=0``); they are honoured.
    """

    def __init__(self, optim: OptimConfig, max_steps: int):
        self.optim = optim
        self.max_steps = max_steps

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        return lr_at(self.optim, self.max_steps, step)

    def apply(self, optimizer, step: int) -> float:
        """Write this step's lr / weight decay into every param group; returns the lr."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = self.optim.weight_decay * group.get("wd_mult", 1.0)
        return lr

    def state_dict(self) -> Dict[str, Any]:
        """The settings that define the curve (JSON-serialisable; stored in the checkpoint's meta.json)."""
        o = self.optim
        return {"lr": o.lr, "min_lr": o.min_lr, "lr_schedule": o.lr_schedule,
                "lr_warmup_steps": o.lr_warmup_steps, "weight_decay": o.weight_decay, "max_steps": self.max_steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Nothing to restore: the LR is a function of the step and the (possibly overridden) recipe.

        A resumed run that changes the schedule on purpose (e.g. a larger train.max_steps) follows the new
        recipe from the restored step on; the trainer logs the differences.
        """
        return None

    def differences(self, state: Dict[str, Any]) -> Dict[str, tuple]:
        """Settings that differ from a checkpoint's (name -> (saved, now))."""
        now = self.state_dict()
        return {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
