"""A Slurm job left with too few usable nodes starts again as a new job that cannot get the nodes it excluded.

The batch script is executed with stand-ins for srun (the job step ends in a failure after rank 1, on n2, was named
a straggler), sinfo (n2 still in service), scontrol and sbatch (both record what they were asked). A requeue could
land on n2 again, so the script submits its own script once more with `--exclude=n2`, after this job, and ends;
the run directory's launch record and metrics.jsonl name the new job. When sbatch refuses that, or the node is
down or drained (Slurm keeps a requeue off it by itself), the job is requeued as before. (The real-Slurm version
is tests/system/test_slurm_elastic.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.launch.request import LaunchRequest, WorkerLayout
from bastion.launch.slurm import SlurmOptions, render_sbatch
from bastion.launch.worker import RUN_CONFIG_FORMAT
from bastion.rundir.launch_record import add_slurm_job, read_launch_record

REQUEUE_EXIT = 42

STUBS = {
    # the step: rank 1 (on n2) was a straggler, then a worker failed
    "srun": r"""#!/bin/bash
mkdir -p "$FAKE_RUN_DIR/nodes"
echo n1 > "$FAKE_RUN_DIR/nodes/rank-00000"; echo n2 > "$FAKE_RUN_DIR/nodes/rank-00001"
echo "{\"event\": \"straggler\", \"rank\": 1, \"step\": 3, \"time\": $(date +%s).5}" >> "$FAKE_RUN_DIR/metrics.jsonl"
exit 1
""",
    "sinfo": "#!/bin/bash\necho 'n1 allocated'\necho \"n2 $FAKE_N2_STATE\"\n",
    # `show job -o` (the nodes still in the job) and `show job` (the script's path, on a line of its own)
    "scontrol": r"""#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then
  if [ "$3" = "n[1-2]" ]; then printf 'n1\nn2\n'; else echo "$3" | tr ',' '\n'; fi
elif [ "$1 $2 $3" = "show job -o" ]; then
  echo "JobId=$4 JobState=RUNNING NodeList=n1,n2"
elif [ "$1 $2" = "show job" ]; then
  echo "JobId=$3 JobName=x"
  echo "   ReqNodeList=(null) ExcNodeList=$FAKE_EXCLUDED"
  echo "   Command=$FAKE_SCRIPT"
fi
""",
    "sbatch": r"""#!/bin/bash
printf '%s\n' "$@" > "$FAKE_SBATCH_ARGS"
echo "${BASTION_SLURM_STARTS:-unset} ${SLURM_JOB_ID:-unset}" > "$FAKE_SBATCH_ARGS.env"
[ "$FAKE_SBATCH" = refuse ] && { echo "sbatch: error: Requested node configuration is not available" >&2; exit 1; }
echo "4243"
""",
}


def run_job(tmp_path: Path, sbatch: str = "ok", already_excluded: str = "(null)", restarts: int = 0,
            n2_state: str = "allocated") -> tuple[int, str, Path]:
    """Write a 2-node non-elastic job's script into a run directory with a space in its path and run it as
    job 4242; (exit status, output, run directory)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    run_dir = tmp_path / "a run"
    (run_dir / "launch").mkdir(parents=True)
    config = run_dir / "launch" / "run_config.json"
    config.write_text(json.dumps({"format": RUN_CONFIG_FORMAT, "train": {"run_dir": str(run_dir)}}))
    add_slurm_job(run_dir, "4242")
    req = LaunchRequest(engine="slurm", run_config={}, data_dir=str(tmp_path / "data"), run_dir=str(run_dir),
                        layout=WorkerLayout(nodes=2, procs_per_node=1), device="cpu", name="resubmit")
    script = run_dir / "launch" / "job.sbatch"
    script.write_text(render_sbatch(req, SlurmOptions(max_requeues=3, requeue_exit=REQUEUE_EXIT), str(config)))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BASTION_PYTHON": sys.executable,
           "PYTHONPATH": src, "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_PER_TASK": "1", "SLURM_RESTART_COUNT": str(restarts), "FAKE_SCRIPT": str(script),
           "FAKE_EXCLUDED": already_excluded, "FAKE_SBATCH": sbatch, "FAKE_N2_STATE": n2_state,
           "FAKE_RUN_DIR": str(run_dir),
           "FAKE_SBATCH_ARGS": str(tmp_path / "sbatch.args")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr, run_dir


def test_a_job_with_too_few_nodes_starts_again_as_a_new_job_without_them(tmp_path: Path) -> None:
    code, output, run_dir = run_job(tmp_path, restarts=1)
    assert code == 0, output
    assert "continuing in the new job, without n2" in output
    args = (tmp_path / "sbatch.args").read_text().splitlines()
    assert args == ["--parsable", "--dependency=afterany:4242", "--exclude=n2", str(run_dir / "launch" / "job.sbatch")]
    # the new job counts on from this one's starts and does not inherit this job's Slurm variables
    assert (tmp_path / "sbatch.args.env").read_text().split() == ["2", "unset"]
    assert read_launch_record(run_dir)["job_ids"] == ["4242", "4243"]
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("node"), e.get("reason")) for e in events if e["event"] == "node_excluded"] == [
        ("node_excluded", "n2", "straggler")]
    (resubmitted,) = [e for e in events if e["event"] == "resubmitted"]
    assert (resubmitted["job_id"], resubmitted["new_job_id"], resubmitted["excluded"]) == ("4242", "4243", ["n2"])


def test_the_nodes_the_job_was_already_kept_off_stay_excluded(tmp_path: Path) -> None:
    code, output, _ = run_job(tmp_path, already_excluded="n9")
    assert code == 0, output
    assert "--exclude=n9,n2" in (tmp_path / "sbatch.args").read_text().splitlines()


def test_a_down_node_is_left_to_slurm_and_the_job_requeued(tmp_path: Path) -> None:
    code, output, run_dir = run_job(tmp_path, n2_state="down*")
    assert code == REQUEUE_EXIT, output
    assert not (tmp_path / "sbatch.args").exists()   # no new job: Slurm keeps a requeue off a down node
    assert "Slurm keeps a requeue off them" in output
    assert read_launch_record(run_dir)["job_ids"] == ["4242"]


@pytest.mark.parametrize(("restarts", "expected"), [(0, REQUEUE_EXIT), (3, 1)])
def test_when_slurm_refuses_the_new_job_the_job_is_requeued(tmp_path: Path, restarts: int, expected: int) -> None:
    code, output, run_dir = run_job(tmp_path, sbatch="refuse", restarts=restarts)
    assert code == expected, output
    if restarts < 3:
        assert "Requested node configuration is not available" in output
    assert read_launch_record(run_dir)["job_ids"] == ["4242"]
