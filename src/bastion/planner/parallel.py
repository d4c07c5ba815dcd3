"""Running many predictions on every CPU the process may use.

Predictions are independent pure functions of (cluster, plan). The planner predicts in rounds (best-first: the
most promising plans first, until a bound settles the rest), so the workers are forked once, at the first round
big enough to need them, and kept for the later rounds. The plans to predict are described by *units* (the
search's groups of plans), a list complete before any worker is forked: forking hands every worker that list and
the parent's imported predictor with its warm caches, so a round only sends the indices of its units and gets
back compact outcomes, in order — the same as a serial loop (tests check that). Small rounds, and platforms without
`fork`, run in this process. The groups' floors, computed in batches as the best-first order needs them, are
shared out the same way by `map_in_workers` when a batch is large (a pool of its own, ended once they are
computed).
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
#: below this many items, forking workers for `map_in_workers` costs more than it saves (a plan group's floor
#: takes tens of microseconds)
MIN_PARALLEL_ITEMS = 4000

#: (fits, step_time_s, tokens_per_s, mfu, memory_total_bytes, the step's term shares for its interval) or the
#: PlanError the predictor raised
Outcome = tuple[bool, float, float, float, float, Any] | PlanError
#: a unit's plans: (cluster, plan) pairs, in the order their outcomes are returned
JobsFn = Callable[[Any], Sequence[tuple[Any, Any]]]
#: (model, cluster, plan, seq_len) -> (fits, memory total bytes), as the estimate would say
FitFn = Callable[[Any, Any, Any, int], tuple[bool, float]]

# set just before forking; read by the workers (fork copies it, nothing is pickled)
_SHARED: tuple[Callable[..., Any], Any, int, Sequence[Any], JobsFn, FitFn | None] | None = None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def outcome_of(estimate: Callable[..., Any], model: Any, cluster: Any, plan: Any, seq_len: int,
               fit: FitFn | None = None) -> Outcome:
    """The plan's outcome; with `fit` (the predictor's memory_fit: `estimate`'s fits and memory total, and its
    PlanErrors) asked first, a plan that does not fit is not timed (its other figures are 0)."""
    from bastion.predict.intervals import step_shares

    try:
        if fit is not None:
            fits, total = fit(model, cluster, plan, seq_len)
            if not fits:
                return (False, 0.0, 0.0, 0.0, float(total), None)
        est = estimate(model, cluster, plan, seq_len)
    except PlanError as exc:
        return exc
    return (bool(est.fits), float(est.step_time_s), float(est.tokens_per_s), float(est.mfu),
            float(est.memory.total), step_shares(est.time, est.step_time_s, plan, seq_len, model))


# set just before forking by map_in_workers: (the function, its items); read by the workers
_MAPPED: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def _map_slice(bounds: tuple[int, int]) -> list[Any]:
    assert _MAPPED is not None, "workers are forked after the items are set"
    fn, items = _MAPPED
    return [fn(item) for item in items[bounds[0]:bounds[1]]]


def map_in_workers(fn: Callable[[Any], Any], items: Sequence[Any], workers: int = 0) -> list[Any]:
    """`[fn(item) for item in items]`, in forked worker processes when there are many items (`workers` as
    PredictionPool's, with MIN_PARALLEL_ITEMS). The workers read `fn` and `items` as forked (nothing of them is
    pickled); only the results come back, in order."""
    size = workers or (available_cpus() if len(items) >= MIN_PARALLEL_ITEMS else 1)
    if size <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(item) for item in items]
    global _MAPPED
    _MAPPED = (fn, items)
    try:
        step = max(1, -(-len(items) // (size * SLICES_PER_WORKER)))
        with multiprocessing.get_context("fork").Pool(size, initializer=_die_with_parent) as pool:
            parts = pool.map(_map_slice, [(i, min(i + step, len(items))) for i in range(0, len(items), step)],
                             chunksize=1)
    finally:
        _MAPPED = None
    return [result for part in parts for result in part]


def _die_with_parent() -> None:
    """Worker initializer: a worker whose parent is killed (not just interrupted) must not linger."""
    try:
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: the pool's own cleanup still applies
        pass


def _predict_units(estimate: Callable[..., Any], model: Any, seq_len: int, units: Sequence[Any], jobs_of: JobsFn,
                   fit: FitFn | None, indices: Sequence[int]) -> list[Outcome]:
    return [outcome_of(estimate, model, cluster, plan, seq_len, fit)
            for i in indices for cluster, plan in jobs_of(units[i])]


def _run_slice(indices: Sequence[int]) -> list[Outcome]:
    assert _SHARED is not None, "workers are forked after the units are set"
    return _predict_units(*_SHARED, indices)


class PredictionPool:
    """Predicts ranges of `units` (each expands to plans through `jobs_of`), in this process or in workers forked
    once and reused. Use as a context manager, so the workers end with the search.

    `workers`: 0 = one per available CPU once a round has MIN_PARALLEL_JOBS plans, 1 = this process only,
    n > 1 = n workers for every round. `fit`: asked before `estimate` (outcome_of).
    """

    def __init__(self, estimate: Callable[..., Any], model: Any, seq_len: int, units: Sequence[Any],
                 jobs_of: JobsFn, workers: int = 0, fit: FitFn | None = None) -> None:
        self._shared = (estimate, model, seq_len, units, jobs_of, fit)
        self._workers = workers
        self._pool: Any = None
        self._size = 1
        #: how many times workers were forked (tests check it is at most once)
        self.forks = 0

    def __enter__(self) -> PredictionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        global _SHARED
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            _SHARED = None

    def predict(self, indices: Sequence[int], jobs: int) -> list[Outcome]:
        """Outcomes of every plan of the units at `indices` (`jobs` plans), in order."""
        pool = self._pool or self._start(jobs)
        if pool is None:
            return _predict_units(*self._shared, indices)
        size = max(1, -(-len(indices) // (self._size * SLICES_PER_WORKER)))
        slices = [indices[i:i + size] for i in range(0, len(indices), size)]
        return [outcome for part in pool.map(_run_slice, slices, chunksize=1) for outcome in part]

    def _start(self, jobs: int) -> Any:
        workers = self._workers
        if workers == 0:
            workers = available_cpus() if jobs >= MIN_PARALLEL_JOBS else 1
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return None
        global _SHARED
        # the workers copy _SHARED as it is at the fork; it stays set while the pool lives (one pool at a time)
        _SHARED = self._shared
        self._pool = multiprocessing.get_context("fork").Pool(workers, initializer=_die_with_parent)
        self._size = workers
        self.forks += 1
        return self._pool
