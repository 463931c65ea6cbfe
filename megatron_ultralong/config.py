"""Configuration: small dataclasses, YAML recipes, dotted command-line overrides, one validation pass.

    cfg = load_recipe("megatron_ultralong/recipes/toy_cpt.yaml", ["train.max_steps=10", "parallel.tp=2"])
    validate(cfg, world_size=2)      # raises ConfigError with a one-line, actionable message

A recipe is a YAML mapping whose top-level keys are the sections below (``model``, ``yarn``, ``parallel``,
``data``, ``optim``, ``train``, ``checkpoint``, ``eval``) plus an optional ``base`` (a recipe file or a list of
them, resolved relative to the recipe, then to the packaged ``recipes/`` folder) merged underneath it. Every
field carries a docstring (unit and meaning of the default); ``describe()`` prints them.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class ConfigError(ValueError):
    """A bad recipe or override. The message is one line: field, value, and how to fix it."""


# --------------------------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """Architecture of the decoder-only transformer (Llama-3.x or Qwen2 family)."""

    arch: str = "llama"
    """Architecture family: 'llama' (Llama-3.x) or 'qwen2' (adds QKV bias). Selects the converter table."""
    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width (d_model)."""
    ffn_hidden_size: int = 256
    """Width of the SwiGLU MLP (per branch)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups); equal to num_attention_heads for plain multi-head attention."""
    kv_channels: Optional[int] = None
    """Head dimension; None means hidden_size // num_attention_heads."""
    vocab_size: int = 512
    """Vocabulary size (rows of the embedding); must be divisible by parallel.tp."""
    max_position_embeddings: int = 2048
    """Longest sequence the model is configured for, in tokens (becomes yarn.target_length when YaRN is on)."""
    rope_theta: float = 10000.0
    """RoPE base frequency θ (500000 for Llama-3.x)."""
    rope_type: str = "default"
    """The base model's own RoPE scaling: 'default' (none), 'llama3' or 'linear'. YaRN replaces it when enabled."""
    rope_factor: float = 1.0
    """Scaling factor of rope_type 'llama3' / 'linear' (8 for Llama-3.1)."""
    rope_low_freq_factor: float = 1.0
    """'llama3' scaling: low-frequency factor (1 for Llama-3.1)."""
    rope_high_freq_factor: float = 4.0
    """'llama3' scaling: high-frequency factor (4 for Llama-3.1)."""
    rope_original_max_position_embeddings: int = 8192
    """'llama3' scaling: the pretraining window the scaling was derived from, in tokens (8192 for Llama-3.1)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    qkv_bias: bool = False
    """Bias on the Q/K/V projections (True for Qwen2)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output layer (False for Llama-3.1-8B and Qwen2-7B)."""
    init_method_std: float = 0.02
    """Std of the normal init for freshly built weights (overwritten when a checkpoint is loaded)."""
    params_dtype: str = "fp32"
    """Compute dtype of the model: 'fp32' (CPU), 'bf16' (GPU)."""
    fp8: Optional[str] = None
    """FP8 recipe on Hopper GPUs with Transformer Engine: None (off), 'hybrid' or 'e4m3'."""
    attention_backend: str = "auto"
    """Core attention: 'auto' (TE on GPU if installed, else SDPA; local on CPU), 'te', 'sdpa' or 'local'."""


@dataclass
class YarnConfig:
    """YaRN RoPE extension ("NTK-by-parts" interpolation + attention temperature)."""

    enabled: bool = False
    """Replace the base rope scaling with YaRN."""
    target_length: Optional[int] = None
    """Context length to extend to, in tokens (1048576 / 2097152 / 4194304 for the 1M / 2M / 4M stages)."""
    original_max_position_embeddings: int = 8192
    """The base model's pre-extension pretraining window in tokens (8192 for Llama-3.1, not its 128K)."""
    factor: Optional[float] = None
    """Scale factor; None derives it as target_length / original_max_position_embeddings."""
    beta_fast: float = 4.0
    """Upper ramp bound β in rotations (the recipe's β=4); dimensions above it are not interpolated."""
    beta_slow: float = 1.0
    """Lower ramp bound α in rotations (the recipe's α=1); dimensions below it are fully interpolated."""
    mscale: float = 1.0
    """Attention-temperature multiplier: attention factor = 0.1·mscale·ln(factor) + 1."""
    mscale_all_dim: float = 0.0
    """DeepSeek-style divisor of the temperature; 0 keeps the plain YaRN temperature."""


