"""CLI papercuts of issue 18, run as a user would: `simulate --cluster` takes what `--cluster` takes elsewhere,
the packaged examples and case file are reachable by name from any directory, and output piped to a file keeps its
lines whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.cli import bastion, run, user_error


def test_simulate_cluster_preset_or_accel_n_is_a_one_pool_inventory(capsys, tmp_path: Path) -> None:
    code, out, err = run(["simulate", "--cluster", "H100:32", "--synthetic", "4", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["cluster"] == "h100-sxm:32"
    assert result["pools"] == [{"name": "h100-sxm", "accelerator": "h100-sxm", "nodes": 4, "gpus_per_node": 8}]
    code, out, err = run(["simulate", "--cluster", "dgx-h100", "--synthetic", "4", "--json"], capsys)
    assert code == 0, err
    assert [p["accelerator"] for p in json.loads(out)["pools"]] == ["h100-sxm"]
    cluster_file = tmp_path / "two-nodes.toml"   # a cluster file, as `--cluster` takes it elsewhere
    cluster_file.write_text('accelerator = "a100-80g"\nnum_nodes = 2\ngpus_per_node = 8\n')
    code, out, err = run(["simulate", "--cluster", str(cluster_file), "--synthetic", "4", "--json"], capsys)
    assert code == 0, err
    assert [(p["accelerator"], p["nodes"]) for p in json.loads(out)["pools"]] == [("a100-80g", 2)]
    user_error(["simulate", "--cluster", "h100:x", "--synthetic", "4"], capsys, "is not a device count")


def test_packaged_examples_work_from_any_directory(tmp_path: Path) -> None:
    done = bastion("simulate", "--cluster", "example:sim", "--workload", "example:sim", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cluster"] == "example-campus"
    done = bastion("simulate", "--cluster", "example:trace", "--trace", "example:trace", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = bastion("validate", "public", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cases"]
    unknown = bastion("simulate", "--cluster", "example:campus", "--synthetic", "3", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no packaged example of that name" in unknown.stderr and "example:sim, example:trace" in unknown.stderr
    typo = bastion("validate", "publc", cwd=tmp_path)
    assert typo.returncode == 2 and "Did you mean 'public'?" in typo.stderr


def test_the_repository_examples_are_the_packaged_ones() -> None:
    from bastion.examples import EXAMPLES, EXAMPLES_DIR

    root = Path(__file__).parents[2]
    assert (root / "examples").resolve() == EXAMPLES_DIR.resolve()
    assert all((EXAMPLES_DIR / file).is_file() for files in EXAMPLES.values() for file in files.values())


def test_piped_output_keeps_values_on_one_line(tmp_path: Path) -> None:
    """Through a pipe, without COLUMNS (what `bastion ... > file` gets): rich would wrap at 80 columns."""
    import bastion as package

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "BASTION_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(package.__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "bastion", "simulate", "--cluster", "h100:64", "--synthetic", "6",
                           "--jobs", "3"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = [line for line in done.stdout.splitlines() if line.startswith("policy backfill")]
    assert len(summary) == 1 and summary[0].endswith(" MWh"), done.stdout   # one line, however long
    assert max(map(len, done.stdout.splitlines())) > 80
    rows = [line for line in done.stdout.splitlines() if "dp" in line and "│" in line]
    assert len(rows) == 3, done.stdout   # each job one table row: no cell wrapped onto a second line
