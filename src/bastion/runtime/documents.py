"""The documents of a corpus, read from local files: plain text, JSON Lines, Parquet, Hugging Face `datasets`.

`find_sources(inputs)` checks every input before anything is written (it exists, its format is known, it is not a
binary file) and says how each is read; `iter_documents(source, field)` then yields its documents one at a time,
so a corpus larger than memory streams through. Never a network download: a `datasets` directory is read with
`datasets.load_from_disk` only.

Formats, told by name: `*.jsonl` / `*.ndjson` (one JSON object a line, the text under `field`), `*.parquet`
(the `field` column), a directory holding `dataset_info.json` or `dataset_dict.json` (`save_to_disk`: its
`field` column; of a DatasetDict, the "train" split), anything else a UTF-8 text file (one document). A
directory that is none of these is read recursively.

A text file larger than TEXT_PIECE_BYTES is still one document but is read in pieces: each piece but the last is a
`Continued` (no end-of-document token after it), cut just after a newline that is followed by a non-space byte.
Byte-level tokenisation is unchanged by the cuts; a BPE tokenizer whose pre-tokenizer splits at such a newline (the
GPT-2 / Llama 3 regexes do) is unchanged too; one that merges across newlines (SentencePiece without
pre-tokenisation) may tokenise the few bytes at a cut differently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import DataError

#: how much of a file is looked at to tell text from binary
SNIFF_BYTES = 8192
#: a text file is read in pieces of about this size (a corpus of one huge file must not be read whole)
TEXT_PIECE_BYTES = 16 << 20
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIX = ".parquet"
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json")


class Continued(bytes):
    """A piece of a text document that the next piece continues: tokenised without an end-of-document token."""


def _text_pieces(path: Path, piece_bytes: int) -> Iterator[bytes]:
    """The file's bytes in pieces of about `piece_bytes`, cut after a newline followed by a non-space byte (or
    wherever the piece ends when it has no such newline); every piece but the last is `Continued`."""
    with open(path, "rb") as handle:
        carry = b""
        while True:
            block = handle.read(piece_bytes)
            data = carry + block
            if not block:
                if data:
                    yield bytes(data)
                return
            cut = _cut_point(data)
            if cut <= 0:  # no clean cut in this piece: keep reading (bounded by the next clean newline)
                if len(data) < 4 * piece_bytes:
                    carry = data
                    continue
                cut = len(data) - 1
                while cut > 0 and data[cut] & 0xC0 == 0x80:  # not inside a UTF-8 character
                    cut -= 1
            yield Continued(data[:cut])
            carry = data[cut:]


def _cut_point(data: bytes) -> int:
    """Just after the last newline of `data` that a non-space byte follows (0: none); never the very end, whose
    next byte is not read yet."""
    end = len(data) - 1
    while (at := data.rfind(b"\n", 0, end)) >= 0:
        if not data[at + 1: at + 2].isspace():
            return at + 1
        end = at
    return 0


@dataclass(frozen=True)
class Source:
    """One input: `kind` is text, jsonl, parquet or datasets."""

    path: Path
    kind: str


def _is_datasets_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in DATASETS_MARKERS)


def _kind_of_file(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == PARQUET_SUFFIX:
        return "parquet"
    return "text"


def binary_reason(path: Path) -> str | None:
    """Why `path` is not text (a NUL byte, or bytes that are not UTF-8, in its first 8 KiB), or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"Cannot read input {path}: {exc.strerror or exc}.",
                        fix="check its permissions, or leave it out.") from exc
    if b"\0" in head:
        return "it holds NUL bytes"
    try:
        # a multi-byte character cut by the sniff's end is not an error
        head.decode("utf-8") if len(head) < SNIFF_BYTES else head[:-4].decode("utf-8")
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    return None


def check_text_file(path: Path) -> None:
    """Refuse a file named as an input that is not text (`binary_reason`), or that cannot be read."""
    reason = binary_reason(path)
    if reason:
        raise DataError(f"'{path}' looks like a binary file ({reason}); it would be tokenised as text.",
                        fix="pass only text files (e.g. DIR/*.txt), JSON Lines (*.jsonl), Parquet (*.parquet) or a "
                            "Hugging Face `datasets` directory; convert other encodings to UTF-8 first "
                            "(iconv -t utf-8).")


