"""One torchft replica group's trainer and resilience in this process (a single-process gloo group, the tiny model,
no torchft Manager): what the unit tests of runtime/replicas.py's rules build; and a restarted group's
`ReplicaGroups` whose first quorum is a stand-in (`restarted_group`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from bastion.rundir.metrics import read_metrics
from bastion.runtime.data import prepare_dataset
from bastion.runtime.mesh import build_mesh
from bastion.runtime.replicas import ReplicaGroups
from bastion.runtime.resilience import Resilience
from bastion.runtime.resilience_config import ResilienceConfig
from bastion.runtime.train_config import TrainConfig
from bastion.runtime.trainer import Trainer
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan

#: make(attempt, train=TrainConfig fields, resilience=ResilienceConfig fields, **Resilience arguments)
MakeGroup = Callable[..., tuple[Trainer, Resilience]]


@contextlib.contextmanager
def replica_group_builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: dict[str, Any]) -> Iterator[MakeGroup]:
    """Yields `make`, which builds a (trainer, resilience) of the run in tmp_path/run as torchrun's `attempt`
    would start it; every one built is closed, and the process group destroyed, on exit."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    (tmp_path / "t.txt").write_bytes(b"the quick brown fox jumps over the lazy dog. " * 400)
    prepare_dataset([tmp_path / "t.txt"], tmp_path / "data")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "run").mkdir(exist_ok=True)
    group_plan = ParallelPlan.load(tmp_path / "plan.json")
    spec = load_model("tiny", 32)
    rmesh = build_mesh(group_plan, torch.device("cpu"))
    made: list[Resilience] = []

    def make(attempt: int = 0, train: dict[str, Any] | None = None, resilience: dict[str, Any] | None = None,
             **arguments: Any) -> tuple[Trainer, Resilience]:
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
        config = TrainConfig(model="tiny", plan=str(tmp_path / "plan.json"), data=str(tmp_path / "data"), steps=10,
                             run_dir=str(tmp_path / "run"), seq_len=32, warmup_steps=2, **(train or {}))
        trainer = Trainer(config, spec, group_plan, rmesh)
        made.append(Resilience(ResilienceConfig(**{"async_checkpoint": False, **(resilience or {})}),
                               tmp_path / "run", trainer, spec, group_plan, **arguments))
        return trainer, made[-1]

    try:
        yield make
    finally:
        for resilience in made:
            resilience.checkpointer.close()
            resilience.watchdog.close()
        dist.destroy_process_group()


class FirstQuorum:
    """torchft's Manager as a restarted group's first quorum (`begin_step`) asks it: every group is there, at the
    quorum's `step` (0: no live peer had stepped; else the group was healed from a peer at that step), this group
    at `rank` in it."""

    def __init__(self, groups: int, step: int, rank: int = 0) -> None:
        self.groups, self.step, self.rank = groups, step, rank

    def start_quorum(self) -> None:
        pass

    def num_participants(self) -> int:
        return self.groups

    def current_step(self) -> int:
        return self.step

    def participating_rank(self) -> int:
        return self.rank

    def batches_committed(self) -> int:
        return 0

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


def restarted_group(quorum: FirstQuorum, group: int, resilience: Resilience) -> ReplicaGroups:
    """Replica group `group` restarted by torchrun, wired to `resilience` as runtime/train.py wires it, with
    `quorum` as its Manager."""
    replicas = object.__new__(ReplicaGroups)  # no torchft Manager: the stand-in answers what begin_step asks
    replicas.manager, replicas.group, replicas.groups = quorum, group, quorum.groups
    replicas.restarted, replicas._joined, replicas.run_dir = True, False, resilience.run_dir
    replicas._resume_from_disk, replicas._restarted_at = resilience.resume_from_disk, resilience.restarted_at
    resilience.leads = lambda: replicas.leads
    return replicas


def events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """The run's events of `kind`, in order."""
    return [r for r in read_metrics(run_dir).records if r.get("event") == kind]
