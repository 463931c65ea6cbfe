"""A stage and the checkpoint it starts from: what it inherits from the checkpoint's saved config, what it may not
change silently. Reads meta.json only (no torch, no process group).

    cfg = load_training_config("sft", ["checkpoint.init_from=runs/cpt_1m/checkpoints"])   # then validate(cfg)
    cfg = inherit_from_checkpoint(cfg, stated_keys(recipe, overrides))
    check_init_from(cfg)           # CheckpointError unless init_from is a checkpoint (or the run resumes)

The rules (SFT keeps its stage's rope, model.from_checkpoint, the allow_* keys): docs/training.md, "Stages".
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from ..checkpoint import CheckpointError, check_config_architecture, find_latest, read_meta
from ..config import (
    Config,
    ConfigError,
    ModelConfig,
    YarnConfig,
    absolute_paths,
    checkpoint_dir,
    config_from_dict,
    load_recipe,
    stated_keys,
)
from ..rope import resolved_yarn_factor

RUN_FIELDS = ("fp8", "attention_backend", "from_checkpoint")
"""Model fields that are this run's choice, never taken from nor compared with the checkpoint."""
BASE_ROPE_FIELDS = ("rope_type", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                    "rope_original_max_position_embeddings")
"""The base model's own RoPE scaling (replaced by YaRN when yarn.enabled)."""
MODEL_FIELDS = ("arch", "norm_eps")
"""Non-shape, non-rope fields compared with the checkpoint (checkpoint.allow_model_change)."""


def load_training_config(recipe: str, overrides: Optional[List[str]] = None) -> Config:
    """The trainer's config: the recipe with its overrides, paths made absolute, and what the stage inherits from
    the checkpoint it starts from (inherit_from_checkpoint). Not yet validated."""
    cfg = absolute_paths(load_recipe(recipe, overrides))
    return inherit_from_checkpoint(cfg, stated_keys(recipe, overrides), stated_keys(None, overrides))


def check_init_from(cfg) -> None:
    """CheckpointError when ``checkpoint.init_from`` is set, the run has no checkpoint of its own to resume from
    (a resumed run ignores init_from), and it is not a readable checkpoint."""
    init_from = cfg.checkpoint.init_from
    if not init_from or find_latest(checkpoint_dir(cfg)) is not None:
        return
    hint = "finish the stage that writes it first, or pass checkpoint.init_from=<checkpoint dir>"
    if not os.path.isdir(init_from):
        raise CheckpointError(f"checkpoint.init_from={init_from}: no such directory (seen from {os.getcwd()}); "
                              f"{hint}")
    try:
        read_meta(init_from)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint.init_from: {e}; {hint}") from None


