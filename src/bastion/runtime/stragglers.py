"""Finding the slow rank: per-rank section times of every step, gathered to rank 0, judged over a window.

What is measured, per rank and step (seconds, `time.perf_counter`, no extra barrier; and each section's CPU
seconds, `time.process_time`: the process's threads, gloo's included, so a rank blocked waiting for a peer adds
wall time but next to no CPU time — what a calibration pass decomposes a step with on shared cores):
  forward_backward  batch, forward and backward, gradient placement (FSDP's all-gathers and reduce-scatters run
                    inside it, so it includes waiting for peers there)
  optimizer         gradient-norm clipping (one small all-reduce), the update, the LR schedule
  sync_wait         the step's closing collective (the loss all-reduce): a rank that finished its local work
                    early waits here for the last one
  step              the whole step
A rank's compute time is `step - sync_wait`: the time it needed before it could close the step. The last rank to
arrive waits least, so its compute time is the step time and its peers' are shorter by what they waited. Slowness
that lands inside FSDP's own collectives (a slower device mid-backward) makes every rank wait there equally and
does not single out a rank this way; it shows against the predicted step time instead (when the cluster was named
with --cluster, so the prediction is for this hardware).

The gather is one `all_gather` of eight floats per rank per step (wall and CPU), after the step's time is taken. Rank 0 judges:
a rank whose median compute time over the last `window` steps is at least `factor` × the median of its peers'
medians (or of the predicted step time) is a straggler; each such episode is one `straggler` event (rundir
records.py) and one entry of summary.json's `stragglers`.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from bastion.rundir.metrics import log_event

if TYPE_CHECKING:
    from bastion.runtime.train_config import TrainConfig
    from bastion.specs.model import ModelSpec
    from bastion.specs.plan import ParallelPlan

#: the sections every rank reports, in the order of the gathered vector
SECTIONS = ("forward_backward", "optimizer", "sync_wait", "step")


def gather_sections(wall: dict[str, float], cpu: dict[str, float], device: torch.device
                    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every rank's section times, wall and CPU (collective): two tables section -> [rank 0's, rank 1's, ...]."""
    mine = torch.tensor([wall[name] for name in SECTIONS] + [cpu[name] for name in SECTIONS], dtype=torch.float64,
                        device=device)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        rows = [mine]
    else:
        rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, mine)
    table = torch.stack(rows).cpu().tolist()
    n = len(SECTIONS)
    return ({name: [round(row[i], 6) for row in table] for i, name in enumerate(SECTIONS)},
            {name: [round(row[n + i], 6) for row in table] for i, name in enumerate(SECTIONS)})


def compute_times(sections: dict[str, list[float]]) -> list[float]:
    """Each rank's compute time of a step: its step time less what it waited in the closing collective."""
    return [max(0.0, step - wait) for step, wait in zip(sections["step"], sections["sync_wait"], strict=True)]


@dataclass(frozen=True)
class StragglerConfig:
    """When a rank counts as a straggler."""

    #: a rank this many times slower than its peers' median (or the predicted step time) is a straggler
    factor: float = 1.5
    #: steps whose median is compared (a single slow step is noise; a window's median is persistent)
    window: int = 5
    #: steps after each (re)start left out (the first step allocates and warms up, unevenly across ranks)
    warmup_steps: int = 1
    #: the predictor's step time for this hardware; None = compare ranks with their peers only
    predicted_step_s: float | None = None


@dataclass(frozen=True)
class Straggler:
    """One rank found persistently slow."""

    rank: int
    #: the step at which it was found
    step: int
    #: its median compute time / the baseline
    factor: float
    compute_s: float
    baseline_s: float
    #: "peers" (the median of the other ranks) or "predicted" (the predictor's step time)
    baseline: str

    def event_fields(self, window: int) -> dict[str, Any]:
        return {"rank": self.rank, "step": self.step, "factor": round(self.factor, 3),
                "compute_s": round(self.compute_s, 6), "baseline_s": round(self.baseline_s, 6),
                "baseline": self.baseline, "window": window}


class StragglerDetector:
    """Rank 0's judge: feed it each step's compute times; it returns the ranks newly found slow."""

    def __init__(self, config: StragglerConfig) -> None:
        self.config = config
        self._window: deque[list[float]] = deque(maxlen=config.window)
        self._seen = 0
        #: ranks currently judged slow (reported once per episode; a rank that recovers may be reported again)
        self.flagged: set[int] = set()

    def observe(self, step: int, compute_by_rank: list[float]) -> list[Straggler]:
        self._seen += 1
        if self._seen <= self.config.warmup_steps:
            return []
        self._window.append(compute_by_rank)
        if len(self._window) < self.config.window:
            return []
        medians = [statistics.median(column) for column in zip(*self._window, strict=True)]
        found, slow_now = [], set()
        for rank, median in enumerate(medians):
            judged = self._judge(rank, median, medians)
            if judged is None:
                continue
            factor, baseline_s, baseline = judged
            slow_now.add(rank)
            if rank not in self.flagged:
                found.append(Straggler(rank, step, factor, median, baseline_s, baseline))
        self.flagged = slow_now
        return found

    def _judge(self, rank: int, median: float, medians: list[float]) -> tuple[float, float, str] | None:
        """(factor, baseline seconds, baseline kind) when `rank` is slow, else None."""
        peers = medians[:rank] + medians[rank + 1:]
        if peers:
            peer = statistics.median(peers)
            if peer > 0 and median >= self.config.factor * peer:
                return median / peer, peer, "peers"
        predicted = self.config.predicted_step_s
        if predicted and median >= self.config.factor * predicted:
            return median / predicted, predicted, "predicted"
        return None


class StragglerReporter:
    """Rank 0's link between the training loop and the detector: judges each step record and logs a `straggler`
    event (and a line on stdout) for each rank newly found slow."""

    def __init__(self, config: TrainConfig, spec: ModelSpec, plan: ParallelPlan, run_dir: Path) -> None:
        predicted = None
        if config.cluster:  # a named cluster: the prediction is for this hardware (cpu:N is not calibrated)
            from bastion.rundir.predicted import predicted_figures

            predicted = predicted_figures(spec, plan, config.cluster, spec.seq_len, compiled=config.compile,
                                          fp8_recipe=config.fp8_recipe).get("step_time_s")
        self.config = StragglerConfig(factor=config.straggler_factor, predicted_step_s=predicted)
        self.detector = StragglerDetector(self.config)
        self.run_dir = run_dir

    def observe(self, record: dict[str, Any]) -> list[Straggler]:
        found = self.detector.observe(record["step"], compute_times(record["rank_sections_s"]))
        for straggler in found:
            log_event(self.run_dir, "straggler", **straggler.event_fields(self.config.window))
            print(f"bastion: rank {straggler.rank} is a straggler at step {straggler.step}: compute "
                  f"{straggler.compute_s:.3f} s = {straggler.factor:.1f}× {straggler.baseline} "
                  f"({straggler.baseline_s:.3f} s; median of {self.config.window} steps)", flush=True)
        return found
