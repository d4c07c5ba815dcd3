"""The run panel of the report: what ran (model, plan, software, cluster, data, seed, config) and the precision it
really computed in. Pure Python, from the run directory's files.

The resolved configuration is RUN_DIR/run_config.json (written by `bastion train` / `bastion launch` before the
workers start, launch/worker.py); runs from before it have their configuration in summary.json only.

Precision: the plan names one, the runtime may run another (on CPU a bf16 plan computes in fp32, so measured
parameter, gradient and activation bytes are twice the plan's); the runtime says so in summary.json's `notes`
("plan precision bf16: running fp32 on CPU", runtime/parallelize.py). A run without summary.json yet is judged by
its cluster: a CPU cluster computes in fp32.
"""

from __future__ import annotations

import re
from typing import Any

from bastion.report.run_files import RunFiles

_RUNNING = re.compile(r"plan precision (?P<plan>\w+): running (?P<run>\w+)")


def precision(run: RunFiles, cluster: str | None) -> dict[str, Any]:
    """{"plan": the plan's precision, "run": what was computed, "note": why they differ or None}."""
    plan = (run.plan or (run.summary or {}).get("plan") or {}).get("precision", "fp32")
    for note in (run.summary or {}).get("notes") or []:
        match = _RUNNING.search(str(note))
        if match:
            return {"plan": plan, "run": match["run"], "note": str(note)}
    if run.summary is None and plan != "fp32" and str(cluster or "").startswith("cpu"):
        return {"plan": plan, "run": "fp32", "note": f"plan precision {plan}: a CPU run computes in fp32"}
    return {"plan": plan, "run": plan, "note": None}


def _plan_text(plan: dict[str, Any]) -> str:
    degrees = " ".join(f"{k}{plan[k]}" for k in ("dp", "tp", "pp", "cp", "ep") if k in plan)
    extra = [f"ZeRO {plan.get('zero_stage', 0)}", f"micro-batch {plan.get('micro_batch')}",
             f"global batch {plan.get('global_batch')}"]
    if plan.get("pp", 1) > 1:
        extra.append(f"schedule {plan.get('pp_schedule')} (vpp {plan.get('vpp', 1)})")
    extra.append(f"recompute {plan.get('recompute', 'none')}")
    if plan.get("sequence_parallel"):
        extra.append("sequence parallel")
    return f"{degrees}; " + ", ".join(extra)


def _model_text(model: dict[str, Any] | None, name: Any) -> str:
    if not model:
        return str(name or "—")
    dims = [f"{model.get('num_layers')} layers", f"hidden {model.get('hidden_size')}",
            f"{model.get('num_heads')} heads ({model.get('num_kv_heads', model.get('num_heads'))} kv)",
            f"ffn {model.get('ffn_hidden_size')} ({model.get('ffn_type', '?')})", f"vocab {model.get('vocab_size')}"]
    if model.get("num_experts"):
        dims.append(f"{model['num_experts']} experts, top-{model.get('top_k')}")
    return f"{model.get('name', name)}: " + ", ".join(dims)


def _checkpoint_text(resilience: dict[str, Any]) -> str:
    every = resilience.get("checkpoint_every")
    if not every:
        return "none"
    mode = "async (written in the background)" if resilience.get("async_checkpoint") else "sync (blocking)"
    interval = f"every {every} steps" if isinstance(every, int) else f"{every} (the Young/Daly interval)"
    return f"{interval}, {mode}, keep the last {resilience.get('keep_last', '?')}"


def _recovery_text(on_failure: dict[str, Any] | None) -> str:
    """The run config's `on_failure` section (launch/policy.py): the policy that ran, and why for `auto`."""
    if not on_failure:
        return "—"
    asked = f" (asked: {on_failure['asked']})" if on_failure.get("asked") != on_failure.get("policy") else ""
    return f"{on_failure.get('policy')}{asked}" + (f" — {on_failure['why']}" if on_failure.get("why") else "")


def run_panel(run: RunFiles, report: dict[str, Any]) -> dict[str, Any]:
    """{"rows": [(what, value)], "precision": precision(), "config": the resolved config (a dict), "config_source"}."""
    config_file = run.run_config or {}
    summary = run.summary or {}
    train = config_file.get("train") or summary.get("config") or {}
    plan = run.plan or summary.get("plan") or config_file.get("plan") or {}
    cluster = (report.get("predicted") or {}).get("cluster") or train.get("cluster")
    prec = precision(run, cluster)
    seq_len = train.get("seq_len") or (run.model or {}).get("seq_len")
    steps = report.get("steps_completed") or 0
    tokens_per_step = (plan.get("global_batch") or 0) * (seq_len or 0)
    recomputed = report["failures"]["recomputed"]["count"]
    run_text = prec["run"] if prec["run"] == prec["plan"] else f"{prec['run']} (plan: {prec['plan']})"
    rows = [
        ("model", _model_text(run.model, report.get("model"))),
        ("plan", _plan_text(plan) if plan else "—"),
        ("precision", run_text + (f" — {prec['note']}" if prec["note"] else "")),
        ("software", "bastion runtime (torch.distributed: FSDP2 / DTensor / pipelining)"
                     + (", torch.compile" if train.get("compile") else ", eager")),
        ("cluster", f"{cluster or 'not given'}; {report.get('world_size')} process(es)"),
        ("data", str(train.get("data", "—"))),
        ("tokens seen", f"{steps * tokens_per_step:,} in {steps} kept steps of {tokens_per_step:,} tokens "
                        f"(global batch {plan.get('global_batch')} × sequence {seq_len})"
                        + (f"; {recomputed * tokens_per_step:,} more processed in redone steps" if recomputed else "")),
        ("checkpoints", _checkpoint_text(train.get("resilience") or {})),
        ("on failure", _recovery_text(config_file.get("on_failure"))),
        ("faults injected", ", ".join((train.get("resilience") or {}).get("inject") or []) or "none"),
        ("seed", str(train.get("seed", summary.get("seed", "—")))),
        ("learning rate", f"peak {train.get('lr', '—')}"),
        ("steps asked", str(train.get("steps", "—"))),
    ]
    source = "run_config.json" if config_file else ("summary.json's config" if summary.get("config") else "none")
    return {"rows": rows, "precision": prec, "config": config_file or train, "config_source": source}