@dataclass
class ParallelConfig:
    """Parallel layout. Data parallel size is derived: world_size / (tp·pp·cp)."""

    tp: int = 1
    """Tensor-parallel size (splits heads and MLP width)."""
    pp: int = 1
    """Pipeline-parallel size (splits layers)."""
    cp: int = 1
    """Context-parallel size (splits every sequence, zigzag layout)."""
    sequence_parallel: bool = False
    """Shard norms/dropout activations along the sequence over the TP group (GPU only, needs tp > 1)."""
    cp_comm_type: str = "p2p"
    """TE context-parallel communication: 'p2p', 'a2a', 'a2a+p2p' or 'all_gather'."""
    backend: str = "auto"
    """torch.distributed backend: 'auto' (nccl with CUDA, else gloo), 'nccl' or 'gloo'."""


@dataclass
class DataConfig:
    """Training data: an indexed dataset mixture (CPT), chat data (SFT), or a synthetic task (tests, demo)."""

    seq_length: int = 128
    """Training window in tokens (the packed sequence length)."""
    tokenizer: Optional[str] = None
    """Tokenizer: a sentencepiece .model file, an HF tokenizer.json, or a directory holding one."""
    paths: List[str] = field(default_factory=list)
    """CPT: a mixture manifest .json, preprocessed dirs or dataset prefixes; SFT: chat jsonl or SFT prefixes."""
    synthetic: Optional[str] = None
    """Use a generated task instead of files: 'copy' (learnable, for tests and the demo) or None."""
    separator_id: Optional[int] = None
    """Token joining packed documents; None uses the tokenizer's dedicated separator (never BOS/EOS)."""
    mask_cross_document: bool = False
    """Mask attention across packed document boundaries (SFT always masks across samples)."""
    short_threshold: int = 4096
    """Documents shorter than this (tokens) are down-sampled in the CPT mixture."""
    long_threshold: int = 8192
    """Documents longer than this (tokens) are up-sampled in the CPT mixture."""
    short_keep_ratio: float = 0.3
    """Fraction of short documents kept (sampling weight of the < short_threshold bucket)."""
    long_upsample: float = 3.0
    """Sampling weight of the > long_threshold bucket."""
    token_budget: Optional[int] = None
    """Total document tokens of the CPT mixture; None = one pass with the sampling weights."""
    num_workers: int = 2
    """torch DataLoader worker processes; 0 loads in the training process (synthetic data always does)."""
    loader: str = "auto"
    """Batch loader: 'auto' (DALI prefetching to the GPU when nvidia-dali imports, else torch), 'dali' or 'torch'."""
    chat_template: str = "auto"
    """SFT chat format: 'auto' (the tokenizer's template if it has one, else Llama-3), 'llama3' (built in) or 'hf'."""
    eval_files: List[str] = field(default_factory=list)
    """Eval sets (jsonl: every string field; txt: one item per line) that SFT jsonl is decontaminated against."""
    decontamination_ngram: int = 13
    """Word n-gram size of the decontamination: a sample sharing one n-gram with an eval item is dropped."""


@dataclass
class OptimConfig:
    """AdamW with warmup + decay, on Megatron-Core's (distributed) optimizer."""

    lr: float = 2e-5
    """Peak learning rate."""
    min_lr: float = 0.0
    """Floor of the decay."""
    lr_schedule: str = "cosine"
    """Decay after warmup: 'cosine', 'linear' or 'constant'."""
    lr_warmup_steps: int = 0
    """Linear warmup steps from 0 to lr."""
    weight_decay: float = 0.1
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam β1."""
    adam_beta2: float = 0.95
    """Adam β2."""
    adam_eps: float = 1e-8
    """Adam ε."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""


