"""The one JSON-lines reader (bastion/jsonl.py) behind metrics.jsonl and the job registry: a line cut short by a
kill is skipped, and reading it stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bastion.jsonl import read_json_lines
from bastion.launch import registry
from bastion.rundir.metrics import read_records


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"b": [2, 3]}\n{"c": 4, "d')
    assert read_json_lines(path) == [{"a": 1}, {"b": [2, 3]}]


def test_a_cut_inside_a_multibyte_character_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    whole = json.dumps({"name": "é"}, ensure_ascii=False).encode()
    path.write_bytes(b'{"a": 1}\n' + whole + b"\n" + whole[:-3])   # the last line ends inside "é"
    assert read_json_lines(path) == [{"a": 1}, {"name": "é"}]


def test_blank_and_broken_lines_anywhere_are_skipped_and_order_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"i": 0}\n\nnot json\n{"i": 1}\r\n7\n{"i": 2}\n')
    assert read_json_lines(path) == [{"i": 0}, {"i": 1}, 7, {"i": 2}]


def test_a_string_holding_a_unicode_line_separator_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_json_lines(path) == [{"text": "a\u2028b"}]


def test_no_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_json_lines(tmp_path / "missing.jsonl") == []
    assert read_json_lines(tmp_path) == []    # a directory is not a file of lines
    assert read_records(tmp_path / "no-run") == []


def test_metrics_reader_uses_it(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"event": "fault"}\n{"step": 2, "lo')
    assert read_records(tmp_path) == [{"step": 1}, {"event": "fault"}]


def test_registry_skips_torn_and_non_object_lines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BASTION_STATE_DIR", str(tmp_path))
    registry.record("slurm", "5", "/runs/a")
    with (tmp_path / "jobs.jsonl").open("a") as out:
        out.write('[1, 2]\n"text"\n')
    registry.record("slurm", "5", "/runs/b")
    with (tmp_path / "jobs.jsonl").open("a") as out:
        out.write('{"engine": "slurm", "job_id": "5", "run_dir": "/runs/c", "ti')   # cut short: not the newest
    assert registry.run_dir_of("slurm", "5") == "/runs/b"


def test_status_side_readers_do_not_import_torch() -> None:
    code = ("import sys; import bastion.jsonl, bastion.launch.registry, bastion.launch.slurm, "
            "bastion.commands.launch_cmds; sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
