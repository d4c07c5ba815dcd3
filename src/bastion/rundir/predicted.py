"""The predictor's figures for a run, as summary.json's `predicted` holds them and `bastion report --cluster`
computes them from plan.json + model.json. Torch-free (bastion.predict is)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bastion.errors import BastionError
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

#: the memory components summary.json records (bastion.predict MemoryBreakdown fields)
MEMORY_FIELDS = ("params", "grads", "optimizer", "activations", "logits", "comm_buffers", "allocator_overhead",
                 "total")
#: the predictor's fp8 recipe (predict/data/fp8_recipes.toml) for each torchao recipe the runtime runs
#: (runtime/float8.py RECIPES); rowwise_with_gw_hp's bf16 weight-gradient GEMM is not modelled apart
RUNTIME_FP8_RECIPES = {"tensorwise": "tensorwise", "rowwise": "rowwise", "rowwise_with_gw_hp": "rowwise"}
#: the software stack (predict/data/software.toml) a run of bastion's runtime is predicted as: eager, compiled
RUNTIME_STACKS = {False: "bastion", True: "bastion-compiled"}


def predicted_figures(spec: ModelSpec, plan: ParallelPlan, cluster_name: str | None, seq_len: int,
                      compiled: bool = False, fp8_recipe: str = "tensorwise") -> dict[str, Any]:
    """The predictor's figures for this run (on bastion's runtime, compiled or not; an fp8 plan under the
    runtime's torchao `fp8_recipe`), or {"note": why there are none}."""
    if cluster_name is None:
        return {"note": "no cluster spec for this device; pass --cluster for a prediction"}
    try:
        from bastion.predict import estimate
        from bastion.predict.software import software_stack
        from bastion.specs.hardware import load_cluster
    except ImportError as exc:
        return {"note": f"bastion.predict is not available ({exc}); no prediction"}
    try:
        cluster = load_cluster(cluster_name)
        # the stack `bastion estimate --software bastion` predicts (predict/data/software.toml): one description of
        # what the runtime runs, whichever command asks
        stack = software_stack(RUNTIME_STACKS[compiled])
        options = replace(stack.options, fp8_recipe=RUNTIME_FP8_RECIPES.get(fp8_recipe, fp8_recipe))
        est = estimate(spec, cluster, plan, seq_len, options=options)
    except BastionError as exc:
        return {"note": f"no prediction: {exc.problem}"}
    memory = {name: float(getattr(est.memory, name)) for name in MEMORY_FIELDS}
    from bastion.predict.intervals import interval_note, step_interval

    p10, p90 = step_interval(est, spec)
    out: dict[str, Any] = {"cluster": cluster_name, "step_time_s": est.step_time_s, "tokens_per_s": est.tokens_per_s,
                           "mfu": est.mfu, "fits": est.fits, "memory_bytes": memory,
                           "step_time_p10_s": p10, "step_time_p90_s": p90, "interval": interval_note(est, spec),
                           "rates": cluster.rates_source}
    try:
        from bastion.predict.memory import model_state_bytes

        out["model_state_bytes_by_stage"] = {
            str(stage): {k: int(v) for k, v in model_state_bytes(spec, plan, stage,
                                                                 runtime_fsdp=options.runtime_fsdp).items()}
            for stage in range(plan.pp)}
    except (ImportError, AttributeError) as exc:
        out["model_state_note"] = f"model_state_bytes unavailable ({exc})"
    return out