def source_checkpoint(cfg: Config) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, meta.json) of the checkpoint this run's weights come from: its own latest when it resumes, else
    checkpoint.init_from; None when it has neither. CheckpointError when init_from is not a checkpoint."""
    own = find_latest(checkpoint_dir(cfg))
    if own is not None:
        return own, read_meta(own)
    if not cfg.checkpoint.init_from:
        return None
    check_init_from(cfg)
    return cfg.checkpoint.init_from, read_meta(cfg.checkpoint.init_from)


def inherit_from_checkpoint(cfg: Config, stated: FrozenSet[str], overridden: Optional[FrozenSet[str]] = None
                            ) -> Config:
    """``cfg`` with what the stage takes from its checkpoint filled in, or ConfigError (one line) naming every
    stated value that differs from the checkpoint without the matching ``checkpoint.allow_*`` key.

    ``stated``: the dotted keys the recipe (with its bases) or the overrides set; ``overridden``: those the
    overrides set (config.stated_keys(None, overrides); default: ``stated``). Taken from the checkpoint: with
    model.from_checkpoint every model field no override states (a model card the recipe bases on included);
    in train.mode=sft model.max_position_embeddings and every yarn.* field neither states."""
    overridden = stated if overridden is None else overridden
    source = source_checkpoint(cfg)
    if source is None:
        if cfg.model.from_checkpoint:
            raise ConfigError("model.from_checkpoint=true but checkpoint.init_from is not set; name the checkpoint "
                              "to take the model from, e.g. checkpoint.init_from=runs/cpt_1m/checkpoints")
        return cfg
    path, meta = source
    recorded = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    if "model" not in recorded:  # nothing to inherit from or compare with
        if cfg.model.from_checkpoint or cfg.train.mode == "sft":
            raise CheckpointError(f"{meta['path']}: meta.json records no model config to take the model and rope "
                                  f"from; convert the model with tools/convert_from_hf.py or state them")
        return cfg
    saved = config_from_dict({k: v for k, v in recorded.items() if k in ("model", "yarn")})
    model, yarn = cfg.model, cfg.yarn
    if model.from_checkpoint:
        model = dataclasses.replace(model, **{f.name: getattr(saved.model, f.name) for f in dataclasses.fields(model)
                                              if f.name not in RUN_FIELDS and f"model.{f.name}" not in overridden})
    if cfg.train.mode == "sft":
        if "model.max_position_embeddings" not in stated:
            model = dataclasses.replace(model, max_position_embeddings=saved.model.max_position_embeddings)
        yarn = dataclasses.replace(yarn, **{f.name: getattr(saved.yarn, f.name) for f in dataclasses.fields(yarn)
                                            if f"yarn.{f.name}" not in stated})
    out = dataclasses.replace(cfg, model=model, yarn=yarn)
    _refuse_changes(out, saved, path, meta)
    return out


def _rope(model: ModelConfig, yarn: YarnConfig) -> Dict[str, Any]:
    """The position encoding a model config builds, as the fields that decide it."""
    if yarn.enabled:
        return {"yarn.enabled": True, "yarn.factor": resolved_yarn_factor(yarn),
                **{f"yarn.{f.name}": getattr(yarn, f.name) for f in dataclasses.fields(yarn)
                   if f.name not in ("enabled", "factor")}}
    fields = {"default": (), "linear": ("rope_factor",)}.get(model.rope_type, BASE_ROPE_FIELDS[1:])
    return {"yarn.enabled": False, "model.rope_type": model.rope_type,
            **{f"model.{f}": getattr(model, f) for f in fields}}


def _refuse_changes(cfg: Config, saved: Config, path: str, meta: Dict[str, Any]) -> None:
    now, was = cfg.model, saved.model
    check_config_architecture(meta, now)
    rope = [] if now.rope_theta == was.rope_theta else [("model.rope_theta", now.rope_theta, was.rope_theta)]
    if cfg.train.mode == "sft" or not cfg.yarn.enabled:  # a CPT stage with YaRN extends the rope: that is its job
        ours, theirs = _rope(now, cfg.yarn), _rope(was, saved.yarn)
        rope += [(k, ours.get(k), theirs.get(k)) for k in dict.fromkeys([*ours, *theirs])
                 if ours.get(k) != theirs.get(k)]
        if cfg.train.mode == "sft" and now.max_position_embeddings != was.max_position_embeddings:
            rope.append(("model.max_position_embeddings", now.max_position_embeddings, was.max_position_embeddings))
    other = [(f"model.{f}", getattr(now, f), getattr(was, f)) for f in MODEL_FIELDS
             if getattr(now, f) != getattr(was, f)]
    allow = cfg.checkpoint
    problems = ([] if allow.allow_rope_change else rope) + ([] if allow.allow_model_change else other)
    if problems:
        keys = (["checkpoint.allow_rope_change=true"] if rope and not allow.allow_rope_change else []) + \
            (["checkpoint.allow_model_change=true"] if other and not allow.allow_model_change else [])
        sft = "train.mode=sft keeps the rope of the checkpoint it starts from; " if cfg.train.mode == "sft" and rope \
            and not allow.allow_rope_change else ""
        raise ConfigError(f"{path}: this run changes the checkpoint's model: "
                          f"{', '.join(f'{k}={a!r} (checkpoint: {b!r})' for k, a, b in problems)}; {sft}drop these "
                          f"settings to keep the checkpoint's, or set {' and '.join(keys)} to train with the change")


__all__ = ["load_training_config", "inherit_from_checkpoint", "source_checkpoint", "check_init_from",
           "RUN_FIELDS", "BASE_ROPE_FIELDS", "MODEL_FIELDS"]
