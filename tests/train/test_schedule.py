"""LR schedule: warmup reaches the peak, decay approaches min_lr without wasting the last step."""
import math

import pytest

from megatron_ultralong.config import OptimConfig
from megatron_ultralong.train.schedule import LRSchedule, lr_at


def test_warmup_is_linear_from_the_first_step_to_the_peak():
    o = OptimConfig(lr=1e-3, lr_warmup_steps=4, lr_schedule="cosine")
    assert [lr_at(o, 20, s) for s in (1, 2, 3, 4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])


def test_cosine_decays_monotonically_towards_min_lr_and_last_step_still_trains():
    o = OptimConfig(lr=1e-3, min_lr=1e-4, lr_warmup_steps=2, lr_schedule="cosine")
    lrs = [lr_at(o, 10, s) for s in range(3, 11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 8 / 9)))  # p = 8/9, not 1
    # halfway through the decay (p = 0.5) the cosine is at the midpoint
    o0 = OptimConfig(lr=1.0, min_lr=0.0, lr_warmup_steps=0, lr_schedule="cosine")
    assert lr_at(o0, 9, 5) == pytest.approx(0.5)
    assert lr_at(o0, 9, 9) > 0


def test_constant_and_linear_schedules():
    c = OptimConfig(lr=3e-5, lr_warmup_steps=2, lr_schedule="constant")
    assert [lr_at(c, 100, s) for s in (1, 2, 50, 100)] == pytest.approx([1.5e-5, 3e-5, 3e-5, 3e-5])
    lin = OptimConfig(lr=1.0, min_lr=0.0, lr_warmup_steps=0, lr_schedule="linear")
    assert [lr_at(lin, 3, s) for s in (1, 2, 3)] == pytest.approx([0.75, 0.5, 0.25])


def test_steps_past_max_steps_stay_at_min_lr_and_step_zero_is_rejected():
    o = OptimConfig(lr=1.0, min_lr=0.1, lr_warmup_steps=0, lr_schedule="cosine")
    assert lr_at(o, 10, 25) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="from 1"):
        lr_at(o, 10, 0)


class _FakeOptimizer:
    def __init__(self):
        self.param_groups = [{"lr_mult": 1.0, "wd_mult": 1.0}, {"lr_mult": 0.5, "wd_mult": 0.0}]


def test_apply_honours_megatron_lr_and_wd_multipliers():
    o = OptimConfig(lr=2e-3, weight_decay=0.1, lr_warmup_steps=0, lr_schedule="constant")
    opt = _FakeOptimizer()
    assert LRSchedule(o, 10).apply(opt, 3) == pytest.approx(2e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 1e-3])
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([0.1, 0.0])


def test_differences_name_changed_settings():
    s = LRSchedule(OptimConfig(lr=1e-3), 100)
    saved = dict(s.state_dict(), max_steps=50)
    assert s.differences(saved) == {"max_steps": (50, 100)}
    assert s.differences(s.state_dict()) == {}
    assert not math.isnan(s.lr(100))
