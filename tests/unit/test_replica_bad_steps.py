"""A bad step under --fault-tolerance torchft (runtime/replicas.py `agree`, runtime/resilience.py), in one process:
every replica group takes the same verdict (bad when any group judged it so) and none commits the step; a failed
exchange retries the batch; the group skips the batch without reading the checkpoint directory, counting it in the
run's global batch (every group's share), as --skip-batch does, and says so on the console (no rollback); a skip
before the first quorum is logged by group 0 of a fresh launch only, one after every group reloaded the disk by the
leading group of the quorum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bastion.runtime.replicas import ReplicaGroups, StepNotCommitted
from bastion.runtime.resilience import BadStep
from helpers.replica_group import FirstQuorum, events, replica_group_builder, restarted_group

GROUP_PLAN = {"dp": 1, "micro_batch": 2, "global_batch": 2, "precision": "fp32"}
GROUPS = 2
RUN_BATCH = GROUP_PLAN["global_batch"] * GROUPS


class Peers:
    """torchft's Manager as `agree` uses it: the managed all-reduce averages this group's flag with the other
    groups' (`others`), or fails (`fails`); the votes and reported errors are kept."""

    def __init__(self, others: list[float], fails: bool = False) -> None:
        self.others, self.fails = others, fails
        self.error: Exception | None = None
        self.votes: list[bool] = []

    def allreduce(self, tensor: torch.Tensor):
        if self.fails:
            self.error = RuntimeError("peer gone")
        else:
            tensor.add_(sum(self.others)).div_(1 + len(self.others))
        return self

    def wait(self) -> None:
        pass

    def errored(self) -> Exception | None:
        return self.error

    def report_error(self, error: Exception) -> None:
        self.error = error

    def should_commit(self) -> bool:
        self.votes.append(self.error is None)
        return self.votes[-1]


def _replicas(manager: Peers | None = None, group: int = 0, restarted: bool = False,
              joined: bool = True) -> ReplicaGroups:
    replicas = object.__new__(ReplicaGroups)  # no torchft Manager: a stand-in for the calls asked of it
    replicas.manager, replicas.group, replicas.restarted, replicas._joined = manager, group, restarted, joined
    return replicas


def test_a_step_one_group_judges_bad_is_bad_and_uncommitted_in_every_group() -> None:
    here_good = Peers(others=[1.0])  # the other group judged a spike against its own history
    assert "another replica group" in _replicas(here_good).agree(None)
    assert here_good.votes == [False]  # voted down: torchft's step count stays, like the other group's
    here_bad = Peers(others=[0.0])
    assert _replicas(here_bad).agree("gradient norm is nan") == "gradient norm is nan"
    assert here_bad.votes == [False]


def test_a_step_every_group_judges_good_is_left_to_should_commit() -> None:
    good = Peers(others=[0.0, 0.0])
    assert _replicas(good).agree(None) is None
    assert good.votes == []  # the trainer's should_commit is the step's one vote


@pytest.mark.parametrize("reason", [None, "gradient norm is nan"])
def test_a_failed_verdict_exchange_retries_the_batch(reason: str | None) -> None:
    # the exchanged gradients may be corrupt too: neither applied nor skipped, the same batch again
    peers = Peers(others=[0.0], fails=True)
    with pytest.raises(StepNotCommitted):
        _replicas(peers).agree(reason)
    assert peers.votes == [False]


def test_an_exchange_failed_on_another_rank_of_the_group_retries_the_batch_here_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # this rank's exchange with its peers went through and found the step bad; the group's other rank's failed:
    # every rank of the group retries the batch (none skips it), and votes the step down once
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None, group=None: tensor.fill_(1))
    peers = Peers(others=[1.0])
    with pytest.raises(StepNotCommitted):
        _replicas(peers).agree("gradient norm is nan")
    assert peers.votes == [False]


@pytest.mark.parametrize(("group", "restarted", "leads"), [(0, False, True), (1, False, False), (0, True, False)])
def test_before_the_first_quorum_group_0_of_a_fresh_launch_leads(group: int, restarted: bool, leads: bool) -> None:
    assert _replicas(group=group, restarted=restarted, joined=False).leads is leads


