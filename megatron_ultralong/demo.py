"""The toy end-to-end job behind `make demo` (CPU is fine, about a minute):  python -m megatron_ultralong.demo

Synthetic data -> CPT mixture (documents joined by the text "<s>") -> YaRN CPT with a simulated preemption and
resume -> Hugging Face export verified by logits -> passkey NIAH and perplexity. Output in ``demo_out/``
(``--out``), replaced on each run; ``summary.json`` is written last. The steps: docs/training.md, "The toy demo".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .checkpoint import list_checkpoints, read_meta
from .config import YarnConfig
from .rope import resolved_yarn_factor
from .train import EXIT_OK, EXIT_PREEMPTED

RECIPE = "toy_cpt"
STEPS = 40
PREEMPT_AFTER = 17  # steps logged before the demo sends SIGUSR1 (between two interval checkpoints)
DOCS_PER_SOURCE = {"web": 300, "books": 80, "code": 150, "math": 120}
VOCAB = 512  # = the toy model card's vocab_size
SHORT_THRESHOLD, LONG_THRESHOLD = 128, 512  # toy-window analogues of the paper's 4096 / 8192
NIAH_DEPTHS = (0.0, 0.5, 1.0)
PPL_LENGTHS, PPL_TAIL = (32, 64, 128, 240), 16  # 64 = the original window, 240 fits the extended one
HELD_OUT_SEED = 99  # held-out documents: the training corpus is seed 0


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ 1. data
def prepare_data(data_dir: Path) -> dict:
    """Corpus -> tokenizer -> indexed datasets -> mixture manifest; returns what the later steps need."""
    from .data.mixture import MixtureParams, build_mixture, report_table, resolve_sources, write_mixture
    from .data.preprocess import preprocess_text
    from .data.synthetic import synthetic_documents, train_sentencepiece, write_synthetic_corpus

    raw = data_dir / "raw"
    corpus = write_synthetic_corpus(raw, DOCS_PER_SOURCE, seed=0)
    texts = [t for s, n in DOCS_PER_SOURCE.items() for t in synthetic_documents(s, min(n, 60), seed=1)]
    spm = train_sentencepiece(texts, data_dir / "tokenizer", vocab_size=VOCAB)
    summary = preprocess_text(corpus, spm, str(data_dir / "idx"), workers=2, progress=False)
    for src, v in summary["sources"].items():
        _say(f"    {src:<6} {v['docs']:>5} docs {v['tokens']:>8,} tokens (longest {v['max_length']:,})")
    params = MixtureParams(short_threshold=SHORT_THRESHOLD, long_threshold=LONG_THRESHOLD, seed=1234)
    mix = build_mixture(resolve_sources([str(data_dir / "idx")]), params)
    files = write_mixture(mix, data_dir / "cpt_mix.json")
    _say("    " + report_table(mix.report).replace("\n", "\n    "))
    return {"tokenizer": spm, "mixture": files["manifest"], "files": files, "docs": summary["total"]["docs"],
            "tokens": summary["total"]["tokens"],
            "draws": int(len(mix.draws))}


# ------------------------------------------------------------------------------------------------- 2. CPT
def _train_cmd(run_dir: Path, data: dict):
    return [sys.executable, "-m", "megatron_ultralong.train", "--config", RECIPE, f"train.run_dir={run_dir}",
            f"train.max_steps={STEPS}", "checkpoint.interval=10", "data.synthetic=null",
            f"data.paths=[{data['mixture']}]", f"data.tokenizer={data['tokenizer']}"]


def _metrics(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _step_of(progress_line: str) -> int:
    return int(progress_line.split()[1].split("/")[0])  # 'step 12/40 | ...' -> 12


def _run(cmd, run_dir: Path, preempt_after=None) -> int:
    """Run the trainer, echoing its output indented; optionally SIGUSR1 it after N logged steps."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    sent = False
    for line in proc.stdout:  # the trainer prints one progress line per step: the demo echoes every 5th
        if line.startswith(("[trainer]", "error")) or (line.startswith("step ") and _step_of(line) % 5 == 0):
            _say(f"    {line.rstrip()}")
        if preempt_after and not sent and len(_metrics(run_dir)) >= preempt_after:
            _say(f"    -- demo: sending SIGUSR1 (a SLURM preemption warning) to pid {proc.pid}")
            proc.send_signal(signal.SIGUSR1)
            sent = True
    return proc.wait()


