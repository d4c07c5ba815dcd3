"""Fault tolerance of one worker, as a few calls the training loop makes: resume, checkpoint, inject, watch, roll back.

    res = Resilience(config.resilience, run_dir, trainer, spec, plan)  # the trainer: the Stateful it checkpoints
    res.start()                                      # resume from the newest valid checkpoint (collective)
    while trainer.step < steps and not res.should_stop(trainer.step):
        res.before_step(trainer.step + 1, trainer.sampler)  # skip known-bad batches, fire faults, arm the watchdog
        try:
            record = trainer.train_step(hooks=res)   # calls res.after_backward / res.check_grad_norm (NaN guard)
                                                     # and res.before_sync (slow / flaky-link faults)
        except BadStep as bad:
            trainer.optimizer.zero_grad(set_to_none=True)
            res.rollback(bad)                        # last good checkpoint, skip the offending batch
            continue
        res.after_step(record, last=trainer.step >= steps)  # checkpoint when due (and the final step), disarm
    summary |= res.finish()               # restarts, lost steps, recovery, stall, goodput

Which checkpoint a run starts from: the newest valid one in RUN_DIR/checkpoints (a restarted worker, or a run
continued with --resume); if there is none, --resume-from PATH. Valid means its manifest checks out (and is
authenticated, with a checkpoint key), its DCP metadata is the kind bastion writes, and it loads: one that fails
any of these is quarantined and the previous one is tried. When every one was bad the run is refused rather
than restarted at step 0, unless --restart-from-scratch says that is intended. Elastic restarts come from
torchrun's agent (`--max-restarts`); everything a restarted worker needs is on disk.

Under --fault-tolerance torchft (runtime/replicas.py) a bad step is every replica group's: the groups average
their gradients before the check, and the verdict is shared (`agree`: bad when any group judges it so, as a
spike can be judged against a healed group's shorter history). Every group then reports it to torchft as not
committed and skips the batch without a rollback: the update was never applied, so each group still holds the
state of the step before, bit-identical to the others'. No group reads the checkpoint directory while the
leading group may be writing into it. Batches are counted in the run's global batch (every group's share), so
`--skip-batch N` names the run's step N; the leading group logs the run's events of a skip once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful

from bastion.errors import BastionError, CheckpointError
from bastion.rundir import checkpoints as checkpoint_files
from bastion.rundir.accounting import account
from bastion.rundir.layout import checkpoints_dir
from bastion.rundir.metrics import log_event, read_metrics
from bastion.rundir.summary import plan_change_entries, straggler_entries
from bastion.runtime import checkpoint as ck
from bastion.runtime.checkpoint_key import checkpoint_key
from bastion.runtime.data import GlobalSampler
from bastion.runtime.faults import FaultInjector, parse_fault
from bastion.runtime.recovery import NanGuard, NanGuardConfig, choose_interval
from bastion.runtime.resilience_config import ResilienceConfig
from bastion.runtime.resume_source import all_checkpoints_bad, resolve_resume_source, same_model
from bastion.runtime.watchdog import StepWatchdog, WatchdogConfig

#: the first save of `--checkpoint-every auto` (its stall is measured) happens after this many steps
AUTO_PROBE_STEP = 3


class _OtherRequest(CheckpointError):
    """The checkpoint holds another model or was trained on other data: the request is wrong, not the checkpoint
    (never quarantined)."""


class BadStep(Exception):
    """A step whose gradients must not be applied (NaN/Inf or a spike)."""

    def __init__(self, step: int, batch_start: int, reason: str) -> None:
        super().__init__(f"step {step}: {reason}")
        self.step = step
        self.batch_start = batch_start
        self.reason = reason


class Resilience:
    def __init__(self, config: ResilienceConfig, run_dir: Path, train_state: Stateful, spec: Any, plan: Any,
                 replica_group: int | None = None, replica_groups: int = 1) -> None:
        """`replica_group`: this worker's torchft replica group (runtime/replicas.py, one of `replica_groups`),
        whose ranks are numbered after the lower groups' in --inject; its restarts are tagged with it, only group
        0 starts the run, and the group saves a checkpoint and logs a skipped batch only when `leads()` says so
        (runtime/replicas.py's `leads`)."""
        self.config = config
        self.run_dir = Path(run_dir)
        #: what a checkpoint holds of the training (runtime/trainer.py's Trainer): read and restored as a whole
        self.train_state = train_state
        self.spec = spec
        self.plan = plan
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        every = max(0, config.checkpoint_every)  # `auto` (-1) is decided after the probe save
        async_group = dist.new_group(backend="gloo") if (config.async_checkpoint and self.world > 1) else None
        self.checkpointer = ck.Checkpointer(
            ck.CheckpointConfig(checkpoints_dir(self.run_dir), every=every,
                                retention=checkpoint_files.RetentionPolicy(config.keep_last, config.keep_every),
                                async_save=config.async_checkpoint, key=checkpoint_key(config.checkpoint_key_file)),
            rank=self.rank, world_size=self.world, async_group=async_group)
        self.replica_group = replica_group
        #: samples per step of the run (every replica group's share): the unit batches are skipped in
        self.global_batch = plan.global_batch * replica_groups
        #: whether this worker's group writes the current step's checkpoint and the run's skip records (set by
        #: the replica groups; one group writes, the others hold the same state)
        self.leads: Callable[[], bool] = lambda: True
        #: the step's verdict as every replica group takes it, from this group's (set by the replica groups)
        self.agree: Callable[[str | None], str | None] = lambda reason: reason
        fault_rank = self.rank + (replica_group or 0) * self.world
        self.injector = FaultInjector([parse_fault(s) for s in config.inject], self.run_dir, fault_rank)
        self.checkpointer.before_commit = self.injector.before_commit
        self.nan_guard = NanGuard(NanGuardConfig(spike_factor=config.spike_factor))
        self.watchdog = StepWatchdog(WatchdogConfig(factor=config.hang_factor, min_timeout_s=config.hang_min_s,
                                                    startup_timeout_s=10 * config.hang_min_s),
                                     self.run_dir, self.rank)
        self.skip_starts: set[int] = {(s - 1) * self.global_batch for s in config.skip_batches}
        self.resumed_from: int | None = None
        self._step_times: list[float] = []
        self._commits_logged = 0

    # ---- persisted run-level state ------------------------------------------------------------------
    @property
    def _skips_file(self) -> Path:
        return self.run_dir / "skipped_batches.json"

    def _persisted_skips(self) -> set[int]:
        if self._skips_file.is_file():
            return set(json.loads(self._skips_file.read_text()))
        return set()

    # ---- start / resume -----------------------------------------------------------------------------
    def start(self) -> None:
        """Resume when there is something to resume from (collective); log the start or restart."""
        started = time.time()
        source = None
        # a restarted torchft group heals from a live peer first (runtime/replicas.py, `resume_from_disk`)
        restarted_group = self.replica_group is not None and self.attempt > 0
        if (self.config.resume or self.attempt > 0) and not restarted_group:
            source = self._restore_newest()
            deliberate = self.config.restart_from_scratch or not self.config.resume or bool(self.config.resume_from)
            if source is None and not deliberate and checkpoint_files.quarantined_checkpoints(
                    self.checkpointer.config.directory):
                raise all_checkpoints_bad(self.run_dir)
        continuing = source is not None
        if continuing or self.attempt > 0:  # batches this run rejected before it was restarted
            self.skip_starts |= self._persisted_skips()
        if source is None and self.config.resume_from:
            source = resolve_resume_source(Path(self.config.resume_from))
            self.restore(source)
        # a new run (fresh, or seeded from another run's checkpoint) starts the wall clock of the accounting;
        # a restart or a continuation of this run directory's own checkpoints keeps counting
        if self.rank == 0 and self.attempt == 0 and not continuing and not self.replica_group:
            log_event(self.run_dir, "run_start", world_size=self.world, plan=self.plan.to_dict(), time=started)
        # a restarted torchft group knows its step only in its first quorum (`restarted_at`)
        if (self.attempt > 0 or source is not None) and not restarted_group:
            self._log_start(self.resumed_from or 0)

    def _log_start(self, step: int) -> None:
        """Rank 0: the `restart` (torchrun restarted the workers) or `resume` (a launch) event of this process
        start, resumed from `step`."""
        if self.rank == 0:
            group = {} if self.replica_group is None else {"replica_group": self.replica_group}
            log_event(self.run_dir, "restart" if self.attempt > 0 else "resume", attempt=self.attempt,
                      resumed_from_step=step, world_size=self.world, plan=self.plan.to_dict(), **group)

    def restarted_at(self, step: int) -> None:
        """A restarted torchft replica group's state is in place, at `step`: healed from a live peer, or loaded
        from disk by `resume_from_disk` (runtime/replicas.py, the group's first quorum). Logs its restart."""
        self._log_start(step)

    def resume_from_disk(self) -> int | None:
        """Restore the newest committed checkpoint of this run (collective); its step, or None when there is
        none (a restarted torchft group that found no live peer to heal from)."""
        if self._restore_newest() is None:
            return None
        # inside the step's quorum, after before_step had skipped from the position the disk now replaced: the
        # checkpoint may end right before a batch the groups rejected
        self._skip_known_bad(self.resumed_from + 1, self.train_state.sampler)
        return self.resumed_from

    def _report_bad(self, info: checkpoint_files.CheckpointInfo, reason: str, moved: Path) -> None:
        log_event(self.run_dir, "checkpoint_corrupt", step=info.step, reason=reason, moved_to=str(moved))
        print(f"bastion: checkpoint of step {info.step} is bad ({reason}); "
              f"set aside at {moved}, using the previous one", flush=True)

    def _restore_newest(self) -> checkpoint_files.CheckpointInfo | None:
        """Restore the newest of this run's checkpoints that verifies and loads (collective). One that verifies
        but fails to load is quarantined like a corrupt one and the previous one is tried. Returns None when
        none is left; raises when one failed half-way and none is left (the state is no longer a fresh start)."""
        half_loaded = False
        while (source := self.checkpointer.newest_valid(on_bad=self._report_bad)) is not None:
            failure = None
            try:
                self.restore(source)
            except _OtherRequest:
                raise
            except Exception as exc:  # any failure of a verified checkpoint: it cannot be resumed
                text = str(exc).strip()
                failure = "verified but failed to load: " + (text.splitlines()[-1][:300] if text
                                                               else type(exc).__name__)
                print(f"bastion: rank {self.rank}: checkpoint of step {source.step} {failure}", flush=True)
            if not self._failed_on_any_rank(failure is not None):
                return source
            half_loaded = True
            if self.rank == 0:
                reason = failure or "verified but failed to load on another rank (see its output)"
                self._report_bad(source, reason, checkpoint_files.quarantine(source.path, reason))
        if half_loaded:
            raise all_checkpoints_bad(self.run_dir)
        return None

    def _failed_on_any_rank(self, failed: bool) -> bool:
        if not dist.is_initialized():
            return failed
        flag = torch.tensor([int(failed)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self, source: checkpoint_files.CheckpointInfo) -> int:
        """Load the training state (model, optimizer, schedule, data position, step) and, same layout only, the
        RNG from `source`; returns the step it resumes from."""
        state = ck.read_run_state(source.path)
        if not same_model(state.get("model", {}), self.spec.to_dict()):
            raise _OtherRequest(f"The checkpoint at {source.path} holds model '{state.get('model', {}).get('name')}'"
                                  f", not '{self.spec.name}'.", fix="resume with the model it was saved with.")
        check_resumable = getattr(self.train_state, "check_resumable", None)
        if check_resumable is not None:  # before any tensor is loaded: a refusal leaves the live state untouched
            try:
                check_resumable(state)
            except BastionError as exc:
                raise _OtherRequest(exc.problem, fix=exc.fix) from None
        train_state = self.train_state.state_dict()  # this rank's layout: DCP fills its tensors in place
        ck.load_tensors(source.path, train_state["tensors"], distributed=dist.is_initialized())
        # each rank saved the settings of the parameters it held; under another plan a rank needs others'
        train_state["optimizer"] = ck.read_all_rank_hparams(source.path)
        train_state.update(step=state["step"], sampler=state["sampler"], scheduler=state["scheduler"])
        self.train_state.load_state_dict(train_state)
        self.skip_starts |= set(state.get("skipped_batch_starts", []))
        same_layout = state.get("world_size") == self.world and state.get("plan") == self.plan.to_dict()
        rank_state = ck.read_rank_state(source.path, self.rank)
        if same_layout and rank_state is not None:
            ck.restore_rng(rank_state["rng"])
        self.resumed_from = int(state["step"])
        return self.resumed_from

    # ---- per step ------------------------------------------------------------------------------------
    def before_step(self, step: int, sampler: GlobalSampler) -> None:
        """Advance `sampler` (the trainer's data position) past known-bad batches; fire step-start faults."""
        self._skip_known_bad(step, sampler)
        self.watchdog.step_began(step)  # armed first, so a hang fault is caught on the hung rank itself
        self.injector.at_step_start(step)

    def _skip_known_bad(self, step: int, sampler: GlobalSampler) -> None:
        while sampler.consumed_samples in self.skip_starts:
            start = sampler.consumed_samples
            sampler.next_global_batch()
            if self.rank == 0 and self.leads():
                log_event(self.run_dir, "skip_batch", step=step, sample_ids=[start, start + self.global_batch])

    def after_backward(self, step: int, parameters: list[torch.nn.Parameter]) -> None:
        self.injector.poison_gradients(step, parameters)

    def check_grad_norm(self, step: int, grad_norm: float, batch_start: int) -> None:
        """Right before the optimizer step: hold it until an async save has copied the state, then judge the
        batch that starts at global sample `batch_start`."""
        waited = self.checkpointer.wait_staged()
        if waited > 0 and self.rank == 0:
            log_event(self.run_dir, "checkpoint_wait", step=step, stall_s=round(waited, 6))
        reason = self.agree(self.nan_guard.judge(grad_norm))
        if reason is not None:
            raise BadStep(step, batch_start, reason)
        self.nan_guard.remember(grad_norm)

    def before_sync(self, step: int, compute_s: float) -> None:
        """Local work done, the closing collective next: the slow and flaky-link faults act here."""
        self.injector.slow_down(step, compute_s)
        self.injector.link_delay(step)

    def injected_gpu_problem(self) -> str | None:
        """The device problem a `bad-gpu` fault makes this rank's health check report (once per run)."""
        return self.injector.gpu_problem(self.resumed_from or 0)

    def before_collective(self) -> None:
        """Before a collective outside the step (the health check): the flaky-link fault waits here."""
        self.injector.link_delay(self.resumed_from or 0)

    def after_step(self, record: dict[str, Any], last: bool = False) -> None:
        """`last`: `record` is the run's final step, which is always saved unless --checkpoint-every never."""
        step = record["step"]
        self.watchdog.step_ended(step)
        self._step_times.append(record["step_time_s"])
        self.checkpointer.poll()
        self._log_commits()
        if not self.leads():
            pass  # another torchft replica group, holding the same state, writes this step's checkpoint
        elif self.config.checkpoint_every < 0 and self.checkpointer.config.every == 0 and step >= AUTO_PROBE_STEP:
            self.save(step)
            self._choose_auto_interval()
        elif (self.checkpointer.due(step) or step == self.config.stop_after_step
              or (last and self.config.save_final)):
            self.save(step)
        self.injector.after_step(step, self.checkpointer.config.directory, self.checkpointer.wait)

    def should_stop(self, step: int) -> bool:
        """Whether the loop ends after `step` optimizer steps (--stop-after-step, or a preemption notice)."""
        return 0 < self.config.stop_after_step <= step

    def save(self, step: int) -> float:
        train_state = self.train_state.state_dict()
        # tensors go to DCP; the JSON parts to state.json (shared) and rankNNNNN.json (this rank's), whose keys
        # are the checkpoint format: `restore` reads every checkpoint bastion has written through them
        run_state = {"format": 1, "step": train_state["step"], "sampler": train_state["sampler"],
                     "scheduler": train_state["scheduler"],
                     "plan": self.plan.to_dict(), "model": self.spec.to_dict(), "world_size": self.world,
                     "skipped_batch_starts": sorted(self.skip_starts), "saved_unix": time.time()}
        stall = self.checkpointer.save(step, train_state["tensors"], run_state,
                                       {"rng": ck.capture_rng(), "optimizer": train_state["optimizer"]})
        if self.rank == 0:
            # where a save began; an async one reaches disk a step or more later (`checkpoint_committed`)
            log_event(self.run_dir, "checkpoint", step=step, stall_s=round(stall, 6),
                      mode="async" if self.config.async_checkpoint else "sync")
        self._log_commits()
        return stall

    def _log_commits(self) -> None:
        """Rank 0: a `checkpoint_committed` event for each save committed on disk since the last call, with the
        time of its commit (logged from the training thread, which owns metrics.jsonl)."""
        commits = self.checkpointer.commits
        for step, when in commits[self._commits_logged:]:
            log_event(self.run_dir, "checkpoint_committed", step=step, committed_unix=when)
        self._commits_logged = len(commits)

    def _choose_auto_interval(self) -> None:
        measured = self._step_times[1:] or self._step_times
        step_s = sorted(measured)[len(measured) // 2]
        self.checkpointer.wait_staged()  # count the whole copy: an upper bound of what the loop will wait
        stall = self.checkpointer.stall_s
        # every rank must pick the same interval: take the slowest rank's figures
        figures = torch.tensor([stall, step_s], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(figures, op=dist.ReduceOp.MAX)
        choice = choose_interval(float(figures[0]), float(figures[1]), self.world, self.config.mtbf_hours)
        self.checkpointer.config = dataclasses.replace(self.checkpointer.config, every=choice.every_steps)
        if self.rank == 0:
            print(f"bastion: {choice.explain()}", flush=True)
            log_event(self.run_dir, "checkpoint_interval", every_steps=choice.every_steps,
                      interval_s=choice.interval_s, stall_s=choice.stall_s, step_s=choice.step_s,
                      mtbf_hours=choice.mtbf_s / 3600, why=choice.explain())

    # ---- NaN / spike rollback ----------------------------------------------------------------------
    def rollback(self, bad: BadStep) -> None:
        """Skip the offending batch from now on and continue from the last good checkpoint (under torchft: from
        the state before the step, which every replica group holds; the sampler is past the batch already)."""
        self.watchdog.step_ended(bad.step)
        self.skip_starts.add(bad.batch_start)
        logs = self.rank == 0 and self.leads()
        if logs:
            self._skips_file.write_text(json.dumps(sorted(self.skip_starts)))
        self.checkpointer.wait()
        self._log_commits()
        # nothing to roll back to (no checkpoint; or torchft, where the checkpoint another group may still be
        # writing is no common point): the update was never applied, so dropping the batch is enough
        source = self._restore_newest() if self.replica_group is None else None
        resumed = self.resumed_from if source is not None else bad.step - 1
        end = bad.batch_start + self.global_batch
        if logs:
            log_event(self.run_dir, "rollback", step=bad.step, reason=bad.reason,
                      skipped_sample_ids=[bad.batch_start, end], resumed_from_step=resumed,
                      checkpoint=source is not None)
            if source is not None:
                done = f"rolled back to the checkpoint of step {resumed}"
            else:
                anywhere = "" if self.replica_group is None else " in any replica group"
                done = f"its update was not applied{anywhere}, continuing from step {resumed}"
            print(f"bastion: step {bad.step} rejected ({bad.reason}); {done} and skipping samples "
                  f"{bad.batch_start}..{end - 1}", flush=True)

    # ---- end ---------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Wait for the last save; rank 0 returns the accounting fields for summary.json."""
        self.checkpointer.close()
        self._log_commits()
        self.watchdog.close()
        if dist.is_initialized():
            dist.barrier()  # every rank's last save is committed before the summary is written
        if self.rank != 0:
            return {}
        records = read_metrics(self.run_dir).records
        fields = account(records, time.time())
        fields["stragglers"] = straggler_entries(records)
        fields["plan_changes"] = plan_change_entries(records)
        fields["restarts"] = max(fields["restarts"], self.attempt)
        fields["checkpoints"] = [c.step for c in checkpoint_files.committed(self.checkpointer.config.directory)]
        fields["skipped_batch_starts"] = sorted(self.skip_starts)
        return fields
