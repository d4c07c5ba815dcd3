"""`bastion data prepare`: text, JSON Lines, Parquet and `datasets` inputs, an end-of-document token after every
document, parallel tokenisation in order, a held-out split, and bad inputs refused with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bastion.errors import DataError
from bastion.runtime.data import open_dataset, prepare_dataset
from helpers.cli import run, user_error


def decoded(out: Path) -> list[str]:
    """The byte-level documents of a dataset, split at the end-of-document byte."""
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    assert tokens[-1] == 0
    return bytes(tokens.astype(np.uint8)).decode().split("\0")[:-1]


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    datasets = pytest.importorskip("datasets")
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.jsonl").write_text('{"text": "first json", "id": 1}\n\n{"text": "second json", "id": 2}\n')
    (root / "b.txt").write_text("a plain text file\n")
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"], "n": [1, 2]}), root / "c.parquet")
    datasets.Dataset.from_dict({"text": ["saved one", "saved two"]}).save_to_disk(str(root / "d_saved"))
    return root


def test_every_format_is_read_in_order_and_every_document_ends_with_eod(corpus, tmp_path, capsys):
    inputs = [corpus / "a.jsonl", corpus / "b.txt", corpus / "c.parquet", corpus / "d_saved"]
    code, out, err = run(["data", "prepare", *map(str, inputs), "--out", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    meta = json.loads(out)
    assert meta["documents"] == 7 and meta["eod_token"] == 0 and meta["tokenizer"] == "byte"
    assert decoded(tmp_path / "out") == ["first json", "second json", "a plain text file\n", "parquet one",
                                         "parquet two", "saved one", "saved two"]
    # a directory is read recursively, the `datasets` directory as a dataset (not its .arrow files)
    prepare_dataset([corpus], tmp_path / "whole")
    assert decoded(tmp_path / "whole") == decoded(tmp_path / "out")


def test_worker_processes_keep_the_order(corpus, tmp_path):
    lines = "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(1500))
    (tmp_path / "many.jsonl").write_text(lines)
    one = prepare_dataset([tmp_path / "many.jsonl"], tmp_path / "one")
    two = prepare_dataset([tmp_path / "many.jsonl"], tmp_path / "two", workers=2, progress=True)
    assert one == two
    assert (tmp_path / "one" / "tokens.bin").read_bytes() == (tmp_path / "two" / "tokens.bin").read_bytes()
    assert decoded(tmp_path / "two")[1499] == "document number 1499"


def test_a_text_file_larger_than_a_piece_streams_as_one_document(tmp_path, monkeypatch):
    """A text file is read in pieces (never whole): the tokens equal a whole-file read, it is still one document
    (one end-of-document token), every piece is bounded and cut at a line start, even with multi-byte text."""
    from bastion.runtime import documents

    lines = [f"line {i}: {'é' * (i % 7)} text\n" + ("   indented\n" if i % 5 == 0 else "") for i in range(400)]
    text = "".join(lines) + "a long line without newlines " * 40
    (tmp_path / "big.txt").write_text(text)
    whole = prepare_dataset([tmp_path / "big.txt"], tmp_path / "whole")
    monkeypatch.setattr(documents, "TEXT_PIECE_BYTES", 200)
    pieces = list(documents.iter_documents(documents.Source(tmp_path / "big.txt", "text"), "text"))
    assert len(pieces) > 20 and b"".join(pieces) == text.encode()
    assert all(isinstance(piece, documents.Continued) for piece in pieces[:-1])
    assert not isinstance(pieces[-1], documents.Continued)
    assert max(len(piece) for piece in pieces) <= 4 * 200 + 200
    for piece in pieces[:-1]:
        piece.decode("utf-8")  # never cut inside a character
    streamed = prepare_dataset([tmp_path / "big.txt"], tmp_path / "streamed", workers=2)
    assert streamed["documents"] == whole["documents"] == 1
    assert (tmp_path / "streamed" / "tokens.bin").read_bytes() == (tmp_path / "whole" / "tokens.bin").read_bytes()


def test_a_named_field(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"body": "in body"}\n')
    code, _, err = run(["data", "prepare", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o"),
                        "--jsonl-field", "body", "--no-progress"], capsys)
    assert code == 0, err
    assert decoded(tmp_path / "o") == ["in body"]
    user_error(["data", "prepare", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "p")], capsys, "To fix:",
               "no field 'text'", "its fields: body", "--field body")
    assert not (tmp_path / "p").exists()


def test_eval_fraction_holds_out_the_last_tokens(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefghij" * 100)
    meta = prepare_dataset([tmp_path / "t.txt"], tmp_path / "d", eval_fraction=0.1)
    assert meta["eval_tokens"] == round(1001 * 0.1)
    train = open_dataset(tmp_path / "d", seq_len=8)
    held = open_dataset(tmp_path / "d", seq_len=8, split="eval")
    assert len(train.tokens) + len(held.tokens) == 1001
    assert list(held.tokens[-1:]) == [0]
    without = prepare_dataset([tmp_path / "t.txt"], tmp_path / "e")
    assert "eval_tokens" not in without
    with pytest.raises(DataError, match="no held-out split"):
        open_dataset(tmp_path / "e", seq_len=8, split="eval")


def test_hf_tokenizer_needs_an_end_of_document_token(tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2, "<end>": 3},
                                                unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "t.txt").write_text("hello world")
    argv = ["data", "prepare", str(tmp_path / "t.txt"), "--tokenizer", str(tmp_path / "tokenizer.json")]
    user_error([*argv, "--out", str(tmp_path / "a")], capsys, "To fix:", "has no eos token", "--eod-token")
    assert not (tmp_path / "a").exists()
    code, out, err = run([*argv, "--out", str(tmp_path / "b"), "--eod-token", "<end>", "--json"], capsys)
    assert code == 0 and json.loads(out)["eod_token"] == 3, err
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<end>"}))
    code, out, err = run([*argv, "--out", str(tmp_path / "c"), "--json"], capsys)
    assert code == 0 and json.loads(out)["eod_token"] == 3, err
    assert list(np.fromfile(tmp_path / "c" / "tokens.bin", dtype=np.uint16)) == [0, 1, 3]


def test_a_binary_file_named_is_refused_and_one_in_a_directory_left_out(tmp_path, capsys):
    (tmp_path / "in" / "__pycache__").mkdir(parents=True)
    (tmp_path / "in" / "notes.txt").write_text("text\n")
    (tmp_path / "in" / "__pycache__" / "notes.cpython-311.pyc").write_text("cached\n")  # a cache: never read
    png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(100)
    (tmp_path / "in" / "image.png").write_bytes(png)
    user_error(["data", "prepare", str(tmp_path / "in" / "image.png"), "--out", str(tmp_path / "out")], capsys,
               "To fix:", "image.png' looks like a binary file", "pass only text files")
    assert not (tmp_path / "out").exists()
    # a directory's binary files (an image, bytecode) are not text: left out, the text is tokenised
    code, out, err = run(["data", "prepare", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["documents"] == 1
    assert list(np.fromfile(tmp_path / "out" / "tokens.bin", dtype=np.uint16)) == [*b"text\n", 0]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    user_error(["data", "prepare", str(tmp_path / "latin1.txt"), "--out", str(tmp_path / "out2")], capsys,
               "To fix:", "not UTF-8", "iconv")


def test_a_line_that_is_not_json_keeps_the_old_dataset(tmp_path, capsys):
    (tmp_path / "good.txt").write_text("an existing dataset\n")
    prepare_dataset([tmp_path / "good.txt"], tmp_path / "out")
    before = snapshot(tmp_path / "out")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "cut sh\n')
    user_error(["data", "prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out")], capsys, "To fix:",
               "bad.jsonl:2 is not JSON", "fix or remove that line")
    assert snapshot(tmp_path / "out") == before
    (tmp_path / "list.jsonl").write_text('["not", "an object"]\n')
    user_error(["data", "prepare", str(tmp_path / "list.jsonl"), "--out", str(tmp_path / "new")], capsys, "To fix:",
               "list.jsonl:1 has no field 'text'")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("args", "expected"), [(["--eval-fraction", "1"], "--eval-fraction must be"),
                                                (["--workers", "0"], "--workers must be >= 1")])
def test_bad_options(args, expected, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("text\n")
    user_error(["data", "prepare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"), *args], capsys, "To fix:", expected)
    assert not (tmp_path / "o").exists()
