"""Tokenizers of `bastion data prepare`: built-in bytes, or a Hugging Face tokenizer.json; both end every
document with an end-of-document token.

The byte tokenizer's end of document is byte 0 (NUL): text never holds it (a file with NUL bytes is refused as
binary, runtime/documents.py), so the vocabulary stays 256. A Hugging Face tokenizer's is its eos token: the
`eos_token` of a tokenizer_config.json beside the tokenizer.json, else the one special token named like an end of
text (`</s>`, `<|endoftext|>`, ...); `--eod-token` names it when neither tells; none is refused with guidance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bastion.errors import DataError

BYTE_VOCAB = 256
#: the byte tokenizer's end-of-document token
BYTE_EOD = 0
#: special tokens that mean "end of text" in common tokenizers, most specific first
EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")


@dataclass(frozen=True)
class TokenizerRef:
    """What a worker process needs to rebuild the tokenizer (picklable)."""

    #: tokenizer.json, or None for bytes
    path: str | None
    eod_id: int
    vocab_size: int

    @property
    def name(self) -> str:
        return "byte" if self.path is None else f"hf:{Path(self.path).name}"


def _load_hf(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception for a malformed file
        raise DataError(f"Cannot read '{path}' as a HuggingFace tokenizer: {exc}.",
                        fix="pass the tokenizer.json saved by `tokenizers` / `transformers` (the file that "
                            "holds a \"model\" section), or leave --tokenizer out.") from exc


def _configured_eos(path: Path) -> str | None:
    config = path.with_name("tokenizer_config.json")
    if not config.is_file():
        return None
    try:
        eos = json.loads(config.read_text()).get("eos_token")
    except (ValueError, OSError, AttributeError):
        return None
    if isinstance(eos, dict):  # AddedToken serialised as {"content": ...}
        eos = eos.get("content")
    return eos if isinstance(eos, str) else None


def resolve_tokenizer(tokenizer_json: str | Path | None, eod_token: str | None = None) -> TokenizerRef:
    """The tokenizer and its end-of-document id, checked (before anything is written)."""
    if tokenizer_json is None:
        if eod_token is not None:
            raise DataError("--eod-token names a token of a Hugging Face tokenizer, but no --tokenizer is given.",
                            fix="leave --eod-token out (the byte tokenizer ends documents with byte 0), or pass "
                                "--tokenizer tokenizer.json.")
        return TokenizerRef(None, BYTE_EOD, BYTE_VOCAB)
    path = Path(tokenizer_json)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DataError(f"Tokenizer file '{path}' {what}.",
                        fix="pass a HuggingFace tokenizer.json, or leave --tokenizer out for byte-level tokens.")
    encoder = _load_hf(path)
    vocab = encoder.get_vocab(with_added_tokens=True)
    special = {t.content for t in encoder.get_added_tokens_decoder().values() if t.special}
    if eod_token is not None:
        candidates = [eod_token]
    else:
        configured = _configured_eos(path)
        candidates = [configured] if configured else [name for name in EOS_NAMES if name in special]
    found = [name for name in candidates if name in vocab]
    if not found:
        asked = f"--eod-token {eod_token!r} is not in its vocabulary" if eod_token else "it has no eos token"
        raise DataError(f"'{path}' cannot end documents: {asked}; documents would run into each other.",
                        fix="name its end-of-document token with --eod-token (e.g. --eod-token '</s>'), or put "
                            "the tokenizer_config.json with its eos_token beside the tokenizer.json.",
                        hint=f"its special tokens: {', '.join(sorted(special)) or 'none'}")
    return TokenizerRef(str(path), int(vocab[found[0]]), max(encoder.get_vocab_size(), max(vocab.values()) + 1))


_LOADED: dict[str, object] = {}


def encode(ref: TokenizerRef, document: str | bytes) -> np.ndarray:
    """Token ids of one document followed by the end-of-document token (int64); a `Continued` piece of a document
    (runtime/documents.py) gets no end-of-document token."""
    from bastion.runtime.documents import Continued

    continued = isinstance(document, Continued)
    if ref.path is None:
        raw = document if isinstance(document, bytes) else document.encode("utf-8")
        ids = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
        return ids if continued else np.append(ids, ref.eod_id)
    encoder = _LOADED.get(ref.path)
    if encoder is None:
        encoder = _LOADED[ref.path] = _load_hf(Path(ref.path))
    text = document.decode("utf-8", errors="replace") if isinstance(document, bytes) else document
    ids = np.asarray(encoder.encode(text).ids, dtype=np.int64)  # type: ignore[attr-defined]
    if len(ids) and ids[-1] == ref.eod_id:  # its post-processor ends documents already
        return ids[:-1] if continued else ids
    return ids if continued else np.append(ids, ref.eod_id)