def train(run_dir: Path, data: dict) -> dict:
    """Preempted run + resumed run; returns the preemption step."""
    cmd = _train_cmd(run_dir, data)
    code1 = _run(cmd, run_dir, preempt_after=PREEMPT_AFTER)
    if code1 != EXIT_PREEMPTED:
        raise RuntimeError(f"expected exit {EXIT_PREEMPTED} after SIGUSR1, got {code1}")
    stopped = read_meta(str(run_dir / "checkpoints"))["step"]
    _say(f"    preempted: checkpoint of step {stopped} saved, exit code {code1} (SLURM would requeue)")
    _say("    relaunching the same command: it resumes from 'latest'")
    code2 = _run(cmd, run_dir)
    if code2 != EXIT_OK:
        raise RuntimeError(f"expected exit {EXIT_OK} from the resumed run, got {code2}")
    return {"preempted_at": stopped, "exit_codes": [code1, code2]}


# ---------------------------------------------------------------------------------------------- 3. export
def export(ckpt: Path, hf_dir: Path, seq_len: int) -> dict:
    from .convert.hf import convert_megatron_to_hf

    res = convert_megatron_to_hf(str(ckpt), str(hf_dir), verify=True, verify_seq_len=seq_len, progress=False)
    rope = res["config"].get("rope_scaling") or {}
    _say(f"    {res['shards']} safetensors shard(s), {res['bytes'] / 1e6:.1f} MB, tokenizer {res['assets']}")
    _say(f"    config.json rope_scaling: {json.dumps(rope)}")
    _say(f"    verify: max |logits_hf - logits_megatron| = {res['max_abs_diff']:.2e} over {seq_len} tokens")
    return {"max_abs_diff": res["max_abs_diff"], "rope_scaling": rope, "seconds": res["seconds"]}


