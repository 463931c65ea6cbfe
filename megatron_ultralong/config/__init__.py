"""Configuration: small dataclasses, YAML recipes, dotted command-line overrides, one validation pass.

    cfg = load_recipe("megatron_ultralong/recipes/toy_cpt.yaml", ["train.max_steps=10", "parallel.tp=2"])
    validate(cfg, world_size=2)      # raises ConfigError with a one-line, actionable message

``schema`` (the sections and their fields), ``loading`` (YAML, ``base`` chains, overrides), ``validation`` (one
check per section). Every name is importable from here; see docs/config.md.
"""
from . import loading, schema, validation
from .loading import *  # noqa: F403  (each submodule's __all__ is its public interface)
from .schema import *  # noqa: F403
from .validation import *  # noqa: F403

__all__ = [*schema.__all__, *loading.__all__, *validation.__all__]
