"""Logs besides metrics.jsonl: TensorBoard event files (`--tensorboard`) and a torch.profiler trace (`--profile`).

Both are optional and rank-0-light: TensorBoard mirrors what rank 0 writes to metrics.jsonl (the same figures, so
nothing is computed twice); the profiler traces steps START..END on every rank, one Chrome trace JSON each, and on
CUDA also a memory snapshot (rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bastion.errors import ConfigError
from bastion.rundir.layout import PROFILE_DIR, TENSORBOARD_DIR

#: metrics.jsonl field -> TensorBoard tag
STEP_SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                "tokens_per_s": "perf/tokens_per_s", "mfu": "perf/mfu", "mem_gib": "perf/mem_gib",
                "step_time_s": "perf/step_time_s"}


class TensorBoardLog:
    """Rank 0's SummaryWriter in RUN_DIR/tensorboard (a no-op elsewhere, or when not asked for)."""

    def __init__(self, run_dir: Path, enabled: bool, predicted_step_s: float | None = None,
                 restarts: int = 0) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package, which is not installed.",
                              fix="pip install tensorboard (or bastion[interop]), or drop --tensorboard.") from None
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))
        self.predicted_step_s = predicted_step_s
        self.restarts = restarts

    def step(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["step"]
        for field, tag in STEP_SCALARS.items():
            if record.get(field) is not None:
                self.writer.add_scalar(tag, record[field], step)
        if self.predicted_step_s is not None:
            self.writer.add_scalar("perf/predicted_step_time_s", self.predicted_step_s, step)
        self.writer.add_scalar("run/restarts", self.restarts, step)

    def evaluation(self, result: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.add_scalar("eval/loss", result["eval_loss"], result["step"])
            self.writer.add_scalar("eval/perplexity", result["perplexity"], result["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StepProfiler:
    """torch.profiler around steps START..END (1-based, inclusive) of `--profile START:END`."""

    def __init__(self, run_dir: Path, window: tuple[int, int] | None, rank: int, device: torch.device) -> None:
        self.window = window
        self.directory = Path(run_dir) / PROFILE_DIR
        self.rank = rank
        self.device = device
        self._profiler: Any = None
        self._written = False  # one trace per run, even if a rollback replays steps of the window

    def before_step(self, step: int) -> None:
        # a run resumed inside the window traces from its first step there
        if (self.window is None or not self.window[0] <= step <= self.window[1] or self._profiler is not None
                or self._written):
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.device.type == "cuda" and self.rank == 0:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        self._profiler = profile(activities=activities, record_shapes=True, profile_memory=True)
        self._profiler.__enter__()

    def after_step(self, step: int) -> None:
        if self._profiler is None or self.window is None or step < self.window[1]:
            return
        self.close()

    def close(self) -> None:
        """End the trace (at END, or wherever the run stops) and write it."""
        if self._profiler is None:
            return
        profiler, self._profiler, self._written = self._profiler, None, True
        profiler.__exit__(None, None, None)
        profiler.export_chrome_trace(str(self.directory / f"trace-rank{self.rank:05d}.json"))
        if self.device.type == "cuda" and self.rank == 0:
            torch.cuda.memory._dump_snapshot(str(self.directory / "memory-snapshot-rank00000.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
