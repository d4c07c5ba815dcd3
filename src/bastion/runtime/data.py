"""Token datasets: memory-mapped uint16/uint32 files, and a sampler addressed by global sample index.

Layout of a dataset directory:
  tokens.bin  the token stream, little-endian uint16 (vocab <= 65,536) or uint32
  meta.json   {"dtype", "num_tokens", "vocab_size", "tokenizer", "documents"}
  tokenizer.json  the HF tokenizer used (when one was), copied for `bastion export`

Sample i of the run is a window of seq_len + 1 tokens; which window is a seeded permutation of the windows of
one epoch. Global step n trains on samples [n·G, (n+1)·G) for a global batch G, and data-parallel rank r takes
the r-th contiguous slice of those: the sequence of global batches is the same for every dp degree, so a run
can resume on another plan without skipping or repeating a sample. The sampler's whole state is one integer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bastion.errors import DataError
from bastion.outputs import check_output_dir, write_error

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
#: a copy of the HF tokenizer the tokens were made with (`bastion export` ships it with the weights)
TOKENIZER_FILE = "tokenizer.json"
BYTE_VOCAB = 256


# ---- preparing a dataset -----------------------------------------------------------------------------
def _text_files(paths: Iterable[str | Path], out: Path) -> list[Path]:
    """The files to tokenise, never the dataset files in `out`: `prepare DIR --out DIR` (or `--out DIR/tokens`)
    must not read back the tokens it wrote the time before."""
    files: list[Path] = []
    own = out.resolve()
    dataset_files = {TOKENS_FILE, META_FILE, f".{TOKENS_FILE}.tmp", f".{META_FILE}.tmp"}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and not (p.name in dataset_files and p.resolve().parent == own)))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"Text input '{path}' does not exist.",
                            fix="pass text files or directories of text files to `bastion data prepare`.")
    if not files:
        raise DataError("No text files found in the given inputs.", fix="pass at least one non-empty text file.")
    return files


def _tokenize_bytes(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8).astype(np.uint16)


def prepare_dataset(inputs: Iterable[str | Path], out_dir: str | Path, tokenizer_json: str | Path | None = None,
                    max_bytes: int | None = None) -> dict:
    """Tokenise text files into `out_dir` (byte-level, or with a HF `tokenizers` tokenizer.json).

    Nothing is half-written: the tokens and meta go to temporary files first and replace the old dataset's only
    once complete (meta.json last, so a reader never pairs new tokens with old metadata); an interrupted or
    failed run leaves the directory as it was. A dataset of no tokens is refused, not written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a directory.",
                        fix="give a new or existing dataset directory for --out.")
    check_output_dir(out, "the dataset", fix="give --out a directory you can write to.")
    files = _text_files(inputs, out)
    encoder = None
    if tokenizer_json is not None:
        if not Path(tokenizer_json).is_file():
            what = "is a directory" if Path(tokenizer_json).is_dir() else "does not exist"
            raise DataError(f"Tokenizer file '{tokenizer_json}' {what}.",
                            fix="pass a HuggingFace tokenizer.json, or leave --tokenizer out for byte-level tokens.")
        from tokenizers import Tokenizer

        try:
            encoder = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the tokenizers library raises plain Exception for a malformed file
            raise DataError(f"Cannot read '{tokenizer_json}' as a HuggingFace tokenizer: {exc}.",
                            fix="pass the tokenizer.json saved by `tokenizers` / `transformers` (the file that "
                                "holds a \"model\" section), or leave --tokenizer out.") from exc
        vocab_size = encoder.get_vocab_size()
    else:
        vocab_size = BYTE_VOCAB
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out, "the dataset", "give --out a directory you can write to.") from exc
    tmp_tokens = out / f".{TOKENS_FILE}.tmp"
    tmp_meta = out / f".{META_FILE}.tmp"
    tmp_tokenizer = out / f".{TOKENIZER_FILE}.tmp"
    num_tokens, documents, total_bytes = 0, 0, 0
    try:
        with open(tmp_tokens, "wb") as sink:
            for path in files:
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    raise DataError(f"Cannot read text input {path}: {exc.strerror or exc}.",
                                    fix="check its permissions, or leave it out.") from exc
                if max_bytes is not None and total_bytes + len(raw) > max_bytes:
                    raw = raw[: max(0, max_bytes - total_bytes)]
                if not raw:
                    continue
                total_bytes += len(raw)
                if encoder is None:
                    ids = _tokenize_bytes(raw + b"\n\n")
                else:
                    ids = np.asarray(encoder.encode(raw.decode("utf-8", errors="replace")).ids, dtype=np.int64)
                sink.write(ids.astype(dtype).tobytes())
                num_tokens += len(ids)
                documents += 1
                if max_bytes is not None and total_bytes >= max_bytes:
                    break
        if num_tokens == 0:
            raise DataError(f"The inputs hold no text ({len(files)} file(s), all empty): nothing to tokenise.",
                            fix="pass non-empty text files; the dataset in --out was left as it was.")
        meta = {"dtype": np.dtype(dtype).name, "num_tokens": num_tokens, "vocab_size": vocab_size,
                "tokenizer": "byte" if encoder is None else f"hf:{Path(tokenizer_json).name}",
                "documents": documents}
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer_json is not None:
            tmp_tokenizer.write_bytes(Path(tokenizer_json).read_bytes())
        (out / META_FILE).unlink(missing_ok=True)  # between the two renames the directory is "not a dataset"
        tmp_tokens.replace(out / TOKENS_FILE)
        if tokenizer_json is not None:
            tmp_tokenizer.replace(out / TOKENIZER_FILE)
        else:
            (out / TOKENIZER_FILE).unlink(missing_ok=True)
        tmp_meta.replace(out / META_FILE)
    except OSError as exc:
        raise write_error(exc, out, "the dataset", "free space or give --out another directory; the dataset "
                                                   "there was left as it was.") from exc
    finally:
        tmp_tokens.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        tmp_tokenizer.unlink(missing_ok=True)
    return meta


