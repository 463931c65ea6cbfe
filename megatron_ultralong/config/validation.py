"""Checking a recipe once, before any process group starts: one function per section, plus the rules that other
modules apply to runtime values too (CP sequence length, a2a head split, RoPE head dim, mixture parameters, YaRN).

    validate(cfg, world_size=8)      # raises ConfigError with a one-line, actionable message; returns cfg
"""
from __future__ import annotations

from typing import Optional

from .schema import (
    ARCHS,
    ATTENTION_BACKENDS,
    BACKENDS,
    CHAT_TEMPLATES,
    CP_COMM_TYPES,
    DTYPE_NAMES,
    FP8_RECIPES,
    LOADERS,
    MODES,
    OPTIM_SHARDINGS,
    RECOMPUTE,
    ROPE_TYPES,
    SCHEDULES,
    SYNTHETIC,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    ParallelConfig,
    YarnConfig,
    data_parallel_size,
    head_dim,
    heads_per_tp_rank,
)

__all__ = [
    "validate", "validate_yarn", "check_cp_seq_length", "check_a2a_heads", "check_rope_head_dim",
    "check_mixture_params", "check_yarn_original", "check_yarn_target", "check_yarn_factor", "check_yarn_betas",
]



def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _one_of(value, choices, where: str) -> None:
    _check(value in choices, f"{where}={value!r}: must be one of {', '.join(map(repr, choices))}")


def _positive(obj, names, section: str) -> None:
    for n in names:
        v = getattr(obj, n)
        _check(v is not None and v > 0, f"{section}.{n}={v!r}: must be > 0")


# ------------------------------------------------------------------------------- rules used elsewhere too
def check_rope_head_dim(dim: int) -> None:
    """RoPE rotates channel pairs: the head dimension must be a positive even number."""
    if dim <= 0 or dim % 2:
        raise ConfigError(f"model head dim {dim} is {'odd' if dim > 0 else 'not positive'}: RoPE rotates channel "
                          f"pairs, so it must be a positive even number; use an even model.kv_channels")


def check_cp_seq_length(seq_length: int, cp_size: int, tp_size: int = 1, sequence_parallel: bool = False,
                        key: Optional[str] = None) -> None:
    """A sequence of ``seq_length`` tokens fits the zigzag CP layout (2·cp chunks) and, with sequence parallelism,
    splits over tp as well. ``key`` names the setting in the message (e.g. 'data.seq_length'); None = a batch."""
    length = f"{key}={seq_length}" if key else f"sequence length {seq_length}"
    if cp_size > 1:
        _check(seq_length % (2 * cp_size) == 0,
               f"parallel.cp={cp_size}: {length} is not divisible by 2*cp={2 * cp_size} (zigzag split); "
               f"use a multiple of {2 * cp_size}")
    if sequence_parallel:
        unit = tp_size * (2 * cp_size if cp_size > 1 else 1)
        _check(seq_length % unit == 0,
               f"parallel.sequence_parallel with tp={tp_size}, cp={cp_size}: {length} is not divisible by "
               f"tp{'·2·cp' if cp_size > 1 else ''}={unit}; use a multiple of {unit}")


def check_a2a_heads(model: ModelConfig, parallel: ParallelConfig) -> None:
    """cp_comm_type='a2a' exchanges heads: cp must divide each TP rank's query and KV head counts."""
    p = parallel
    if p.cp == 1 or p.cp_comm_type != "a2a":
        return
    heads, groups = heads_per_tp_rank(model, p)
    _check(heads % p.cp == 0 and groups % p.cp == 0,
           f"parallel.cp_comm_type='a2a' splits each TP rank's {heads} query / {groups} KV heads over cp={p.cp} "
           f"ranks (model.num_attention_heads={model.num_attention_heads}, model.num_query_groups="
           f"{model.num_query_groups}, tp={p.tp}): cp must divide both; use cp_comm_type=p2p or a2a+p2p")


def check_mixture_params(params, prefix: str = "data.", error: type = ConfigError) -> None:
    """The CPT mixture's sampling parameters, read from ``params`` by name (a DataConfig or a
    data.mixture.MixtureParams); ``prefix`` goes before each name in the message, ``error`` is raised."""
    p = prefix
    s, long_, keep, up, budget = (params.short_threshold, params.long_threshold, params.short_keep_ratio,
                                  params.long_upsample, params.token_budget)
    if not 0 < s <= long_:
        raise error(f"{p}short_threshold={s}, {p}long_threshold={long_}: need 0 < short <= long; "
                    f"swap them or make both positive")
    if not 0 < keep <= 1:
        raise error(f"{p}short_keep_ratio={keep}: must be in (0, 1] (the fraction of short documents kept)")
    if not up >= 1:
        raise error(f"{p}long_upsample={up}: must be >= 1 (the sampling weight of long documents)")
    if budget is not None and budget <= 0:
        raise error(f"{p}token_budget={budget}: must be > 0 tokens; leave it unset (null) for one pass over the "
                    f"data with the sampling weights")


