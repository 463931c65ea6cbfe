#!/usr/bin/env python3
"""Our inference engine (CP = 1, 2, ...) vs transformers' generate on the same Llama shape: prefill and decode tokens/s.

    python bench/inference.py                        # CPU: tiny YaRN Llama, 1024-token prompt, fp32, < 1 min on 2 cores
    python bench/inference.py --cps 1,2,4            # CPU: also CP=4 (the KV bytes per rank at CP 1/2/4)
    python bench/inference.py --length 131072 --json runs/gpu_check/inference.json   # GPU: 8B-shaped stack, 128K

Prefill = the time of generate(1 token): the prompt's forward and the first greedy token. Decode = the median time
between two tokens' logits in generate(K) (ours: engine._logits timed; transformers: a logits processor), so no
prefill is in it. Each is the best of --repeats runs after a warm-up. Ours runs each CP size in its own group of
processes (gloo on CPU, NCCL on GPU, one GPU per rank); weights are random (speed does not depend on them).
GPU: 8B width (h 4096, GQA 32/8, head_dim 128, ffn 14336, vocab 128256), bf16, --layers layers, ours on TE when it
imports (else our SDPA path). Also prints each CP rank's KV-cache shard (allocated bytes, engine.kv_bytes) against
the formula 2 · layers · kv_heads · head_dim · bytes · slots, slots = L/CP + ⌈(K−1)/CP⌉, and on GPU each side's
peak memory (torch.cuda.max_memory_allocated) with, for ours, docs/eval.md's estimate.
"""
import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import socket
import sys
import time

# idle OpenMP threads sleep instead of spinning: on a shared CPU a spinning team waits for a thread that another
# process holds, and tokens/s collapse (transformers' decode measured 3.4 instead of 264 tokens/s on 2 busy cores)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WIDE = dict(hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8, kv_channels=128,
            vocab_size=128256)
TINY = dict(hidden_size=256, ffn_hidden_size=768, num_attention_heads=8, num_query_groups=4, kv_channels=32,
            vocab_size=2048)


def window(length: int) -> int:
    """The rope window both models get: room for the prompt and the new tokens (YaRN from a 64-token original)."""
    return max(2 * length, 256)


def recipe(shape, layers, length, cp, cuda):
    from megatron_ultralong.config import load_recipe
    from megatron_ultralong.inference.loading import inference_config

    over = [f"model.{k}={v}" for k, v in {**shape, "num_layers": layers}.items()] + [
        f"yarn.target_length={window(length)}", "yarn.original_max_position_embeddings=64",
        f"data.seq_length={window(length)}", f"model.params_dtype={'bf16' if cuda else 'fp32'}",
        "model.max_position_embeddings=64"]
    return inference_config(load_recipe("toy_cpt", over), tp=1, cp=cp)


