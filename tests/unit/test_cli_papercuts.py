"""The CLI as a new user types it: --version, -h, shell completion, accelerator names in any usual spelling, and
--json on launch. Each runs `python -m bastion` in a subprocess, as a terminal would."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bastion import __version__


def bastion(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BASTION_DEBUG"}
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "COLUMNS": "200"}, cwd=cwd)


def test_version() -> None:
    done = bastion("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"bastion {__version__}")


@pytest.mark.parametrize("args", [(), ("report",), ("launch",)])
def test_dash_h_is_help(args) -> None:
    short, long = bastion(*args, "-h"), bastion(*args, "--help")
    assert short.returncode == long.returncode == 0
    assert short.stdout == long.stdout and "Usage:" in short.stdout


def test_shell_completion_is_offered_and_prints_a_script() -> None:
    assert "--install-completion" in bastion("--help").stdout
    # typer asks which shell started it (make runs recipes under sh, which it does not support): start it from
    # bash, which stays its parent (`; exit $?`: not the last command, so bash does not exec it)
    done = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} -m bastion --show-completion; exit $?"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "complete" in done.stdout and "COMP_WORDS" in done.stdout, done.stderr


@pytest.mark.parametrize("typed", ["H100:8", "h100:8", "H100-SXM:8", "h100-sxm5:8", "H100-MEGA:8"])
def test_h100_as_people_type_it(typed) -> None:
    done = bastion("estimate", "-m", "tiny", "-c", typed, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cluster"] == "h100-sxm:8"


@pytest.mark.parametrize(("typed", "catalog"), [("A100-80GB:8", "a100-80g"), ("A100:8", "a100-40g"),
                                                ("H200:8", "h200"), ("MI300X:8", "mi300x")])
def test_skypilot_accelerator_names(typed, catalog) -> None:
    from bastion.specs.hardware import load_cluster

    cluster = load_cluster(typed)
    assert (cluster.accelerator.name, cluster.name) == (catalog, f"{catalog}:8")


def test_a_mistyped_accelerator_count_form_suggests_an_accelerator() -> None:
    done = bastion("estimate", "-m", "tiny", "-c", "h10:8")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Unknown accelerator 'h10'" in done.stderr and "Did you mean 'h100'" in done.stderr


def test_launch_dry_run_json_is_one_object_per_engine(tmp_path) -> None:
    from bastion.runtime.data import prepare_dataset
    from bastion.specs.plan import ParallelPlan

    plan = ParallelPlan(dp=2, global_batch=4, precision="fp32").save(tmp_path / "plan.json")
    text = tmp_path / "text.txt"
    text.write_text("a small corpus for the launch tests\n" * 200)
    prepare_dataset([text], tmp_path / "data")
    common = ["launch", "--model", "tiny", "--plan", str(plan), "--data", str(tmp_path / "data"), "--run-dir",
              str(tmp_path / "run"), "--steps", "4", "--device", "cpu", "--dry-run", "--json"]
    local = bastion(*common, "--on", "local")
    assert local.returncode == 0, local.stderr
    found = json.loads(local.stdout)
    assert (found["engine"], found["dry_run"]) == ("local", True) and "_worker" in found["command"]
    assert found["run_config"]["world_size"] == 2
    slurm = json.loads(bastion(*common, "--on", "slurm", "--time", "00:10:00").stdout)
    assert slurm["script"].startswith("#!") and slurm["run_config"]["train"]["steps"] == 4
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_dtensors_flatten_advice_is_dropped_in_workers_and_other_warnings_stay() -> None:
    import torch.distributed.tensor._redistribute  # noqa: F401 - torch configures its loggers on import

    from bastion.runtime.worker import quiet_library_warnings

    quiet_library_warnings()
    logger = logging.getLogger("torch.distributed.tensor._redistribute")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("While redistributing from %s to %s, %d sequential %s operations will be performed. %s",
                       "(S(0), S(0))", "(R, R)", 2, "all_gather", "To optimize, flatten mesh dimensions")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]
