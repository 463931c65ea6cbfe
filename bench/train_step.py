#!/usr/bin/env python3
"""Our training step vs transformers' LlamaForCausalLM (SDPA, gradient checkpointing) on the same Llama shape.

    python bench/train_step.py                                  # CPU: tiny model, 1024 tokens, ~1 min on 2 cores
    python bench/train_step.py --lengths 16384,65536,131072 --layers 2 --json runs/gpu_check/train_step.json  # GPU

Prints tokens/s of each and their ratio, MFU, peak memory, and the planner's prediction vs measured (error %).
GPU: 8B width (h 4096, GQA 32/8, ffn 14336, vocab 128256), bf16, full recompute on both sides; ours on TE when
Transformer Engine imports, else SDPA (said in the output). CPU: a tiny Llama in fp32; what "peak" and "memory" mean
there: docs/planner.md ("How the CPU check measures activations", "bench/train_step.py").
"""
import argparse
import json
import os
import sys
import time

import torch

WIDE = dict(hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8, kv_channels=128,
            vocab_size=128256)
TINY = dict(hidden_size=256, ffn_hidden_size=768, num_attention_heads=8, num_query_groups=4, kv_channels=32,
            vocab_size=2048)


def recipe(shape, layers, seq, cuda, backend):
    from megatron_ultralong.config import load_recipe

    s = {**shape, "num_layers": layers}
    over = [f"model.{k}={v}" for k, v in s.items()] + [
        f"data.seq_length={seq}", f"yarn.target_length={seq}", "yarn.original_max_position_embeddings=64",
        "train.micro_batch_size=1", "train.global_batch_size=1", "train.recompute=full",
        f"train.loss_chunk_size={8192 if cuda else 0}", f"model.params_dtype={'bf16' if cuda else 'fp32'}",
        f"model.attention_backend={backend}", "optim.use_distributed_optimizer=false"]
    return load_recipe("toy_cpt", over)


class SavedBytes:
    """Bytes autograd holds for backward (deduplicated storages, parameters excluded, recompute in backward not
    counted): the CPU's stand-in for peak activation memory."""

    def __init__(self, params):
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.held = {}

    def pack(self, t):
        s = t.untyped_storage()
        if s.data_ptr() not in self.params and torch._C._current_graph_task_id() == -1:
            self.held[s.data_ptr()] = s.nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)

    @property
    def total(self):
        return sum(self.held.values())


def timed(step, steps, cuda):
    """Fastest of ``steps`` timed steps after one warm-up (a shared CPU's other loads only ever add time)."""
    step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def ours(cfg, tokens, steps, cuda):
    """(seconds per step, peak bytes, activation bytes): build_model + Megatron DDP/optimizer + train/step.py."""
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.parallel import init_distributed
    from megatron_ultralong.train.step import forward_backward
    from megatron_ultralong.train.trainer import build_optimizer, megatron_optimizer_shims, wrap_ddp

    init_distributed(cfg)
    ddp = wrap_ddp(build_model(cfg), False)
    opt = build_optimizer(cfg, [ddp], False)
    s = tokens.shape[1] - 1
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(1, s),
             "position_ids": torch.arange(s).expand(1, s)}

    def step():
        ddp.zero_grad_buffer()
        opt.zero_grad()
        forward_backward([ddp], [batch], cfg)
        with megatron_optimizer_shims():
            opt.step()

    dt = timed(step, steps, cuda)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    with SavedBytes(ddp.parameters()) as saved:
        step()
    return dt, peak, saved.total


def hf(cfg, tokens, steps, cuda):
    """The same for transformers' LlamaForCausalLM (sdpa, gradient checkpointing, torch AdamW)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    hc = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
                     num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
                     num_key_value_heads=m.num_query_groups, head_dim=m.kv_channels,
                     max_position_embeddings=cfg.data.seq_length, rms_norm_eps=m.norm_eps,
                     tie_word_embeddings=False, attn_implementation="sdpa")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = LlamaForCausalLM(hc).to(device="cuda" if cuda else "cpu", dtype=dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    ids = tokens.to(model.device)

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        opt.step()

    try:
        dt = timed(step, steps, cuda)
    except torch.cuda.OutOfMemoryError:
        return None, None, None
    peak = torch.cuda.max_memory_allocated() if cuda else None
    with SavedBytes(model.parameters()) as saved:
        step()
    return dt, peak, saved.total


def matmul_flops(cuda):
    """Achieved FLOP/s of a square matmul: the CPU's stand-in for a datasheet peak."""
    n = 2048 if cuda else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype)
    dt = timed(lambda: a @ a, 10, cuda)
    return 2 * n ** 3 / dt


