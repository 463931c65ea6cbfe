"""Configuration: small dataclasses, YAML recipes, dotted command-line overrides, one validation pass.

    cfg = load_recipe("megatron_ultralong/recipes/toy_cpt.yaml", ["train.max_steps=10", "parallel.tp=2"])
    validate(cfg, world_size=2)      # raises ConfigError with a one-line, actionable message

``schema`` (the sections and their fields), ``loading`` (YAML, ``base`` chains, overrides), ``validation`` (one
check per section). Every name is importable from here; see docs/config.md.
"""
from .loading import (PATH_KEYS, RECIPES_DIR, RETIRED_SECTIONS, absolute_paths, config_from_dict, dump_recipe,
                      list_recipes, load_recipe, parse_overrides, stated_keys, to_dict)
from .schema import (ARCHS, ATTENTION_BACKENDS, BACKENDS, CHAT_TEMPLATES, CP_COMM_TYPES, DTYPE_NAMES, FP8_RECIPES,
                     LOADERS, MODES, RECOMPUTE, ROPE_TYPES, SCHEDULES, SYNTHETIC, CheckpointConfig, Config,
                     ConfigError, DataConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig, YarnConfig,
                     checkpoint_dir, data_parallel_size, describe, head_dim, heads_per_tp_rank, max_sequence_length,
                     needs_document_masking)
from .validation import (check_a2a_heads, check_cp_seq_length, check_mixture_params, check_rope_head_dim,
                         check_yarn_betas, check_yarn_factor, check_yarn_original, check_yarn_target, validate,
                         validate_yarn)

__all__ = [
    # schema
    "ConfigError", "Config", "ModelConfig", "YarnConfig", "ParallelConfig", "DataConfig", "OptimConfig",
    "TrainConfig", "CheckpointConfig", "describe", "head_dim", "max_sequence_length", "data_parallel_size",
    "checkpoint_dir", "needs_document_masking", "heads_per_tp_rank", "ARCHS", "ROPE_TYPES", "DTYPE_NAMES",
    "FP8_RECIPES", "ATTENTION_BACKENDS", "CP_COMM_TYPES", "BACKENDS", "LOADERS", "CHAT_TEMPLATES", "MODES",
    "SCHEDULES", "RECOMPUTE", "SYNTHETIC",
    # loading
    "RECIPES_DIR", "RETIRED_SECTIONS", "PATH_KEYS", "load_recipe", "config_from_dict", "parse_overrides",
    "list_recipes", "absolute_paths", "to_dict", "dump_recipe", "stated_keys",
    # validation
    "validate", "validate_yarn", "check_cp_seq_length", "check_a2a_heads", "check_rope_head_dim",
    "check_mixture_params", "check_yarn_original", "check_yarn_target", "check_yarn_factor", "check_yarn_betas",
]
