"""Analytic memory and step-time model: ranks the TP/PP/CP/DP layouts of a model card for a length and a cluster.

    plans = plan(load_recipe("llama3.1-8b").model, Workload(seq_length=4194304, global_batch=2),
                 GPUS["h100-80gb"], gpus_per_node=8, nodes=32)       # recommended layout first; Infeasible if none
    plans[0].as_dict()      # tp, pp, cp, dp, nodes, params, memory_gb{...}, step_time_s, tokens_per_s, mfu

Pure arithmetic (no torch, no process group). Every formula and constant: docs/planner.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

GB = 1e9
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
"""Bytes per element of each recipe dtype (model.params_dtype)."""


class Infeasible(ValueError):
    """No layout fits; the message says why and what would fit (one line)."""


@dataclass(frozen=True)
class GPU:
    """One accelerator model: memory, peak and achievable throughput, links."""

    name: str
    memory_gb: float
    """Device memory as torch.cuda.mem_get_info reports its total (GB = 1e9 bytes)."""
    peak_tflops: float
    """Dense BF16 tensor-core peak (datasheet, no sparsity): the MFU denominator."""
    achievable_fraction: float
    """Share of the peak our step reaches on its matmuls and flash attention (docs/planner.md, "Constants")."""
    nvlink_gbps: float
    """Achievable per-GPU NVLink bandwidth, one direction (GB/s): TP and intra-node CP traffic."""
    network_gbps: float
    """Achievable per-GPU inter-node bandwidth (GB/s; 400 Gb/s NDR per GPU at 80 %): CP and DP traffic."""


GPUS: Dict[str, GPU] = {
    "h100-80gb": GPU("h100-80gb", 85.0, 989.4, 0.45, 360.0, 40.0),
    "h200-141gb": GPU("h200-141gb", 150.0, 989.4, 0.45, 360.0, 40.0),
}

ALLOWANCE_GB = 6.0
"""Fixed per-GPU allowance added to the total: CUDA context and kernels (~1 GB), NCCL buffers (~2 GB), allocator
fragmentation and the backward pass's transient gradient tensors."""
CHECKPOINT_WRITE_GBPS = 1.0
"""Aggregate checkpoint write bandwidth (GB/s) of one save: today the optimizer state is gathered to one writer
(issue 16 item 6), so a save of 8B (112 GB) takes ~2 min, inside the 1-3 min measured on clusters."""
SIGNAL_MARGIN_S = 60
"""Slack in the preemption lead: SLURM may signal up to 60 s early or late, and ranks agree before saving."""
STARTUP_S = 600
"""Per job start: container, process groups, model build and loading checkpoint.init_from or latest."""
TIME_HEADROOM = 1.25
"""#SBATCH --time covers the whole stage's predicted time this many times over (then rounded up to 30 min)."""
TIE = 0.05
"""Layouts whose step time is within 5 % of the fastest are ties; the tie with the least memory per GPU leads."""
NODE_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Node counts tried when --nodes is not given (and to say what would fit)."""


@dataclass(frozen=True)
class Workload:
    """What one optimizer step trains, and how (the recipe's train.* / parallel.* / model.* choices)."""

    seq_length: int
    """Tokens per sequence (the target length for CPT)."""
    global_batch: int = 1
    """Sequences per optimizer step."""
    micro_batch: int = 1
    """Sequences per micro-batch per data-parallel rank."""
    recompute: str = "full"
    """'none', 'selective' (core attention) or 'full' (whole layers, train.recompute_num_layers per chunk)."""
    recompute_num_layers: int = 1
    """Layers per recompute chunk with recompute='full'."""
    loss_chunk_size: int = 8192
    """Tokens per chunk of the chunked loss (train.loss_chunk_size); 0: the whole local sequence at once."""
    sequence_parallel: bool = True
    """Norm/residual activations sharded over TP (parallel.sequence_parallel; ignored at tp=1)."""
    distributed_optimizer: bool = True
    """Optimizer state (and FP32 main params) sharded over DP×CP (Megatron's DistributedOptimizer)."""
    fused_kernels: bool = True
    """The GPU path (TE LayerNorm-Linear, fused SwiGLU and RoPE); False: the local spec as it runs on CPU."""


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    cp: int
    dp: int

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.cp * self.dp


@dataclass
class Plan:
    """One layout's predicted memory (GB per GPU) and speed."""

    layout: Layout
    nodes: int
    params: int
    memory_gb: Dict[str, float]
    step_time_s: float
    tokens_per_s: float
    mfu: float
    parts_s: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, object]:
        """The --json object of this layout (keys as documented in docs/planner.md)."""
        lay = self.layout
        return {"tp": lay.tp, "pp": lay.pp, "cp": lay.cp, "dp": lay.dp, "nodes": self.nodes, "params": self.params,
                "memory_gb": {k: round(v, 3) for k, v in self.memory_gb.items()},
                "step_time_s": round(self.step_time_s, 3), "tokens_per_s": round(self.tokens_per_s, 1),
                "mfu": round(self.mfu, 4)}