#: directories a directory walk never enters: bytecode caches and hidden directories (.git, .venv, …)
def _skipped_dir(path: Path, root: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in path.relative_to(root).parts[:-1])


def find_sources(inputs: Iterable[str | Path], skip: Iterable[Path] = ()) -> list[Source]:
    """Every input file or dataset, checked (exists, not binary); directories are read recursively in name order.
    A file named as an input must be text; inside a directory, binary files (an image, a .pyc) are left out, as
    are bytecode caches and hidden directories. Files in `skip` (the output dataset's own files) are never inputs."""
    skipped = {Path(p).resolve() for p in skip}
    sources: list[Source] = []
    for raw in inputs:
        path = Path(raw)
        if _is_datasets_dir(path):
            sources.append(Source(path, "datasets"))
        elif path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file() and p.resolve() not in skipped
                                and not _skipped_dir(p, path)):
                if any(_is_datasets_dir(parent) for parent in found.parents):
                    continue
                kind = _kind_of_file(found)
                if kind in ("text", "jsonl") and binary_reason(found):
                    continue
                sources.append(Source(found, kind))
            sources.extend(Source(d, "datasets") for d in sorted(path.rglob("*")) if _is_datasets_dir(d))
        elif path.is_file():
            sources.append(Source(path, _kind_of_file(path)))
        else:
            raise DataError(f"Input '{path}' does not exist.",
                            fix="pass text, JSON Lines or Parquet files, directories of them, or a Hugging Face "
                                "`datasets` directory (save_to_disk) to `bastion data prepare`.")
    if not sources:
        raise DataError("No input files found in the given inputs.", fix="pass at least one non-empty text file.")
    for source in sources:
        if source.kind in ("text", "jsonl"):
            check_text_file(source.path)
    return sources


def _text_field(value: object, field: str, where: str) -> str:
    if not isinstance(value, dict) or field not in value:
        keys = sorted(value) if isinstance(value, dict) else []
        raise DataError(f"{where} has no field '{field}'" + (f" (its fields: {', '.join(keys)})." if keys else "."),
                        fix=f"name the field that holds the text with --field (e.g. --field {keys[0] if keys else 'text'}).")
    text = value[field]
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{field}' holds {type(text).__name__}, not text.",
                        fix="name a field whose values are strings with --field.")
    return text


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number} is not JSON ({exc.msg}, column {exc.colno}).",
                                fix="fix or remove that line: JSON Lines hold one JSON object per line; nothing "
                                    "was written.") from None
            yield _text_field(value, field, f"{path}:{number}")


def _column_check(names: list[str], field: str, where: str) -> None:
    if field not in names:
        raise DataError(f"{where} has no column '{field}' (its columns: {', '.join(names)}).",
                        fix=f"name the column that holds the text with --field (e.g. --field {names[0]})."
                        if names else "pass a table with a text column.")


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency of the interop extra
        raise DataError("Reading Parquet needs pyarrow.", fix="pip install pyarrow (or bastion[interop]).") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid (and others) for a file that is not Parquet
        raise DataError(f"Cannot read '{path}' as Parquet: {exc}.", fix="pass a Parquet file.") from None
    _column_check(table.schema_arrow.names, field, str(path))
    for batch in table.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield str(text)


def _datasets_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DataError("Reading a `datasets` directory needs the datasets package.",
                        fix="pip install datasets (or bastion[interop]).") from None
    loaded = datasets.load_from_disk(str(path))  # local files only: never a hub download
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"'{path}' is a DatasetDict without a 'train' split (splits: {', '.join(loaded)}).",
                            fix=f"pass the split's own directory, e.g. {path / next(iter(loaded))}.")
        loaded = loaded["train"]
    _column_check(list(loaded.column_names), field, str(path))
    for text in loaded.select_columns([field]).iter(batch_size=1024):
        yield from (str(t) for t in text[field] if t is not None)


def iter_documents(source: Source, field: str) -> Iterator[str | bytes]:
    """The documents of one source, in order: a text file is one document (its bytes, as read)."""
    if source.kind == "text":
        yield from _text_pieces(source.path, TEXT_PIECE_BYTES)
    elif source.kind == "jsonl":
        yield from _jsonl_documents(source.path, field)
    elif source.kind == "parquet":
        yield from _parquet_documents(source.path, field)
    else:
        yield from _datasets_documents(source.path, field)
