"""The batch script `bastion launch --on slurm` writes, run as Slurm runs it, with stand-ins for srun, scontrol and
sinfo on PATH (the real-Slurm version of this story is tests/system/test_slurm_elastic.py).

The stand-in srun starts one real torchrun agent per node of its `--nodelist` on this host (each with that node's
SLURMD_NODENAME), so the workers train for real: 2 "nodes" × 2 gloo workers, dp4 with ZeRO-3. At step 5 rank 3's
node is lost (`lose-node` fault); srun fails and the stand-in marks that node DOWN, as Slurm would. The script must
then continue inside the same allocation: its next job step runs on the node left with `--exclude` of the lost
one, the workers re-plan for 2 ranks (dp2, the same global batch) and resume from the step-4 checkpoint, and the run
finishes all steps with every sample used once; summary.json's plan_changes shows the change. A straggler's node
is left out of the next job step the same way."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.specs import ParallelPlan
from helpers.cli import bastion, records

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

STEPS = 8
PLAN = ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32")
NODES = ["n1", "n2"]

SRUN = r'''#!PYTHON
"""srun inside an allocation: records its options, runs the command once per node of --nodelist (here)."""
import json, os, signal, subprocess, sys, time
args = sys.argv[1:]
split = next(i for i, a in enumerate(args) if not a.startswith("-"))
options, command = args[:split], args[split:]
with open(os.environ["FAKE_SLURM_LOG"], "a") as log:
    log.write(json.dumps({"options": options, "command": command}) + "\n")
nodes = next(o.split("=", 1)[1] for o in options if o.startswith("--nodelist=")).split(",")
excluded = [o.split("=", 1)[1] for o in options if o.startswith("--exclude=")]
down = [n for n in nodes if os.path.exists(os.path.join(os.environ["FAKE_SLURM_STATE"], n))]
if down or any(n in e.split(",") for e in excluded for n in nodes):
    print(f"srun: error: nodes {down} are down or excluded", file=sys.stderr)
    sys.exit(1)
# the agents meet on this host: the rendezvous endpoint's node name is 127.0.0.1 here, and so is their address
command = [a.replace("--rdzv-endpoint=" + nodes[0] + ":", "--rdzv-endpoint=127.0.0.1:") for a in command]
command.insert(command.index("torch.distributed.run") + 1, "--local-addr=127.0.0.1")
procs = [subprocess.Popen(command, env={**os.environ, "SLURMD_NODENAME": node, "GLOO_SOCKET_IFNAME": "lo"},
                          start_new_session=True) for node in nodes]
code = 0
while any(p.poll() is None for p in procs) and not code:
    code = next((p.returncode for p in procs if p.returncode), 0)
    time.sleep(0.2)
code = code or next((p.returncode for p in procs if p.returncode), 0)
for p in procs:  # --kill-on-bad-exit: the step ends when one task fails
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
lost = os.environ.get("FAKE_LOST_RANK")
marker = os.path.join(os.environ["FAKE_SLURM_STATE"], "lost-once")
if code and lost is not None and not os.path.exists(marker):
    # the lost rank's node is gone: Slurm marks it DOWN
    node_file = os.path.join(os.environ["FAKE_RUN_DIR"], "nodes", f"rank-{int(lost):05d}")
    node = open(node_file).read().strip()
    open(os.path.join(os.environ["FAKE_SLURM_STATE"], node), "w").write("down\n")
    open(marker, "w").write(node)
sys.exit(code)
'''

# as the real cluster does: with --no-kill a failed node is taken out of the job's NodeList, and is back in
# service (sinfo: idle) a moment later (ReturnToService=2)
SCONTROL = r'''#!/bin/bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG.scontrol"
if [ "$1 $2" = "show hostnames" ]; then
  if [ "$3" = "n[1-2]" ]; then printf 'n1\nn2\n'; else echo "$3" | tr ',' '\n'; fi
elif [ "$1 $2" = "show job" ]; then
  left=$(for node in $FAKE_NODES; do [ -e "$FAKE_SLURM_STATE/$node" ] || echo "$node"; done | paste -sd, -)
  echo "JobId=$SLURM_JOB_ID JobState=RUNNING NodeList=$left"
fi
'''

SINFO = r'''#!/bin/bash
for node in $FAKE_NODES; do echo "$node idle"; done
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return port if 20000 <= port < 40000 else 20000 + port % 20000


def fake_slurm(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN.replace("PYTHON", sys.executable)), ("scontrol", SCONTROL),
                       ("sinfo", SINFO), ("scancel", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_job(tmp_path: Path, token_data: Path, steps: int, *train_args: str,
            lost_rank: int | None = None) -> tuple[Path, str, list[dict]]:
    """Write the job with `bastion launch --on slurm` and run its batch script as Slurm would; (run directory,
    the script's output, the options and command of every srun)."""
    plan = PLAN.save(tmp_path / "plan.json")
    run_dir = tmp_path / "run"
    written = bastion("launch", "--on", "slurm", "--model", "tiny", "--plan", str(plan), "--data", str(token_data),
                      "--run-dir", str(run_dir), "--steps", str(steps), "--nodes", "2", "--device", "cpu", "--",
                      "--on-failure", "shrink", "--sync-checkpoint", "--no-progress", "--seed", "1", *train_args)
    assert written.returncode == 0, written.stderr
    script = run_dir / "launch" / "job.sbatch"
    (tmp_path / "state").mkdir()
    log = tmp_path / "srun.jsonl"
    port = free_port()
    source = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PATH": f"{fake_slurm(tmp_path)}:{os.environ['PATH']}", "BASTION_PYTHON": sys.executable,
           "PYTHONPATH": source, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": str(port - 20000),
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "2",
           "FAKE_NODES": " ".join(NODES), "FAKE_SLURM_STATE": str(tmp_path / "state"), "FAKE_SLURM_LOG": str(log),
           "FAKE_RUN_DIR": str(run_dir)}
    if lost_rank is not None:
        env["FAKE_LOST_RANK"] = str(lost_rank)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "[bastion] training finished" in output
    return run_dir, output, [json.loads(line) for line in log.read_text().splitlines()]


