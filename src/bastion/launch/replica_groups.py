"""`bastion train --fault-tolerance torchft`: the plan's data-parallel replicas as replica groups that survive
each other's failures (torchft), on this machine. No torch here.

What a replica group is: the plan's `dp` replicas are split into `--replica-groups N` groups (default: every
replica its own group). Each group runs the plan's inner dimensions — dp / N data-parallel ranks (FSDP/ZeRO
sharding stays inside a group), tp, pp, cp — as its own torchrun with `--max-restarts`; the groups are joined only
by torchft's managed all-reduce of the gradients (runtime/replicas.py). Group g trains on the g-th N-th of every
global batch, so with every group present a step is exactly the plan's step.

The launcher starts torchft's lighthouse (its `torchft_lighthouse` entry point, a child process: the front process
stays torch-free), passes TORCHFT_LIGHTHOUSE and the group's id (BASTION_REPLICA_GROUP) to each group, and waits
for every group. When a group's worker dies, the other groups keep stepping without it (torchft's per-step
quorum) and that group's torchrun restarts it; the restarted group heals from a live peer (torchft's HTTP
checkpoint transport: model, optimizer, LR schedule, data position, step) and rejoins at the next step. The
samples of a step that a group missed are not trained on (torchft's semantics: that step's batch is the
participating groups' shares); metrics.jsonl and the summary record which.

Checkpoints are the run's normal ones (--checkpoint-every, --stop-after-step, the final step; RUN_DIR/checkpoints),
written by one group, the leading group of the step's quorum (runtime/replicas.py): its plan is every group's, so
the checkpoint's sharding is the group's plan. If every group dies, the next launch (or torchrun's restart of
every group) loads the newest committed checkpoint in every group; a single restarted group heals from a peer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, LaunchError
from bastion.launch.request import default_python
from bastion.launch.worker import process_environment, worker_env
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

#: --fault-tolerance values
FAULT_TOLERANCE = ("none", "torchft")
#: the run config's key for the replica-group section
REPLICA_GROUPS_KEY = "replica_groups"
#: the worker environment variable naming its replica group (0-based)
GROUP_ENV = "BASTION_REPLICA_GROUP"
#: the lighthouse's address, read by torchft's Manager itself
LIGHTHOUSE_ENV = "TORCHFT_LIGHTHOUSE"
#: a replica silent this long is dead to the lighthouse (its peers then step without it)
HEARTBEAT_TIMEOUT_MS = 3000
#: how long a quorum waits for a live (heartbeating) group that has not asked to join yet
JOIN_TIMEOUT_MS = 10000
#: how long the lighthouse takes to open its port
_LIGHTHOUSE_START_S = 30.0


def torchft_installed() -> bool:
    return importlib.util.find_spec("torchft") is not None


def group_plan(plan: ParallelPlan, spec: ModelSpec, groups: int) -> ParallelPlan:
    """The plan one of `groups` replica groups runs: dp / groups replicas, global batch / groups; the other
    degrees as the plan has them. A guidance error when the plan cannot be split so."""
    if plan.dp < 2:
        raise ConfigError(f"--fault-tolerance torchft needs data-parallel replicas to drop, but the plan has dp "
                          f"{plan.dp}.",
                          fix="use a plan with dp >= 2 (each replica group runs dp / --replica-groups of them), "
                              "or leave --fault-tolerance at none.")
    if groups < 2 or plan.dp % groups:
        raise ConfigError(f"--replica-groups {groups} does not split the plan's dp {plan.dp} into two or more "
                          f"equal groups.",
                          fix=f"give a divisor of {plan.dp} from 2 to {plan.dp} (default {plan.dp}: every "
                              f"replica its own group).")
    # a valid plan's global batch is a multiple of dp × micro-batch, so each group gets whole micro-batches
    inner = dataclasses.replace(plan, dp=plan.dp // groups, global_batch=plan.global_batch // groups)
    inner.validate(spec, None, spec.seq_len)
    return inner


def check_fault_tolerance(mode: str, plan: ParallelPlan, spec: ModelSpec, groups: int | None,
                          checkpoint_every: int) -> dict[str, Any] | None:
    """`--fault-tolerance` checked against the plan and this environment: the run config's replica-group section
    (None for `none`). Refused when torchft is not installed, the plan has no replicas to drop, or with
    `--checkpoint-every auto` (-1)."""
    from bastion.errors import did_you_mean

    if mode not in FAULT_TOLERANCE:
        raise ConfigError(f"--fault-tolerance {mode!r} is not a mode.{did_you_mean(mode, FAULT_TOLERANCE)}",
                          fix=f"use one of: {', '.join(FAULT_TOLERANCE)}.")
    if mode == "none":
        if groups is not None:
            raise ConfigError("--replica-groups is given without --fault-tolerance torchft.",
                              fix="add --fault-tolerance torchft, or drop --replica-groups.")
        return None
    groups = plan.dp if groups is None else groups
    inner = group_plan(plan, spec, groups)
    if not torchft_installed():
        raise ConfigError("--fault-tolerance torchft needs the torchft package, which is not installed.",
                          fix="install bastion's ft extra, or leave --fault-tolerance at none.",
                          hint="pip install 'bastion[ft]'")
    if checkpoint_every < 0:
        # auto times a probe save on each group and picks from its own figures: the groups (and so the group that
        # writes, which changes with the quorum) could pick different intervals
        raise ConfigError("--checkpoint-every auto is not supported with --fault-tolerance torchft (each replica "
                          "group would choose its own interval).",
                          fix="give --checkpoint-every N (a step count; one replica group writes each checkpoint), "
                              "or leave --fault-tolerance at none.")
    return {"mode": mode, "groups": groups, "group_world_size": inner.num_gpus}


def group_config(config: dict[str, Any], group: int) -> dict[str, Any]:
    """The run config as replica group `group`'s workers run it: the group's plan and world, the group's id."""
    section = config[REPLICA_GROUPS_KEY]
    from bastion.specs.model import model_from_mapping

    spec = model_from_mapping(config["model"], "the run config's model")
    if not 0 <= group < section["groups"]:
        raise ConfigError(f"{GROUP_ENV}={group} is not a replica group of this run (0..{section['groups'] - 1}).",
                          fix="start replica groups with `bastion train --fault-tolerance torchft`.")
    inner = group_plan(ParallelPlan.from_dict(config["plan"]), spec, section["groups"])
    train = {**config["train"], "replica_group": group, "replica_groups": section["groups"]}
    return {**config, "plan": inner.to_dict(), "world_size": inner.num_gpus, "train": train}


