"""Sharded prefill, distributed greedy decode and chunked scoring on this rank's GPTModel (TP × CP, PP = 1).

    engine = Engine(model, cfg, vocab_size=128256, eos_ids=(128009,))  # after init_distributed + load (loading.py)
    engine.generate([[ids...], [ids...]], max_new_tokens=32)           # -> generated ids per prompt, every rank
    engine.nll(torch.tensor(ids))                                      # -> [len(ids) − 1] NLL, no cache, no [L, V]
    generate = generate_fn(engine, tokenizer); nll = nll_fn(engine)     # what eval/niah, ruler, perplexity take

Every rank of the TP × CP group calls the same method with the same prompts (they are collective). The layout of
the cache, the padding rule and the decode merge: docs/eval.md, "Megatron checkpoints".
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

from ..config import Config, head_dim, max_sequence_length
from ..context_parallel import zigzag_gather
from ..model.loss import gpt_chunked_loss
from ..model.rotary import zigzag_positions
from ..model.specs import core_attention_kind, make_attention_mask, resolve_attention_backend
from .cached_attention import AttentionState, CachedCoreAttention
from .checks import check_prompt_length, padded_length
from .kv_cache import KVCache


class Engine:
    """Greedy generation and scoring with one GPTModel chunk per rank (the model stays as training built it; only
    each layer's core attention is wrapped, see cached_attention.py)."""

    def __init__(self, model, cfg: Config, vocab_size: Optional[int] = None, eos_ids: Iterable[int] = (),
                 batch_size: int = 1):
        from megatron.core import parallel_state as ps
        from megatron.core.utils import unwrap_model

        self.gpt = unwrap_model(model).eval()
        self.cfg = cfg
        self.window = max_sequence_length(cfg)
        self.vocab = int(vocab_size or cfg.model.vocab_size)
        """Token ids argmax chooses from (the HF vocabulary: rows past it are TP padding)."""
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.batch_size = batch_size
        self.cp, self.cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
        self.cp_group = ps.get_context_parallel_group() if self.cp > 1 else None
        tc = self.gpt.config
        self.groups = tc.num_query_groups // ps.get_tensor_model_parallel_world_size()  # KV heads on this rank
        self.head_dim = head_dim(cfg.model)
        self.device = next(self.gpt.parameters()).device
        self.dtype = next(self.gpt.parameters()).dtype
        scale = tc.softmax_scale if tc.softmax_scale is not None else 1.0 / math.sqrt(tc.kv_channels)
        self.state = AttentionState(cp_group=self.cp_group, softmax_scale=scale)  # training's scale (YaRN t²)
        self.mask_kind = core_attention_kind(resolve_attention_backend(cfg.model), False)
        for i, layer in enumerate(self.gpt.decoder.layers):
            attention = layer.self_attention
            if not isinstance(attention.core_attention, CachedCoreAttention):
                attention.core_attention = CachedCoreAttention(attention.core_attention, i, self.state)
        self.kv_bytes = 0
        """Bytes of this rank's KV shard in the last generate batch (allocated capacity)."""
        self.kv_used_bytes = 0
        """Bytes of the slots that batch filled (prompt tokens, pads, kept decode tokens)."""

    # ------------------------------------------------------------------------------------------- pieces
    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, rotary: torch.Tensor) -> torch.Tensor:
        """Embedding and the decoder (final norm included): tokens / positions [b, s], rotary angles
        [s, b | 1, 1, head_dim] -> hidden states [s, b, h]."""
        gpt = self.gpt
        hidden = gpt.embedding(input_ids=tokens, position_ids=positions)
        mask = make_attention_mask(self.mask_kind, tokens.shape[1], device=self.device)
        return gpt.decoder(hidden_states=hidden, attention_mask=mask, rotary_pos_emb=rotary)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output head on hidden [n, b, h] -> fp32 logits [n, b, vocab], gathered over TP."""
        gpt = self.gpt
        weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
        logits, _ = gpt.output_layer(hidden, weight=weight, runtime_gather_output=True)
        return logits[..., :self.vocab].float()

    def _local_positions(self, length: int) -> torch.Tensor:
        """Global positions of this rank's zigzag share of a ``length``-token (padded) sequence."""
        return zigzag_positions(length, self.cp, self.cp_rank).to(self.device)

    def _prefill_hidden(self, tokens: torch.Tensor):
        """tokens [b, Lpad] (every rank) -> (this rank's positions [n], hidden states [n, b, h])."""
        pos = self._local_positions(tokens.shape[1])
        local = tokens[:, pos]
        return pos, self._forward(local, pos.expand_as(local), self.gpt.rotary_pos_emb.angles(pos))

    @contextlib.contextmanager
    def _mode(self, mode: str, cache: Optional[KVCache] = None):
        self.state.mode, self.state.cache = mode, cache
        try:
            yield
        finally:
            self.state.mode, self.state.cache, self.state.owner = "off", None, False

    @contextlib.contextmanager
    def _unfused_rope(self):
        """Decode angles differ per sample ([1, b, 1, d]); TE's fused RoPE takes one row of angles for the batch,
        Megatron's unfused path (the same formula) any broadcastable tensor."""
        configs = {id(layer.self_attention.config): layer.self_attention.config for layer in self.gpt.decoder.layers}
        saved = {k: c.apply_rope_fusion for k, c in configs.items()}
        for c in configs.values():
            c.apply_rope_fusion = False
        try:
            yield
        finally:
            for k, c in configs.items():
                c.apply_rope_fusion = saved[k]

    def _check(self, prompts: Sequence[Sequence[int]]) -> None:
        for i, p in enumerate(prompts):
            check_prompt_length(len(p), self.window, self.cp, what=f"prompt {i}")

    def _batch(self, prompts: Sequence[Sequence[int]]):
        """(tokens [b, Lpad] right-padded with 0, lengths [b]) on this rank's device."""
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int64)
        tokens = torch.zeros(len(prompts), padded_length(int(lengths.max()), self.cp), dtype=torch.int64)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = torch.as_tensor(list(p), dtype=torch.int64)
        return tokens.to(self.device), lengths.to(self.device)

    # ----------------------------------------------------------------------------------------- public
    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> List[List[int]]:
        """Greedy continuations of ``prompts`` (at most ``max_new_tokens`` ids each, up to and including the first
        EOS id), in batches of ``batch_size`` prompts of similar length; the same result on every rank."""
        self._check(prompts)
        if max_new_tokens < 1:
            return [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: List[List[int]] = [[] for _ in prompts]
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            for i, ids in zip(idx, self._generate_batch([prompts[i] for i in idx], max_new_tokens)):
                out[i] = ids
        return out

    def _generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> List[List[int]]:
        tokens, lengths = self._batch(prompts)
        b, padded = tokens.shape
        n_local = padded // self.cp
        kept = -(-(max_new_tokens - 1) // self.cp)  # decode tokens this rank keeps, at most (round-robin)
        cache = KVCache(len(self.gpt.decoder.layers), b, self.groups, self.head_dim, n_local + kept, self.dtype,
                        self.device)
        pos = self._local_positions(padded)
        cache.set_valid(pos[None, :] < lengths[:, None])  # pads excluded from the cache
        with self._mode("prefill", cache):
            _, hidden = self._prefill_hidden(tokens)  # [n, b, h]
        # the last prompt token's hidden state lives on one CP rank; a sum over the group hands it to all
        slot = torch.full((padded,), -1, dtype=torch.int64, device=self.device)
        slot[pos] = torch.arange(n_local, device=self.device)
        j = slot[lengths - 1]
        last = hidden[j.clamp(min=0), torch.arange(b, device=self.device)] * (j >= 0)[:, None].to(hidden.dtype)
        if self.cp_group is not None:
            dist.all_reduce(last, group=self.cp_group)
        next_ids = self._logits(last[None])[0].argmax(dim=-1)  # [b]
        generated = [[] for _ in range(b)]
        done = [False] * b
        for step in range(max_new_tokens):
            for i, t in enumerate(next_ids.tolist()):
                if not done[i]:
                    generated[i].append(t)
                    done[i] = t in self.eos_ids
            if step == max_new_tokens - 1 or all(done):
                break
            positions = (lengths + step)[:, None]  # [b, 1]: each sample continues from its own length
            owner = step % self.cp == self.cp_rank  # round-robin keeps the shards balanced
            if owner:
                cache.open_slot()
            rotary = self.gpt.rotary_pos_emb.angles(positions[:, 0]).permute(1, 0, 2, 3)  # [1, b, 1, d]
            with self._mode("decode", cache), self._unfused_rope():
                self.state.owner = owner
                hidden = self._forward(next_ids[:, None], positions, rotary)  # [1, b, h]
            next_ids = self._logits(hidden)[0].argmax(dim=-1)
        self.kv_bytes, self.kv_used_bytes = cache.nbytes(), cache.used_bytes()
        return generated

    @torch.no_grad()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """fp32 logits [len(ids), vocab] of one sequence (the sharded prefill, gathered: for tests and short
        inputs only, it builds the [L, V] tensor that nll avoids)."""
        self._check([ids])
        tokens, _ = self._batch([ids])
        _, hidden = self._prefill_hidden(tokens)
        local = self._logits(hidden)  # [n, 1, V]
        full = zigzag_gather(local, self.cp_group, seq_dim=0) if self.cp_group is not None else local
        return full[:len(ids), 0]

    @torch.no_grad()
    def nll(self, ids: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Per-position NLL [len(ids) − 1] (fp32, CPU) of the next token: one sharded prefill without a cache, the
        vocab-parallel cross entropy of training ``chunk`` positions at a time (no [L, V] logits)."""
        ids = torch.as_tensor(ids, dtype=torch.int64)
        length = ids.numel() - 1
        check_prompt_length(length, self.window, self.cp, what=f"a scored window of {length} tokens")
        tokens, _ = self._batch([ids[:-1].tolist()])
        labels = torch.zeros_like(tokens)
        labels[0, :length] = ids[1:].to(self.device)
        pos, hidden = self._prefill_hidden(tokens)
        losses = gpt_chunked_loss(self.gpt, hidden, labels[:, pos], chunk)  # [1, n]
        if self.cp_group is not None:
            losses = zigzag_gather(losses.contiguous(), self.cp_group, seq_dim=1)
        return losses[0, :length].float().cpu()


def generate_fn(engine: Engine, tokenizer, max_new_tokens: int = 10, *,
                skip_special_tokens: bool = False) -> Callable[..., str]:
    """``generate(prompt_ids, max_new_tokens=<this default>) -> text`` with the engine, as ``eval.hf.hf_generate``
    gives it for a transformers model (the decoded continuation, EOS included unless ``skip_special_tokens``)."""

    def generate(prompt_ids: List[int], max_new_tokens: int = max_new_tokens) -> str:
        new = engine.generate([list(prompt_ids)], max_new_tokens)[0]
        return tokenizer.decode(new, skip_special_tokens=True) if skip_special_tokens else tokenizer.decode(new)

    return generate


def nll_fn(engine: Engine, chunk: int = 4096) -> Callable[[torch.Tensor], torch.Tensor]:
    """``nll(ids) -> Tensor[len(ids) − 1]`` with the engine, as ``eval.perplexity.hf_nll_fn`` gives it."""
    return lambda ids: engine.nll(ids, chunk)