def expected_kv_bytes(a, cp: int) -> int:
    """This formula's bytes of one CP rank's shard: keys and values of every layer, the prompt's share plus the
    decode tokens the rank keeps (round-robin), in the run's dtype."""
    s, elem = a.shape, 2 if torch.cuda.is_available() else 4
    slots = -(-a.length // (2 * cp)) * 2 if cp > 1 else a.length
    slots += -(-(a.new_tokens - 1) // cp)
    return 2 * a.layers * s["num_query_groups"] * s["kv_channels"] * elem * slots


def predicted_peak_bytes(cfg, a, cp: int, attention: str, kv_bytes: int) -> float:
    """docs/eval.md's estimate of one rank's peak at TP 1 (no allowance, as max_memory_allocated sees none):
    weights + KV shard + one layer's activations (planner.layer_activation_bytes) and the residual in and out."""
    from megatron_ultralong import planner as P

    elem = P.BYTES[cfg.model.params_dtype]
    w = P.Workload(seq_length=1, sequence_parallel=False, fused_kernels=attention == "te")
    per_token = P.layer_activation_bytes(cfg.model, w, 1, elem) + 2 * cfg.model.hidden_size * elem
    return P.params_per_gpu(cfg.model, 1, 1) * elem + kv_bytes + per_token * a.length / cp


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _best(fn, repeats: int) -> float:
    """Fewest seconds of ``repeats`` calls of fn (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def _step_s(run, stamps: list, repeats: int) -> float:
    """Seconds per decode step: the median gap between the times at which consecutive tokens' logits were ready
    (``stamps``, appended during ``run``), the best of ``repeats`` runs. The prefill is outside every gap."""
    best = float("inf")
    for _ in range(repeats):
        stamps.clear()
        run()
        gaps = sorted(b - a for a, b in zip(stamps[:-1], stamps[1:]))
        if not gaps:
            raise RuntimeError(f"{len(stamps)} logits timed; the decode needs >= 2 (--new-tokens >= 2)")
        best = min(best, gaps[len(gaps) // 2])
    return best


def _stamped(fn, stamps: list):
    """fn, appending the time at which its result is ready to ``stamps`` after each call."""
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        _sync()
        stamps.append(time.perf_counter())
        return out
    return call


def _ours_rank(rank, world, port, a, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)  # Megatron's "Apex / TE not installed" notes
    from megatron_ultralong.inference.engine import Engine
    from megatron_ultralong.model.builder import build_model
    from megatron_ultralong.model.specs import resolve_attention_backend
    from megatron_ultralong.parallel import destroy_distributed, init_distributed

    try:
        cfg = recipe(a.shape, a.layers, a.length, world, torch.cuda.is_available())
        init_distributed(cfg)
        engine = Engine(build_model(cfg, pre_process=True, post_process=True), cfg)
        prompt = torch.randint(3, cfg.model.vocab_size, (a.length,), generator=torch.Generator().manual_seed(0))
        prompt = prompt.tolist()
        engine.generate([prompt], 2)  # warm-up
        t1 = _best(lambda: engine.generate([prompt], 1), a.repeats)
        stamps = []
        engine._logits = _stamped(engine._logits, stamps)  # called once per token: after the prefill, each step
        step = _step_s(lambda: engine.generate([prompt], a.new_tokens), stamps, a.repeats)
        attention = resolve_attention_backend(cfg.model)
        weights = sum(p.numel() * p.element_size() for p in engine.gpt.parameters())
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        queue.put((rank, {"prefill_s": t1, "decode_s": step, "kv_bytes": engine.kv_bytes,
                          "attention": attention, "weights_bytes": weights, "peak_bytes": peak,
                          "predicted_peak_bytes": predicted_peak_bytes(cfg, a, world, attention, engine.kv_bytes)}))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        queue.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        destroy_distributed()


def ours(a, cp: int) -> dict:
    """{"prefill_s", "decode_s" (per token), "kv_bytes_per_rank", ...} of our engine on cp processes (rank 0's
    times, weights and peak)."""
    ctx = mp.get_context("spawn")  # no fork: a forked child of a process that ran torch ops can hang (OpenMP)
    queue = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_ours_rank, args=(r, cp, port, a, queue)) for r in range(cp)]
    for p in procs:
        p.start()
    results = {}
    try:
        while len(results) < cp:
            try:
                rank, r = queue.get(timeout=5)
                results[rank] = r
            except queue_module.Empty:
                dead = [i for i, p in enumerate(procs) if i not in results and p.exitcode not in (None, 0)]
                if dead:  # killed (e.g. out of memory) before it could report
                    raise RuntimeError(f"ours at cp={cp}: rank {dead[0]} exited with {procs[dead[0]].exitcode}")
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    bad = [v for v in results.values() if isinstance(v, str)]
    if bad:
        raise RuntimeError(f"ours at cp={cp}: {bad[0]}")
    return {"prefill_s": results[0]["prefill_s"], "decode_s": results[0]["decode_s"],
            "kv_bytes_per_rank": [results[r]["kv_bytes"] for r in range(cp)],
            "kv_bytes_formula": expected_kv_bytes(a, cp), "attention": results[0]["attention"],
            "weights_bytes": results[0]["weights_bytes"], "peak_bytes": results[0]["peak_bytes"],
            "predicted_peak_bytes": results[0]["predicted_peak_bytes"]}


def transformers_generate(a) -> dict:
    """The same numbers for transformers' LlamaForCausalLM.generate (greedy, SDPA, its dynamic KV cache)."""
    import transformers

    cuda = torch.cuda.is_available()
    s = a.shape
    cfg = transformers.LlamaConfig(
        hidden_size=s["hidden_size"], intermediate_size=s["ffn_hidden_size"],
        num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_query_groups"],
        head_dim=s["kv_channels"], vocab_size=s["vocab_size"],
        num_hidden_layers=a.layers, max_position_embeddings=window(a.length),
        rope_scaling={"rope_type": "yarn", "factor": window(a.length) / 64, "original_max_position_embeddings": 64})
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialised where it runs (1.5B parameters at 8B width)
        model = transformers.LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16 if cuda else torch.float32).eval()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(3, s["vocab_size"], (1, a.length), generator=torch.Generator().manual_seed(0)).to(model.device)

    class Stamp(transformers.LogitsProcessor):
        """Called by generate once per token, when its logits are ready: the same clock as ours."""

        def __init__(self):
            self.stamps = []

        def __call__(self, input_ids, scores):
            _sync()
            self.stamps.append(time.perf_counter())
            return scores

    stamp = Stamp()

    def gen(k, processors=None):
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k, min_new_tokens=k,
                                  do_sample=False, pad_token_id=0, logits_processor=processors)

    gen(2)  # warm-up
    t1 = _best(lambda: gen(1), a.repeats)
    step = _step_s(lambda: gen(a.new_tokens, transformers.LogitsProcessorList([stamp])), stamp.stamps, a.repeats)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    model = None  # freed before our ranks start
    if cuda:
        torch.cuda.empty_cache()  # the parent's cached blocks would crowd our ranks on the same GPU
    return {"prefill_s": t1, "decode_s": step, "peak_bytes": peak}


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=131072 if cuda else 1024, help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="greedy tokens of the timed generate (>= 2)")
    p.add_argument("--layers", type=int, default=2 if cuda else 4, help="transformer layers")
    p.add_argument("--cps", default=None, help="CP sizes of our engine, comma list (default: 1,2; on GPU those "
                                               "the visible GPUs allow)")
    p.add_argument("--repeats", type=int, default=1 if cuda else 3, help="timed runs of each; the best is kept")
    p.add_argument("--no-transformers", action="store_true", help="time ours only")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    gpus = torch.cuda.device_count() if cuda else 0
    try:
        cps = [int(c) for c in (a.cps or ",".join(str(c) for c in (1, 2) if not cuda or c <= gpus)).split(",") if c]
    except ValueError:
        p.error(f"--cps {a.cps}: give CP sizes >= 1, e.g. 1,2")
    if a.new_tokens < 2:
        p.error(f"--new-tokens {a.new_tokens}: the decode is timed between tokens, give >= 2")
    if a.repeats < 1 or a.layers < 1:
        p.error(f"--repeats {a.repeats} / --layers {a.layers}: both must be >= 1")
    if not cps or min(cps) < 1:
        p.error(f"--cps {a.cps}: give CP sizes >= 1, e.g. 1,2")
    if cuda and max(cps) > gpus:
        p.error(f"--cps {a.cps}: CP {max(cps)} needs {max(cps)} GPUs (one per rank), {gpus} visible")
    if max(cps) > 1 and a.length < 2 * max(cps):
        p.error(f"--length {a.length}: the prompt must be at least 2·cp = {2 * max(cps)} tokens")
    a.shape = WIDE if cuda else TINY
    where = f"{torch.cuda.get_device_name()} bf16" if cuda else "CPU fp32"
    print(f"inference bench: {where}, {a.layers} layers, h {a.shape['hidden_size']}, GQA "
          f"{a.shape['num_attention_heads']}/{a.shape['num_query_groups']}, prompt {a.length} tokens, "
          f"{a.new_tokens} new tokens, best of {a.repeats}", flush=True)
    rows = {} if a.no_transformers else {"transformers": transformers_generate(a)}
    for cp in cps:
        rows[f"ours cp={cp}"] = ours(a, cp)
    for r in rows.values():
        r["prefill_tokens_per_s"] = a.length / r["prefill_s"]
        r["decode_tokens_per_s"] = 1 / r["decode_s"]
    for name, r in rows.items():
        kv = ""
        if "kv_bytes_per_rank" in r:
            kv = (f"  [{r['attention']}]  KV bytes per rank {r['kv_bytes_per_rank']} (formula {r['kv_bytes_formula']}, "
                  f"{r['kv_bytes_per_rank'][0] / 2**20:.2f} MiB)")
        if r.get("peak_bytes"):
            kv += f"  peak {r['peak_bytes'] / 1e9:.2f} GB"
        if r.get("peak_bytes") and r.get("predicted_peak_bytes"):
            kv += f" (docs/eval.md's estimate {r['predicted_peak_bytes'] / 1e9:.2f} GB)"
        print(f"{name:<14} prefill {r['prefill_tokens_per_s']:>10.1f} tokens/s   "
              f"decode {r['decode_tokens_per_s']:>8.1f} tokens/s{kv}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"length": a.length, "layers": a.layers, "new_tokens": a.new_tokens, "device": where,
                       "shape": a.shape, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