@dataclass
class TrainConfig:
    """The training loop."""

    mode: str = "cpt"
    """'cpt' (continued pretraining on packed long documents) or 'sft' (assistant-only loss)."""
    max_steps: int = 10
    """Optimizer steps to run (global)."""
    micro_batch_size: int = 1
    """Sequences per microbatch per data-parallel rank."""
    global_batch_size: int = 1
    """Sequences per optimizer step over all data-parallel ranks (multiple of micro_batch_size·dp)."""
    seed: int = 1234
    """Seed for weights init, dropout and data order."""
    run_dir: str = "runs/default"
    """Directory for metrics.jsonl, TensorBoard events, the resolved config and (by default) checkpoints."""
    log_interval: int = 1
    """Steps between console progress lines."""
    recompute: str = "none"
    """Activation recompute: 'none', 'selective' (attention core) or 'full' (whole layers; the norm above 128K tokens/GPU)."""
    recompute_num_layers: int = 1
    """Layers per recompute chunk with recompute='full'."""
    loss_chunk_size: int = 0
    """Compute the loss over chunks of this many tokens without materialising full [S, V] logits; 0 = one chunk."""
    tensorboard: bool = True
    """Write TensorBoard scalars under <run_dir>/tensorboard."""


@dataclass
class CheckpointConfig:
    """Megatron distributed checkpoints: atomic publish, automatic resume, resharding on load."""

    dir: Optional[str] = None
    """Checkpoint directory; None means <train.run_dir>/checkpoints."""
    interval: int = 0
    """Save every this many steps; 0 saves only at the end and on a preemption signal."""
    init_from: Optional[str] = None
    """Initial weights (a converted HF checkpoint or an earlier stage); ignored when resuming from dir."""
    keep_last: int = 2
    """Completed checkpoints kept; older ones are deleted after a successful save."""


@dataclass
class EvalConfig:
    """Evaluation grid for needle-in-a-haystack and RULER-style tasks."""

    lengths: List[int] = field(default_factory=lambda: [1024, 2048])
    """Context lengths to test, in tokens."""
    depths: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    """Needle depths as fractions of the context."""
    samples_per_cell: int = 1
    """Trials per (length, depth) cell."""
    output_dir: Optional[str] = None
    """Where results and plots go; None means <train.run_dir>/eval."""


@dataclass
class Config:
    """A whole recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    yarn: YarnConfig = field(default_factory=YarnConfig)
    """Context extension."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallel layout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training loop."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""


# ------------------------------------------------------------------------------------ derived values
def head_dim(model: ModelConfig) -> int:
    """Per-head channels."""
    return model.kv_channels or model.hidden_size // model.num_attention_heads


def max_sequence_length(cfg: Config) -> int:
    """The longest sequence the model takes: the YaRN target length when extended, else its own window."""
    return cfg.yarn.target_length if cfg.yarn.enabled else cfg.model.max_position_embeddings


def data_parallel_size(parallel: ParallelConfig, world_size: int) -> int:
    """world_size / (tp·pp·cp)."""
    return world_size // (parallel.tp * parallel.pp * parallel.cp)


def checkpoint_dir(cfg: Config) -> str:
    """checkpoint.dir, defaulting to <run_dir>/checkpoints."""
    return cfg.checkpoint.dir or os.path.join(cfg.train.run_dir, "checkpoints")


