"""What the one-card benchmark scripts (gpu_1p5b.py, gpu_check.py) share: a process group of one rank, a token
corpus, the catalog cluster of this device, and one `bastion train` run in this process, measured.

Imported by scripts run as files (their directory is on sys.path); it puts ../src on sys.path, so no installed
bastion is needed.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

#: steps left out of a run's median: the first steps compile and warm up the allocator and kernels
WARMUP_STEPS = 2


def single_process_group(port: int = 29533) -> None:
    """torch.distributed of one rank, as `bastion train` initialises it (no torchrun needed)."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "8")
    if not dist.is_initialized():
        from bastion.runtime.worker import init_distributed

        init_distributed()


def prepare_corpus(directory: Path, max_bytes: int = 3_000_000) -> Path:
    """Byte-level tokens (vocab 256, which fits any model's vocabulary; a step's cost does not depend on token
    values) of the Python standard library's source files."""
    from bastion.runtime.data import prepare_dataset

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prepare_dataset(sorted(stdlib.glob("*.py")), directory, max_bytes=max_bytes)
    return directory


def device_cluster() -> tuple[str, str | None]:
    """(what this process trains on, the catalog cluster of one of it): the first CUDA device named by
    torch and its catalog row (None when the catalog has none), else ("cpu", "cpu:1")."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", "cpu:1"
    from bastion.specs.hardware import accelerator_for_device

    name = torch.cuda.get_device_name()
    accelerator = accelerator_for_device(name)
    return name, f"{accelerator}:1" if accelerator else None


def release_device_memory() -> None:
    """Free what the last run left, so the next run's peak is its own (a compiled model's graphs hold on to
    its module until torch.compile's caches are reset)."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_run(name: str, model: Any, plan_path: Path, data_dir: Path, steps: int, work: Path, cluster: str | None,
              compile: bool = False, fp8_recipe: str = "tensorwise") -> dict:
    """One `bastion train` of `model` (a preset name, a file or a ModelSpec) on this process's device: the
    median step after WARMUP_STEPS, peak memory and the run's own prediction (summary.json's)."""
    import torch

    from bastion.rundir.metrics import read_metrics
    from bastion.rundir.records import is_step
    from bastion.runtime.train import train
    from bastion.runtime.train_config import TrainConfig

    release_device_memory()
    left_over = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    run_dir = work / f"run-{name}"
    started = time.perf_counter()
    summary = train(TrainConfig(model=model, plan=str(plan_path), data=str(data_dir), steps=steps,
                                run_dir=str(run_dir), compile=compile, fp8_recipe=fp8_recipe, cluster=cluster,
                                progress=False, hash_params=False, lr=3e-4))
    wall = time.perf_counter() - started
    times = [r["step_time_s"] for r in read_metrics(run_dir).records if is_step(r)]
    steady = times[WARMUP_STEPS:] if len(times) > WARMUP_STEPS + 1 else times[1:] or times
    measured = summary["measured"]
    return {"run": name, "step_time_s": statistics.median(steady), "first_step_s": times[0], "step_times_s": times,
            "mfu": measured.get("mfu"), "losses": summary["losses"], "peak_mem_bytes": measured["peak_mem_bytes"],
            "peak_mem_gib": measured["peak_mem_bytes"] / 2**30, "peak_mem_kind": measured.get("peak_mem_kind"),
            "allocated_before_run_bytes": left_over, "wall_s": wall, "model_state_bytes": measured["model_state_bytes_by_rank"][0],
            "activation_bytes_first_microbatch": measured["activation_bytes_by_rank"][0],
            "predicted": summary["predicted"], "notes": summary["notes"]}
