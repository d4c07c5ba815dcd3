"""One torchft replica group's trainer and resilience in this process (a single-process gloo group, the tiny model,
no torchft Manager): what the unit tests of runtime/replicas.py's rules build."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from bastion.runtime.data import prepare_dataset
from bastion.runtime.mesh import build_mesh
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
