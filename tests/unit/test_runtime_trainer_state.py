"""The Trainer as a `Stateful`, in one process: its state_dict is everything a resumed run needs, and the step
hooks it receives per call can keep an update from being applied."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful

from bastion.runtime.data import prepare_dataset
from bastion.runtime.mesh import build_mesh
from bastion.runtime.train_config import TrainConfig
from bastion.runtime.trainer import Trainer
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan

PLAN = {"dp": 1, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}


@pytest.fixture()
def make_trainer(tmp_path):
    """Builds trainers of one run (tiny model, a single-process gloo group)."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    (tmp_path / "t.txt").write_bytes(b"the quick brown fox jumps over the lazy dog. " * 400)
    prepare_dataset([tmp_path / "t.txt"], tmp_path / "data")
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    plan = ParallelPlan.load(tmp_path / "plan.json")

    def make(model: str = "tiny") -> Trainer:
        config = TrainConfig(model=model, plan=str(tmp_path / "plan.json"), data=str(tmp_path / "data"), steps=10,
                             run_dir=str(tmp_path / "run"), seq_len=32, warmup_steps=2)
        return Trainer(config, load_model(model, 32), plan, rmesh)

    rmesh = build_mesh(plan, torch.device("cpu"))
    try:
        yield make
    finally:
        dist.destroy_process_group()


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def test_state_dict_round_trips_into_a_fresh_trainer(make_trainer):
    trained = make_trainer()
    assert isinstance(trained, Stateful)
    for _ in range(3):
        trained.train_step()
    state = trained.state_dict()
    # what a checkpoint writes as JSON must survive JSON (tensors go through DCP)
    json_parts = json.loads(json.dumps({k: v for k, v in state.items() if k != "tensors"}))
    assert set(state) == {"step", "sampler", "scheduler", "optimizer", "tensors"}
    assert {k.split(".")[0] for k in state["tensors"]} == {"model", "optim"}

    fresh = make_trainer()
    fresh.load_state_dict({**json_parts, "tensors": {k: v.clone() for k, v in state["tensors"].items()}})

    assert fresh.step == trained.step == 3
    assert fresh.sampler.consumed_samples == trained.sampler.consumed_samples == 3 * PLAN["global_batch"]
    assert fresh.scheduler.last_epoch == trained.scheduler.last_epoch == 3
    assert fresh.optimizer.param_groups[0]["lr"] == trained.optimizer.param_groups[0]["lr"]
    for name, value in _params(trained).items():
        assert torch.equal(_params(fresh)[name], value), name
    moments = [(a, b) for a, b in zip(fresh.optimizer.state.values(), trained.optimizer.state.values(), strict=True)]
    assert moments
    for mine, theirs in moments:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(mine[key], theirs[key]), key
    # nothing left out: the next step is the same on both (same batch, same lr, same update)
    assert fresh.train_step()["loss"] == trained.train_step()["loss"]
    for name, value in _params(trained).items():
        assert torch.equal(_params(fresh)[name], value), name


class RejectingHooks:
    """Step hooks that refuse every update, as the NaN guard refuses a bad one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int | None]] = []

    def after_backward(self, step, parameters) -> None:
        self.seen.append(("after_backward", step, None))

    def check_grad_norm(self, step, grad_norm, batch_start) -> None:
        self.seen.append(("check_grad_norm", step, batch_start))
        raise RuntimeError("rejected")


def test_hooks_come_per_step_and_a_rejecting_check_keeps_the_update_out(make_trainer):
    trainer = make_trainer()
    trainer.train_step()
    before = _params(trainer)
    hooks = RejectingHooks()
    with pytest.raises(RuntimeError, match="rejected"):
        trainer.train_step(hooks=hooks)
    # called for step 2, about the batch that starts after the first one
    assert hooks.seen == [("after_backward", 2, None), ("check_grad_norm", 2, PLAN["global_batch"])]
    assert trainer.step == 1 and trainer.scheduler.last_epoch == 1
    for name, value in before.items():
        assert torch.equal(_params(trainer)[name], value), name


def test_the_routing_bias_is_checkpointed_state(make_trainer):
    """DeepSeek-V3's aux-loss-free bias moves every step; a resumed run must route with the moved bias."""
    trained = make_trainer("tiny-mla")
    records = [trained.train_step() for _ in range(2)]
    assert [r["router_bias_absmax"] for r in records] == pytest.approx([0.01, 0.02])
    state = trained.state_dict()
    key = "model.layers.1.moe.router.expert_bias"
    assert float(state["tensors"][key].abs().max()) == pytest.approx(0.02)
    fresh = make_trainer("tiny-mla")
    fresh.load_state_dict({**state, "tensors": {k: v.clone() for k, v in state["tensors"].items()}})
    assert torch.equal(fresh.state_dict()["tensors"][key], state["tensors"][key])
    assert fresh.train_step()["loss"] == trained.train_step()["loss"]