# --------------------------------------------------------------------------------- loading / dumping
def _field_docs(cls) -> Dict[str, str]:
    """Attribute docstrings (the string literal right after each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = str(nxt.value.value)
    return docs


def describe() -> str:
    """Every recipe key with its type, default and docstring (printed by `--help-config`)."""
    lines = []
    for sec in dataclasses.fields(Config):
        cls = sec.default_factory
        docs = _field_docs(cls)
        lines.append(f"{sec.name}:  # {cls.__doc__}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {sec.name}.{f.name} = {default!r}    # {docs.get(f.name, '')}")
    return "\n".join(lines)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check / convert one YAML value against a field's type hint; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}={value!r}: expected a list, e.g. {where}=[1,2]")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads '1e-5' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}={value!r}: expected a string")
    return value


def _build(cls, data: Dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{(where + '.') if where else ''}{close[0]}'?" if close else \
                f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def _deep_merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_recipe_path(name: str, relative_to: Optional[Path]) -> Path:
    candidates = []
    for folder in ([relative_to] if relative_to else []) + [RECIPES_DIR]:
        for n in (name, f"{name}.yaml"):
            candidates.append(folder / n)
    candidates.insert(0, Path(name))
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"recipe '{name}' not found (looked in {relative_to or '.'} and {RECIPES_DIR}); "
                      f"pass a path to a .yaml file or one of: {', '.join(list_recipes())}")


def list_recipes() -> List[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _read_yaml_tree(path: Path, seen: tuple = ()) -> Dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: recipe 'base' chain loops back to itself; remove the cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise ConfigError(f"{path}{':' + str(line + 1) if line is not None else ''}: invalid YAML "
                          f"({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    merged: Dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _read_yaml_tree(_resolve_recipe_path(b, path.parent), seen + (path,)))
    return _deep_merge(merged, data)


def parse_overrides(overrides: List[str]) -> Dict[str, Any]:
    """['train.max_steps=10', 'parallel.tp=2'] -> {'train': {'max_steps': 10}, 'parallel': {'tp': 2}}."""
    out: Dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "." not in key:
            raise ConfigError(f"override '{item}': expected section.key=value, e.g. train.max_steps=10")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is a value, not a section")
        node[parts[-1]] = value
    return out


def config_from_dict(data: Dict[str, Any]) -> Config:
    """Build a Config from a nested mapping (unknown keys and wrong types raise ConfigError)."""
    return _build(Config, data, "")


def load_recipe(path: Optional[str | os.PathLike], overrides: Optional[List[str]] = None) -> Config:
    """Read a YAML recipe (with its `base` chain), apply dotted overrides, return a Config (not yet validated)."""
    data = _read_yaml_tree(_resolve_recipe_path(str(path), None)) if path else {}
    data = _deep_merge(data, parse_overrides(list(overrides or [])))
    return config_from_dict(data)


PATH_KEYS = ("train.run_dir", "checkpoint.dir", "checkpoint.init_from", "data.tokenizer", "data.paths",
             "data.eval_files", "eval.output_dir")
"""Recipe keys that hold file-system paths (``absolute_paths`` resolves them)."""


def absolute_paths(cfg: Config, base: Optional[str | os.PathLike] = None) -> Config:
    """A copy of ``cfg`` with every PATH_KEYS value made absolute against ``base`` (default: the working directory).
    The trainer applies it at launch, so the run's saved config.yaml and checkpoint metadata name the same files
    from any directory (converters and later stages read them from elsewhere)."""
    base = os.fspath(base) if base is not None else os.getcwd()

    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return os.path.normpath(os.path.join(base, os.path.expanduser(value))) if value else value

    sections = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = absolute(getattr(getattr(cfg, section), name))
    return dataclasses.replace(cfg, **{sec: dataclasses.replace(getattr(cfg, sec), **vals)
                                       for sec, vals in sections.items()})


def to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain nested dict (YAML/JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def dump_recipe(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


# ---------------------------------------------------------------------------------------- validation
ARCHS = ("llama", "qwen2")
ROPE_TYPES = ("default", "llama3", "linear")
DTYPES = ("fp32", "bf16", "fp16")
FP8_RECIPES = (None, "hybrid", "e4m3")
ATTENTION_BACKENDS = ("auto", "te", "sdpa", "local")
CP_COMM_TYPES = ("p2p", "a2a", "a2a+p2p", "all_gather")
BACKENDS = ("auto", "nccl", "gloo")
MODES = ("cpt", "sft")
SCHEDULES = ("cosine", "linear", "constant")
RECOMPUTE = ("none", "selective", "full")
SYNTHETIC = (None, "copy")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _one_of(value, choices, where: str) -> None:
    _check(value in choices, f"{where}={value!r}: must be one of {', '.join(map(repr, choices))}")


def _positive(obj, names, section: str) -> None:
    for n in names:
        v = getattr(obj, n)
        _check(v is not None and v > 0, f"{section}.{n}={v!r}: must be > 0")


def validate_yarn(yarn: YarnConfig, model: ModelConfig) -> None:
    """YaRN settings; also used by the rotary module when built outside a recipe."""
    if not yarn.enabled:
        return
    _check(yarn.target_length is not None,
           "yarn.target_length is not set: give the extended context in tokens, e.g. yarn.target_length=1048576")
    _check(yarn.original_max_position_embeddings > 0,
           f"yarn.original_max_position_embeddings={yarn.original_max_position_embeddings}: must be > 0 "
           f"(8192 for Llama-3.1)")
    _check(yarn.target_length >= yarn.original_max_position_embeddings,
           f"yarn.target_length={yarn.target_length} is below yarn.original_max_position_embeddings="
           f"{yarn.original_max_position_embeddings}: YaRN extends, it does not shrink; raise target_length")
    _check(yarn.factor is None or yarn.factor > 0,
           f"yarn.factor={yarn.factor}: must be > 0, or unset to derive target_length / original")
    _check(yarn.beta_fast > yarn.beta_slow,
           f"yarn.beta_fast={yarn.beta_fast} must be > yarn.beta_slow={yarn.beta_slow} (the recipe uses 4 and 1)")
    _check(yarn.beta_slow > 0, f"yarn.beta_slow={yarn.beta_slow}: must be > 0 (the recipe uses 1)")
    _check(yarn.mscale > 0, f"yarn.mscale={yarn.mscale}: must be > 0 (1 is plain YaRN)")
    _check(head_dim(model) % 2 == 0,
           f"model head dim {head_dim(model)} is odd: RoPE rotates channel pairs; use an even kv_channels")


def validate(cfg: Config, world_size: Optional[int] = None) -> Config:
    """Check the whole recipe once, before any process group starts. Raises ConfigError on the first problem."""
    m, y, p, d, o, t, c = cfg.model, cfg.yarn, cfg.parallel, cfg.data, cfg.optim, cfg.train, cfg.checkpoint
    # model
    _one_of(m.arch, ARCHS, "model.arch")
    _positive(m, ["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                  "vocab_size", "max_position_embeddings", "rope_theta", "norm_eps"], "model")
    if m.kv_channels is None:
        _check(m.hidden_size % m.num_attention_heads == 0,
               f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
               f"{m.num_attention_heads}; set model.kv_channels explicitly or change the head count")
    _check(m.num_attention_heads % m.num_query_groups == 0,
           f"model.num_attention_heads={m.num_attention_heads} is not divisible by model.num_query_groups="
           f"{m.num_query_groups}; GQA needs heads = groups × k")
    _check(head_dim(m) % 2 == 0, f"model head dim {head_dim(m)} is odd: RoPE rotates channel pairs; "
                                 f"use an even kv_channels")
    _one_of(m.rope_type, ROPE_TYPES, "model.rope_type")
    _one_of(m.params_dtype, DTYPES, "model.params_dtype")
    _one_of(m.fp8, FP8_RECIPES, "model.fp8")
    _one_of(m.attention_backend, ATTENTION_BACKENDS, "model.attention_backend")
    _check(m.fp8 is None or m.params_dtype == "bf16",
           f"model.fp8={m.fp8!r} needs model.params_dtype='bf16' (got {m.params_dtype!r})")
    if m.rope_type in ("llama3", "linear"):
        _check(m.rope_factor >= 1, f"model.rope_factor={m.rope_factor}: must be >= 1 for rope_type={m.rope_type}")
    validate_yarn(y, m)
    # parallel
    _positive(p, ["tp", "pp", "cp"], "parallel")
    _one_of(p.cp_comm_type, CP_COMM_TYPES, "parallel.cp_comm_type")
    _one_of(p.backend, BACKENDS, "parallel.backend")
    _check(m.num_attention_heads % p.tp == 0,
           f"parallel.tp={p.tp} does not divide model.num_attention_heads={m.num_attention_heads}; "
           f"pick tp from the divisors of the head count")
    _check(m.num_query_groups % p.tp == 0,
           f"parallel.tp={p.tp} does not divide model.num_query_groups={m.num_query_groups} (KV heads); "
           f"use tp <= {m.num_query_groups} dividing it")
    _check(m.vocab_size % p.tp == 0,
           f"parallel.tp={p.tp} does not divide model.vocab_size={m.vocab_size}; pad the vocabulary to a multiple")
    _check(m.num_layers % p.pp == 0,
           f"parallel.pp={p.pp} does not divide model.num_layers={m.num_layers}; pick pp from its divisors")
    _check(not p.sequence_parallel or p.tp > 1,
           "parallel.sequence_parallel=true needs parallel.tp > 1; turn it off or raise tp")
    if p.cp > 1:
        _check(d.seq_length % (2 * p.cp) == 0,
               f"parallel.cp={p.cp}: data.seq_length={d.seq_length} is not divisible by 2*cp={2 * p.cp} "
               f"(zigzag split); use a multiple of {2 * p.cp}")
        if p.cp_comm_type == "a2a":  # a2a+p2p only needs its all-to-all level to divide (parallel.py checks it)
            _check(m.num_query_groups % p.cp == 0,
                   f"parallel.cp_comm_type='a2a' needs parallel.cp={p.cp} to divide model.num_query_groups="
                   f"{m.num_query_groups}; use cp_comm_type=p2p (or a2a+p2p) or a cp dividing it")
    if p.sequence_parallel:
        unit = p.tp * (2 * p.cp if p.cp > 1 else 1)
        _check(d.seq_length % unit == 0,
               f"parallel.sequence_parallel: data.seq_length={d.seq_length} is not divisible by "
               f"tp{'·2·cp' if p.cp > 1 else ''}={unit}; use a multiple of {unit}")
    if world_size is not None:
        mp = p.tp * p.pp * p.cp
        _check(p.cp <= world_size, f"parallel.cp={p.cp} exceeds the world size {world_size}; lower cp or add GPUs")
        _check(world_size % mp == 0,
               f"world size {world_size} is not divisible by tp·pp·cp = {p.tp}·{p.pp}·{p.cp} = {mp}; "
               f"launch a multiple of {mp} processes or change the layout")
    # data
    _positive(d, ["seq_length", "short_threshold", "long_threshold", "decontamination_ngram"], "data")
    _check(d.num_workers >= 0, f"data.num_workers={d.num_workers}: must be >= 0 (0 = load in the training process)")
    _one_of(d.loader, ("auto", "dali", "torch"), "data.loader")
    _one_of(d.chat_template, ("auto", "llama3", "hf"), "data.chat_template")
    _check(d.separator_id is None or 0 <= d.separator_id < m.vocab_size,
           f"data.separator_id={d.separator_id} is outside the vocabulary (0..{m.vocab_size - 1}); "
           f"use an unused special token id, or unset it to take the tokenizer's separator")
    max_len = y.target_length if y.enabled else m.max_position_embeddings
    _check(d.seq_length <= max_len,
           f"data.seq_length={d.seq_length} exceeds the model's window {max_len} "
           f"({'yarn.target_length' if y.enabled else 'model.max_position_embeddings'}); raise it or shorten")
    _check(d.short_threshold <= d.long_threshold,
           f"data.short_threshold={d.short_threshold} > data.long_threshold={d.long_threshold}; swap them")
    _check(0 < d.short_keep_ratio <= 1, f"data.short_keep_ratio={d.short_keep_ratio}: must be in (0, 1]")
    _check(d.long_upsample >= 1, f"data.long_upsample={d.long_upsample}: must be >= 1")
    _one_of(d.synthetic, SYNTHETIC, "data.synthetic")
    _check(d.synthetic is not None or bool(d.paths),
           "data.paths is empty and data.synthetic is unset: give data.paths=[prefix,...] or data.synthetic=copy")
    # optim
    _check(o.lr >= 0 and 0 <= o.min_lr <= o.lr, f"optim.min_lr={o.min_lr} / optim.lr={o.lr}: need 0 <= min_lr <= lr")
    _one_of(o.lr_schedule, SCHEDULES, "optim.lr_schedule")
    _check(0 <= o.lr_warmup_steps <= t.max_steps,
           f"optim.lr_warmup_steps={o.lr_warmup_steps} must be in [0, train.max_steps={t.max_steps}]")
    _check(o.clip_grad >= 0, f"optim.clip_grad={o.clip_grad}: must be >= 0 (0 disables clipping)")
    _check(0 <= o.adam_beta1 < 1 and 0 <= o.adam_beta2 < 1,
           f"optim.adam_beta1={o.adam_beta1}, adam_beta2={o.adam_beta2}: must be in [0, 1)")
    # train
    _one_of(t.mode, MODES, "train.mode")
    _one_of(t.recompute, RECOMPUTE, "train.recompute")
    _positive(t, ["max_steps", "micro_batch_size", "global_batch_size", "log_interval"], "train")
    _check(t.loss_chunk_size >= 0, f"train.loss_chunk_size={t.loss_chunk_size}: must be >= 0 (0 = unchunked)")
    if world_size is not None:
        dp = data_parallel_size(p, world_size)
        _check(t.global_batch_size % (t.micro_batch_size * dp) == 0,
               f"train.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size·dp = "
               f"{t.micro_batch_size}·{dp}; use a multiple of {t.micro_batch_size * dp}")
    # checkpoint
    _check(c.interval >= 0, f"checkpoint.interval={c.interval}: must be >= 0 (0 = only at the end)")
    _check(c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last}: must be >= 1")
    # eval
    _check(all(x > 0 for x in cfg.eval.lengths), f"eval.lengths={cfg.eval.lengths}: lengths must be > 0")
    _check(all(0.0 <= x <= 1.0 for x in cfg.eval.depths), f"eval.depths={cfg.eval.depths}: depths must be in [0, 1]")
    return cfg
