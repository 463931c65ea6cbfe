"""Tokenizers from local files only: a sentencepiece ``.model``, an HF ``tokenizer.json``, or a directory with one.

    tok = load_tokenizer("llama3/tokenizer.json")      # or "spm.model", or "hf_dir/"
    ids = tok.encode("Hello world")                     # plain text: no BOS/EOS, special-token strings stay text
    sep = resolve_separator(tok, "<s>", None)           # the packing separator: sep.ids == (45147, 29) for Llama-3
    tok.sep_id                                          # the dedicated one-token separator (never BOS/EOS)

How the separator is chosen (``data.separator`` text, ``data.separator_id``, ``SEPARATOR_TOKENS``): docs/data.md
(Tokenizer and the separator).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from . import DataError

DEFAULT_SEPARATOR = "<s>"
"""The paper's document separator: the literal text ``<s>``, encoded as plain text (the default data.separator)."""
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

    def piece(self, token_id: int) -> str:
        """The vocabulary string of one id (for reports)."""
        raise NotImplementedError

    def encode_separator(self, text: str) -> List[int]:
        """Ids of separator text as it reads between two documents: plain-text encoding (no BOS/EOS; ``<s>`` stays
        text even where it names BOS). DataError if it is empty or yields a token that already has a meaning."""
        ids = self.encode(text) if text else []
        if not ids:
            raise DataError(f"data.separator={text!r} encodes to no tokens with {self.path}; give a non-empty text "
                            f"such as '<s>', or a token id as data.separator_id")
        self._check_free(ids, f"data.separator={text!r}")
        return ids

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
            return self.checked_separator_id(int(req))
        else:
            sep = next((t for t in (self.token_to_id(n) for n in SEPARATOR_TOKENS)
                        if t is not None and self._is_special(t)), None)
            if sep is None:
                raise DataError(f"{self.path}: no dedicated separator token (looked for "
                                f"{', '.join(SEPARATOR_TOKENS)}); "
                                f"set data.separator_id to an unused special/control token id, or train the "
                                f"sentencepiece model with --control_symbols=<|sep|>")
        self._check_free([sep], f"separator id {sep}")
        return sep

    def checked_separator_id(self, sep: int) -> int:
        """``sep`` (data.separator_id) if it is inside the vocabulary and has no meaning yet, else DataError."""
        if not 0 <= sep < self.vocab_size:
            raise DataError(f"data.separator_id={sep} is outside the vocabulary of {self.path} "
                            f"(0..{self.vocab_size - 1}); use an unused special token id")
        self._check_free([sep], f"separator id {sep}")
        return sep

    def _check_free(self, ids: Sequence[int], what: str) -> None:
        """DataError if one of ``ids`` is BOS/EOS/end-of-turn/padding, which the model already gives a meaning."""
        taken = {"BOS": self.bos_id, "EOS": self.eos_id, "end-of-turn": self.eot_id, "padding": self.pad_id}
        for name, tid in taken.items():
            if tid is not None and tid in ids:
                raise DataError(f"{what} of {self.path} includes the {name} token (id {tid}), which the model "
                                f"already gives a meaning; use another data.separator text or an unused special "
                                f"token id as data.separator_id")

    def describe(self) -> Dict[str, object]:
        """Ids and path, for reports (the separator only if one resolves)."""
        try:
            sep = self.sep_id
        except DataError:
            sep = None
        try:  # the default data.separator as this tokenizer encodes it (the trainer checks a dataset against it)
            text_sep = resolve_separator(self, DEFAULT_SEPARATOR, None).as_dict()
        except DataError:
            text_sep = None
        return {"path": self.path, "kind": type(self).__name__, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "eot_id": self.eot_id, "pad_id": self.pad_id, "sep_id": sep,
                "separator": text_sep}


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

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def encode_separator(self, text: str) -> List[int]:
        ids = super().encode_separator(text)
        # standalone text gets sentencepiece's dummy-prefix space: between documents "<s>" has none before it
        if len(ids) > 1 and self.sp.id_to_piece(ids[0]) == "\u2581" and not text[:1].isspace():
            ids = ids[1:]
        return ids

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

    def piece(self, token_id: int) -> str:
        return self.tok.id_to_token(int(token_id))

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


@dataclass(frozen=True)
class Separator:
    """The token sequence packing puts between documents, and where it came from."""

    ids: Tuple[int, ...]
    """Token ids, in order (one or more)."""
    pieces: Tuple[str, ...]
    """Their vocabulary strings (ids as text when there is no tokenizer)."""
    origin: str
    """How it was chosen: "data.separator='<s>'", 'data.separator_id' or "the tokenizer's dedicated separator"."""

    def as_dict(self) -> Dict[str, object]:
        return {"origin": self.origin, "ids": list(self.ids), "pieces": list(self.pieces)}

    def describe(self) -> str:
        """One line for logs and reports: origin, ids and pieces."""
        return f"{self.origin}: ids {list(self.ids)} (pieces {', '.join(map(repr, self.pieces))})"


def resolve_separator(tok: Optional[Tokenizer], text: Optional[str], token_id: Optional[int]) -> Separator:
    """The packing separator: ``token_id`` (data.separator_id) when set, as one token; else ``text``
    (data.separator) encoded as plain text by ``tok``; else the tokenizer's dedicated separator token.
    DataError/ConfigError (one line) when it cannot be built."""
    from ..config import ConfigError

    if token_id is not None:
        ids = [int(token_id) if tok is None else tok.checked_separator_id(int(token_id))]
        origin = "data.separator_id"
    elif tok is None:
        what = (f"data.separator={text!r}, a text the model's tokenizer encodes" if text is not None
                else "the tokenizer's dedicated separator token (data.separator=null)")
        raise ConfigError(f"train.mode=cpt joins documents with {what}: set data.tokenizer, or give one token id "
                          f"as data.separator_id")
    elif text is not None:
        ids, origin = tok.encode_separator(text), f"data.separator={text!r}"
    else:
        ids, origin = [tok.sep_id], "the tokenizer's dedicated separator"
    pieces = tuple(tok.piece(i) if tok is not None else str(i) for i in ids)
    return Separator(tuple(int(i) for i in ids), pieces, origin)