@pytest.fixture()
def replica_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Builds (trainer, resilience) of replica group 0 of a two-group run (tiny model, a single-process gloo
    group) at torchrun's `attempt`, with the given ResilienceConfig fields."""
    with replica_group_builder(tmp_path, monkeypatch, GROUP_PLAN) as make:
        yield lambda attempt=0, **resilience: make(attempt, train={"replica_group": 0, "replica_groups": GROUPS},
                                                   resilience=resilience, replica_group=0, replica_groups=GROUPS)


@pytest.mark.parametrize("leads", [True, False])
def test_skip_batch_names_the_runs_step(replica_group, tmp_path: Path, leads: bool) -> None:
    trainer, resilience = replica_group(skip_batches=(2,))
    resilience.leads = lambda: leads
    resilience.before_step(1, trainer.sampler)
    assert trainer.sampler.consumed_samples == 0
    trainer.sampler.next_global_batch()  # step 1: the run's first RUN_BATCH samples, every group's share
    resilience.before_step(2, trainer.sampler)
    assert trainer.sampler.consumed_samples == 2 * RUN_BATCH  # the run's step 2 skipped, not a group's share
    skips = [e["sample_ids"] for e in events(tmp_path / "run", "skip_batch")]
    assert skips == ([[RUN_BATCH, 2 * RUN_BATCH]] if leads else [])  # logged once for the run, by the leader


def test_a_bad_step_is_skipped_without_reading_the_checkpoints(replica_group, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    trainer, resilience = replica_group(checkpoint_every=1)
    resilience.start()
    for _ in range(2):
        resilience.after_step(trainer.train_step(hooks=resilience))
    assert resilience.checkpointer.config.every == 1 and (tmp_path / "run" / "checkpoints").is_dir()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    resilience.before_step(3, trainer.sampler)
    trainer.sampler.next_global_batch()  # the bad step's batch, read
    resilience.rollback(BadStep(3, 2 * RUN_BATCH, "gradient norm is nan"))
    # no rollback to the step-2 checkpoint (which another group could still be writing): the state is the
    # step before the bad one's already, in every group
    assert trainer.step == 2 and resilience.resumed_from is None
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.sampler.consumed_samples == 3 * RUN_BATCH
    [rollback] = events(tmp_path / "run", "rollback")
    assert rollback["skipped_sample_ids"] == [2 * RUN_BATCH, 3 * RUN_BATCH] and rollback["resumed_from_step"] == 2
    assert resilience.skip_starts == {2 * RUN_BATCH}
    assert json.loads((tmp_path / "run" / "skipped_batches.json").read_text()) == [2 * RUN_BATCH]
    said = capsys.readouterr().out
    assert "step 3 rejected (gradient norm is nan); its update was not applied in any replica group, continuing " \
           f"from step 2 and skipping samples {2 * RUN_BATCH}..{3 * RUN_BATCH - 1}" in said
    assert "rolled back" not in said


@pytest.mark.parametrize("quorum_rank", [0, 1])
def test_a_group_resumed_from_disk_skips_a_rejected_batch_right_after_the_checkpoint(replica_group, tmp_path: Path,
                                                                                    quorum_rank: int) -> None:
    # every group died after the step following a checkpoint was rejected: the restarted groups load that
    # checkpoint inside their first quorum, after before_step skipped from the position it replaced
    trainer, resilience = replica_group(checkpoint_every=1)
    resilience.start()
    for _ in range(2):
        resilience.after_step(trainer.train_step(hooks=resilience))
    trainer.sampler.next_global_batch()
    resilience.rollback(BadStep(3, 2 * RUN_BATCH, "gradient norm is nan"))

    restarted, restarted_resilience = replica_group(attempt=1)
    restarted_resilience.start()
    replicas = restarted_group(FirstQuorum(GROUPS, step=0, rank=quorum_rank), 0, restarted_resilience)
    restarted_resilience.before_step(1, restarted.sampler)  # before the quorum: from the fresh data position
    replicas.begin_step()  # every group at step 0: all load the checkpoint of step 2
    assert restarted.step == 2
    assert restarted.sampler.consumed_samples == 3 * RUN_BATCH  # past the rejected batch, as the others were
    # logged once for the run: by the group that leads the quorum
    skips = [(e["step"], e["sample_ids"]) for e in events(tmp_path / "run", "skip_batch")]
    assert skips == ([(3, [2 * RUN_BATCH, 3 * RUN_BATCH])] if quorum_rank == 0 else [])
