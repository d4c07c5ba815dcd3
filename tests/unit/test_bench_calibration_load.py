"""benchmarks/bench_calibration.py's LOADED flag counts other processes' runnable threads: never the run's own
(its front process and every descendant, gloo's transport threads included)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_calibration.py"


def _other_runnable():  # noqa: ANN202 - the benchmark script's function
    spec = importlib.util.spec_from_file_location("bench_calibration", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.other_runnable


def _process(root: Path, pid: int, ppid: int, threads: str) -> None:
    """A /proc entry: its stat (state, then the parent) and one task per thread state."""
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(f"{pid} (python) {threads[0]} {ppid} 0 0")
    for i, state in enumerate(threads):
        task = root / str(pid) / "task" / str(pid * 10 + i)
        task.mkdir(parents=True)
        task.joinpath("stat").write_text(f"{pid * 10 + i} (gloo thread) {state} {ppid} 0 0")


def test_the_runs_process_tree_with_its_gloo_threads_is_not_other_load(tmp_path: Path) -> None:
    _process(tmp_path, 100, 1, "RS")  # the front `bastion train`
    _process(tmp_path, 101, 100, "RS")  # torchrun's agent
    _process(tmp_path, 102, 101, "RRRS")  # a worker: its main thread and runnable gloo threads
    _process(tmp_path, 200, 1, "RRS")  # another session's job
    _process(tmp_path, 201, 200, "R")
    other_runnable = _other_runnable()
    assert other_runnable(100, tmp_path) == 3
    assert other_runnable(200, tmp_path) == 5  # the same host seen from the other job