def lighthouse_command(port: int, python: str = "") -> list[str]:
    """torchft's lighthouse (`torchft_lighthouse`) on the loopback interface; a quorum needs one live group."""
    from bastion.launch.local import LOOPBACK

    python = python or default_python()
    # the entry point's script, not `python -c`: the lighthouse parses the process's own argv
    script = Path(python).parent / "torchft_lighthouse"
    return [python, str(script), "--bind", f"{LOOPBACK}:{port}", "--min_replicas", "1",
            "--join_timeout_ms", str(JOIN_TIMEOUT_MS), "--heartbeat_timeout_ms", str(HEARTBEAT_TIMEOUT_MS),
            "--quorum_tick_ms", "100"]


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    from bastion.launch.local import LOOPBACK

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"torchft's lighthouse exited with code {process.returncode} before it listened.",
                              fix="read its output above; check that torchft imports in this environment.")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1.0):
            return
        time.sleep(0.2)
    raise LaunchError(f"torchft's lighthouse did not listen on port {port} within {timeout_s:.0f} s.",
                      fix="rerun; on a loaded machine the start can take long.")


def _ends_with_parent() -> None:
    """In the lighthouse's child before exec: SIGTERM it when the process that started it dies, even by SIGKILL
    (a killed `bastion train` would otherwise leave a lighthouse listening for good). Linux only; elsewhere
    `_end` in the launcher's `finally` is all there is."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_replica_groups(config_path: Path, groups: int, group_world_size: int, max_restarts: int,
                       run_dir: Path, python: str = "", stdout_to_stderr: bool = False) -> int:
    """Start the lighthouse and one torchrun per replica group (each restarting its own workers up to
    `max_restarts` times) and wait for all of them; the first non-zero exit code of a group, else 0."""
    from bastion.launch.local import LOOPBACK, free_port, torchrun_command
    from bastion.rundir.launch_record import write_launch_record

    port = free_port()
    out = sys.stderr if stdout_to_stderr else None
    lighthouse = subprocess.Popen(lighthouse_command(port, python), stdout=out, stderr=subprocess.DEVNULL,
                                  start_new_session=True, env={"RUST_LOG": "warn", **os.environ},
                                  preexec_fn=_ends_with_parent)
    processes: list[subprocess.Popen] = []
    try:
        _wait_for_port(port, lighthouse, _LIGHTHOUSE_START_S)
        base = process_environment(worker_env(single_host=True))
        for group in range(groups):
            env = {"RUST_LOG": "warn", **base, LIGHTHOUSE_ENV: f"http://{LOOPBACK}:{port}", GROUP_ENV: str(group)}
            processes.append(subprocess.Popen(
                torchrun_command(group_world_size, max_restarts, str(config_path), python), env=env, stdout=out,
                start_new_session=True))
        # `bastion status` sees the run through group 0's torchrun
        record = {"engine": "local", "pid": processes[0].pid, "pgid": processes[0].pid,
                  "host": socket.gethostname(), "groups_pids": [p.pid for p in processes], "started": time.time()}
        write_launch_record(run_dir, record)
        codes = [p.wait() for p in processes]
    except BaseException:
        for process in processes:
            _end(process)
        raise
    finally:
        _end(lighthouse)
    write_launch_record(run_dir, {**record, "exit_code": next((c for c in codes if c), 0), "ended": time.time(),
                                  "group_exit_codes": codes})
    return next((c for c in codes if c), 0)
