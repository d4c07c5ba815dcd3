"""Checkpoints under --fault-tolerance torchft (runtime/replicas.py, runtime/resilience.py), in one process: the
leading group of the step's quorum writes them (one copy: the groups hold the same state), the others save
nothing; a fresh launch's group starts from the newest committed checkpoint, a restarted group does not read the
disk at its start (it heals from a live peer first) and reads it only when its first quorum finds no peer to heal
from; its `restart` event, logged then, gives the step it got."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bastion.rundir import checkpoints as checkpoint_files
from bastion.rundir.layout import checkpoints_dir
from bastion.runtime.replicas import ReplicaGroups
from bastion.runtime.trainer import Trainer
from helpers.replica_group import FirstQuorum, events, replica_group_builder, restarted_group

PLAN = {"dp": 1, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}
EVERY = 2


class QuorumRank:
    """torchft's Manager as `leads` asks it: this group's rank in the step's quorum (None: not in it)."""

    def __init__(self, rank: int | None) -> None:
        self.rank = rank

    def participating_rank(self) -> int | None:
        return self.rank


def _replicas_at(rank: int | None) -> ReplicaGroups:
    replicas = object.__new__(ReplicaGroups)  # no torchft Manager: only its quorum rank is asked
    replicas.manager = QuorumRank(rank)
    replicas._joined = True
    return replicas


@pytest.mark.parametrize(("quorum_rank", "writes"), [(0, True), (1, False), (None, False)])
def test_the_leading_group_of_the_quorum_writes(quorum_rank: int | None, writes: bool) -> None:
    # group 1 leads a quorum that group 0 is not in (its rank there is 0): the rule survives any group's death
    assert _replicas_at(quorum_rank).leads is writes


@pytest.fixture()
def group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Builds (trainer, resilience) of replica group `g` of one run (tiny model, a single-process gloo group)."""
    with replica_group_builder(tmp_path, monkeypatch, PLAN) as make:
        yield lambda g, attempt=0: make(attempt, resilience={"checkpoint_every": EVERY}, replica_group=g)


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_only_the_writing_group_saves_and_a_restarted_group_reads_the_disk_only_without_a_peer(group,
                                                                                             tmp_path: Path) -> None:
    trainer, resilience = group(1)
    resilience.start()
    leading = False
    resilience.leads = lambda: leading
    for step in range(1, 2 * EVERY + 1):
        leading = step > EVERY  # group 1 leads once group 0 is gone
        record = trainer.train_step(hooks=resilience)
        resilience.after_step(record)
    saved = [c.step for c in checkpoint_files.committed(checkpoints_dir(tmp_path / "run"))]
    assert saved == [2 * EVERY]  # step EVERY was another group's to write

    restarted, restarted_resilience = group(0, attempt=1)
    restarted_resilience.start()
    assert restarted.step == 0  # not from disk: its first quorum heals it from a live peer
    assert not events(tmp_path / "run", "restart")  # where its state comes from is not known yet
    # its first quorum: every group at step 0, no peer was live: the newest checkpoint
    restarted_group(FirstQuorum(groups=2, step=0), 0, restarted_resilience).begin_step()
    restarts = events(tmp_path / "run", "restart")
    assert [(r["replica_group"], r["resumed_from_step"]) for r in restarts] == [(0, 2 * EVERY)]
    assert not events(tmp_path / "run", "resume")  # one event for the one restart
    assert restarted.step == 2 * EVERY and restarted.sampler.consumed_samples == trainer.sampler.consumed_samples
    assert all(torch.equal(a, b) for a, b in zip(_params(restarted), _params(trainer), strict=True))

    relaunched, relaunched_resilience = group(0)
    relaunched_resilience.start()  # a fresh launch (attempt 0): every group loads the newest checkpoint
    assert relaunched.step == 2 * EVERY
    assert all(torch.equal(a, b) for a, b in zip(_params(relaunched), _params(trainer), strict=True))


def test_a_restarted_group_healed_by_a_peer_logs_the_peers_step(group, tmp_path: Path) -> None:
    _, resilience = group(1, attempt=1)
    resilience.start()
    # healed in the quorum from a peer at step 7 (this run has no checkpoint: reading the disk would fail)
    restarted_group(FirstQuorum(groups=2, step=7, rank=1), 1, resilience).begin_step()
    assert [(r["replica_group"], r["resumed_from_step"]) for r in events(tmp_path / "run", "restart")] == [(1, 7)]
