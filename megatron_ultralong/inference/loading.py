"""From a checkpoint path to an Engine: the checks first (meta.json only), then process groups, model and weights.

    plan = plan_inference("runs/cpt_1m/checkpoints", tp=2, cp=4)   # InferenceError / CheckpointError / ConfigError
    plan.window                                                      # the rope window prompts must fit
    tok = checkpoint_tokenizer(plan)                                 # --tokenizer, the recipe's, or hf_assets
    engine = load_engine(plan)                                       # init_distributed, build_model, load_checkpoint

The model is the one training builds (model/builder.py) from the checkpoint's recipe, loaded by checkpoint.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from ..checkpoint import CheckpointError, read_meta
from ..config import Config, DataConfig, ParallelConfig, TrainConfig, config_from_dict, max_sequence_length, validate
from . import InferenceError
from .checks import check_world_size


@dataclass
class InferencePlan:
    """A checked inference job: which checkpoint, which layout, the config the model is built from."""

    ckpt: str
    """The checkpoint directory (or iter directory) as given."""
    meta: dict
    """Its meta.json."""
    cfg: Config
    """The recipe the model is built from: the checkpoint's model and yarn sections, this job's layout."""
    tokenizer: Optional[str] = None
    """--tokenizer, when given (else the recipe's data.tokenizer, else the checkpoint's hf_assets)."""
    batch_size: int = 1
    """Prompts decoded together."""

    @property
    def window(self) -> int:
        """The checkpoint's rope window (yarn.target_length, or model.max_position_embeddings): longest prompt."""
        return max_sequence_length(self.cfg)


def checkpoint_recipe(ckpt: str) -> Tuple[dict, Config]:
    """(meta.json, the recorded recipe) of a checkpoint; CheckpointError when it records no model config."""
    meta = read_meta(ckpt)
    recorded = meta.get("config")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("model"), dict):
        raise CheckpointError(f"{meta['path']}: meta.json records no recipe (no model config) to build the model "
                              f"from; use a checkpoint written by the trainer or tools/convert_from_hf.py")
    return meta, config_from_dict(recorded)


def inference_config(saved: Config, tp: int, cp: int, dtype: Optional[str] = None) -> Config:
    """The checkpoint's model and rope with this job's layout: TP × CP, no PP, no sequence parallel, no recompute,
    no document masking; the attention backend the machine has (TE on GPU, SDPA on CPU)."""
    model = dataclasses.replace(saved.model, attention_backend="auto", fp8=None,
                                params_dtype=dtype or saved.model.params_dtype)
    window = max_sequence_length(saved)
    unit = 2 * cp if cp > 1 else 1
    if window < unit:
        raise InferenceError(f"--cp {cp}: the checkpoint's rope window of {window} tokens is shorter than 2·cp")
    return Config(model=model, yarn=saved.yarn, parallel=ParallelConfig(tp=tp, cp=cp),
                  data=DataConfig(seq_length=window // unit * unit, synthetic="copy", num_workers=0),
                  train=TrainConfig(seed=saved.train.seed))


def plan_inference(ckpt: str, tp: int = 1, cp: int = 1, world_size: Optional[int] = None,
                   dtype: Optional[str] = None, tokenizer: Optional[str] = None, batch_size: int = 1
                   ) -> InferencePlan:
    """Every check of an inference job that needs no weights: the checkpoint has a recipe, the layout fits the
    model (validate) and the launcher (world size = tp·cp; default: $WORLD_SIZE, else 1)."""
    from ..parallel import read_launch_env

    if batch_size < 1:
        raise InferenceError(f"--batch-size {batch_size}: must be >= 1")
    if tokenizer is not None and not os.path.exists(tokenizer):
        raise InferenceError(f"--tokenizer {tokenizer}: no such file or folder")
    world = read_launch_env().world_size if world_size is None else world_size
    check_world_size(tp, cp, world)
    meta, saved = checkpoint_recipe(ckpt)
    cfg = validate(inference_config(saved, tp, cp, dtype), world_size=world)
    return InferencePlan(ckpt, meta, cfg, tokenizer, batch_size)


def _assets(plan: InferencePlan) -> Optional[str]:
    from ..convert.assets import find_hf_assets

    return find_hf_assets(plan.ckpt)


def checkpoint_tokenizer(plan: InferencePlan):
    """A transformers tokenizer (or ours, for a sentencepiece file): --tokenizer, else the recipe's
    data.tokenizer, else the hf_assets folder a converted checkpoint carries; InferenceError when none."""
    recorded = plan.meta["config"].get("data", {}).get("tokenizer")
    for source in (plan.tokenizer, recorded, _assets(plan)):
        if source and os.path.exists(source):
            return _load_tokenizer(source)
    raise InferenceError(f"{plan.meta['path']}: no tokenizer (the recipe names none, no hf_assets folder next to "
                         f"the checkpoint); pass --tokenizer <tokenizer.json or HF folder>")


def _load_tokenizer(path: str):
    import transformers

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        try:
            return transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise InferenceError(f"tokenizer {path}: cannot be loaded ({str(e).splitlines()[0][:120]})") from None
    from ..data.tokenizer import load_tokenizer, resolve_tokenizer_file

    file = resolve_tokenizer_file(path)
    if file.endswith(".json"):
        return transformers.PreTrainedTokenizerFast(tokenizer_file=file)
    return load_tokenizer(file)


def checkpoint_eos_ids(plan: InferencePlan) -> Tuple[int, ...]:
    """The ids greedy decoding stops at, as transformers' generate finds them: generation_config.json's
    eos_token_id, else config.json's, in the checkpoint's hf_assets; () when there is neither."""
    assets = _assets(plan)
    for name in ("generation_config.json", "config.json"):
        path = os.path.join(assets, name) if assets else ""
        if path and os.path.isfile(path):
            with open(path) as f:
                eos = json.load(f).get("eos_token_id")
            if eos is not None:
                return tuple(eos) if isinstance(eos, list) else (int(eos),)
    return ()


def load_engine(plan: InferencePlan, eos_ids: Optional[Tuple[int, ...]] = None):
    """Start the process groups (parallel.init_distributed), build this rank's model and load the weights
    (checkpoint.load_checkpoint reshards any saved layout); the Engine on it."""
    from ..checkpoint import load_checkpoint
    from ..convert.megatron_io import recorded_hf_vocab_size
    from ..model.builder import build_model
    from ..parallel import init_distributed
    from .engine import Engine

    init_distributed(plan.cfg)
    model = build_model(plan.cfg, pre_process=True, post_process=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's DCP deprecation notes
        load_checkpoint(plan.ckpt, [model])
    vocab = recorded_hf_vocab_size(plan.ckpt) or plan.cfg.model.vocab_size
    return Engine(model, plan.cfg, vocab, checkpoint_eos_ids(plan) if eos_ids is None else eos_ids,
                  plan.batch_size)
