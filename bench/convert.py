#!/usr/bin/env python3
"""Conversion time vs the time to just read + write the same bytes, both directions, measured in one run.

    python bench/convert.py                      # ~1 GB bf16 Llama-shaped model (8 layers, hidden 2048)
    python bench/convert.py --layers 2 --hidden 512 --vocab 8192     # quick

Builds a random Llama-3-shaped model as sharded bf16 safetensors (no transformers init, no download), then times:
  copy_in   read every HF safetensors byte and write as many bytes (fsync), the floor for HF -> Megatron
  hf->mcore convert_hf_to_megatron (read, fuse QKV / gate-up, dist_checkpointing save with fsync)
  copy_out  read every checkpoint byte and write as many bytes (fsync), the floor for Megatron -> HF
  mcore->hf convert_megatron_to_hf (per-layer reads, split, streamed safetensors shards with fsync)
and the peak growth of resident memory during each conversion (in layers' worth of bytes). The page cache is warm
for all four (each input was just written or read). Once-per-process costs (imports, the checkpoint writer's
helper process) are paid first on a tiny model and printed apart. Goal: ratio <= 2.
"""
import argparse
import ctypes
import gc
import json
import os
import shutil
import sys
import tempfile
import time


def make_hf_model(folder, layers, hidden, ffn, heads, kv_heads, vocab, shard_bytes=500 * 10 ** 6) -> int:
    """Random bf16 Llama weights in shards of ~shard_bytes + index + config.json; returns the tensor bytes."""
    import torch
    from safetensors.torch import save_file

    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "self_attn.q_proj.weight": (heads * hd, hidden),
                       p + "self_attn.k_proj.weight": (kv_heads * hd, hidden),
                       p + "self_attn.v_proj.weight": (kv_heads * hd, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * hd),
                       p + "post_attention_layernorm.weight": (hidden,), p + "mlp.gate_proj.weight": (ffn, hidden),
                       p + "mlp.up_proj.weight": (ffn, hidden), p + "mlp.down_proj.weight": (hidden, ffn)})
    shapes.update({"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)})
    g = torch.Generator().manual_seed(0)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        current[name] = torch.randn(shape, generator=g).to(torch.bfloat16)
        size += current[name].numel() * 2
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards):
        fn = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(folder, fn), metadata={"format": "pt"})
        weight_map.update({n: fn for n in tensors})
        total += sum(t.numel() * 2 for t in tensors.values())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "head_dim": hd, "vocab_size": vocab, "max_position_embeddings": 8192,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "dtype": "bfloat16"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return total


def files_under(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names]


def copy_bytes(src_folder, dst_file, chunk=64 * 2 ** 20) -> int:
    """Read every file under src_folder and write the same bytes into dst_file, then fsync. Returns bytes."""
    n = 0
    with open(dst_file, "wb") as out:
        for path in files_under(src_folder):
            with open(path, "rb") as f:
                while True:
                    buf = f.read(chunk)
                    if not buf:
                        break
                    out.write(buf)
                    n += len(buf)
        out.flush()
        os.fsync(out.fileno())
    return n


def timed(fn):
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def peak_rss_growth(fn):
    """(seconds, bytes): run fn while a thread samples this process's resident memory every 5 ms; the growth is
    the highest sample minus the resident memory before the call."""
    import threading

    import psutil

    gc.collect()
    try:  # give memory freed by earlier steps back to the OS, so it is not reused unseen (glibc only)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        seconds, _ = timed(fn)
    finally:
        done.set()
        thread.join()
    return seconds, peak[0] - before


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=5632)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dir", default=None, help="scratch folder (default: a temp dir, deleted afterwards)")
    a = p.parse_args(argv)

    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    import torch

    from megatron_ultralong.convert import convert_hf_to_megatron, convert_megatron_to_hf

    torch.set_num_threads(os.cpu_count() or 1)
    root = a.dir or tempfile.mkdtemp(prefix="bench_convert_")
    os.makedirs(root, exist_ok=True)
    try:
        hf, ckpt, back = (os.path.join(root, n) for n in ("hf", "ckpt", "hf_back"))
        # per-process fixed costs (megatron import, the checkpoint writer's helper process) paid on a tiny model,
        # reported apart: they do not grow with the model, the byte work does
        tiny = os.path.join(root, "tiny")
        os.makedirs(tiny)
        make_hf_model(tiny, 1, 64, 128, 4, 2, 256)
        t_fixed, _ = timed(lambda: (convert_hf_to_megatron(tiny, tiny + "_ckpt", progress=False),
                                    convert_megatron_to_hf(tiny + "_ckpt", tiny + "_back", progress=False)))
        os.makedirs(hf)
        nbytes = make_hf_model(hf, a.layers, a.hidden, a.ffn, a.heads, a.kv_heads, a.vocab)
        print(f"model: {a.layers} layers, hidden {a.hidden}, ffn {a.ffn}, vocab {a.vocab}: {nbytes / 1e9:.2f} GB bf16 "
              f"({nbytes / 2e6:.0f}M params); {os.cpu_count()} CPU cores")
        copy_bytes(hf, os.path.join(root, "warm.bin"))  # page cache warm for both contenders

        t_copy_in, _ = timed(lambda: copy_bytes(hf, os.path.join(root, "copy_in.bin")))
        t_in, mem_in = peak_rss_growth(lambda: convert_hf_to_megatron(hf, ckpt, progress=False))
        ckpt_bytes = sum(os.path.getsize(f) for f in files_under(ckpt) if "hf_assets" not in f)
        copy_bytes(ckpt, os.path.join(root, "warm.bin"))
        t_copy_out, _ = timed(lambda: copy_bytes(ckpt, os.path.join(root, "copy_out.bin")))
        t_out, mem_out = peak_rss_growth(lambda: convert_megatron_to_hf(ckpt, back, progress=False))

        layer_bytes = nbytes // (a.layers + 2)  # rough: the embedding and output layer weigh about a layer each
        rows = [("HF -> Megatron", nbytes, t_copy_in, t_in, mem_in),
                ("Megatron -> HF", ckpt_bytes, t_copy_out, t_out, mem_out)]
        print(f"{'direction':<16}{'bytes':>10}{'read+write':>12}{'convert':>10}{'ratio':>8}{'peak RSS growth':>17}")
        for name, b, base, conv, mem in rows:
            print(f"{name:<16}{b / 1e9:>8.2f}GB{base:>11.2f}s{conv:>9.2f}s{conv / base:>7.2f}x"
                  f"{mem / 1e9:>9.2f}GB ({mem / layer_bytes:.1f} layers)")
        worst = max(conv / base for _, _, base, conv, _ in rows)
        print(f"worst ratio {worst:.2f}x (goal <= 2x); once per process, not included above: {t_fixed:.1f}s "
              f"(imports, checkpoint writer start-up; measured on a tiny model)")
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":  # dist_checkpointing's writer starts a spawned helper process that re-imports this file
    sys.exit(main())
