"""`bastion calibrate --quick` on this machine (2 gloo processes): the profile it writes reads back with every
measurement's repeats, the tensor-parallel collective counts of the runtime, FSDP2's per-unit cost and the
checkpoint bandwidth; and
`--compare` finds a measurement edited in a copy of it, and nothing between the profile and itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bastion.specs.profile import profile_toml, read_profile
from helpers.cli import run

ROOT = Path(__file__).parents[2]


def _bastion(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calibrate")
    done = _bastion("calibrate", "--quick", "--nproc", "2", "--models", "tiny", "--no-progress", "--out",
                    str(out / "profile.toml"), "--run-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "profile.toml"


def test_a_real_profile_reads_back_with_what_the_predictor_uses(profile: Path) -> None:
    read = read_profile(profile)
    repeats = dict(read.repeats)
    assert read.nproc == 2 and all(len(times) >= 3 for times in repeats.values())
    assert any(name.startswith("gemm ") for name in repeats) and "all_reduce 2 ranks 4096 B" in repeats
    # what runtime/parallelize.py issues per block: 7 all-reduces (2 forward, 5 backward: wq, wk, wv, w1, w3's
    # input gradients); with sequence parallelism an all-gather and a reduce-scatter around each norm's region
    counts = {(c.sequence_parallel, c.op): c.per_layer for c in read.tp_collectives}
    assert counts[(False, "all_reduce")] == 7 and counts[(True, "all_gather")] == 4
    assert counts[(True, "reduce_scatter")] == 4 and counts.get((True, "all_reduce"), 0) == 0
    host = read.host_overheads
    assert host.checkpoint_write_gbs > 0 and host.checkpoint_read_gbs > 0 and host.layer_tp_s > 0
    assert not list(profile.parent.glob(".bastion-calibrate-io-*"))  # the checkpoint I/O file is removed
    # FSDP2 timed on the real pair, in each layout a ZeRO stage runs, with every repeat kept
    assert sorted((u.zero_stage, u.group_size) for u in read.fsdp_units) == [(0, 2), (2, 2), (3, 2)]
    assert all(u.unit_s >= 0 and u.root_s >= 0 for u in read.fsdp_units)
    # measured at the realistic width too: every layout's CPU cost per unit is a line in its parameter bytes
    assert all(u.cpu_line and u.unit_cpu_s >= 0 and u.cpu_s_per_byte >= 0 for u in read.fsdp_units)
    assert "model x3 fsdp zero 3, groups of 2 of 2 ranks" in repeats
    # the elementwise sweep, cache-resident to DRAM-sized, relative to its largest (DRAM) size
    curve = dict(read.accelerator_overrides)["elementwise_bandwidth_curve"]
    swept = tomllib.loads(profile.read_text())["raw"]["elementwise_working_sets_bytes_s"]
    assert [row[0] for row in curve] == [row[0] for row in swept] and len(curve) >= 5 and curve[-1][1] == 1.0
    assert all(ratio >= 1.0 for _, ratio in curve) and "elementwise 16 KiB" in repeats


def test_compare_finds_the_edited_measurement(profile: Path, tmp_path: Path, capsys) -> None:
    data = tomllib.loads(profile.read_text())
    gemm = next(name for name in data["repeats"] if name.startswith("gemm "))
    data["repeats"][gemm] = [3 * t for t in data["repeats"][gemm]]  # a GEMM 3× slower: a sick core
    edited = tmp_path / "edited.toml"
    edited.write_text(profile_toml(data))
    # --compare reads two files: in this process (no interpreter start each)
    code, out, err = run(["calibrate", "--compare", str(profile), str(edited), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [m["name"] for m in result["changed"]] == [gemm] and result["changed"][0]["ratio"] == pytest.approx(3)
    code, out, err = run(["calibrate", "--compare", str(profile), str(profile), "--json"], capsys)
    assert code == 0, err
    same = json.loads(out)
    assert same["changed"] == [] and len(same["measurements"]) == len(data["repeats"])