def check_continued(run_dir: Path, output: str, steps: list[dict], total: int, node_out: str, reason: str,
                    resumed_from: int) -> None:
    """Two job steps in one allocation: the first on both nodes, the second on the other one with `node_out`
    excluded; the workers re-planned 4 → 2 ranks at `resumed_from` and every sample was used once."""
    (left,) = [n for n in NODES if n != node_out]
    assert len(steps) == 2   # no requeue: the second job step ran inside the same allocation
    assert steps[0]["options"][:3] == ["--nodes=2", "--ntasks=2", "--nodelist=n1,n2"]
    assert not any(o.startswith("--exclude") for o in steps[0]["options"])
    assert steps[1]["options"][:4] == ["--nodes=1", "--ntasks=1", f"--nodelist={left}", f"--exclude={node_out}"]
    assert "--nnodes=1" in steps[1]["command"]
    assert f"job step 2 on {left} (excluded: {node_out})" in output

    history = records(run_dir)
    (excluded,) = [r for r in history if r.get("event") == "node_excluded"]
    assert (excluded["node"], excluded["reason"]) == (node_out, reason)
    (change,) = [r for r in history if r.get("event") == "plan_change"]
    assert (change["from_world"], change["to_world"], change["step"]) == (4, 2, resumed_from)
    assert change["plan"] == {**PLAN.to_dict(), "dp": 2}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == total
    assert summary["plan_changes"] == [{"step": resumed_from, "from_world": 4, "to_world": 2, "plan": change["plan"]}]
    # steps up to the checkpoint on 4 ranks, the rest on the 2 left; the kept record of every step: each sample once
    kept = {r["step"]: r for r in history if "event" not in r}
    assert sorted(kept) == list(range(1, total + 1))
    assert [len(kept[s]["rank_sections_s"]["step"]) for s in range(1, total + 1)] == (
        [4] * resumed_from + [2] * (total - resumed_from))
    assert sorted(i for r in kept.values() for i in range(*r["sample_ids"])) == list(range(total * 8))


def test_a_lost_node_continues_the_job_on_the_node_left(tmp_path: Path, token_data: Path) -> None:
    run_dir, output, steps = run_job(tmp_path, token_data, 8, "--checkpoint-every", "2", "--inject",
                                     "lose-node:rank=3,step=5", lost_rank=3)
    lost = (tmp_path / "state" / "lost-once").read_text()
    check_continued(run_dir, output, steps, 8, lost, "down", resumed_from=4)


def test_a_stragglers_node_is_left_out_of_the_next_job_step(tmp_path: Path, token_data: Path) -> None:
    """Rank 3 is three times slower and named a straggler (by step 7); rank 0 dies at step 8 (a lose-node fault
    whose node the stand-in Slurm keeps in service: a crash as the job sees it), which ends the job step, and the
    next one runs without rank 3's node."""
    run_dir, output, steps = run_job(tmp_path, token_data, 10, "--checkpoint-every", "2", "--inject",
                                     "slow:rank=3,factor=3", "--inject", "lose-node:rank=0,step=8")
    (straggler,) = [r for r in records(run_dir) if r.get("event") == "straggler"]
    assert straggler["rank"] == 3 and straggler["step"] < 8
    slow_node = (run_dir / "nodes" / "rank-00003").read_text().strip()
    check_continued(run_dir, output, steps, 10, slow_node, "straggler", resumed_from=6)


def test_a_node_whose_device_fails_the_health_check_is_left_out_before_a_step(tmp_path: Path,
                                                                               token_data: Path) -> None:
    """Rank 3's device reports an uncorrected ECC error in the pre-flight health check (a `bad-gpu` fault): every
    rank ends the job step before step 1, and the next job step runs without that node, re-planned for 2 ranks
    from the start; the run finishes with every sample used once."""
    run_dir, output, steps = run_job(tmp_path, token_data, 4, "--checkpoint-every", "2", "--inject",
                                     "bad-gpu:rank=3")
    (check,) = [r for r in records(run_dir) if r.get("event") == "health_check" and not r["ok"]]
    assert check["failing_ranks"] == [3] and "uncorrected ECC" in check["problems"][0]
    assert "failed the health check: ending this job step" in output
    bad_node = (run_dir / "nodes" / "rank-00003").read_text().strip()
    check_continued(run_dir, output, steps, 4, bad_node, "unhealthy", resumed_from=0)
