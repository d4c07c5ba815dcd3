"""One replica group's side of `--fault-tolerance torchft` (launch/replica_groups.py says what a group is).

`ReplicaGroups` wraps torchft's `Manager` (one per worker; the group's rank 0 runs its ManagerServer, which talks
to the lighthouse) and is what the trainer calls inside a step:

    begin_step()               the step's quorum (sync: a restarted group heals here, from a live peer, before it
                               reads its batch, or loads the disk, and then logs its restart, at the step it
                               got); the first call waits for every group to be there
    average(tensors, loss)     one managed all-reduce across the participating groups, averaging the gradients
                               (after the group's own reduction) and the loss, and telling which groups took part
    agree(reason)              the NaN guard's verdict of the step, shared: bad in every group when any judged it
                               so, and then no group commits the step (torchft is told its gradients are bad); a
                               failed exchange (on any rank of the group): not committed, retried on the same batch
    should_commit()            every group agrees to apply the update (False after a failed all-reduce: the step
                               is retried on the same batch)

A group that misses a step (dead, not yet back) contributes nothing to it: its share of that step's global batch
is not trained on (torchft's semantics). Each step record says which groups took part (`replica_groups`) and which
samples were dropped (`dropped_sample_ids`); drops and rejoins are events, and the summary counts them.

Checkpoints (the run's normal ones, RUN_DIR/checkpoints): after a committed step every group holds bit-identical
state, so one copy is enough. The leading group of the step's quorum writes it (`leads`: whichever groups are
alive, exactly one of them leads, so the rule survives any group's death), its rank 0 commits it. Where a group's
state comes from when it starts:
    a fresh launch (attempt 0)    the newest committed checkpoint (runtime/resilience.py, unless --no-resume):
                                  every group loads the same one, so the groups start identical
    a restarted group             a live peer at its first quorum (torchft's heal, faster than the disk); only
                                  when no peer has stepped (every group died and was restarted), the newest
                                  committed checkpoint (`resume_from_disk`). A restarted group never reads the
                                  checkpoint directory while a live peer may be writing into it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bastion.rundir.metrics import log_event, read_metrics
from bastion.rundir.records import REPLICA_GROUP_DROP, REPLICA_GROUP_JOIN
from bastion.rundir.summary import read_summary, summary_is_final
from bastion.runtime.data import dp_slice

#: collectives, checkpoint transfer and should_commit give up after this long (a dead peer fails faster: gloo
#: sees the closed connection)
TIMEOUT_S = 60.0
#: how long the first quorum waits for every group to be there before stepping with those that are
JOIN_S = 120.0


class StepNotCommitted(Exception):
    """The groups did not agree to apply this step's update (a peer failed during it): retry the same batch."""


class RunEndedWithoutGroup(Exception):
    """A restarted group found the run finished by the others: nothing is left for it to do."""