# ------------------------------------------------------------------------------------------------ 4. eval
def evaluate(hf_dir: Path, tokenizer_path: str, out_dir: Path, target: int) -> dict:
    import numpy as np
    import torch
    import transformers

    from .data.synthetic import synthetic_documents, write_jsonl
    from .data.tokenizer import load_tokenizer
    from .eval.hf import hf_generate
    from .eval.niah import INTRO, NEEDLE, QUESTION, run_grid
    from .eval.perplexity import hf_nll_fn, perplexity_by_length
    from .eval.plots import niah_heatmap, perplexity_plot

    tok = load_tokenizer(tokenizer_path)
    skeleton = sum(len(tok.encode(t)) for t in (INTRO, NEEDLE.format(key="12345"), QUESTION))
    room = 16  # the answer's tokens must fit in the window too
    lengths = [n for n in (target // 2, target - room) if n > skeleton + 32] or [target - room]
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    grid = run_grid(hf_generate(model, tok), tok, lengths, NIAH_DEPTHS, samples_per_cell=1, seed=0,
                    log=lambda m: _say(f"    {m}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "niah.jsonl", grid["cells"])
    niah_heatmap(grid, str(out_dir / "niah.png"), title="Passkey retrieval (toy model: ~0 expected)")

    held_out = [np.asarray(tok.encode(t)) for t in synthetic_documents("books", 40, seed=HELD_OUT_SEED)]
    ppl = perplexity_by_length(hf_nll_fn(model), held_out, PPL_LENGTHS, documents=8, tail=PPL_TAIL,
                               log=lambda m: _say(f"    {m}") if "ppl" in m else None)
    write_jsonl(out_dir / "perplexity.jsonl", ppl["results"])
    perplexity_plot([r["length"] for r in ppl["results"]], [r["tail_ppl"] for r in ppl["results"]],
                    str(out_dir / "perplexity.png"), title=f"Held-out books: last-{PPL_TAIL} perplexity")
    return {"accuracy": grid["accuracy"], "lengths": lengths, "depths": list(NIAH_DEPTHS),
            "perplexity": {r["length"]: {"ppl": r["ppl"], "tail_ppl": r["tail_ppl"]} for r in ppl["results"]}}


# ------------------------------------------------------------------------------------------------- main
def _quiet_libraries() -> None:
    """Keep the demo's output to what it shows: no weight-loading bars, no CPU-fallback notices (the trainer
    prints its own one-line notes)."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_ultralong.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="output folder (replaced)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    for sub in ("data", RECIPE, "hf", "eval", "summary.json"):
        p = out / sub
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    run_dir, hf_dir = out / RECIPE, out / "hf"
    t0 = time.perf_counter()
    times = {}
    _quiet_libraries()
    try:
        _say(f"[demo 1/4] data: synthetic corpus -> tokenizer -> indexed datasets -> CPT mixture ({out / 'data'})")
        data = prepare_data(out / "data")
        times["data"] = time.perf_counter() - t0

        _say(f"[demo 2/4] CPT with YaRN on the mixture, {STEPS} steps, checkpoint every 10 -> {run_dir}")
        trained = train(run_dir, data)
        times["cpt"] = time.perf_counter() - t0 - sum(times.values())

        meta = read_meta(str(run_dir / "checkpoints"))
        cfg = meta["config"]
        target = cfg["yarn"]["target_length"]
        _say(f"[demo 3/4] export to Hugging Face + verify at {target} tokens -> {hf_dir}")
        exported = export(run_dir / "checkpoints", hf_dir, seq_len=target)
        times["export"] = time.perf_counter() - t0 - sum(times.values())

        _say(f"[demo 4/4] evaluation of the exported model: passkey NIAH, perplexity vs length -> {out / 'eval'}")
        niah = evaluate(hf_dir, data["tokenizer"], out / "eval", target)
        times["eval"] = time.perf_counter() - t0 - sum(times.values())
    except Exception as e:  # the demo's own expectations; the tools' errors already say what to fix
        print(f"[demo] failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    recs = _metrics(run_dir)
    factor = resolved_yarn_factor(YarnConfig(**cfg["yarn"]))
    first, last = recs[0]["loss"], recs[-1]["loss"]
    summary = {"data": {k: data[k] for k in ("docs", "tokens", "draws", "tokenizer", "mixture")},
               "cpt": {"steps": len(recs), "loss_first": first, "loss_last": last, **trained,
                       "checkpoints": list_checkpoints(str(run_dir / "checkpoints")), "yarn_factor": factor},
               "export": exported, "niah": niah, "seconds": {k: round(v, 1) for k, v in times.items()}}
    from .atomic import atomic_path

    with atomic_path(out / "summary.json") as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=2)

    _say("\n== demo summary ==")
    _say(f"  data        {data['docs']} documents, {data['tokens']:,} tokens in 4 sources; mixture of {data['draws']} "
         f"document draws ({data['mixture']}, report + PNG beside it)")
    _say(f"  model       tiny Llama ({cfg['model']['num_layers']} layers, d={cfg['model']['hidden_size']}), "
         f"YaRN x{factor:g} ({cfg['yarn']['original_max_position_embeddings']} -> {target} tokens, "
         f"alpha={cfg['yarn']['beta_slow']:g}, beta={cfg['yarn']['beta_fast']:g})")
    _say(f"  CPT         {len(recs)} steps of {cfg['train']['global_batch_size']}x{cfg['data']['seq_length']} tokens, "
         f"loss {first:.3f} -> {last:.3f}")
    _say(f"  preemption  SIGUSR1 at step {trained['preempted_at']}: saved, exit {EXIT_PREEMPTED}; relaunch resumed "
         f"at step {trained['preempted_at'] + 1}, finished with exit {EXIT_OK}")
    _say(f"  export      {hf_dir}: rope_scaling {exported['rope_scaling'].get('rope_type')} "
         f"factor {exported['rope_scaling'].get('factor')}, logits equal Megatron's to {exported['max_abs_diff']:.1e}")
    ppl = ", ".join(f"{n}: {v['ppl']:.1f}" for n, v in niah["perplexity"].items())
    _say(f"  perplexity  held-out books by context length: {ppl} (uniform guessing: {VOCAB})")
    _say(f"  NIAH        accuracy {niah['accuracy']:.0%} over lengths {niah['lengths']} x depths {niah['depths']} "
         f"(a 40-step toy model cannot follow the prompt: ~0 is the expected result; {out / 'eval' / 'niah.png'})")
    _say(f"  metrics     {run_dir / 'metrics.jsonl'}  (tensorboard --logdir {run_dir / 'tensorboard'})")
    _say(f"  took        {time.perf_counter() - t0:.0f} s "
         f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); summary {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