# ------------------------------------------------------------------------------------------- parameters
def _dims(m):
    hd = m.kv_channels or m.hidden_size // m.num_attention_heads
    return m.hidden_size, m.num_attention_heads * hd, m.num_query_groups * hd, m.ffn_hidden_size, hd


def layer_params(m, tp: int = 1) -> int:
    """Parameters of one transformer layer on one TP rank: two RMSNorm weights (replicated), QKV (+ bias),
    output projection, SwiGLU's fc1 (2·ffn rows) and fc2 (split over TP)."""
    h, q, kv, f, _ = _dims(m)
    qkv = h * (q + 2 * kv) + ((q + 2 * kv) if m.qkv_bias else 0)
    return 2 * h + (qkv + q * h + 3 * h * f) // tp


def stage_params(m, tp: int = 1, pp: int = 1, stage: int = 0) -> int:
    """Parameters one GPU of pipeline stage ``stage`` holds: its layers, the embedding on the first stage, the
    final norm and output layer on the last (a tied output on a later stage keeps its own copy)."""
    layers = m.num_layers // pp
    n = layers * layer_params(m, tp)
    embed = m.vocab_size * m.hidden_size // tp
    if stage == 0:
        n += embed
    if stage == pp - 1:
        n += m.hidden_size + (0 if m.tie_word_embeddings and pp == 1 else embed)
    return n


def param_count(m) -> int:
    """All parameters of the model (8,030,261,248 for Llama-3.1-8B)."""
    return stage_params(m, 1, 1)


def params_per_gpu(m, tp: int, pp: int) -> int:
    """The largest stage's parameters per GPU (the first or last stage, which hold the embeddings)."""
    return max(stage_params(m, tp, pp, s) for s in range(pp))


# ------------------------------------------------------------------------------------------------ memory
def layer_activation_bytes(m, w: Workload, tp: int, dtype_bytes: int) -> float:
    """Bytes one layer keeps for backward per local token, without recompute (docs/planner.md, "Activations").
    Elements sharded by sequence parallelism divide by tp; tensor-parallel ones always do."""
    h, q, kv, f, hd = _dims(m)
    sp = tp if (w.sequence_parallel and tp > 1) else 1
    attention = (q + 2 * kv) + (q + kv) + q  # the QKV output (v is a view of it), roped q and k, attention output
    if w.fused_kernels:  # TE: each LayerNormLinear keeps its input and normalised output; fused SwiGLU its input
        norms, mlp, small = 4 * h / sp, 3 * f, 4 * (2 + m.num_attention_heads / tp)  # rstd ×2, attention lse (fp32)
    else:  # local spec (CPU): each torch RMSNorm keeps input, normalised and scaled output; SwiGLU unfused (5·ffn)
        norms, mlp = 6 * h / sp, 5 * f
        small = 4 * (2 + m.num_attention_heads / tp) + dtype_bytes * 4 * hd  # + the cos/sin tables of q and k
    return dtype_bytes * (norms + (attention + mlp) / tp) + small


