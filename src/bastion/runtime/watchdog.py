"""Hang detection: a step that takes k× the recent median dumps every thread's stack and aborts the worker.

A hung rank (a stuck kernel, a dead peer in a collective) never raises by itself; torchrun's agent restarts the
group only once a worker exits. The watchdog is a daemon thread that knows when the current step began: past
the deadline it writes `RUN_DIR/hang-rank<R>.txt` with `faulthandler`'s dump of all threads, records a `hang`
event and exits the process with HANG_EXIT_CODE. Time outside steps (checkpoint saves, restores) is not watched.
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from bastion.rundir.metrics import log_event

#: exit status of a worker aborted by the watchdog (distinct from signals and Python errors)
HANG_EXIT_CODE = 87


@dataclass(frozen=True)
class WatchdogConfig:
    """When a step counts as hung."""

    #: a step longer than factor × median of the recent step times is hung ...
    factor: float = 10.0
    #: ... but never sooner than this many seconds (CPU noise on shared machines)
    min_timeout_s: float = 60.0
    #: deadline of the first steps of each (re)start, before any step time is known (allocation, compile)
    startup_timeout_s: float = 600.0
    #: step times in the running median
    window: int = 20
    #: first steps of each (re)start whose times are not used (warm-up)
    warmup_steps: int = 1
    #: how often the thread looks at the clock
    poll_s: float = 0.2


class StepWatchdog:
    """Call `step_began(step)` / `step_ended(step)` around each step; `close()` at the end."""

    def __init__(self, config: WatchdogConfig, run_dir: Path, rank: int) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.rank = rank
        self._times: deque[float] = deque(maxlen=config.window)
        self._seen = 0
        self._lock = threading.Lock()
        self._step: int | None = None
        self._began = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bastion-watchdog", daemon=True)
        self._thread.start()

    def deadline_s(self) -> float:
        if not self._times:
            return max(self.config.startup_timeout_s, self.config.min_timeout_s)
        return max(self.config.min_timeout_s, self.config.factor * statistics.median(self._times))

    def step_began(self, step: int) -> None:
        with self._lock:
            self._step, self._began = step, time.monotonic()

    def step_ended(self, step: int) -> None:
        with self._lock:
            elapsed = time.monotonic() - self._began
            self._step = None
            self._seen += 1
            if self._seen > self.config.warmup_steps:
                self._times.append(elapsed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.config.poll_s + 1)

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            with self._lock:
                step, began = self._step, self._began
                deadline = self.deadline_s()
            if step is not None and time.monotonic() - began > deadline:
                self._abort(step, time.monotonic() - began, deadline)

    def _abort(self, step: int, elapsed: float, deadline: float) -> None:
        dump = self.run_dir / f"hang-rank{self.rank}.txt"
        with dump.open("a") as f:
            f.write(f"# step {step} ran {elapsed:.1f} s, deadline {deadline:.1f} s; stacks of all threads:\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        log_event(self.run_dir, "hang", rank=self.rank, step=step, elapsed_s=round(elapsed, 3),
                  deadline_s=round(deadline, 3), stacks=dump.name)
        os._exit(HANG_EXIT_CODE)