def check_yarn_original(original_max_position_embeddings: int) -> None:
    """YaRN's original window (the pre-extension pretraining length) is positive."""
    _check(original_max_position_embeddings > 0,
           f"yarn.original_max_position_embeddings={original_max_position_embeddings}: must be > 0 "
           f"(8192 for Llama-3.1)")


def check_yarn_target(target_length: Optional[int], original_max_position_embeddings: int) -> None:
    """YaRN extends: target_length is set and at least the (positive) original window."""
    _check(target_length is not None,
           "yarn.target_length is not set: give the extended context in tokens, e.g. yarn.target_length=1048576")
    check_yarn_original(original_max_position_embeddings)
    _check(target_length >= original_max_position_embeddings,
           f"yarn.target_length={target_length} is below yarn.original_max_position_embeddings="
           f"{original_max_position_embeddings}: YaRN extends, it does not shrink; raise target_length")


def check_yarn_factor(factor: float) -> None:
    """An explicit YaRN scale factor is > 0 (an unset yarn.factor is derived, and not checked here)."""
    _check(factor > 0, f"yarn.factor={factor}: must be > 0, or unset to derive target_length / original")


def check_yarn_betas(beta_fast: float, beta_slow: float) -> None:
    """The YaRN ramp's rotation counts: beta_fast > beta_slow > 0 (α = beta_slow, β = beta_fast)."""
    _check(beta_fast > beta_slow,
           f"yarn.beta_fast={beta_fast} must be > yarn.beta_slow={beta_slow} (the recipe uses 4 and 1)")
    _check(beta_slow > 0, f"yarn.beta_slow={beta_slow}: must be > 0 (the recipe uses 1)")


def validate_yarn(yarn: YarnConfig, model: ModelConfig) -> None:
    """YaRN settings; also used by the rotary module when built outside a recipe (RoPE math checks the head dim)."""
    if not yarn.enabled:
        return
    check_yarn_target(yarn.target_length, yarn.original_max_position_embeddings)
    if yarn.factor is not None:
        check_yarn_factor(yarn.factor)
    check_yarn_betas(yarn.beta_fast, yarn.beta_slow)
    _check(yarn.mscale > 0, f"yarn.mscale={yarn.mscale}: must be > 0 (1 is plain YaRN)")


# ---------------------------------------------------------------------------------------------- sections
def validate_model(cfg: Config, world_size: Optional[int] = None) -> None:
    m = cfg.model
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
    check_rope_head_dim(head_dim(m))
    _one_of(m.rope_type, ROPE_TYPES, "model.rope_type")
    _one_of(m.params_dtype, DTYPE_NAMES, "model.params_dtype")
    _one_of(m.fp8, FP8_RECIPES, "model.fp8")
    _one_of(m.attention_backend, ATTENTION_BACKENDS, "model.attention_backend")
    _check(m.fp8 is None or m.params_dtype == "bf16",
           f"model.fp8={m.fp8!r} needs model.params_dtype='bf16' (got {m.params_dtype!r})")
    if m.rope_type in ("llama3", "linear"):
        _check(m.rope_factor >= 1, f"model.rope_factor={m.rope_factor}: must be >= 1 for rope_type={m.rope_type}")


def validate_yarn_section(cfg: Config, world_size: Optional[int] = None) -> None:
    validate_yarn(cfg.yarn, cfg.model)


LAYOUT_SPLITS = (  # (parallel key, model field it splits, how to fix): each split must be even
    ("tp", "num_attention_heads", "pick tp from the divisors of the head count"),
    ("tp", "num_query_groups", "the KV heads split over tp too: use tp <= {count} dividing it"),
    ("tp", "vocab_size", "pad the vocabulary to a multiple"),
    ("pp", "num_layers", "pick pp from its divisors"),
)


def validate_parallel(cfg: Config, world_size: Optional[int] = None) -> None:
    m, p = cfg.model, cfg.parallel
    _positive(p, ["tp", "pp", "cp"], "parallel")
    _one_of(p.cp_comm_type, CP_COMM_TYPES, "parallel.cp_comm_type")
    _one_of(p.backend, BACKENDS, "parallel.backend")
    for key, field, fix in LAYOUT_SPLITS:
        parts, count = getattr(p, key), getattr(m, field)
        _check(count % parts == 0,
               f"parallel.{key}={parts} does not divide model.{field}={count}; {fix.format(count=count)}")
    _check(not p.sequence_parallel or p.tp > 1,
           "parallel.sequence_parallel=true needs parallel.tp > 1; turn it off or raise tp")
    check_cp_seq_length(cfg.data.seq_length, p.cp, p.tp, p.sequence_parallel, key="data.seq_length")
    check_a2a_heads(m, p)
    if world_size is not None:
        mp = p.tp * p.pp * p.cp
        _check(p.cp <= world_size, f"parallel.cp={p.cp} exceeds the world size {world_size}; lower cp or add GPUs")
        _check(world_size % mp == 0,
               f"world size {world_size} is not divisible by tp·pp·cp = {p.tp}·{p.pp}·{p.cp} = {mp}; "
               f"launch a multiple of {mp} processes or change the layout")


