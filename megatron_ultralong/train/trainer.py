"""The training loop: CPT and SFT on Megatron-Core (DDP, (distributed) optimizer, pipeline schedule, checkpoints).

    trainer = Trainer(load_recipe("toy_cpt", ["train.max_steps=20"]))
    exit_code = trainer.train()          # EXIT_OK, or EXIT_PREEMPTED after SIGTERM/SIGUSR1 + checkpoint
    trainer.close()

One step = the global batch (``train.global_batch_size`` sequences) split into micro-batches of
``train.micro_batch_size`` per data-parallel rank, run through Megatron's forward-backward schedule (PP with
micro-batches; ``train/step.py``), gradients reduced by Megatron DDP and divided by the global count of loss
tokens (``finalize_model_grads`` with per-token loss), clipped, and applied by the optimizer at this step's LR.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .. import cpu_shims
from ..checkpoint import (
    AsyncSaves,
    CheckpointError,
    check_optimizer_resharding,
    find_latest,
    layout_summary,
    load_checkpoint,
    read_meta,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from ..config import Config, ConfigError, checkpoint_dir, config_from_dict, dump_recipe
from ..data.checks import check_data
from ..model.builder import TORCH_DTYPES, build_model
from ..parallel import destroy_distributed, init_distributed
from ..rope import resolved_yarn_factor
from ..signals import PREEMPTION_SIGNALS, rest_of_step_s, signal_deadline
from . import EXIT_OK, EXIT_PREEMPTED, prepare_run_dir
from .metrics import MetricsLogger, memory_gb, peak_flops_per_gpu, train_flops_per_token
from .schedule import LRSchedule
from .separator_rows import init_separator_rows
from .step import StepAbandoned, forward_backward


@contextlib.contextmanager
def megatron_optimizer_shims():
    """cpu_shims.cuda_to_cpu plus CUDA type names, on CPU only (no-op with CUDA)."""
    if not cpu_shims.cuda_absent():
        yield
        return
    with cpu_shims.cuda_to_cpu(), cpu_shims.cuda_type_names():
        yield


def log(msg: str) -> None:
    """Rank-0 console line (stdout; stderr is kept for the one-line error of a failed run)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[trainer] {msg}", flush=True)


def distributed_optimizer_choice(cfg: Config) -> Tuple[bool, str]:
    """(use Megatron's DistributedOptimizer?, why not, when it is requested but cannot be used here)."""
    from megatron.core.optimizer.distrib_optimizer import HAVE_APEX_OR_TE

    if not cfg.optim.use_distributed_optimizer:
        return False, ""
    # Measured with megatron-core 0.16.1: on CPU tensors its constructor raises TypeError (it checks
    # param.type() == 'torch.cuda.*', distrib_optimizer.py:361-437); and with torch's AdamW (no TE/apex) it
    # trains but cannot load a checkpoint: state_dict() asserts one 'step' in the still-empty inner optimizer
    # state (distrib_optimizer.py:642). Megatron's non-sharded optimizer has neither problem.
    if cpu_shims.cuda_absent():
        return False, ("optim.use_distributed_optimizer: DistributedOptimizer needs CUDA tensors; using Megatron's "
                       "non-sharded FP32 optimizer on CPU")
    if not HAVE_APEX_OR_TE:
        return False, ("optim.use_distributed_optimizer: DistributedOptimizer cannot resume without TE/apex "
                       "FusedAdam (megatron-core 0.16.1); using the non-sharded optimizer")
    return True, ""


def wrap_ddp(model: torch.nn.Module, use_distributed_optimizer: bool) -> torch.nn.Module:
    """Megatron DDP around the model, wired into the schedule through the model's TransformerConfig."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,  # BF16 params, FP32 gradient buffers and reduction
        overlap_grad_reduce=False,  # long-context steps are compute-bound; a blocking reduce keeps it simple
        use_distributed_optimizer=use_distributed_optimizer,
        average_in_collective=False,  # per-token loss: grads are summed, then divided by the global token count
    )
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    # The schedule reads these hooks from the model config (Megatron's design): no grad sync per micro-batch,
    # then finalize_model_grads all-reduces grads and the token count over DP×CP and divides by it.
    model.config.no_sync_func = ddp.no_sync
    model.config.finalize_model_grads_func = finalize_model_grads
    return ddp


def build_optimizer(cfg: Config, model_chunks: List[torch.nn.Module], use_distributed_optimizer: bool):
    """Megatron optimizer: Adam(W) with FP32 main params (DistributedOptimizer shards them over DP on GPU)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o, dtype = cfg.optim, cfg.model.params_dtype
    ocfg = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=o.clip_grad,
        use_distributed_optimizer=use_distributed_optimizer,
        bf16=dtype == "bf16", fp16=dtype == "fp16", params_dtype=TORCH_DTYPES[dtype],
    )
    with megatron_optimizer_shims():
        optimizer = get_megatron_optimizer(ocfg, model_chunks)
    if dtype == "fp16":  # dynamic loss scaling: the schedule scales the loss through this hook
        model_chunks[0].config.grad_scale_func = optimizer.scale_loss
    return optimizer