def saved_activation_bytes(m, w: Workload, lay: Layout) -> Dict[str, float]:
    """What autograd holds at the end of the forward pass on one GPU of the first stage: {'layers', 'logits'}.
    Megatron's 1F1B schedule keeps min(pp, micro-batches) micro-batches in flight on the first stage."""
    a = BYTES[m.params_dtype]
    t = w.seq_length * w.micro_batch / lay.cp  # local tokens
    sp = lay.tp if (w.sequence_parallel and lay.tp > 1) else 1
    layers = m.num_layers // lay.pp
    per_layer = layer_activation_bytes(m, w, lay.tp, a) * t
    if w.recompute == "full":  # only each chunk's input [t/sp, h] is kept
        stored = math.ceil(layers / w.recompute_num_layers) * t * m.hidden_size / sp * a
    elif w.recompute == "selective":  # the core attention's own state (lse) is recomputed
        stored = layers * (per_layer - 4 * m.num_attention_heads / lay.tp * t)
    else:
        stored = layers * per_layer
    in_flight = min(lay.pp, max(1, w.global_batch // (w.micro_batch * lay.dp)))
    final = (3 if not w.fused_kernels else 2) * t * m.hidden_size / sp * a  # final norm (last stage)
    chunk = t if w.loss_chunk_size <= 0 else min(t, w.loss_chunk_size)
    logits = 0.0 if w.loss_chunk_size > 0 else chunk * m.vocab_size / lay.tp * 4  # fp32 softmax the loss keeps
    return {"layers": stored * in_flight + (final if lay.pp == 1 else 0.0), "logits": logits,
            "per_layer": per_layer}


def memory_bytes(m, w: Workload, lay: Layout) -> Dict[str, float]:
    """Per-GPU bytes: weights, grads, optimizer, activations, logits (no total; docs/planner.md, "Memory")."""
    p = params_per_gpu(m, lay.tp, lay.pp)
    a = BYTES[m.params_dtype]
    shards = lay.dp * lay.cp if w.distributed_optimizer else 1
    main = 0 if m.params_dtype == "fp32" else 4  # FP32 main params; an fp32 model steps its own weights
    saved = saved_activation_bytes(m, w, lay)
    acts = saved["layers"]
    if w.recompute == "full":  # backward rebuilds one chunk's activations, plus the residual gradients in and out
        t = w.seq_length * w.micro_batch / lay.cp
        acts += w.recompute_num_layers * saved["per_layer"] + 2 * t * m.hidden_size * a
    t = w.seq_length * w.micro_batch / lay.cp
    chunk = t if w.loss_chunk_size <= 0 else min(t, w.loss_chunk_size)
    # one chunk's fp32 logits/softmax and their gradient (a chunked loss rebuilds them in backward)
    logits = 2 * chunk * m.vocab_size / lay.tp * 4
    return {"weights": p * a, "grads": p * 4, "optimizer": p * (8 + main) / shards, "activations": acts,
            "logits": logits}


def memory(m, w: Workload, lay: Layout) -> Dict[str, float]:
    """Per-GPU memory in GB: memory_bytes' components and their total plus ALLOWANCE_GB."""
    out = {k: v / GB for k, v in memory_bytes(m, w, lay).items()}
    out["total"] = sum(out.values()) + ALLOWANCE_GB
    return out


# -------------------------------------------------------------------------------------------------- time
def model_flops_per_token(m, seq_length: int) -> float:
    """Model FLOPs per trained token, forward + backward = 3 × forward, without recompute (Megatron's
    accounting; train/metrics.py reports MFU with it): 2 per weight of every matmul plus causal attention."""
    h, q, kv, f, _ = _dims(m)
    weights = m.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * f) + h * m.vocab_size
    attention = m.num_layers * 2 * seq_length * q  # QK^T and AV, 2·2·s·q each for full attention, halved
    return 3.0 * (2.0 * weights + attention)


def recompute_flops_per_token(m, w: Workload) -> float:
    """Extra forward FLOPs recompute adds per token: whole layers (full), the core attention (selective), and
    the output layer of a chunked loss (rebuilt in backward)."""
    h, q, kv, f, _ = _dims(m)
    attention = m.num_layers * 2.0 * w.seq_length * q
    layers = 2.0 * m.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * f) + attention
    extra = {"full": layers, "selective": attention, "none": 0.0}[w.recompute]
    return extra + (2.0 * h * m.vocab_size if w.loss_chunk_size > 0 else 0.0)