class ReplicaGroups:
    def __init__(self, group: int, groups: int, train_state: Any, run_dir: Path,
                 back_at: int | None = None, resume_from_disk: Callable[[], int | None] | None = None,
                 restarted_at: Callable[[int], None] | None = None) -> None:
        """`train_state`: the trainer (already resumed from a checkpoint on a fresh launch). `resume_from_disk`:
        restores the newest committed checkpoint (collective within the group), returning its step or None; a
        restarted group calls it when no live peer was there to heal from. `restarted_at(step)`: a restarted
        group's state is in place, at `step` (healed from a peer or loaded from disk), in its first quorum."""
        from torchft import Manager, ProcessGroupGloo

        # a warning on every reconfiguration that concerns NCCL's flight recorder, which gloo has not
        logging.getLogger("torchft.manager").addFilter(lambda record: "flight recorder" not in str(record.msg))
        self.group, self.groups = group, groups
        self.run_dir = Path(run_dir)
        #: this group's workers were restarted (torchrun): it has to heal from a live peer
        self.restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        if self.restarted and back_at is not None:
            # a lost node of this group is back from step `back_at` on (`--inject lose-node:...,back_at=N`): until
            # then nothing of the group exists for the lighthouse (no manager, no heartbeat)
            self._wait_for_node(back_at)
        self.rank = dist.get_rank()
        timeout = timedelta(seconds=TIMEOUT_S)
        # init_sync False: every group initialises the same parameters from the run's seed
        self.manager = Manager(pg=ProcessGroupGloo(timeout=timeout), load_state_dict=train_state.load_state_dict,
                               state_dict=train_state.state_dict, min_replica_size=1, use_async_quorum=False,
                               timeout=timeout, quorum_timeout=timedelta(seconds=JOIN_S),
                               connect_timeout=timeout, rank=self.rank, world_size=dist.get_world_size(),
                               replica_id=f"bastion_group_{group}", hostname="127.0.0.1", init_sync=False)
        if train_state.step:  # resumed from a checkpoint: torchft counts steps from there (its quorum's max_step)
            self._set_manager_step(train_state.step)
        self._resume_from_disk = resume_from_disk
        self._restarted_at = restarted_at
        self._joined = False
        #: the groups that took part in the last step
        self.participants: list[int] = list(range(groups))

    def begin_step(self) -> None:
        """The step's quorum. The first waits (up to JOIN_S) until every group is in it."""
        self.manager.start_quorum()
        if self._joined:
            return
        deadline = time.monotonic() + JOIN_S
        while self.manager.num_participants() < self.groups and time.monotonic() < deadline:
            if self.restarted and self.manager.current_step() == 0 and self._run_finished():
                raise RunEndedWithoutGroup(f"replica group {self.group} came back after the run had finished")
            time.sleep(0.5)
            self.manager.start_quorum()
        # in the quorum from here on: `leads` is the quorum's (the leading group logs a batch the disk's data
        # position skips, below)
        self._joined = True
        if not self.restarted:
            return
        step = self.manager.current_step()  # healed from a live peer in the quorum: that peer's step
        if step == 0:
            # every participant is at step 0: no live peer to heal from (all groups died); each of them takes the
            # same newest committed checkpoint
            step = self._resume_from_disk() if self._resume_from_disk is not None else None
            if not step:
                raise RuntimeError(f"Replica group {self.group} restarted, but no live replica group was there to "
                                   f"heal from within {JOIN_S:.0f} s, and the run has no committed checkpoint.")
            self._set_manager_step(step)
        if self._restarted_at is not None:
            self._restarted_at(step)

    def _set_manager_step(self, step: int) -> None:
        self.manager.load_state_dict({"step": step, "batches_committed": self.manager.batches_committed()})

    def _wait_for_node(self, back_at: int) -> None:
        """Until the other groups' step records reach step back_at - 1."""
        while True:
            done = max((r["step"] for r in read_metrics(self.run_dir).records if "event" not in r and "step" in r),
                       default=0)
            if done >= back_at - 1:
                return
            if self._run_finished():
                raise RunEndedWithoutGroup(f"replica group {self.group}'s node came back after the run had finished")
            time.sleep(1.0)  # each look reads the whole metrics.jsonl: a step or two late is no matter here

    def _run_finished(self) -> bool:
        summary = read_summary(self.run_dir)
        return summary is not None and summary_is_final(summary)

    def average(self, tensors: list[torch.Tensor], loss: torch.Tensor) -> None:
        """Average `tensors` (this rank's gradient shards) and `loss` in place across the participating groups
        (one all-reduce); records which groups took part."""
        count = self.manager.num_participants()
        present = torch.zeros(self.groups, dtype=torch.float32)
        present[self.group] = count  # the average divides by `count`: the sum of these marks is 1 per group
        flat = torch.cat([*(t.detach().reshape(-1).to(torch.float32) for t in tensors),
                          loss.detach().reshape(1).to(torch.float32), present])
        self.manager.allreduce(flat).wait()
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()
        loss.copy_(flat[offset])
        self.participants = [g for g in range(self.groups) if flat[offset + 1 + g] > 0.5]

    def agree(self, reason: str | None) -> str | None:
        """The step's verdict in every participating group: `reason` (this group's: None when good), or why
        another group found the step bad. The groups average the same gradients, but a spike is judged against
        each group's own history of norms, which a healed group lacks. A bad step is then voted down in every
        group (torchft's protocol for gradients that must be discarded: its step count stays where every
        group's is) and the caller skips it. Raises StepNotCommitted when the exchange failed (the gradients
        themselves may then be corrupt): the step is retried on the same batch, by every rank of the group when
        any of them failed (each exchanges with its own peers in the other groups: a group whose ranks took
        different ways, one retrying the batch, another skipping it, would train its shards on different data)."""
        flag = torch.tensor([0.0 if reason is None else 1.0])
        self.manager.allreduce(flag).wait()
        if _on_any_rank(self.manager.errored() is not None):
            if self.manager.errored() is None:  # another rank's exchange failed: this rank votes it down too
                self.manager.report_error(RuntimeError("another rank of the replica group could not share the "
                                                       "step's verdict"))
            self.manager.should_commit()  # False; the group's ranks vote together once per step, as torchft asks
            raise StepNotCommitted("the replica groups could not share the step's verdict")
        if reason is None and flag.item() > 0:
            reason = "another replica group judged the step bad (gradient norm)"
        if reason is not None:
            self.manager.report_error(RuntimeError(f"the step's gradients are bad: {reason}"))
            self.manager.should_commit()  # False in every group
        return reason

    def should_commit(self) -> bool:
        return self.manager.should_commit()

    @property
    def leads(self) -> bool:
        """This group is the first of the last quorum: its rank 0 writes metrics.jsonl and summary.json, and the
        group writes the step's checkpoint. Exactly one participating group leads each quorum, whichever are
        alive; a group outside the quorum (participating rank None) does not. Before its first quorum (a batch
        skipped before step 1's), group 0 of a fresh launch leads: every group starts from the same state."""
        if not self._joined:
            return self.group == 0 and not self.restarted
        return self.manager.participating_rank() == 0

    def step_fields(self, step: int, sample_ids: list[int], previous: list[int]) -> dict[str, Any]:
        """The step record's fields: the groups that took part and the samples of the groups that did not; the
        leading group's rank 0 logs a drop/join event when the groups changed since `previous`."""
        missing = [g for g in range(self.groups) if g not in self.participants]
        dropped = []
        for g in missing:
            share = dp_slice(sample_ids, g, self.groups)
            dropped.append([share[0], share[-1] + 1])
        if self.rank == 0 and self.leads:
            gone = [g for g in previous if g not in self.participants]
            back = [g for g in self.participants if g not in previous]
            if gone:
                log_event(self.run_dir, REPLICA_GROUP_DROP.name, step=step, groups=gone, participating=self.participants)
            if back:
                log_event(self.run_dir, REPLICA_GROUP_JOIN.name, step=step, groups=back, participating=self.participants)
        return {"replica_groups": self.participants, "dropped_sample_ids": dropped}

    def shutdown(self) -> None:
        self.manager.shutdown(wait=False)


def _on_any_rank(flag: bool) -> bool:
    """Whether `flag` is set on any rank of this replica group (a collective of the group's own ranks)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    shared = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(shared, op=dist.ReduceOp.MAX)
    return bool(shared.item())


def replica_summary(run_dir: Path, groups: int, global_batch: int) -> dict[str, Any]:
    """summary.json's `replica_groups` section from metrics.jsonl: steps some group missed, drops, rejoins and
    the samples trained on and dropped (the last record of each step counts)."""
    records = read_metrics(run_dir).records
    steps: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("event") is None and "replica_groups" in record:
            steps[record["step"]] = record
    dropped = sum(end - start for r in steps.values() for start, end in r.get("dropped_sample_ids", []))
    return {"groups": groups,
            "steps_with_fewer_groups": sum(1 for r in steps.values() if len(r["replica_groups"]) < groups),
            "drops": sum(1 for r in records if r.get("event") == REPLICA_GROUP_DROP.name),
            "rejoins": sum(1 for r in records if r.get("event") == REPLICA_GROUP_JOIN.name),
            "samples_trained": len(steps) * global_batch - dropped, "samples_dropped": dropped}