class PreemptionSignal:
    """SIGTERM / SIGUSR1 set a flag; the loop finishes its step (or abandons it between micro-batches when it
    cannot finish in time), agrees across ranks, saves and exits 75."""

    def __init__(self):
        self.received: Optional[str] = None
        self.received_at: Optional[float] = None
        """UNIX time of the first signal."""
        self._previous = {s: signal.signal(s, self._handle) for s in PREEMPTION_SIGNALS}

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name
        self.received_at = self.received_at or time.time()

    def requested_on_any_rank(self, device) -> bool:
        """True when any rank got a signal (one tiny all-reduce per step, so all ranks stop at the same step)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Trainer:
    """Builds everything a run needs from the recipe, in the recipe's order; ``train()`` runs the loop."""

    def __init__(self, cfg: Config):
        self.t_start = time.perf_counter()
        self.last_loss: Optional[float] = None
        self.last_checkpoint: Optional[str] = None
        self.saved_step: Optional[int] = None  # the step whose checkpoint exists (resumed or saved here)
        self.save_s = 0.0  # the last save's duration (this run's, else the resumed checkpoint's record)
        self.optimizer_s = 0.0  # the last optimizer step's duration
        self.rng_at_step_start: Dict[str, object] = {}  # RNG states when the step in progress began
        self.shortfall_note = ""  # this rank's time estimate at the last micro-batch check after a signal
        self.cfg = cfg
        check_data(cfg)  # data paths, tokenizer, separator, SFT schema: seconds, before any process group or model
        self.ckpt_dir = checkpoint_dir(cfg)
        latest = find_latest(self.ckpt_dir)
        if latest is not None:  # a dp_reshardable optimizer state resumes at its own tp and pp only
            check_optimizer_resharding(read_meta(latest), cfg.parallel.tp, cfg.parallel.pp)
        self.preemption = PreemptionSignal()  # from the start: a signal during set-up stops after the first step
        prepare_run_dir(cfg.train.run_dir, "train.run_dir")  # fail before any process group starts
        prepare_run_dir(self.ckpt_dir, "checkpoint.dir")
        self.async_saves: Optional[AsyncSaves] = None  # checkpoint.async_save: interval saves in the background
        self.background_steps: Dict[str, int] = {}  # path -> step of each background save not yet published
        self.ctx = init_distributed(cfg)  # validates cfg for this world size, builds TP/PP/CP/DP groups, seeds
        # Megatron seeds only its tracker streams; CPU-initialised weights draw from torch's default generator
        torch.manual_seed(cfg.train.seed)
        if cpu_shims.cuda_absent():  # subnormal floats are slow on CPUs: a trained toy ran CPT 2.8× slower with them
            torch.set_flush_denormal(True)
        from ..data.loader import build_source

        self.source = build_source(cfg)  # before the schedule: train.token_budget sets train.max_steps from it
        if cfg.train.token_budget:
            steps, how = budget_steps(cfg, self.source)
            cfg = self.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
            log(how)
        use_dist_opt, why_not = distributed_optimizer_choice(cfg)
        if why_not:
            log(why_not)
        self.model = [wrap_ddp(build_model(cfg), use_dist_opt)]  # YaRN rotary is part of the built model
        self.optimizer = build_optimizer(cfg, self.model, use_dist_opt)
        self.schedule = LRSchedule(cfg.optim, cfg.train.max_steps)
        # checkpoint before data: the loader starts at the restored sample position
        self.step, self.consumed_samples = self.restore()
        self.data = self.build_data(self.consumed_samples)
        self.num_microbatches = cfg.train.global_batch_size // (cfg.train.micro_batch_size * self.ctx.dp_size)
        self.metrics = MetricsLogger(cfg, enabled=self.ctx.rank == 0, start_step=self.step)
        if self.ctx.rank == 0:
            dump_recipe(cfg, os.path.join(cfg.train.run_dir, "config.yaml"))
        self.flops_per_token = train_flops_per_token(cfg)
        self.peak_flops = peak_flops_per_gpu()
        if cfg.checkpoint.async_save:
            self.async_saves = AsyncSaves()

    # ---------------------------------------------------------------------------------------- setup
    def build_data(self, consumed_samples: int):
        """Micro-batch iterator for this DP rank, starting after ``consumed_samples`` global samples."""
        from ..data.loader import build_train_iterator

        return build_train_iterator(self.cfg, self.ctx.dp_rank, self.ctx.dp_size, consumed_samples=consumed_samples,
                                    source=self.source)

    def restore(self) -> Tuple[int, int]:
        """Resume from ``<checkpoint.dir>/latest`` if there is one, else load ``checkpoint.init_from`` weights,
        else keep the fresh initialisation. Returns (step, consumed_samples)."""
        cfg = self.cfg
        latest = find_latest(self.ckpt_dir)
        if latest is not None:
            meta = load_checkpoint(latest, self.model, self.optimizer, self.schedule,
                                   fully_parallel=cfg.checkpoint.fully_parallel)
            change = layout_summary(meta, cfg, self.ctx.world_size)
            log(f"resumed from {latest} (step {meta['step']}"
                + (f", resharded {change}" if change else "")
                + ("" if meta["rng_restored"] else ", RNG states not restored: parallel layout changed") + ")")
            diff = self.schedule.differences(meta.get("scheduler") or {})
            if diff:
                log(f"LR schedule differs from the checkpoint's, following the recipe: {diff}")
            self.saved_step, self.save_s = meta["step"], float(meta["extra"].get("save_s") or 0.0)
            return meta["step"], int(meta["extra"]["consumed_samples"])
        if cfg.checkpoint.init_from:
            try:
                meta = load_checkpoint(cfg.checkpoint.init_from, self.model,
                                       fully_parallel=cfg.checkpoint.fully_parallel)
            except CheckpointError as e:
                raise CheckpointError(f"checkpoint.init_from: {e}") from None
            init_separator_rows(self.model, cfg, log)  # reserved/untrained separator tokens: trained-mean rows
            self.optimizer.reload_model_params()  # refresh the FP32 main copies from the loaded weights
            log(f"initialised weights from {meta['path']} (step {meta['step']}); rotary: "
                f"{_rope_name(config_from_dict(meta['config']))} in the checkpoint -> {_rope_name(cfg)} in this run")
            skipped = meta["skipped_extra_state"]
            if skipped:  # e.g. a local-spec conversion loaded into the TE model
                log(f"init_from: skipped {len(skipped)} module extra state(s) present on one side only (TE's FP8 "
                    f"metadata, not weights; they start fresh): {', '.join(skipped[:3])}{' ...' * (len(skipped) > 3)}")
            return 0, 0
        return 0, 0

    # ----------------------------------------------------------------------------------------- loop
    def train(self) -> int:
        """Run to ``train.max_steps``; returns EXIT_OK, or EXIT_PREEMPTED after a signal and a checkpoint. Rank 0
        prints a start-up summary first and an end-of-run summary last."""
        report = self.ctx.rank == 0  # the summaries read files (the tokenizer's template): rank 0 alone
        for line in start_summary(self) if report else []:
            log(line)
        code = self._train()
        for line in end_summary(self, code) if report else []:
            log(line)
        return code

    def _train(self) -> int:
        cfg = self.cfg
        if self.step >= cfg.train.max_steps:
            log(f"already at step {self.step} >= train.max_steps={cfg.train.max_steps}; nothing to do")
            return EXIT_OK
        log(f"training steps {self.step + 1}..{cfg.train.max_steps}: world {self.ctx.world_size} "
            f"(tp{cfg.parallel.tp}·pp{cfg.parallel.pp}·cp{cfg.parallel.cp}·dp{self.ctx.dp_size}), "
            f"{self.num_microbatches} micro-batch(es) of {cfg.train.micro_batch_size} per rank and step")
        interval = cfg.checkpoint.interval
        while self.step < cfg.train.max_steps:
            try:
                record = self.train_step()
            except StepAbandoned as e:
                return self.abandon_step(e)
            self.last_loss = record["loss"]
            self.metrics.write(record)
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"loss is {record['loss']} at step {self.step}; stopping (resume from the "
                                         f"last checkpoint with a lower optim.lr)")
            self.publish_saves()
            preempted = self.preemption.requested_on_any_rank(self.ctx.device)
            done = self.step >= cfg.train.max_steps
            if done or preempted:  # the last save of this process: after any background one, written in place
                self.save()
            elif interval and self.step % interval == 0:
                self.save_in_background() if self.async_saves is not None else self.save()
            if preempted and not done:
                log(f"{self.preemption.received or 'signal on another rank'}: checkpoint of step {self.step} "
                    f"saved, exiting with {EXIT_PREEMPTED} for requeue")
                return EXIT_PREEMPTED
        return EXIT_OK

    def train_step(self) -> Dict[str, object]:
        """One optimizer step over the global batch; returns the metrics record. Raises StepAbandoned (model and
        optimizer untouched) when a preemption signal leaves too little time for the rest of the step."""
        cfg = self.cfg
        step = self.step + 1
        self.rng_at_step_start = rng_states()  # what a save after an abandoned step must record
        t0 = time.perf_counter()
        batches = [next(self.data) for _ in range(self.num_microbatches)]
        lr = self.schedule.apply(self.optimizer, step)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        check = (lambda k: self.out_of_time(k, t0)) if cfg.parallel.pp == 1 else None
        out = forward_backward(self.model, batches, cfg, before_microbatch=check)
        t_opt = time.perf_counter()
        with megatron_optimizer_shims():
            _, grad_norm, _ = self.optimizer.step()
        self.optimizer_s = time.perf_counter() - t_opt
        loss_sum, loss_tokens = self.global_loss(out)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.step = step
        self.consumed_samples += cfg.train.global_batch_size
        tokens = cfg.train.global_batch_size * cfg.data.seq_length
        tokens_per_s = tokens / dt
        mfu = None
        if self.peak_flops:
            mfu = self.flops_per_token * tokens_per_s / (self.peak_flops * self.ctx.world_size)
        return {"step": step, "loss": loss_sum / max(loss_tokens, 1.0), "lr": lr,
                "grad_norm": float(grad_norm) if cfg.optim.clip_grad > 0 and grad_norm is not None else None,
                "tokens": tokens, "loss_tokens": int(loss_tokens), "tokens_per_s": tokens_per_s, "mfu": mfu,
                "mem_gb": memory_gb(), "step_time_s": dt}

    def global_loss(self, out: Dict[str, torch.Tensor]) -> Tuple[float, float]:
        """(Σ loss, Σ loss tokens) over the whole global batch, known on every rank (float64)."""
        from megatron.core import parallel_state as ps

        t = torch.tensor([float(out["loss_sum"]), float(out["tokens"])], dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t, group=ps.get_data_parallel_group(with_context_parallel=True))
        if ps.get_pipeline_model_parallel_world_size() > 1:  # only the last stage computed a loss
            dist.broadcast(t, src=ps.get_pipeline_model_parallel_last_rank(),
                           group=ps.get_pipeline_model_parallel_group())
        return float(t[0]), float(t[1])

    def out_of_time(self, k: int, t0: float) -> bool:
        """Before micro-batch k (1..n-1) of the step that started at ``t0`` (perf_counter), on every rank: True when
        a rank got a preemption signal and, on some rank, the time left before the deadline (signals.
        signal_deadline) is shorter than the rest of the step plus a save. One tiny all-reduce (MAX) per call."""
        p = self.preemption
        shortfall = 0.0  # seconds the rest of the step plus a save overrun the deadline, if positive
        if p.received:
            deadline = signal_deadline(p.received_at, self.cfg.checkpoint.signal_deadline_s)
            need = rest_of_step_s(time.perf_counter() - t0, k, self.num_microbatches, self.optimizer_s) + self.save_s
            shortfall = need - (deadline - time.time()) if deadline is not None else -math.inf
            self.shortfall_note = (f"{need:.0f}s needed for the rest of the step and a save, "
                                   + (f"{deadline - time.time():.0f}s left" if deadline is not None else
                                      "no deadline known"))
        flag = torch.tensor([1.0 if p.received else 0.0, shortfall if p.received else -math.inf],
                            device=self.ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag[0].item()) and float(flag[1].item()) > 0

    def abandon_step(self, e: StepAbandoned) -> int:
        """The step in progress stopped between micro-batches: drop its partial gradients, make sure the previous
        step's checkpoint exists (model and optimizer still hold that step's state; the RNG goes back to the step's
        start), and return EXIT_PREEMPTED. The requeued job redoes the step bit-identically."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        restore_rng_states(self.rng_at_step_start)
        self.publish_saves(wait=True)  # a background save of this very step may still be in flight
        note = self.shortfall_note or "deadline passed on another rank"
        what = f"step {self.step + 1} abandoned before micro-batch {e.index + 1}/{e.total} ({note})"
        had = self.saved_step == self.step
        if not had:
            self.save()
        log(f"{self.preemption.received or 'signal on another rank'}: {what}; checkpoint of step "
            f"{self.step} {'already saved' if had else 'saved'}, exiting with {EXIT_PREEMPTED} for requeue")
        return EXIT_PREEMPTED

    def save(self) -> str:
        """Checkpoint of the current step (model, optimizer, RNG, schedule, data position, config, and the previous
        save's duration for the next run's deadline estimate), published when this returns (after any background
        save still pending)."""
        self.publish_saves(wait=True)
        t0 = time.perf_counter()
        path = save_checkpoint(self.ckpt_dir, self.step, self.model, self.cfg, self.optimizer, self.schedule,
                               extra={"consumed_samples": self.consumed_samples, "save_s": self.save_s})
        self.save_s = time.perf_counter() - t0
        log(f"saved {path} in {self.save_s:.1f}s")
        self.last_checkpoint, self.saved_step = path, self.step
        return path

    def save_in_background(self) -> str:
        """The same checkpoint written by AsyncSaves while training goes on (checkpoint.async_save); a later
        publish_saves() publishes it. Returns its path, which does not exist yet."""
        self.publish_saves(wait=True)  # one in flight at a time, published in order
        t0 = time.perf_counter()
        path = save_checkpoint(self.ckpt_dir, self.step, self.model, self.cfg, self.optimizer, self.schedule,
                               extra={"consumed_samples": self.consumed_samples, "save_s": self.save_s},
                               async_saves=self.async_saves)
        self.background_steps[path] = self.step
        log(f"saving {path} in the background ({time.perf_counter() - t0:.1f}s blocking)")
        return path

    def publish_saves(self, wait: bool = False) -> None:
        """Publish the background saves every rank has finished writing (``wait``: all of them); collective.
        Their duration, start to publish, is the next deadline estimate's save time (an upper bound by up to a step
        when found done only at a step's end)."""
        if self.async_saves is None:
            return
        for path, seconds in self.async_saves.poll(blocking=wait):
            self.save_s = seconds
            self.last_checkpoint, self.saved_step = path, self.background_steps.pop(path)
            log(f"saved {path} in the background, published {seconds:.1f}s after it started")

    def close(self) -> None:
        """Flush metrics, restore signal handlers, tear down process groups. A background save still pending here
        (an error stopped the loop: the ranks may not meet again) is abandoned unpublished."""
        if getattr(self, "async_saves", None) is not None and self.async_saves.pending:
            log(f"abandoning the unpublished background save(s) {', '.join(self.async_saves.pending)}")
            self.async_saves.abort()
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        if getattr(self, "preemption", None) is not None:
            self.preemption.restore()
        destroy_distributed()


