"""A polite stop: SIGTERM asks the training loop to checkpoint after the current step and stop.

Schedulers announce the end of an allocation with SIGTERM: Slurm's time-limit warning (the batch script traps
`--signal=B:USR1@…` and sends SIGTERM to the job step: torchrun and every worker), Kubernetes deleting or evicting a
pod (terminationGracePeriodSeconds), torchrun shutting its workers down. torchrun forwards SIGTERM and kills what
is left 30 s later (its shutdown timeout), so the save must fit in that time. The handler only sets a flag; at the next step boundary the ranks agree on it with one
all-reduce, so all of them save the same step, and the requeued or restarted job resumes from that checkpoint.
The save and the stop are the fault-tolerance layer's own "stop after step N" (`--stop-after-step`), with N set
to the step just finished.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from bastion.rundir.metrics import log_event


class PreemptionNotice:
    """Remembers that SIGTERM arrived; `agreed()` tells every rank at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_number: int | None = None

    def install(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> PreemptionNotice:
        # Python delivers signals to the main thread only; a worker started elsewhere keeps the default action
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_number = signum

    def agreed(self) -> bool:
        """True on every rank when any rank has been asked to stop (a collective: all ranks must call it)."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)  # CPU tensor: gloo carries it
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def stop_here_if_asked(self, resilience: Any, step: int) -> bool:
        """Call after `step` is finished and before `resilience.after_step`: when a stop was asked for, that call
        saves `step` (once, whatever else was due) and the loop ends. Collective."""
        if not self.agreed():
            return False
        resilience.config = replace(resilience.config, stop_after_step=step)
        if resilience.rank == 0:
            log_event(resilience.run_dir, "preempted", step=step, signal=self.signal_number)
            if getattr(resilience, "replica_group", None) is not None:
                print(f"bastion: SIGTERM received: stopping after step {step} (the step's leading torchft replica "
                      f"group checkpoints it; a new launch resumes from the newest checkpoint)", flush=True)
            else:
                print(f"bastion: SIGTERM received: checkpointing step {step} and stopping; a restart resumes here",
                      flush=True)
        return True
