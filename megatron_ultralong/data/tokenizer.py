"""Tokenizers from local files only: a sentencepiece ``.model``, an HF ``tokenizer.json``, or a directory with one.

    tok = load_tokenizer("llama3/tokenizer.json")      # or "spm.model", or "hf_dir/"
    ids = tok.encode("Hello world")                     # plain text: no BOS/EOS, special-token strings stay text
    tok.sep_id                                          # the document separator used by packing (never BOS/EOS)

How the separator is chosen (``data.separator_id``, then ``SEPARATOR_TOKENS``): docs/data.md (Tokenizer).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from . import DataError

SEPARATOR_TOKENS = ("<|reserved_special_token_0|>", "<|sep|>", "<sep>", "[SEP]")
"""Separator candidates, in order of preference."""
BOS_TOKENS = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
EOS_TOKENS = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
EOT_TOKENS = ("<|eot_id|>", "<|im_end|>")
PAD_TOKENS = ("<|finetune_right_pad_id|>", "<pad>", "[PAD]", "<|pad|>")


class Tokenizer:
    """What the data pipeline needs from a tokenizer. Subclasses implement the ``_``-prefixed primitives."""

    path: str
    """The file the tokenizer was loaded from."""
    vocab_size: int
    """Number of token ids (including added special tokens)."""
    bos_id: Optional[int]
    """Beginning-of-text id, or None."""
    eos_id: Optional[int]
    """End-of-text id, or None."""
    eot_id: Optional[int]
    """End-of-turn id of the chat format (``<|eot_id|>`` for Llama-3), or None."""
    pad_id: Optional[int]
    """Padding id, or None."""
    chat_template: Optional[str]
    """Jinja chat template from ``tokenizer_config.json`` next to the tokenizer, or None."""

    def __init__(self, separator: Union[int, str, None]):
        self._separator_request = separator
        self._sep_id: Optional[int] = None

    # ---------------------------------------------------------------------------------- primitives
    def encode(self, text: str) -> List[int]:
        """Token ids of plain text: no BOS/EOS added, special-token strings inside the text are not parsed."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """``encode`` over many texts (one call: faster for the Rust/C++ backends)."""
        raise NotImplementedError

    def encode_with_specials(self, text: str) -> List[int]:
        """Token ids of rendered chat text: special-token strings (``<|eot_id|>``) become their ids."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids (special tokens kept)."""
        raise NotImplementedError

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of a token string that exists as a whole token (special, control or regular), else None."""
        raise NotImplementedError

    def _is_special(self, token_id: int) -> bool:
        """True for tokens plain text can never produce (HF special / sentencepiece control or user-defined)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- derived
    def _first_present(self, names: Sequence[str]) -> Optional[int]:
        for name in names:
            tid = self.token_to_id(name)
            if tid is not None:
                return tid
        return None

    @property
    def sep_id(self) -> int:
        """The packing separator (see the module docstring for how it is chosen); DataError if there is none."""
        if self._sep_id is None:
            self._sep_id = self._resolve_separator()
        return self._sep_id

    def _resolve_separator(self) -> int:
        req = self._separator_request
        if isinstance(req, str):
            sep = self.token_to_id(req)
            if sep is None:
                raise DataError(f"separator token {req!r} is not in the vocabulary of {self.path}; "
                                f"pick an existing special token or pass its id as data.separator_id")
        elif req is not None:
            sep = int(req)
            if not 0 <= sep < self.vocab_size:
                raise DataError(f"data.separator_id={sep} is outside the vocabulary of {self.path} "
                                f"(0..{self.vocab_size - 1}); use an unused special token id")
        else:
            sep = next((t for t in (self.token_to_id(n) for n in SEPARATOR_TOKENS)
                        if t is not None and self._is_special(t)), None)
            if sep is None:
                raise DataError(f"{self.path}: no dedicated separator token (looked for "
                                f"{', '.join(SEPARATOR_TOKENS)}); "
                                f"set data.separator_id to an unused special/control token id, or train the "
                                f"sentencepiece model with --control_symbols=<|sep|>")
        taken = {"BOS": self.bos_id, "EOS": self.eos_id, "end-of-turn": self.eot_id, "padding": self.pad_id}
        for what, tid in taken.items():
            if tid is not None and sep == tid:
                raise DataError(f"separator id {sep} of {self.path} is the {what} token, which the model already "
                                f"gives a meaning; set data.separator_id to an unused special token id")
        return sep

    def describe(self) -> Dict[str, object]:
        """Ids and path, for reports (the separator only if one resolves)."""
        try:
            sep = self.sep_id
        except DataError:
            sep = None
        return {"path": self.path, "kind": type(self).__name__, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "eot_id": self.eot_id, "pad_id": self.pad_id, "sep_id": sep}


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece ``.model`` file."""

    def __init__(self, path: str, separator: Union[int, str, None] = None):
        super().__init__(separator)
        import sentencepiece

        self.path = path
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with a multi-line C++ message
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: not a sentencepiece model ({first}); give a sentencepiece .model, an HF "
                            f"tokenizer.json, or a directory holding one (a Llama-3 tiktoken 'tokenizer.model' "
                            f"is not supported: use its tokenizer.json)") from None
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else None
        self.eot_id = self._first_present(EOT_TOKENS)
        self.chat_template = None

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        # control symbols are never produced from text, so plain encoding already keeps specials out
        return self.sp.encode(list(texts), out_type=int, num_threads=1)

    def encode_with_specials(self, text: str) -> List[int]:
        return self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> Optional[int]:
        tid = self.sp.piece_to_id(token)
        return tid if tid < self.vocab_size and self.sp.id_to_piece(tid) == token else None

    def _is_special(self, token_id: int) -> bool:
        # user-defined symbols are "normal" pieces to sentencepiece, but they match only their literal string
        return self.sp.is_control(token_id) or self.sp.id_to_piece(token_id) in SEPARATOR_TOKENS


class HFTokenizer(Tokenizer):
    """An HF fast tokenizer file (``tokenizer.json``), optionally with ``tokenizer_config.json`` beside it."""

    def __init__(self, path: str, separator: Union[int, str, None] = None):
        super().__init__(separator)
        import tokenizers

        self.path = path
        try:
            self.tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:
            raise DataError(f"{path}: not a readable HF tokenizer.json ({str(e).splitlines()[0] if str(e) else e}); "
                            f"give a tokenizer.json saved by tokenizers/transformers") from None
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self._special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        config = self._read_config(Path(path).parent / "tokenizer_config.json")
        self.chat_template = config.get("chat_template") if isinstance(config.get("chat_template"), str) else None
        self.bos_id = self._configured(config, "bos_token", BOS_TOKENS)
        self.eos_id = self._configured(config, "eos_token", EOS_TOKENS)
        self.pad_id = self._configured(config, "pad_token", PAD_TOKENS)
        self.eot_id = self._first_present(EOT_TOKENS)
        if self.eos_id is not None and self.eos_id == self.eot_id:
            # instruct configs name <|eot_id|> as eos; the base end-of-text token is still EOS for documents
            self.eos_id = self._first_present(EOS_TOKENS)

    @staticmethod
    def _read_config(path: Path) -> dict:
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable tokenizer_config.json ({e}); fix or remove it") from None
        return data if isinstance(data, dict) else {}

    def _configured(self, config: dict, key: str, fallback: Sequence[str]) -> Optional[int]:
        value = config.get(key)
        if isinstance(value, dict):  # {"content": "<s>", ...} in older configs
            value = value.get("content")
        if isinstance(value, str) and self.token_to_id(value) is not None:
            return self.token_to_id(value)
        return self._first_present(fallback)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        self.tok.encode_special_tokens = True  # document text must not smuggle in <|eot_id|> & co.
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_specials(self, text: str) -> List[int]:
        self.tok.encode_special_tokens = False
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.tok.token_to_id(token)

    def _is_special(self, token_id: int) -> bool:
        return self.tok.id_to_token(token_id) in self._special


def resolve_tokenizer_file(path: str | os.PathLike) -> str:
    """The tokenizer file behind ``path`` (a file, or a directory holding tokenizer.json / a .model)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"tokenizer path {str(path)!r} does not exist; give a sentencepiece .model file, an HF "
                        f"tokenizer.json, or a directory holding one (nothing is downloaded)")
    if p.is_dir():
        for name in ("tokenizer.json",):
            if (p / name).is_file():
                return str(p / name)
        models = sorted(p.glob("*.model"))
        if models:
            return str(models[0])
        raise DataError(f"tokenizer directory {p} holds neither tokenizer.json nor a sentencepiece *.model; "
                        f"point data.tokenizer at the tokenizer file")
    return str(p)


def load_tokenizer(path: str | os.PathLike, separator: Union[int, str, None] = None) -> Tokenizer:
    """Load a local tokenizer (no downloads). ``separator``: id or token string overriding the default choice."""
    file = resolve_tokenizer_file(path)
    if file.endswith(".json"):
        return HFTokenizer(file, separator)
    with open(file, "rb") as f:
        head = f.read(64)
    if head.lstrip().startswith(b"{"):  # a tokenizer.json under another name
        return HFTokenizer(file, separator)
    return SentencePieceTokenizer(file, separator)