def _rope_name(cfg: Config) -> str:
    """'yarn x128', 'llama3 x8' or 'default': the position encoding a config builds."""
    if cfg.yarn.enabled:
        return f"yarn x{resolved_yarn_factor(cfg.yarn):g}"
    m = cfg.model
    return m.rope_type if m.rope_type == "default" else f"{m.rope_type} x{m.rope_factor:g}"


def budget_steps(cfg: Config, source) -> Tuple[int, str]:
    """(train.max_steps for train.token_budget on this data, the line that says how): ceil(budget / (global batch ×
    data tokens per window)), in integers; SFT windows hold source.data_tokens over len(source.bins) windows
    (padding excluded), other windows are full. A function of the data and the recipe only: a resume derives the
    same steps."""
    t, seq = cfg.train, cfg.data.seq_length
    tokens, windows = (source.data_tokens, len(source.bins)) if hasattr(source, "data_tokens") else (seq, 1)
    tokens = min(tokens, seq * windows)
    steps = max(1, -(-t.token_budget * windows // (t.global_batch_size * tokens)))
    if steps < cfg.optim.lr_warmup_steps:
        raise ConfigError(f"train.token_budget={t.token_budget} gives {steps} steps, fewer than "
                          f"optim.lr_warmup_steps={cfg.optim.lr_warmup_steps}; raise the budget or lower the warmup")
    return steps, (f"train.max_steps={steps} from train.token_budget={t.token_budget:,}: {windows:,} window(s) hold "
                   f"{tokens:,} data tokens ({tokens / windows:,.1f} of {seq:,} per window), so ceil(budget / "
                   f"({t.global_batch_size} × {tokens / windows:,.1f})) = {steps} steps "
                   f"(the recipe's train.max_steps={t.max_steps} is replaced)")


def _chat_template(cfg: Config) -> str:
    """The chat template SFT samples are encoded with, resolved ('auto' -> the tokenizer's or llama3)."""
    d = cfg.data
    if d.synthetic is not None:
        return f"none (data.synthetic={d.synthetic})"
    if not all(p.endswith((".jsonl", ".json")) for p in d.paths):
        return "applied by tools/preprocess_data.py chat (preprocessed prefixes)"
    if d.chat_template != "auto":
        return d.chat_template
    from ..data.tokenizer import load_tokenizer

    tok = load_tokenizer(d.tokenizer, d.separator_id)
    return "hf (the tokenizer's own chat template)" if tok.chat_template else "llama3 (built-in)"


def start_summary(trainer: "Trainer") -> List[str]:
    """The start-up summary: layout, steps and tokens, data (mixture size, windows per epoch), separator or chat
    template, attention backend, rotary."""
    from ..config import needs_document_masking
    from ..model.specs import core_attention_kind, resolve_attention_backend

    cfg, t, ctx = trainer.cfg, trainer.cfg.train, trainer.ctx
    backend = resolve_attention_backend(cfg.model)
    kind = core_attention_kind(backend, needs_document_masking(cfg))
    total = t.max_steps * t.global_batch_size * cfg.data.seq_length
    lines = [f"start: train.mode={t.mode}, world {ctx.world_size} (tp{cfg.parallel.tp}·pp{cfg.parallel.pp}·"
             f"cp{cfg.parallel.cp}·dp{ctx.dp_size}), {t.max_steps} steps × {t.global_batch_size} × "
             f"{cfg.data.seq_length:,} tokens = {total:,} tokens ({total / 1e9:.2f}B)"
             + (f" (train.token_budget={t.token_budget:,})" if t.token_budget else "") + f", run dir {t.run_dir}",
             f"data: {trainer.source.describe()}"]
    if t.mode == "sft":
        lines.append(f"chat template: {_chat_template(cfg)}")
    else:
        sep = getattr(trainer.source, "separator", None)
        ids = list(getattr(trainer.source, "sep_ids", None) or [i for i in [cfg.data.separator_id] if i is not None])
        lines.append(f"separator: {sep.describe()}" if sep is not None else f"separator ids: {ids or 'none'}")
    lines.append(f"attention: {backend} (model.attention_backend={cfg.model.attention_backend})"
                 + (f", {kind} for the document-masked layers" if kind != backend else "")
                 + f"; rotary {_rope_name(cfg)}, {cfg.model.max_position_embeddings:,} positions")
    return lines


def end_summary(trainer: "Trainer", code: int) -> List[str]:
    """The end-of-run summary: time, final loss, checkpoint, and the command to run next."""
    cfg = trainer.cfg
    elapsed = time.perf_counter() - trainer.t_start
    h, rem = divmod(int(elapsed), 3600)
    loss = f"{trainer.last_loss:.4f}" if trainer.last_loss is not None else "n/a (no step run)"
    ckpt = trainer.last_checkpoint or find_latest(trainer.ckpt_dir) or "none"
    lines = [f"end: step {trainer.step}/{cfg.train.max_steps} in {h}h{rem // 60:02d}m{rem % 60:02d}s, final loss "
             f"{loss}, checkpoint {ckpt}"]
    if code == EXIT_PREEMPTED:
        lines.append("next: run the same command again; it resumes from "
                     f"{os.path.join(trainer.ckpt_dir, 'latest')}")
        return lines
    name = os.path.basename(os.path.normpath(cfg.train.run_dir))
    export = f"python tools/convert_to_hf.py --ckpt {trainer.ckpt_dir} --out hf/{name} --verify"
    if cfg.train.mode == "cpt":
        lines.append(f"next: sbatch slurm/sft.sh checkpoint.init_from={trainer.ckpt_dir} data.paths=[<chat jsonl>] "
                     f"data.tokenizer={cfg.data.tokenizer or '<tokenizer>'} train.run_dir=runs/sft_{name} "
                     f"(SFT), or export it: {export}")
    else:
        lines.append(f"next: {export}")
    return lines
