"""`bastion train --fault-tolerance torchft` refusals (launch/replica_groups.py): each a guidance error, exit 2,
before anything is written into the run directory; and how a plan splits into replica groups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bastion.errors import ConfigError
from bastion.launch import replica_groups
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan
from helpers.cli import user_error

CaptureFixture = pytest.CaptureFixture[str]
DP4 = {"dp": 4, "zero_stage": 3, "micro_batch": 1, "global_batch": 8, "precision": "fp32"}


def _data(tmp_path: Path) -> Path:
    out = tmp_path / "tokens"
    out.mkdir(exist_ok=True)
    np.arange(4000, dtype=np.uint16).__mod__(256).astype(np.uint16).tofile(out / "tokens.bin")
    (out / "meta.json").write_text(json.dumps({"num_tokens": 4000, "dtype": "uint16", "vocab_size": 256}))
    return out


def _train(tmp_path: Path, plan: dict, *extra: str) -> list[str]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return ["train", "--model", "tiny", "--plan", str(path), "--data", str(_data(tmp_path)), "--steps", "4",
            "--run-dir", str(tmp_path / "run"), "--no-progress", *extra]


@pytest.mark.parametrize(("plan", "extra", "expected"), [
    ({**DP4, "dp": 1, "global_batch": 2}, [], "needs data-parallel replicas to drop, but the plan has dp 1"),
    (DP4, ["--replica-groups", "3"], "--replica-groups 3 does not split the plan's dp 4"),
    (DP4, ["--checkpoint-every", "auto"], "--checkpoint-every auto is not supported"),
    (DP4, ["--on-failure", "shrink"], "--on-failure shrink and --fault-tolerance torchft"),
])
def test_refused_before_anything_is_written(plan: dict, extra: list[str], expected: str, tmp_path: Path,
                                            capsys: CaptureFixture) -> None:
    user_error(_train(tmp_path, plan, "--fault-tolerance", "torchft", *extra), capsys, expected)
    assert not (tmp_path / "run").exists()


def test_unknown_mode_and_groups_without_torchft(tmp_path: Path, capsys: CaptureFixture) -> None:
    user_error(_train(tmp_path, DP4, "--fault-tolerance", "torchfts"), capsys, "is not a mode", "torchft")
    user_error(_train(tmp_path, DP4, "--replica-groups", "2"), capsys, "without --fault-tolerance torchft")
    assert not (tmp_path / "run").exists()


def test_refused_when_torchft_is_not_installed(tmp_path: Path, capsys: CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_groups, "torchft_installed", lambda: False)
    user_error(_train(tmp_path, DP4, "--fault-tolerance", "torchft"), capsys, "needs the torchft package",
               "pip install 'bastion[ft]'")
    assert not (tmp_path / "run").exists()


def test_a_plan_splits_into_groups_of_its_inner_dimensions() -> None:
    spec = load_model("tiny")
    plan = ParallelPlan.from_dict(DP4)
    inner = replica_groups.group_plan(plan, spec, 2)
    assert (inner.dp, inner.global_batch, inner.zero_stage, inner.num_gpus) == (2, 4, 3, 2)
    assert replica_groups.group_plan(plan, spec, 4).dp == 1
    section = replica_groups.check_fault_tolerance("torchft", plan, spec, None, 0)
    assert section == {"mode": "torchft", "groups": 4, "group_world_size": 1}
    assert replica_groups.check_fault_tolerance("none", plan, spec, None, 0) is None
    # checkpoints are kept (one group writes them); only auto's per-group interval choice is refused
    assert replica_groups.check_fault_tolerance("torchft", plan, spec, 2, 5)["groups"] == 2
    with pytest.raises(ConfigError, match="auto is not supported"):
        replica_groups.check_fault_tolerance("torchft", plan, spec, 2, -1)


def test_a_group_runs_its_share_of_the_plan() -> None:
    spec = load_model("tiny")
    config = {"model": spec.to_dict(), "plan": ParallelPlan.from_dict(DP4).to_dict(), "world_size": 4,
              "train": {"steps": 4}, replica_groups.REPLICA_GROUPS_KEY: {"mode": "torchft", "groups": 2,
                                                                          "group_world_size": 2}}
    mine = replica_groups.group_config(config, 1)
    assert mine["world_size"] == 2 and mine["plan"]["dp"] == 2 and mine["plan"]["global_batch"] == 4
    assert mine["train"] == {"steps": 4, "replica_group": 1, "replica_groups": 2}
    with pytest.raises(ConfigError, match="not a replica group"):
        replica_groups.group_config(config, 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_lighthouse_ends_when_the_launcher_is_killed() -> None:
    """A `bastion train` killed by SIGKILL runs no `finally`: the lighthouse must end by itself, not listen for good
    (seen: lighthouses left over from killed test runs)."""
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, time\n"
        "from bastion.launch.replica_groups import _ends_with_parent\n"
        "child = subprocess.Popen(['sleep', '300'], preexec_fn=_ends_with_parent, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n")], stdout=subprocess.PIPE, text=True)
    child = int(launcher.stdout.readline())
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 10
    state = "running"
    while time.monotonic() < deadline:
        try:  # gone, or a zombie waiting for init to reap it: either way it no longer runs
            state = Path(f"/proc/{child}/status").read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            state = "gone"
        if state in ("gone", "Z"):
            break
        time.sleep(0.1)
    assert state in ("gone", "Z")
