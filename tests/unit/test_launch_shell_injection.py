"""The sbatch script with hostile run names, paths and extra arguments: bash must read every value back
unchanged and run none of it. The script itself is executed, with `srun` and `scontrol` replaced by stubs that
record the argument vector they receive, so the test sees exactly what the workers would have been given."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bastion.errors import LaunchError
from bastion.launch.request import LaunchRequest, WorkerLayout
from bastion.launch.slurm import SlurmOptions, render_sbatch

HOSTILE = [
    'x"; touch PWNED; echo "',
    "x'; touch PWNED; echo '",
    "$(touch PWNED)",
    "`touch PWNED`",
    "a b\tc",
    "; rm -rf ~ ;",
    "${HOME}",
    "*",
    "--flag=$(touch PWNED)",
    "ünïcødé ✓",
    "'",
    '"',
    "\\",
]

FAKE_SRUN = """#!/bin/bash
# records its arguments one per NUL, then behaves as $SRUN_MODE says
printf '%s\\0' "$@" > "$RECORD"
case "${SRUN_MODE:-ok}" in
  ok) exit 0 ;;
  fail) exit 1 ;;
  wait-for-term)
    trap 'echo TERM >> "$RECORD.signals"; exit 143' TERM
    echo $$ > "$RECORD.started"
    while :; do sleep 0.05; done ;;
esac
"""
FAKE_SCANCEL = """#!/bin/bash
# records its arguments; `--signal=TERM JOBID` reaches the job step, here the stub srun
printf '%s\\0' "$@" > "$RECORD.scancel"
[ "$1" = --signal=TERM ] && kill -TERM "$(cat "$RECORD.started")"
exit 0
"""
FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && { echo n7; echo n8; exit 0; }
exit 1
"""


