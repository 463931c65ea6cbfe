"""Tiny random transformers models (built here, never downloaded) and readers for the converter tests."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import torch

REPO = Path(__file__).resolve().parents[2]

# toy_llama.yaml's shapes, so a converted tiny model can initialise the toy CPT recipe
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}

def tiny_hf_model(arch: str = "llama", seed: int = 0, **overrides):
    """A transformers causal LM of TINY shape whose every weight is random (norms too: a swapped norm shows)."""
    import transformers

    cls_cfg, cls_model = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                          "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    config = cls_cfg(**copy.deepcopy({**TINY, **overrides}))  # transformers fills rope dicts in place
    torch.manual_seed(seed)
    model = cls_model(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if name.endswith("norm.weight") else 0.05 * noise)
    return model


def save_tokenizer(folder) -> None:
    """A small word-level fast tokenizer (tokenizer.json + tokenizer_config.json), as a model folder carries."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(40)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def save_hf(folder, arch: str = "llama", dtype: torch.dtype = torch.float32, shard: str = "100KB",
            tokenizer: bool = True, seed: int = 0, **overrides):
    """Save a tiny random model (sharded safetensors + index when ``shard`` is small) and return it."""
    model = tiny_hf_model(arch, seed, **overrides).to(dtype)
    model.save_pretrained(folder, max_shard_size=shard)
    if tokenizer:
        save_tokenizer(folder)
    return model


def read_hf_tensors(folder) -> Dict[str, torch.Tensor]:
    """Every tensor of the safetensors files in folder."""
    from safetensors.torch import load_file

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, name)))
    return out


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def run_tool(script: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """python tools/<script> args..., from the repo root, with one intra-op thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / script), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def preload_megatron() -> None:
    """Import what a converting child uses once here: forked children then start in milliseconds, not seconds."""
    import megatron.core.dist_checkpointing  # noqa: F401
    import megatron.core.models.gpt  # noqa: F401

    import megatron_ultralong.model.builder  # noqa: F401
    import megatron_ultralong.parallel  # noqa: F401


def _call(rank, world, fn, args):
    from megatron_ultralong.checkpoint import CheckpointError
    from megatron_ultralong.config import ConfigError
    from megatron_ultralong.convert import ConvertError
    from tests.train.helpers import allow_child_processes

    allow_child_processes()  # dist_checkpointing's writer starts helper processes
    try:
        return "ok", fn(*args)
    except (ConvertError, ConfigError, CheckpointError) as e:
        return "error", f"{e.__class__.__name__}: {e}"


def in_child(fn, *args, timeout: float = 300):
    """fn(*args) in a forked child process; its result, or its ConvertError raised here (message prefixed with the
    original class name). Megatron's checkpoint writer leaves a multiprocessing Manager in the process that saved,
    and ranks forked later from that process hang on it, so the test process itself never converts."""
    from megatron_ultralong.convert import ConvertError
    from tests.dist import run_ranks

    preload_megatron()
    status, value = run_ranks(_call, 1, args=(fn, args), timeout=timeout)[0]
    if status == "error":
        raise ConvertError(value)
    return value


def to_megatron(hf_dir, out, **kwargs):
    """convert_hf_to_megatron in a child process (see in_child)."""
    from megatron_ultralong.convert import convert_hf_to_megatron

    return in_child(_with_kwargs, convert_hf_to_megatron, (str(hf_dir), str(out)), {"progress": False, **kwargs})


def to_hf(ckpt, out, **kwargs):
    """convert_megatron_to_hf in a child process (see in_child)."""
    from megatron_ultralong.convert import convert_megatron_to_hf

    return in_child(_with_kwargs, convert_megatron_to_hf, (str(ckpt), str(out)), {"progress": False, **kwargs})


def _with_kwargs(fn, args, kwargs):
    return fn(*args, **kwargs)
