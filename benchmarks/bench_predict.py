"""How fast the predictor is: one `estimate()` in-process (warm and with cold caches) and a whole `validate` run.

Prints the figures and writes them to benchmarks/results/predict.json. Target: one estimate < 50 ms (the planner
calls it hundreds of thousands of times, so far lower is the aim).
"""

from __future__ import annotations

import importlib
import json
import platform
import statistics
import time
from pathlib import Path

from bastion.predict import comm, compute, estimate, kernels, memory
from bastion.predict.validate import validate_cases
from bastion.specs import ParallelPlan, load_cluster, load_model

RESULTS = Path(__file__).parent / "results" / "predict.json"
#: the other case files kept with the tests (each row predicted from its software facts: framework and release)
MORE_CASES = {name: Path(__file__).parent.parent / "tests" / "validation" / "data" / f"{name}_cases.csv"
              for name in ("nemo", "torchtitan")}
# the package re-exports the function `estimate`, which hides the module of the same name
estimate_module = importlib.import_module("bastion.predict.estimate")


def clear_caches() -> None:
    for fn in (compute.gemm_time, compute.flash_attention_time, compute.layer_membound_parts,
               comm.place_group, comm.all_reduce_time, comm.all_gather_time, estimate_module._stage_time_of,
               estimate_module._layer_costs, estimate_module._unrouted_layer_costs,
               memory._states_of_role, memory._layer_shapes, memory.layer_numel, kernels.kernel_efficiency):
        fn.cache_clear()


def time_calls(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("h100-sxm:1024")
    plan = ParallelPlan(dp=32, tp=8, pp=4, vpp=5, pp_schedule="interleaved-1f1b", zero_stage=1, micro_batch=1,
                        global_batch=1024, recompute="selective", sequence_parallel=True)
    estimate(model, cluster, plan, 8192)  # first call loads the calibration files
    warm = time_calls(lambda: estimate(model, cluster, plan, 8192), 2000)
    cold = []
    for _ in range(200):
        clear_caches()
        t0 = time.perf_counter()
        estimate(model, cluster, plan, 8192)
        cold.append(time.perf_counter() - t0)
    # a planner-like sweep: distinct plans of one model, caches shared between them
    clear_caches()
    plans = [ParallelPlan(dp=1024 // (tp * pp), tp=tp, pp=pp, zero_stage=z, micro_batch=mb,
                          global_batch=1024 // (tp * pp) * mb * 8, recompute=rc, sequence_parallel=tp > 1)
             for tp in (1, 2, 4, 8) for pp in (1, 2, 4, 8) for z in (0, 1, 3) for mb in (1, 2)
             for rc in ("none", "selective", "full")]
    t0 = time.perf_counter()
    for p in plans:
        estimate(model, cluster, p, 8192)
    sweep_per_plan = (time.perf_counter() - t0) / len(plans)
    t0 = time.perf_counter()
    report = validate_cases()
    validate_s = time.perf_counter() - t0
    result = {
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "estimate_warm_ms_median": 1e3 * statistics.median(warm),
        "estimate_cold_caches_ms_median": 1e3 * statistics.median(cold),
        "estimate_sweep_ms_per_plan": 1e3 * sweep_per_plan, "sweep_plans": len(plans),
        "validate_s": validate_s, "validate_cases": report.summary()["n"],
        "validation_summary": report.summary(),
        "other_case_files": {name: validate_cases(path).summary() for name, path in MORE_CASES.items()},
        "target_estimate_ms": 50.0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