@pytest.fixture()
def sandbox(tmp_path: Path) -> Path:
    """A directory with stub srun/scontrol first on PATH, and a place for hostile run directories."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def hostile_request(base: Path, name: str) -> LaunchRequest:
    run_dir = base / "runs" / "r 1; touch PWNED 'q' \"dq\" $(touch PWNED) `touch PWNED`"
    data_dir = base / "data $(touch PWNED)" / "x'y\"z"
    return LaunchRequest(engine="slurm", run_config={}, data_dir=str(data_dir), run_dir=str(run_dir),
                         layout=WorkerLayout(nodes=2, procs_per_node=2), device="cpu", name=name)


def run_script(sandbox: Path, script: str, mode: str = "ok", restart_count: int = 0,
               send_usr1: bool = False) -> tuple[int, Path]:
    path = sandbox / "job.sbatch"
    path.write_text(script)
    record = sandbox / "srun.args"
    env = {"PATH": f"{sandbox / 'bin'}:{os.environ['PATH']}", "HOME": str(sandbox / "home"),
           "SLURM_JOB_ID": "123", "SLURM_JOB_NODELIST": "n[7-8]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_PER_TASK": "2", "SLURM_RESTART_COUNT": str(restart_count), "RECORD": str(record),
           "SRUN_MODE": mode}
    proc = subprocess.Popen(["bash", str(path)], cwd=sandbox, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if send_usr1:
        deadline = time.monotonic() + 20
        while not (sandbox / "srun.args.started").exists():
            assert time.monotonic() < deadline, "stub srun never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR1)   # what Slurm's --signal=B:USR1@N does to the batch shell
    out, _ = proc.communicate(timeout=30)
    print(out)
    return proc.returncode, record


def recorded_args(record: Path) -> list[str]:
    return record.read_bytes().decode().split("\0")[:-1]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_reach_the_workers_unchanged(sandbox: Path, hostile: str) -> None:
    req = hostile_request(sandbox, name=hostile)
    config_path = f"{req.run_dir}/{hostile}.json"
    script = render_sbatch(req, SlurmOptions(python="/opt/venv/bin/python"), config_path)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    code, record = run_script(sandbox, script)
    assert code == 0
    argv = recorded_args(record)
    srun_options, worker = argv[:argv.index("/opt/venv/bin/python")], argv[argv.index("/opt/venv/bin/python"):]
    assert srun_options == ["--nodes=2", "--ntasks=2", "--nodelist=n7,n8", "--ntasks-per-node=1",
                            "--cpus-per-task=2", "--kill-on-bad-exit=1"]
    assert worker == [
        "/opt/venv/bin/python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
        "--rdzv-backend=c10d", "--rdzv-endpoint=n7:20123", "--rdzv-id=123-1", "--max-restarts=0",
        "-m", "bastion", "_worker", config_path,
    ]
    assert not list(sandbox.rglob("PWNED"))
    assert not (sandbox / "home").exists()   # nothing touched (or removed under) $HOME


@pytest.mark.parametrize("hostile", HOSTILE)
def test_job_name_on_the_sbatch_line_is_inert(hostile: str, tmp_path: Path) -> None:
    req = hostile_request(tmp_path, name=hostile)
    script = render_sbatch(req, SlurmOptions(), "/p.json")
    (line,) = [ln for ln in script.splitlines() if ln.startswith("#SBATCH --job-name=")]
    value = line.removeprefix("#SBATCH --job-name=")
    assert value and all(c.isalnum() or c in "._-" for c in value)


@pytest.mark.parametrize(("run_dir", "needle"), [
    ("/runs/a\nrm -rf ~", "control character"),    # would end the #SBATCH comment and start a command
    ("/runs/a\rb", "control character"),
    ("/runs/100%", "'%'"),                         # sbatch expands %j, %u ... in file names
    ("/runs/a\\b", "'\\\\'"),                      # sbatch's own escape character
])
def test_run_dirs_sbatch_would_misread_are_refused(run_dir: str, needle: str) -> None:
    req = LaunchRequest(engine="slurm", run_config={}, data_dir="/d", run_dir=run_dir, layout=WorkerLayout(1, 2),
                        device="cpu", name="n")
    with pytest.raises(LaunchError) as err:
        render_sbatch(req, SlurmOptions(), "/p.json")
    assert needle in err.value.problem
    assert "To fix" in err.value.render()


def test_newline_in_the_config_path_stays_inside_one_argument(sandbox: Path) -> None:
    req = hostile_request(sandbox, name="n")
    code, record = run_script(sandbox, render_sbatch(req, SlurmOptions(python="/py"), "line1\ntouch PWNED\nline3"))
    assert code == 0
    assert recorded_args(record)[-1] == "line1\ntouch PWNED\nline3"
    assert not (sandbox / "PWNED").exists()


@pytest.mark.parametrize(("mode", "restart_count", "expected"), [
    ("ok", 0, 0),
    ("fail", 0, 42),    # a worker failure is requeued (RequeueExit)...
    ("fail", 2, 42),
    ("fail", 3, 1),     # ...until max_requeues, then reported as the failure it is
])
def test_worker_failures_map_to_the_requeue_exit_code(sandbox, mode, restart_count, expected) -> None:
    req = hostile_request(sandbox, name="n")
    script = render_sbatch(req, SlurmOptions(python="/py", max_requeues=3), "/p.json")
    code, _ = run_script(sandbox, script, mode=mode, restart_count=restart_count)
    assert code == expected


def test_time_limit_warning_stops_the_step_and_requeues(sandbox: Path) -> None:
    req = hostile_request(sandbox, name="n")
    script = render_sbatch(req, SlurmOptions(python="/py", requeue_exit=99, time_limit_s=600), "/p.json")
    code, record = run_script(sandbox, script, mode="wait-for-term", send_usr1=True)
    assert code == 99                                            # requeue, even though the step "failed"
    assert recorded_args(Path(f"{record}.scancel")) == ["--signal=TERM", "123"]   # the job's steps, not srun
    assert (sandbox / "srun.args.signals").read_text() == "TERM\n"   # the step got exactly one SIGTERM


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is needed to check the script")
def test_script_is_valid_bash_for_gpu_jobs_with_every_option() -> None:
    req = LaunchRequest(engine="slurm", run_config={}, data_dir="/data", run_dir="/runs/big run",
                        layout=WorkerLayout(2, 8), device="gpu", name="big", max_restarts=2)
    script = render_sbatch(req, SlurmOptions(time_limit_s=86400, partition="gpu,gpu-long", cpus_per_worker=12,
                                             max_requeues=5), "/runs/big run/run_config.json")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    lines = script.splitlines()
    for directive in ("--gpus-per-node=8", "--cpus-per-task=96", "--time=1-00:00:00", "--partition=gpu,gpu-long",
                      "--signal=B:USR1@600", "--output='/runs/big run/slurm-%j.out'"):
        assert f"#SBATCH {directive}" in lines
    assert "export OMP_NUM_THREADS=12" in lines and "max_requeues=5" in lines
