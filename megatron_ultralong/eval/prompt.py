"""How a synthetic eval prompt is framed: pieces encoded without special tokens, one BOS, the optional chat template
(the rules and the defaults: docs/eval.md, Prompt format).

    fmt = PromptFormat(bos="auto", chat_template=False)       # --bos auto|always|never, --chat-template
    frame = prompt_frame(tokenizer, fmt)                       # EvalError when the format cannot be honoured
    ids = frame.head + encode_plain(tokenizer, body) + frame.answer(tokenizer, ask, answer_prefix)
    frame.record()                                             # {"bos": ..., "bos_token_id": ..., "chat_template": ...}
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from . import EvalError

BOS_MODES = ("auto", "always", "never")
"""``--bos`` values: the tokenizer's own choice, one BOS in every prompt, none."""
_MARK = "\x00ULTRALONG_CONTENT\x00"
"""Stands for the user turn's content when the chat template is rendered once to find what surrounds it."""


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are framed (the ``--bos`` / ``--chat-template`` options of the eval tools)."""

    bos: str = "auto"
    """'auto': one BOS when the tokenizer's own encode adds one (its post-processor / add_bos_token) or the chat
    template starts with one; 'always': one BOS; 'never': none."""
    chat_template: bool = False
    """Wrap the prompt as one user turn of the tokenizer's chat template, the answer prefix after the generation
    prompt (for instruct models)."""


def _takes_special_flag(tokenizer) -> bool:
    try:
        return "add_special_tokens" in inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):
        return False


def encode_plain(tokenizer, text: str) -> List[int]:
    """Token ids of ``text`` alone: no BOS/EOS from the tokenizer (transformers' ``add_special_tokens=False``;
    tokenizers whose ``encode`` takes no such flag are taken to add none)."""
    if _takes_special_flag(tokenizer):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def bos_token_id(tokenizer) -> Optional[int]:
    """The tokenizer's beginning-of-text id (transformers' ``bos_token_id``, our own tokenizers' ``bos_id``)."""
    for name in ("bos_token_id", "bos_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return None


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer's own ``encode`` puts its BOS first: what the model was trained to see."""
    bos = bos_token_id(tokenizer)
    if bos is None or not _takes_special_flag(tokenizer):
        return False
    ids = tokenizer.encode("a", add_special_tokens=True)
    return bool(ids) and ids[0] == bos


@dataclass
class PromptFrame:
    """What surrounds a prompt's own pieces, resolved for one tokenizer."""

    format: PromptFormat
    """What was asked for."""
    bos_id: Optional[int]
    """The BOS that starts every prompt, or None."""
    head: List[int] = field(default_factory=list)
    """Ids before the first piece: the BOS, then the chat template up to the user turn's content."""
    turn_end: List[int] = field(default_factory=list)
    """Chat template ids between the user turn's content and the answer prefix (end of turn, generation prompt)."""

    def answer(self, tokenizer, ask: str, answer_prefix: str) -> List[int]:
        """Ids of the question and its answer prefix: one piece without a chat template; with one, the prefix
        opens the assistant's turn (RULER's convention)."""
        if not self.format.chat_template:
            return encode_plain(tokenizer, ask + answer_prefix)
        return encode_plain(tokenizer, ask) + self.turn_end + encode_plain(tokenizer, answer_prefix.lstrip())

    def record(self) -> Dict:
        """The prompt settings a result file records."""
        return {"bos": self.format.bos, "bos_token_id": self.bos_id, "chat_template": self.format.chat_template}


def _chat_parts(tokenizer) -> tuple:
    """(ids before the user content, ids after it) of the tokenizer's chat template with the generation prompt."""
    if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
        raise EvalError("--chat-template: the tokenizer has no chat template (tokenizer_config.json / "
                        "chat_template.jinja of the --hf folder); drop --chat-template or export with --hf-assets "
                        "from an instruct model")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False,
                                         add_generation_prompt=True)
    if not isinstance(text, str) or text.count(_MARK) != 1:
        raise EvalError("--chat-template: the tokenizer's chat template does not render one user turn's content "
                        "as given; drop --chat-template")
    before, after = text.split(_MARK)
    return encode_plain(tokenizer, before), encode_plain(tokenizer, after)


def with_bos(ids: List[int], bos_id: Optional[int], strip_id: Optional[int]) -> List[int]:
    """``ids`` with leading ``strip_id`` tokens (the tokenizer's BOS) removed, then ``bos_id`` put first."""
    start = 0
    while strip_id is not None and start < len(ids) and ids[start] == strip_id:
        start += 1
    return ([bos_id] if bos_id is not None else []) + list(ids[start:])


def resolve_bos(tokenizer, mode: str, template_has_bos: bool = False) -> Optional[int]:
    """The BOS id every prompt starts with under ``mode`` (BOS_MODES), or None; EvalError for 'always' without one."""
    if mode not in BOS_MODES:
        raise EvalError(f"--bos {mode!r}: choose from {', '.join(BOS_MODES)}")
    bos = bos_token_id(tokenizer)
    if mode == "never":
        return None
    if mode == "always":
        if bos is None:
            raise EvalError("--bos always: the tokenizer has no BOS token; use --bos auto or never")
        return bos
    return bos if (template_has_bos or adds_bos(tokenizer)) else None


def prompt_frame(tokenizer, fmt: PromptFormat = PromptFormat()) -> PromptFrame:
    """The frame of every prompt under ``fmt``: cheap (two short encodes), call it before loading a model."""
    bos = bos_token_id(tokenizer)
    head, turn_end = [], []
    if fmt.chat_template:
        head, turn_end = _chat_parts(tokenizer)
    bos_id = resolve_bos(tokenizer, fmt.bos, template_has_bos=bool(head) and bos is not None and head[0] == bos)
    return PromptFrame(fmt, bos_id, with_bos(head, bos_id, bos), turn_end)