def validate_data(cfg: Config, world_size: Optional[int] = None) -> None:
    d, m, y = cfg.data, cfg.model, cfg.yarn
    _positive(d, ["seq_length", "decontamination_ngram"], "data")
    _check(d.num_workers >= 0, f"data.num_workers={d.num_workers}: must be >= 0 (0 = load in the training process)")
    _one_of(d.loader, LOADERS, "data.loader")
    _one_of(d.chat_template, CHAT_TEMPLATES, "data.chat_template")
    _check(d.separator is None or (isinstance(d.separator, str) and d.separator != ""),
           f"data.separator={d.separator!r}: must be a non-empty text (the paper's '<s>'), or null for the "
           f"tokenizer's dedicated separator token")
    _check(d.separator_id is None or d.separator in (None, DataConfig.separator),
           f"data.separator={d.separator!r} and data.separator_id={d.separator_id} both choose the separator; set "
           f"one of them (data.separator_id replaces the default '<s>' text)")
    _check(d.separator_id is None or 0 <= d.separator_id < m.vocab_size,
           f"data.separator_id={d.separator_id} is outside the vocabulary (0..{m.vocab_size - 1}); "
           f"use an unused special token id, or unset it to take the tokenizer's separator")
    max_len = y.target_length if y.enabled else m.max_position_embeddings
    window = "yarn.target_length" if y.enabled else "model.max_position_embeddings"
    _check(d.seq_length <= max_len,
           f"data.seq_length={d.seq_length} exceeds the model's window {max_len} ({window}); raise {window} or "
           f"shorten data.seq_length to at most {max_len}")
    check_mixture_params(d)
    _one_of(d.synthetic, SYNTHETIC, "data.synthetic")
    _check(d.synthetic is not None or bool(d.paths),
           "data.paths is empty and data.synthetic is unset: give data.paths=[prefix,...] or data.synthetic=copy")


def validate_optim(cfg: Config, world_size: Optional[int] = None) -> None:
    o, t = cfg.optim, cfg.train
    _check(o.lr >= 0 and 0 <= o.min_lr <= o.lr, f"optim.min_lr={o.min_lr} / optim.lr={o.lr}: need 0 <= min_lr <= lr")
    _one_of(o.lr_schedule, SCHEDULES, "optim.lr_schedule")
    _check(0 <= o.lr_warmup_steps <= t.max_steps,
           f"optim.lr_warmup_steps={o.lr_warmup_steps} must be in [0, train.max_steps={t.max_steps}]")
    _check(o.clip_grad >= 0, f"optim.clip_grad={o.clip_grad}: must be >= 0 (0 disables clipping)")
    _check(0 <= o.adam_beta1 < 1 and 0 <= o.adam_beta2 < 1,
           f"optim.adam_beta1={o.adam_beta1}, adam_beta2={o.adam_beta2}: must be in [0, 1)")


def validate_train(cfg: Config, world_size: Optional[int] = None) -> None:
    t = cfg.train
    _one_of(t.mode, MODES, "train.mode")
    _one_of(t.recompute, RECOMPUTE, "train.recompute")
    _positive(t, ["max_steps", "micro_batch_size", "global_batch_size", "log_interval"], "train")
    _check(t.token_budget is None or t.token_budget > 0,
           f"train.token_budget={t.token_budget}: must be > 0 tokens; null runs train.max_steps steps")
    _check(t.loss_chunk_size >= 0, f"train.loss_chunk_size={t.loss_chunk_size}: must be >= 0 (0 = unchunked)")
    if world_size is not None:
        dp = data_parallel_size(cfg.parallel, world_size)
        _check(t.global_batch_size % (t.micro_batch_size * dp) == 0,
               f"train.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size·dp = "
               f"{t.micro_batch_size}·{dp}; use a multiple of {t.micro_batch_size * dp}")


def validate_checkpoint(cfg: Config, world_size: Optional[int] = None) -> None:
    c = cfg.checkpoint
    _check(c.interval >= 0, f"checkpoint.interval={c.interval}: must be >= 0 (0 = only at the end)")
    _check(c.keep_last >= 1, f"checkpoint.keep_last={c.keep_last}: must be >= 1")
    _check(c.signal_deadline_s is None or c.signal_deadline_s >= 0,
           f"checkpoint.signal_deadline_s={c.signal_deadline_s}: must be >= 0 seconds (0 = abandon the step in "
           f"progress at once), or null to use the SLURM job's end time")
    _one_of(c.optim_sharding, OPTIM_SHARDINGS, "checkpoint.optim_sharding")


SECTIONS = (validate_model, validate_yarn_section, validate_parallel, validate_data, validate_optim, validate_train,
            validate_checkpoint)
"""The per-section checks, in the order ``validate`` runs them (each takes (cfg, world_size))."""


def validate(cfg: Config, world_size: Optional[int] = None) -> Config:
    """Check the whole recipe once, before any process group starts. Raises ConfigError on the first problem."""
    for check in SECTIONS:
        check(cfg, world_size)
    return cfg