# ---- reading -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenDataset:
    """A memory-mapped token stream cut into windows of seq_len + 1 tokens (input + shifted target)."""

    path: Path
    tokens: np.ndarray
    vocab_size: int
    seq_len: int

    @property
    def num_windows(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def window(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.tokens[start: start + self.seq_len + 1]


#: token ids the pre-start check reads looking for ids outside the vocabulary (a bounded scan: 8 MiB of uint16)
SCAN_TOKENS = 1 << 22


def check_dataset_dir(data_dir: str | Path, model_vocab: int | None = None) -> dict:
    """meta.json of a dataset whose files agree with it, or a DataError saying how to make one. Torch-free and
    bounded, so `train` and every `launch` backend run it before any worker starts: meta.json is one UTF-8 JSON
    object with a known dtype and integer counts; tokens.bin holds exactly num_tokens tokens (not truncated,
    not empty); the first SCAN_TOKENS ids and the last ones are below the vocabulary (the dataset's, and
    `model_vocab` when given)."""
    path = Path(data_dir)
    hint = "bastion data prepare FILE_OR_DIR... --out DIR"
    if not path.is_dir():
        raise DataError(f"Data directory '{path}' does not exist.",
                        fix="prepare a token dataset first, or point --data at one.", hint=hint)
    if not (path / META_FILE).is_file() or not (path / TOKENS_FILE).is_file():
        raise DataError(f"'{path}' is not a bastion token dataset (no {META_FILE} / {TOKENS_FILE}).",
                        fix="point --data at a directory written by `bastion data prepare`.", hint=hint)
    redo = "re-create the dataset with `bastion data prepare`."
    try:
        meta = json.loads((path / META_FILE).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path / META_FILE} is not UTF-8 text.", fix=redo, hint=hint) from exc
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path / META_FILE} is not valid JSON ({getattr(exc, 'msg', exc)}).",
                        fix=redo, hint=hint) from exc
    except OSError as exc:
        raise DataError(f"Cannot read {path / META_FILE}: {exc.strerror or exc}.", fix=redo, hint=hint) from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path / META_FILE} must hold one JSON object, not {type(meta).__name__}.", fix=redo,
                        hint=hint)
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise DataError(f"{path / META_FILE}: dtype must be uint16 or uint32, got {meta.get('dtype')!r}.",
                        fix=redo, hint=hint)
    for key in ("num_tokens", "vocab_size"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 48:
            raise DataError(f"{path / META_FILE}: {key} must be a positive whole number, got {value!r}.",
                            fix=redo, hint=hint)
    itemsize = np.dtype(meta["dtype"]).itemsize
    size = (path / TOKENS_FILE).stat().st_size
    if size != meta["num_tokens"] * itemsize:
        held = f"{size // itemsize:,} tokens" + (f" and {size % itemsize} stray byte(s)" if size % itemsize else "")
        raise DataError(f"{path / TOKENS_FILE} holds {held}, but {META_FILE} says {meta['num_tokens']:,}: the "
                        f"dataset is truncated or its files do not belong together.", fix=redo, hint=hint)
    if model_vocab is not None and meta["vocab_size"] > model_vocab:
        raise DataError(f"The dataset's vocabulary ({meta['vocab_size']} tokens) is larger than the model's "
                        f"({model_vocab}).", fix="use a model whose vocab_size covers the tokenizer, "
                                             "or re-tokenise with a smaller vocabulary.")
    vocab = meta["vocab_size"]
    tokens = np.memmap(path / TOKENS_FILE, dtype=np.dtype(meta["dtype"]), mode="r")
    for start in sorted({0, max(0, len(tokens) - SCAN_TOKENS)}):
        chunk = np.asarray(tokens[start: start + SCAN_TOKENS])
        bad = np.flatnonzero(chunk >= vocab)
        if bad.size:
            at = start + int(bad[0])
            raise DataError(f"{path / TOKENS_FILE}: token {at:,} has id {int(tokens[at])}, outside the vocabulary "
                            f"of {vocab:,} ids ({META_FILE}).",
                            fix="tokenise the text with the model's tokenizer (`bastion data prepare "
                                "--tokenizer`), or use a model whose vocab_size covers it.", hint=hint)
    return meta


def open_dataset(data_dir: str | Path, seq_len: int, model_vocab: int | None = None) -> TokenDataset:
    path = Path(data_dir)
    meta = check_dataset_dir(path, model_vocab)
    tokens = np.memmap(path / TOKENS_FILE, dtype=np.dtype(meta["dtype"]), mode="r")
    dataset = TokenDataset(path=path, tokens=tokens, vocab_size=int(meta["vocab_size"]), seq_len=seq_len)
    if dataset.num_windows < 1:
        raise DataError(f"The dataset in '{path}' has {len(tokens)} tokens, fewer than one sequence of "
                        f"{seq_len + 1}.", fix="prepare more text, or lower --seq-len.")
    return dataset


# ---- sampling ----------------------------------------------------------------------------------------
class GlobalSampler:
    """Maps global sample indices to dataset windows; its state is the number of samples consumed."""

    def __init__(self, dataset: TokenDataset, global_batch: int, seed: int) -> None:
        self.dataset = dataset
        self.global_batch = global_batch
        self.seed = seed
        self.consumed_samples = 0
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    # a seeded permutation per epoch: sample i -> window perm_{i // N}[i % N]
    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_cache = (epoch, rng.permutation(self.dataset.num_windows))
        return self._epoch_cache[1]

    def window_of(self, sample_id: int) -> int:
        epoch, offset = divmod(sample_id, self.dataset.num_windows)
        return int(self._permutation(epoch)[offset])

    def batch_ids(self, step_index: int) -> list[int]:
        """Global sample ids of the step that starts after `step_index` full global batches."""
        start = step_index * self.global_batch
        return list(range(start, start + self.global_batch))

    def next_global_batch(self) -> list[int]:
        """Ids of the next global batch; advances the state."""
        ids = list(range(self.consumed_samples, self.consumed_samples + self.global_batch))
        self.consumed_samples += self.global_batch
        return ids

    def tokens_for(self, sample_ids: list[int]) -> np.ndarray:
        """(len(ids), seq_len + 1) int64 token windows."""
        return np.stack([self.dataset.window(self.window_of(i)).astype(np.int64) for i in sample_ids])

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError(f"The checkpoint's data order was drawn with seed {state['seed']}, this run uses "
                            f"{self.seed}.", fix=f"resume with --seed {state['seed']}.")
        self.consumed_samples = int(state["consumed_samples"])


def dp_slice(sample_ids: list[int], dp_rank: int, dp_degree: int) -> list[int]:
    """The contiguous share of a global batch that one data-parallel rank trains on."""
    per_rank = len(sample_ids) // dp_degree
    return sample_ids[dp_rank * per_rank: (dp_rank + 1) * per_rank]


def iterate_microbatches(rows: np.ndarray, micro_batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), micro_batch):
        yield rows[start: start + micro_batch]
