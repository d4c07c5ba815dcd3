"""Token datasets: memory-mapped uint16/uint32 files, and a sampler addressed by global sample index.

Layout of a dataset directory:
  tokens.bin  the token stream, little-endian uint16 (vocab <= 65,536) or uint32
  meta.json   {"dtype", "num_tokens", "vocab_size", "tokenizer", "documents", "eod_token", "eval_tokens"?}
              (the last `eval_tokens` tokens are the held-out split: never trained on, evaluated with --eval-every)
  tokenizer.json  the HF tokenizer used (when one was), copied for `bastion export`

Sample i of the run is a window of seq_len + 1 tokens; which window is a seeded permutation of the windows of
one epoch (of a mixture, `--data a=0.7,b=0.3`: a seeded interleaving of the datasets, see GlobalSampler).
Global step n trains on samples [n·G, (n+1)·G) for a global batch G, and data-parallel rank r takes
the r-th contiguous slice of those: the sequence of global batches is the same for every dp degree, so a run
can resume on another plan without skipping or repeating a sample. The sampler's whole state is one integer.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bastion.errors import DataError
from bastion.outputs import check_output_dir, write_error
from bastion.runtime.documents import Continued, Source, find_sources, iter_documents
from bastion.runtime.text_tokenizer import TokenizerRef, encode, resolve_tokenizer

TOKENS_FILE = "tokens.bin"
META_FILE = "meta.json"
#: a copy of the HF tokenizer the tokens were made with (`bastion export` ships it with the weights)
TOKENIZER_FILE = "tokenizer.json"


# ---- preparing a dataset -----------------------------------------------------------------------------
#: documents handed to the worker processes at a time, and the most text a batch holds per worker (bounds memory:
#: the corpus streams through)
DOCUMENTS_PER_BATCH = 512
BATCH_BYTES = 64 << 20


def _encode_batch(args: tuple[TokenizerRef, list[str | bytes]]) -> list[np.ndarray]:
    ref, documents = args
    return [encode(ref, document) for document in documents]


def _batches(sources: list[Source], field: str, max_bytes: int | None, size: int,
             batch_bytes: int = BATCH_BYTES) -> Iterator[list[str | bytes]]:
    """Documents in order, `size` (or `batch_bytes` of text) at a time, cut at `max_bytes` of text."""
    batch: list[str | bytes] = []
    total = in_batch = 0
    for source in sources:
        for document in iter_documents(source, field):
            length = len(document) if isinstance(document, bytes) else len(document.encode("utf-8"))
            if max_bytes is not None and total + length > max_bytes:
                keep = max(0, max_bytes - total)
                document = document[:keep] if isinstance(document, bytes) else \
                    document.encode("utf-8")[:keep].decode("utf-8", errors="ignore")
                length = keep
            if length == 0:
                continue
            total += length
            in_batch += length
            batch.append(document)
            if len(batch) >= size or in_batch >= batch_bytes:
                yield batch
                batch, in_batch = [], 0
            if max_bytes is not None and total >= max_bytes:
                if batch:
                    yield batch
                return
    if batch:
        yield batch


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("[bold]tokenise"), BarColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=Console(stderr=True),
                        transient=True)
    progress.start()
    progress.add_task("tokenise", total=None, info="")
    return progress


def prepare_dataset(inputs: Iterable[str | Path], out_dir: str | Path, tokenizer_json: str | Path | None = None,
                    max_bytes: int | None = None, field: str = "text", eod_token: str | None = None,
                    workers: int = 1, eval_fraction: float = 0.0, progress: bool = False) -> dict:
    """Tokenise documents (runtime/documents.py: text, JSON Lines, Parquet, `datasets`) into `out_dir`.

    Every document ends with the tokenizer's end-of-document token (runtime/text_tokenizer.py). `workers` > 1
    tokenises in that many processes, in order. The last `eval_fraction` of the tokens is held out for evaluation
    (meta "eval_tokens"; `open_dataset(..., split="eval")`). Nothing is half-written: every input is checked
    first, the tokens and meta go to temporary files and replace the old dataset's only once complete (meta.json
    last, so a reader never pairs new tokens with old metadata); a failed run leaves the directory as it was
    (and does not create it). A dataset of no tokens is refused, not written.
    """
    if not 0 <= eval_fraction < 1:
        raise DataError(f"--eval-fraction must be from 0 to below 1, got {eval_fraction:g}.",
                        fix="hold out a small share of the tokens, e.g. --eval-fraction 0.01.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a directory.",
                        fix="give a new or existing dataset directory for --out.")
    check_output_dir(out, "the dataset", fix="give --out a directory you can write to.")
    # `prepare DIR --out DIR` (or --out DIR/tokens) must not read back the dataset it wrote the time before
    own_files = {name for base in (TOKENS_FILE, META_FILE, TOKENIZER_FILE) for name in (base, f".{base}.tmp")}
    sources = find_sources(inputs, skip=[out / name for name in own_files])
    ref = resolve_tokenizer(tokenizer_json, eod_token)
    dtype = np.uint16 if ref.vocab_size <= 1 << 16 else np.uint32
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, out, "the dataset", "give --out a directory you can write to.") from exc
    tmp_tokens = out / f".{TOKENS_FILE}.tmp"
    tmp_meta = out / f".{META_FILE}.tmp"
    tmp_tokenizer = out / f".{TOKENIZER_FILE}.tmp"
    num_tokens, documents = 0, 0
    bar = _progress_bar(progress)
    pool = None
    done = False
    try:
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.get_context("spawn").Pool(workers)
        batches = ((ref, batch) for batch in _batches(sources, field, max_bytes, DOCUMENTS_PER_BATCH * workers,
                                                      BATCH_BYTES * workers))
        with open(tmp_tokens, "wb") as sink:
            for args in batches:
                if pool is None:
                    encoded = _encode_batch(args)
                else:  # split across the processes; `map` keeps the order
                    docs = args[1]
                    share = -(-len(docs) // workers)
                    parts = pool.map(_encode_batch, [(ref, docs[i: i + share]) for i in range(0, len(docs), share)])
                    encoded = [ids for part in parts for ids in part]
                for ids in encoded:
                    sink.write(ids.astype(dtype).tobytes())
                    num_tokens += len(ids)
                documents += sum(not isinstance(d, Continued) for d in args[1])  # pieces of one are not counted
                if bar is not None:
                    bar.update(bar.task_ids[0], info=f"{documents:,} documents, {num_tokens:,} tokens")
        if num_tokens == documents:  # only end-of-document tokens
            raise DataError(f"The inputs hold no text ({len(sources)} input(s), all empty): nothing to tokenise.",
                            fix="pass non-empty inputs; the dataset in --out was left as it was.")
        eval_tokens = int(round(num_tokens * eval_fraction))
        meta = {"dtype": np.dtype(dtype).name, "num_tokens": num_tokens, "vocab_size": ref.vocab_size,
                "tokenizer": ref.name, "documents": documents, "eod_token": ref.eod_id}
        if eval_tokens:
            meta["eval_tokens"] = eval_tokens
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer_json is not None:
            tmp_tokenizer.write_bytes(Path(tokenizer_json).read_bytes())
        (out / META_FILE).unlink(missing_ok=True)  # between the two renames the directory is "not a dataset"
        tmp_tokens.replace(out / TOKENS_FILE)
        if tokenizer_json is not None:
            tmp_tokenizer.replace(out / TOKENIZER_FILE)
        tmp_meta.replace(out / META_FILE)
        done = True
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.stop()
        tmp_tokens.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        tmp_tokenizer.unlink(missing_ok=True)
        if created and not done:
            shutil.rmtree(out, ignore_errors=True)
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


def open_dataset(data_dir: str | Path, seq_len: int, model_vocab: int | None = None,
                 split: str = "train") -> TokenDataset:
    """The training windows of a dataset, or (`split="eval"`) those of its held-out last `eval_tokens`."""
    path = Path(data_dir)
    meta = check_dataset_dir(path, model_vocab)
    tokens = np.memmap(path / TOKENS_FILE, dtype=np.dtype(meta["dtype"]), mode="r")
    held_out = int(meta.get("eval_tokens", 0))
    if split == "eval" and not held_out:
        raise DataError(f"The dataset in '{path}' has no held-out split to evaluate on.",
                        fix="prepare it again with `bastion data prepare ... --eval-fraction 0.01`, or leave "
                            "--eval-every out.")
    part = tokens[len(tokens) - held_out:] if split == "eval" else tokens[: len(tokens) - held_out]
    dataset = TokenDataset(path=path, tokens=part, vocab_size=int(meta["vocab_size"]), seq_len=seq_len)
    if dataset.num_windows < 1:
        which = "held-out split" if split == "eval" else "training split"
        raise DataError(f"The {which} of the dataset in '{path}' has {len(part)} tokens, fewer than one sequence "
                        f"of {seq_len + 1}.", fix="prepare more text (or a larger --eval-fraction), or lower "
                                                  "--seq-len.")
    return dataset


# ---- mixtures --------------------------------------------------------------------------------------------
def parse_data_mixture(text: str) -> list[tuple[str, float]]:
    """`DIR` or `DIR_A=0.7,DIR_B=0.3` as (directory, weight) pairs, weights normalised to sum to 1."""
    if "=" not in text:
        return [(text, 1.0)]
    pairs: list[tuple[str, float]] = []
    for item in text.split(","):
        name, sep, raw = item.strip().rpartition("=")
        try:
            weight = float(raw)
        except ValueError:
            weight = math.nan
        if not sep or not name or not (math.isfinite(weight) and weight > 0):
            raise DataError(f"--data {text!r}: '{item.strip()}' is not DIR=WEIGHT with a positive weight.",
                            fix="give each prepared dataset a weight above 0, e.g. --data web=0.7,code=0.3 "
                                "(weights are normalised; leave a dataset out instead of weighting it 0).")
        if any(name == seen for seen, _ in pairs):
            raise DataError(f"--data {text!r} names '{name}' twice.", fix="give each dataset once.")
        pairs.append((name, weight))
    total = sum(w for _, w in pairs)
    mixture = [(name, w / total) for name, w in pairs]
    small = [name for name, w in mixture if round(w * MIX_BLOCK) < 1]
    if small:
        raise DataError(f"--data {text!r}: the weight of '{small[0]}' is below 1/{MIX_BLOCK} of the total, too "
                        f"small to draw from.", fix=f"give it at least 1/{MIX_BLOCK} of the total weight.")
    return mixture


def absolute_data(data: str) -> str:
    """`--data` with every directory made absolute (a launched job may start elsewhere)."""
    mixture = parse_data_mixture(data)
    if len(mixture) == 1 and "=" not in data:
        return str(Path(data).absolute())
    return ",".join(f"{Path(name).absolute()}={weight!r}" for name, weight in mixture)


def open_datasets(data: str, seq_len: int, model_vocab: int | None = None,
                  split: str = "train") -> tuple[list[TokenDataset], list[float]]:
    """The datasets of `--data` (one, or a mixture) and their weights."""
    mixture = parse_data_mixture(data)
    return ([open_dataset(name, seq_len, model_vocab, split) for name, _ in mixture], [w for _, w in mixture])


# ---- sampling ----------------------------------------------------------------------------------------
#: a mixture draws its datasets in blocks of this many samples: each block holds every dataset's share (its
#: weight × the block, rounded), in a seeded order, so sample i's dataset is known without counting from 0
MIX_BLOCK = 1024


def _block_counts(weights: Sequence[float]) -> np.ndarray:
    """Samples of each dataset per block: largest remainders of weight × MIX_BLOCK."""
    exact = np.asarray(weights, dtype=np.float64) * MIX_BLOCK
    counts = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - counts), kind="stable")[: MIX_BLOCK - int(counts.sum())]:
        counts[index] += 1
    return counts


class GlobalSampler:
    """Maps global sample indices to dataset windows; its state is the number of samples consumed.

    One dataset: sample i is window perm_{i // N}[i % N] of a seeded permutation per epoch. A mixture: sample i
    is the k-th sample of dataset d, by a deterministic interleaving in blocks of MIX_BLOCK (`_block_counts`), and
    the k-th sample of a dataset is drawn as above with the dataset's own permutations. Either way a sample's
    window depends only on (seed, i, the datasets and weights), never on the plan.
    """

    def __init__(self, dataset: TokenDataset | Sequence[TokenDataset], global_batch: int, seed: int,
                 weights: Sequence[float] | None = None) -> None:
        self.datasets = [dataset] if isinstance(dataset, TokenDataset) else list(dataset)
        self.dataset = self.datasets[0]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.datasets)
        self.global_batch = global_batch
        self.seed = seed
        self.consumed_samples = 0
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}
        self._counts = _block_counts(self.weights)
        self._block_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    # a seeded permutation per epoch (and dataset of a mixture)
    def _permutation(self, dataset: int, epoch: int) -> np.ndarray:
        key = (dataset, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 2 * len(self.datasets):
                self._perm_cache.clear()
            entropy = [self.seed, epoch] if len(self.datasets) == 1 else [self.seed, epoch, dataset + 1]
            self._perm_cache[key] = np.random.default_rng(entropy).permutation(self.datasets[dataset].num_windows)
        return self._perm_cache[key]

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Dataset of each position of a mixture block, and its sample index within that dataset."""
        if self._block_cache is None or self._block_cache[0] != block:
            order = np.random.default_rng([self.seed, block, len(self.datasets)]).permutation(
                np.repeat(np.arange(len(self.datasets)), self._counts))
            local = np.empty(MIX_BLOCK, dtype=np.int64)
            for index, count in enumerate(self._counts):
                local[order == index] = block * count + np.arange(count)
            self._block_cache = (block, order, local)
        return self._block_cache[1], self._block_cache[2]

    def locate(self, sample_id: int) -> tuple[int, int]:
        """(dataset index, window) of a global sample."""
        if len(self.datasets) == 1:
            dataset, k = 0, sample_id
        else:
            order, local = self._block(sample_id // MIX_BLOCK)
            dataset, k = int(order[sample_id % MIX_BLOCK]), int(local[sample_id % MIX_BLOCK])
        epoch, offset = divmod(k, self.datasets[dataset].num_windows)
        return dataset, int(self._permutation(dataset, epoch)[offset])

    def window_of(self, sample_id: int) -> int:
        return self.locate(sample_id)[1]

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
        rows = []
        for sample_id in sample_ids:
            dataset, window = self.locate(sample_id)
            rows.append(self.datasets[dataset].window(window).astype(np.int64))
        return np.stack(rows)

    def _order_inputs(self) -> list[list[int]]:
        """What the sample order depends on besides the seed: each dataset's windows and its share of a mixture
        block."""
        return [[int(d.num_windows), int(c)] for d, c in zip(self.datasets, self._counts, strict=True)]

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "seed": self.seed, "order_inputs": self._order_inputs()}

    def load_state_dict(self, state: dict) -> None:
        self.check_resumable(state)
        self.consumed_samples = int(state["consumed_samples"])

    def check_resumable(self, state: dict) -> None:
        """Raise DataError when `state` (a checkpoint's data position) was drawn from another order than this
        sampler's: another seed, other datasets or other mixture weights."""
        if int(state["seed"]) != self.seed:
            raise DataError(f"The checkpoint's data order was drawn with seed {state['seed']}, this run uses "
                            f"{self.seed}.", fix=f"resume with --seed {state['seed']}.")
        saved = state.get("order_inputs")  # absent in checkpoints written before it was recorded
        if saved is not None and [list(map(int, item)) for item in saved] != self._order_inputs():
            raise DataError(self._order_change(saved),
                            fix="resume with the --data (datasets and mixture weights) the run started with, or "
                                "start a new run directory to train on different data.")

    def _order_change(self, saved: list) -> str:
        before = ", ".join(f"{w:,} samples × {c}/{MIX_BLOCK}" for w, c in saved)
        now = ", ".join(f"{w:,} samples × {c}/{MIX_BLOCK}" for w, c in self._order_inputs())
        what = "mixture weights or datasets" if len(saved) > 1 or len(self.datasets) > 1 else "dataset"
        return (f"The checkpoint's data order was drawn from other data than this run's --data ({what} changed: "
                f"then {before}; now {now}); resuming would repeat some samples and skip others.")


def dp_slice(sample_ids: list[int], dp_rank: int, dp_degree: int) -> list[int]:
    """The contiguous share of a global batch that one data-parallel rank trains on."""
    per_rank = len(sample_ids) // dp_degree
    return sample_ids[dp_rank * per_rank: (dp_rank + 1) * per_rank]


def iterate_microbatches(rows: np.ndarray, micro_batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(rows), micro_batch):
        yield rows[start: start + micro_batch]
