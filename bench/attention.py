#!/usr/bin/env python3
"""Document-masked attention: memory and time of our SDPA core attention vs an explicit [S, S] mask.

    python bench/attention.py                            # lengths 2K, 8K, 16K, 32K; ~3.5 min on 2 cores
    python bench/attention.py --lengths 4096 --docs 4    # quick

For each length S, one sequence of ``--docs`` packed documents (random lengths), 8 query heads / 2 KV groups of
64 channels, forward + backward in fp32 on CPU, each case in a fresh process:
  runs   model/attention.py SDPACoreAttention with document ids (one causal SDPA call per document)
  mask   the same SDPA call over the whole sequence with an explicit boolean [1, 1, S, S] mask (what a
         document-masked attention has to build without per-document calls; it is what our module did before)
Reports the peak growth of resident memory (ru_maxrss after - before) and the wall time, and checks that both
cases give the same output (max |Δ|). The point is the memory column: runs grows linearly with S, mask
quadratically; at 1M tokens the mask alone would be 1 TB.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HEADS, GROUPS, HD = 8, 2, 64


def _case(kind: str, seq: int, docs: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    g = torch.Generator().manual_seed(0)
    cuts = sorted(torch.randperm(seq - 1, generator=g)[:docs - 1].add(1).tolist())
    bounds = [0, *cuts, seq]
    doc_ids = torch.cat([torch.full((e - s,), i) for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))])[None]
    q, k, v = (torch.randn(seq, 1, n, HD, generator=g, requires_grad=True) for n in (HEADS, GROUPS, GROUPS))
    scale = HD ** -0.5
    if kind == "runs":
        from megatron_ultralong.config import load_recipe
        from megatron_ultralong.model.attention import SDPACoreAttention
        from megatron_ultralong.model.builder import transformer_config

        tc = transformer_config(load_recipe("toy_cpt", [f"model.num_attention_heads={HEADS}",
                                                        f"model.num_query_groups={GROUPS}"]))
        module = SDPACoreAttention(tc, 1, None, "self", softmax_scale=scale)

        def attend():
            return module(q, k, v, doc_ids)
    else:
        def attend():
            allowed = torch.ones(seq, seq, dtype=torch.bool).tril() & (doc_ids[0, :, None] == doc_ids[0, None, :])
            out = F.scaled_dot_product_attention(q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3), v.permute(1, 2, 0, 3),
                                                 attn_mask=allowed[None, None], scale=scale, enable_gqa=True)
            return out.permute(2, 0, 1, 3).reshape(seq, 1, HEADS * HD)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = attend()
    out.sum().backward()
    seconds = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    probe = out[:: max(1, seq // 256)].detach()  # a sample of rows, to compare the two cases
    return {"kind": kind, "seq": seq, "seconds": seconds, "peak_mb": peak_mb, "probe": probe.flatten().tolist()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="2048,8192,16384,32768", help="comma-separated sequence lengths")
    p.add_argument("--docs", type=int, default=8, help="documents packed in each sequence")
    p.add_argument("--case", nargs=3, metavar=("KIND", "SEQ", "DOCS"), help=argparse.SUPPRESS)  # child process
    a = p.parse_args(argv)
    if a.case:
        print(json.dumps(_case(a.case[0], int(a.case[1]), int(a.case[2]))))
        return 0
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.docs < 1 or any(n < a.docs for n in lengths):
        p.error(f"--docs {a.docs} must be >= 1 and at most every length in --lengths {a.lengths}")
    print(f"document-masked attention, fwd+bwd fp32 CPU, {HEADS} heads / {GROUPS} KV groups x {HD}, "
          f"{a.docs} documents per sequence")
    print(f"{'S':>7} | {'runs MB':>8} {'runs s':>7} | {'mask MB':>8} {'mask s':>7} | max |diff|")
    for seq in lengths:
        res = {}
        for kind in ("runs", "mask"):
            r = subprocess.run([sys.executable, __file__, "--case", kind, str(seq), str(a.docs)],
                               capture_output=True, text=True)
            if r.returncode:
                print(f"{seq:>7} | {kind} failed: {r.stderr.strip().splitlines()[-1:]}")
                break
            res[kind] = json.loads(r.stdout.strip().splitlines()[-1])
        if len(res) < 2:
            continue
        diff = max(abs(x - y) for x, y in zip(res["runs"]["probe"], res["mask"]["probe"]))
        print(f"{seq:>7} | {res['runs']['peak_mb']:8.0f} {res['runs']['seconds']:7.2f} | "
              f"{res['mask']['peak_mb']:8.0f} {res['mask']['seconds']:7.2f} | {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
