"""Running many predictions on every CPU the process may use.

Predictions are independent pure functions of (cluster, plan), so a large batch is cut into slices that forked
worker processes evaluate; each returns compact outcomes, and the parent keeps the original order, so the
result is the same as a serial loop (tests check that). Forking shares the parent's imported predictor and its
warm caches without pickling them. Small batches, and platforms without `fork`, run in this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any

from bastion.errors import PlanError

#: below this many predictions, starting workers costs more than it saves
MIN_PARALLEL_JOBS = 1500
#: slices per worker: more slices balance uneven plans (deep pipelines cost more) at a small overhead
SLICES_PER_WORKER = 8

#: (fits, step_time_s, tokens_per_s, mfu, memory_total_bytes) or the PlanError the predictor raised
Outcome = tuple[bool, float, float, float, float] | PlanError

# set by predict_all just before forking; read by the workers (fork copies it, nothing is pickled)
_BATCH: tuple[Callable[..., Any], Any, int, Sequence[tuple[Any, Any]]] | None = None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def outcome_of(estimate: Callable[..., Any], model: Any, cluster: Any, plan: Any, seq_len: int) -> Outcome:
    try:
        est = estimate(model, cluster, plan, seq_len)
    except PlanError as exc:
        return exc
    return (bool(est.fits), float(est.step_time_s), float(est.tokens_per_s), float(est.mfu),
            float(est.memory.total))


def _die_with_parent() -> None:
    """Worker initializer: a worker whose parent is killed (not just interrupted) must not linger."""
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: the pool's own cleanup still applies
        pass


def _run_slice(bounds: tuple[int, int]) -> list[Outcome]:
    assert _BATCH is not None, "workers are forked after the batch is set"
    estimate, model, seq_len, jobs = _BATCH
    return [outcome_of(estimate, model, cluster, plan, seq_len) for cluster, plan in jobs[bounds[0]:bounds[1]]]


def predict_all(estimate: Callable[..., Any], model: Any, seq_len: int, jobs: Sequence[tuple[Any, Any]],
                workers: int = 0) -> list[Outcome]:
    """Outcomes of `estimate(model, cluster, plan, seq_len)` for every (cluster, plan), in order."""
    global _BATCH
    if workers == 0:
        workers = available_cpus() if len(jobs) >= MIN_PARALLEL_JOBS else 1
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [outcome_of(estimate, model, cluster, plan, seq_len) for cluster, plan in jobs]
    slices = workers * SLICES_PER_WORKER
    size = -(-len(jobs) // slices)
    bounds = [(i, min(i + size, len(jobs))) for i in range(0, len(jobs), size)]
    _BATCH = (estimate, model, seq_len, jobs)
    try:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_die_with_parent) as pool:
            parts = pool.map(_run_slice, bounds, chunksize=1)
    finally:
        _BATCH = None
    return [outcome for part in parts for outcome in part]