def run(seq, layers, steps, cuda):
    from megatron_ultralong import planner as P
    from megatron_ultralong.model.specs import te_available

    backend = "te" if cuda and te_available() else "sdpa"
    cfg = recipe(WIDE if cuda else TINY, layers, seq, cuda, backend)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (1, seq + 1), generator=g)
    ours_s, ours_peak, ours_act = ours(cfg, tokens, steps, cuda)
    if cuda:
        torch.cuda.empty_cache()
    hf_s, hf_peak, hf_act = hf(cfg, tokens, steps, cuda)
    if cuda:
        name = torch.cuda.get_device_name()
        gpu = P.GPUS["h200-141gb" if "H200" in name else "h100-80gb"]
        peak_flops = gpu.peak_tflops * 1e12
    else:
        peak_flops = matmul_flops(False)
        gpu = P.GPU("cpu", 1e9, peak_flops / 1e12, 1.0, 1.0, 1.0)
    w = P.with_gpu_path(P.workload_from_config(cfg), backend == "te")
    lay = P.Layout(1, 1, 1, 1)
    pred = P.evaluate(cfg.model, w, lay, gpu, 1)
    saved = P.saved_activation_bytes(cfg.model, w, lay)
    flops = P.model_flops_per_token(cfg.model, seq)
    out = {"seq_length": seq, "layers": layers, "device": torch.cuda.get_device_name() if cuda else "cpu",
           "ours_backend": backend, "peak_tflops_used": peak_flops / 1e12,
           "ours": {"step_s": ours_s, "tokens_per_s": seq / ours_s, "mfu": flops * seq / ours_s / peak_flops,
                    "peak_gb": ours_peak / 1e9 if ours_peak else None, "saved_activation_gb": ours_act / 1e9},
           "hf": None if hf_s is None else
           {"step_s": hf_s, "tokens_per_s": seq / hf_s, "mfu": flops * seq / hf_s / peak_flops,
            "peak_gb": hf_peak / 1e9 if hf_peak else None, "saved_activation_gb": hf_act / 1e9},
           "planner": {"step_s": pred.step_time_s, "memory_gb": pred.memory_gb,
                       "saved_activation_gb": (saved["layers"] + saved["logits"]) / 1e9}}
    out["ratio_tokens_per_s"] = None if hf_s is None else hf_s / ours_s
    out["error_pct"] = {"step_time": 100 * (pred.step_time_s / ours_s - 1),
                        "saved_activations": 100 * ((saved["layers"] + saved["logits"]) / ours_act - 1)}
    if ours_peak:  # max_memory_allocated holds no CUDA context / NCCL buffers: also compare without the allowance
        out["error_pct"]["total_memory"] = 100 * (pred.memory_gb["total"] * 1e9 / ours_peak - 1)
        allocated = pred.memory_gb["total"] - P.ALLOWANCE_GB
        out["error_pct"]["total_memory_less_allowance"] = 100 * (allocated * 1e9 / ours_peak - 1)
    return out


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="16384,65536,131072" if cuda else "1024", help="tokens per step, comma list")
    p.add_argument("--layers", type=int, default=2, help="transformer layers")
    p.add_argument("--steps", type=int, default=3 if cuda else 5,
                   help="timed steps after one warm-up (the fastest counts)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    if not cuda:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    results = [run(int(s), args.layers, args.steps, cuda) for s in args.lengths.split(",") if s]
    print(f"{'tokens':>8} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6} {'mfu ours':>8} {'mfu hf':>7} "
          f"{'peak GB ours/hf':>16} {'act GB ours/hf/plan':>20} {'step err':>8} {'act err':>7}")
    for r in results:
        o, h, pl, e = r["ours"], r["hf"] or {}, r["planner"], r["error_pct"]
        peak = f"{o['peak_gb'] or 0:.2f}/{h.get('peak_gb') or 0:.2f}" if o["peak_gb"] else "-"
        print(f"{r['seq_length']:>8} {o['tokens_per_s']:>11.0f} {h.get('tokens_per_s', 0):>9.0f} "
              f"{r['ratio_tokens_per_s'] or 0:>6.2f} {o['mfu']:>8.1%} {h.get('mfu', 0):>7.1%} {peak:>16} "
              f"{o['saved_activation_gb']:.4f}/{h.get('saved_activation_gb', 0):.4f}/{pl['saved_activation_gb']:.4f}"
              f" {e['step_time']:>+7.0f}% {e['saved_activations']:>+6.1f}%")
    print(f"device {results[0]['device']}, ours on {results[0]['ours_backend']}"
          + ("" if cuda else f"; CPU 'peak' = measured matmul {results[0]['peak_tflops_used'] * 1e3:.0f} GFLOP/s")
          + ("; Transformer Engine not importable: ours ran the SDPA path" if cuda and results[0]['ours_backend']
             != "te" else ""))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