def step_time(m, w: Workload, lay: Layout, gpu: GPU, gpus_per_node: int) -> Dict[str, float]:
    """Seconds per optimizer step and its parts (docs/planner.md, "Step time")."""
    a = BYTES[m.params_dtype]
    h, q, kv, f, _ = _dims(m)
    tokens = w.global_batch * w.seq_length
    micro = max(1, w.global_batch // (w.micro_batch * lay.dp))
    rate = lay.world * gpu.peak_tflops * 1e12 * gpu.achievable_fraction
    flops = tokens * (model_flops_per_token(m, w.seq_length) + recompute_flops_per_token(m, w))
    compute = flops / rate * (1 + (lay.pp - 1) / micro)  # 1F1B pipeline bubble
    t = w.seq_length * w.micro_batch / lay.cp
    layers = m.num_layers // lay.pp
    passes = 4 if w.recompute == "full" else 3  # forward (+ recomputed forward) + backward (2 passes of traffic)
    # CP (p2p ring): each rank receives the other cp-1 ranks' K and V per pass; hidden behind attention compute
    cp_link = gpu.nvlink_gbps if lay.tp * lay.cp <= gpus_per_node else gpu.network_gbps
    cp_bytes = passes * (lay.cp - 1) * t * 2 * (kv / lay.tp) * a
    attn_passes = 3 if w.recompute == "none" else 4  # selective and full recompute rerun the attention forward
    attn_s = attn_passes * 2.0 * w.seq_length * q * t / lay.tp / (gpu.peak_tflops * 1e12 * gpu.achievable_fraction)
    cp_exposed = max(0.0, cp_bytes / (cp_link * GB) - attn_s) * layers * micro
    # TP with sequence parallelism: 2 all-gathers + 2 reduce-scatters of [t, h] per layer and pass, not overlapped
    tp_bytes = passes * 4 * t * h * a * (lay.tp - 1) / lay.tp
    tp_s = tp_bytes / (gpu.nvlink_gbps * GB) * layers * micro
    # DP×CP: FP32 gradient reduce-scatter + parameter all-gather, once per step
    n = lay.dp * lay.cp
    p = params_per_gpu(m, lay.tp, lay.pp)
    dp_link = gpu.nvlink_gbps if lay.world <= gpus_per_node else gpu.network_gbps
    dp_s = (4 + a) * p * (n - 1) / n / (dp_link * GB) if n > 1 else 0.0
    total = compute + cp_exposed + tp_s + dp_s
    return {"compute": compute, "cp_exposed": cp_exposed, "tp": tp_s, "dp": dp_s, "total": total}


def save_time_s(m) -> float:
    """Seconds to write one checkpoint: bf16 weights (2 B/param) + FP32 main params and Adam moments (12 B)."""
    return param_count(m) * 14 / (CHECKPOINT_WRITE_GBPS * GB)


# ------------------------------------------------------------------------------------------------ layouts
def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(m, w: Workload, world: int, gpus_per_node: int) -> List[Layout]:
    """Every TP×PP×CP×DP = world the model and workload allow: tp within a node and dividing heads, KV groups
    and vocabulary; pp dividing the layers; cp splitting the sequence into 2·cp zigzag chunks (×tp with SP);
    dp dividing the global batch's micro-batches."""
    out = []
    for tp in _divisors(world):
        if tp > gpus_per_node or m.num_attention_heads % tp or m.num_query_groups % tp or m.vocab_size % tp:
            continue
        for pp in _divisors(world // tp):
            if m.num_layers % pp:
                continue
            for cp in _divisors(world // (tp * pp)):
                dp = world // (tp * pp * cp)
                sp = tp if (w.sequence_parallel and tp > 1) else 1
                if cp > 1 and w.seq_length % (2 * cp * sp):
                    continue
                if w.global_batch % (w.micro_batch * dp):
                    continue
                out.append(Layout(tp, pp, cp, dp))
    return out


def evaluate(m, w: Workload, lay: Layout, gpu: GPU, gpus_per_node: int) -> Plan:
    """The Plan of one layout."""
    mem = memory(m, w, lay)
    parts = step_time(m, w, lay, gpu, gpus_per_node)
    tps = w.global_batch * w.seq_length / parts["total"]
    mfu = tps * model_flops_per_token(m, w.seq_length) / (lay.world * gpu.peak_tflops * 1e12)
    return Plan(lay, math.ceil(lay.world / gpus_per_node), params_per_gpu(m, lay.tp, lay.pp), mem, parts["total"],
                tps, mfu, parts)


def rank(plans: Sequence[Plan]) -> List[Plan]:
    """Fastest first, except that layouts within TIE of the fastest count as ties and the one with the least
    memory per GPU leads (headroom for fragmentation and long documents; fewer layouts near the limit)."""
    by_time = sorted(plans, key=lambda p: (p.step_time_s, p.memory_gb["total"]))
    if not by_time:
        return []
    ties = [p for p in by_time if p.step_time_s <= by_time[0].step_time_s * (1 + TIE)]
    lead = min(ties, key=lambda p: (p.memory_gb["total"], p.step_time_s))
    return [lead] + [p for p in by_time if p is not lead]


def _feasible(m, w, gpu, gpus_per_node, nodes) -> List[Plan]:
    plans = [evaluate(m, w, lay, gpu, gpus_per_node) for lay in layouts(m, w, nodes * gpus_per_node, gpus_per_node)]
    return [p for p in plans if p.memory_gb["total"] <= gpu.memory_gb]


def plan(m, w: Workload, gpu: GPU, gpus_per_node: int, nodes: Optional[int] = None) -> List[Plan]:
    """Feasible layouts, the recommended one first. With ``nodes``: that cluster's layouts, ranked (``rank``).
    Without: the best layout of each node count in NODE_COUNTS that fits, fewest nodes first (the fewest GPUs
    that fit is the recommendation). Raises Infeasible (why, and what would fit) when nothing does."""
    counts = [nodes] if nodes else list(NODE_COUNTS)
    found: List[Plan] = []
    for n in counts:
        ranked = rank(_feasible(m, w, gpu, gpus_per_node, n))
        if nodes:
            found = ranked
        elif ranked:
            found.append(ranked[0])
    if found:
        return found
    raise Infeasible(_why_not(m, w, gpu, gpus_per_node, counts))


def _why_not(m, w: Workload, gpu: GPU, gpus_per_node: int, counts: Sequence[int]) -> str:
    world = counts[-1] * gpus_per_node
    cands = [evaluate(m, w, lay, gpu, gpus_per_node) for lay in layouts(m, w, world, gpus_per_node)]
    where = f"{counts[-1]} node(s) × {gpus_per_node} {gpu.name}"
    if not cands:
        why = (f"no TP×PP×CP×DP layout of {world} GPU(s) splits {w.seq_length} tokens × batch {w.global_batch} "
               f"(cp needs seq_length divisible by 2·cp·tp, dp must divide the batch)")
    else:
        best = min(cands, key=lambda p: p.memory_gb["total"])
        lay = best.layout
        why = (f"{w.seq_length} tokens do not fit {where}: the smallest layout (tp {lay.tp} · pp {lay.pp} · cp "
               f"{lay.cp} · dp {lay.dp}) needs {best.memory_gb['total']:.1f} GB per GPU, {gpu.memory_gb:.0f} GB "
               f"available")
    for n in NODE_COUNTS:
        if n > counts[-1] or (len(counts) == 1 and n != counts[0]):
            ranked = rank(_feasible(m, w, gpu, gpus_per_node, n))
            if ranked:
                lay = ranked[0].layout
                return (f"{why}; {n} node(s) × {gpus_per_node} fit it (tp {lay.tp} · pp {lay.pp} · cp {lay.cp} · "
                        f"dp {lay.dp}, {ranked[0].memory_gb['total']:.1f} GB per GPU)")
    return f"{why}; nothing up to {NODE_COUNTS[-1]} nodes fits: use a GPU with more memory or a shorter length"


# ------------------------------------------------------------------------------------------------- SLURM
@dataclass(frozen=True)
class SlurmLimits:
    """What a stage script's #SBATCH header asks for, derived from a Plan."""

    nodes: int
    signal_lead_s: int
    """--signal=B:USR1@<lead>: one step + one save + SIGNAL_MARGIN_S, rounded up to 30 s."""
    time_limit_s: int
    """--time: (steps × step + saves × save) × TIME_HEADROOM + STARTUP_S, rounded up to 30 min."""
    step_time_s: float
    save_time_s: float

    @property
    def time(self) -> str:
        """The --time value, 'HH:MM:SS'."""
        h, rem = divmod(self.time_limit_s, 3600)
        return f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"


def slurm_limits(m, p: Plan, steps: int, checkpoint_interval: int) -> SlurmLimits:
    """#SBATCH --nodes / --signal lead / --time for a stage of ``steps`` steps on the layout of ``p``."""
    save = save_time_s(m)
    lead = math.ceil((p.step_time_s + save + SIGNAL_MARGIN_S) / 30) * 30
    saves = (steps // checkpoint_interval if checkpoint_interval else 0) + 1
    total = (steps * p.step_time_s + saves * save) * TIME_HEADROOM + STARTUP_S
    return SlurmLimits(p.nodes, lead, math.ceil(total / 1800) * 1800, p.step_time_s, save)


def workload_from_config(cfg, global_batch: Optional[int] = None) -> Workload:
    """The Workload of a recipe (config.Config): its length, batch, recompute, loss chunk and optimizer."""
    t = cfg.train
    return Workload(seq_length=cfg.data.seq_length, global_batch=global_batch or t.global_batch_size,
                    micro_batch=t.micro_batch_size, recompute=t.recompute,
                    recompute_num_layers=t.recompute_num_layers, loss_chunk_size=t.loss_chunk_size,
                    sequence_parallel=cfg.parallel.sequence_parallel,
                    distributed_optimizer=cfg.optim.use_distributed_optimizer)


def with_gpu_path(w: Workload, fused: bool) -> Workload:
    """The workload on the GPU path (fused kernels) or the CPU local spec."""
    return replace(w, fused_kernels=fused)
