"""The recipe schema: one dataclass per section (every field documented), the allowed values, derived values.

    cfg = Config()                 # defaults; recipes are read by config.loading, checked by config.validation
    print(describe())              # every key with its type, default and docstring (`--help-config`)
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = [
    "ConfigError", "Config", "ModelConfig", "YarnConfig", "ParallelConfig", "DataConfig", "OptimConfig",
    "TrainConfig", "CheckpointConfig", "describe", "head_dim", "max_sequence_length", "data_parallel_size",
    "checkpoint_dir", "needs_document_masking", "heads_per_tp_rank", "ARCHS", "ROPE_TYPES", "DTYPE_NAMES",
    "FP8_RECIPES", "ATTENTION_BACKENDS", "CP_COMM_TYPES", "BACKENDS", "LOADERS", "CHAT_TEMPLATES", "MODES",
    "SCHEDULES", "RECOMPUTE", "SYNTHETIC", "OPTIM_SHARDINGS",
]



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
    """Core attention: 'auto' (TE on a GPU where it is installed, else SDPA, on CPU too), 'te', 'sdpa' or 'local'."""
    from_checkpoint: bool = False
    """Take every model field the recipe and overrides do not state from checkpoint.init_from's saved config
    (fp8 and attention_backend stay this run's); the stated ones must agree with it (train/stage.py)."""


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
    separator: Optional[str] = "<s>"
    """Text joining packed CPT documents, encoded as plain text by data.tokenizer (the paper's "<s>"); null = the
    tokenizer's dedicated separator token. data.separator_id, when set, replaces it."""
    separator_id: Optional[int] = None
    """One token id joining packed documents instead of data.separator (never BOS/EOS/EOT/pad)."""
    allow_tokenizer_mismatch: bool = False
    """Train although the datasets' summary.json names another tokenizer (vocabulary, special ids, separator)."""
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
    token_budget: Optional[int] = None
    """Tokens to train on (padding excluded); when set it replaces train.max_steps, which the trainer derives once
    the data is loaded: ceil(token_budget / (global_batch_size × data tokens per window)), the mean over the packed
    SFT windows (CPT windows are full: data.seq_length), logged and saved in config.yaml. null: train.max_steps.
    Not data.token_budget, which sizes a CPT mixture."""
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
    """Activation recompute: 'none', 'selective' (attention core) or 'full' (whole layers; the norm above 128K
    tokens/GPU)."""
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
    allow_rope_change: bool = False
    """Train with RoPE settings other than the checkpoint it starts from (θ, rope scaling; in SFT also
    model.max_position_embeddings and yarn.*, which SFT otherwise takes from the checkpoint); refused by default."""
    allow_model_change: bool = False
    """Train with non-shape model fields (model.arch, model.norm_eps) other than the checkpoint's; refused by
    default."""
    fully_parallel: bool = True
    """Share the writing and reading of what data-parallel (and CP) replicas hold alike among them (Megatron's
    fully-parallel save/load strategies over the DP×CP group); false: DP rank 0 writes it all, every rank reads its
    whole shard."""
    optim_sharding: str = "dp_reshardable"
    """How the DistributedOptimizer (GPU) saves its state: 'dp_reshardable' (each DP×CP rank writes its own shard,
    no gathering; a resume may change dp and cp, not tp or pp) or 'fully_reshardable' (gathered to DP rank 0 over
    gloo, slow at scale; any layout can resume). The non-sharded optimizer (CPU) always saves reshardable state."""
    async_save: bool = False
    """Interval saves write in background processes while training goes on; the checkpoint is published (renamed,
    'latest' updated) only once every rank's files are written. Final and preemption saves stay synchronous."""
    signal_deadline_s: Optional[float] = None
    """Seconds from a preemption signal (USR1/TERM) until the job is killed (the sbatch --signal lead, or the
    preemption grace time). Between micro-batches, a step whose rest plus a save no longer fits is abandoned: the
    previous step's checkpoint is saved, exit 75, the requeued job redoes the step. None: $SLURM_JOB_END_TIME when
    SLURM sets it, else every step in progress is finished."""


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


# ------------------------------------------------------------------------------------ allowed values
ARCHS = ("llama", "qwen2")
ROPE_TYPES = ("default", "llama3", "linear")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
"""Recipe names of the compute dtypes (model.params_dtype; model.builder.TORCH_DTYPES maps them to torch)."""
FP8_RECIPES = (None, "hybrid", "e4m3")
ATTENTION_BACKENDS = ("auto", "te", "sdpa", "local")
CP_COMM_TYPES = ("p2p", "a2a", "a2a+p2p", "all_gather")
BACKENDS = ("auto", "nccl", "gloo")
LOADERS = ("auto", "dali", "torch")
CHAT_TEMPLATES = ("auto", "llama3", "hf")
MODES = ("cpt", "sft")
SCHEDULES = ("cosine", "linear", "constant")
RECOMPUTE = ("none", "selective", "full")
SYNTHETIC = (None, "copy")
OPTIM_SHARDINGS = ("dp_reshardable", "fully_reshardable")
"""checkpoint.optim_sharding values: Megatron's DistributedOptimizer sharding types (distrib_optim_sharding_type)."""


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


def needs_document_masking(cfg: Config) -> bool:
    """Attention is masked across packed documents/samples: always in SFT, in CPT with data.mask_cross_document."""
    return bool(cfg.data.mask_cross_document or cfg.train.mode == "sft")


def heads_per_tp_rank(model: ModelConfig, parallel: ParallelConfig) -> Tuple[int, int]:
    """(query heads, KV heads) each tensor-parallel rank holds."""
    return model.num_attention_heads // parallel.tp, model.num_query_groups // parallel.tp


# ------------------------------------------------------------------------------------------ describe
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

