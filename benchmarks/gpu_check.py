"""Every one-card GPU measurement issues 14 and 20 ask for, in one short device call: predicted vs measured.

Parts, in this order (each guarded: a part that fails records its error and the next one runs; each runs in its
own process, so a CUDA error or an out-of-memory cannot spoil the others and the time budget can stop it):

  calibrate    `bastion calibrate --quick` for this card; the profile TOML is written under --out
  dense        the 1.5B Llama-style step of gpu_1p5b.py (bf16, micro-batch 8), compiled and eager, through
               bastion's runtime
  moe          one mixture-of-experts model on one card (ep 1): Qwen3-30B-A3B's layer cut to 6 layers and 64
               experts (top-8; built from the qwen3-30b-a3b preset, nothing downloaded), and the runtime's grouped
               expert matmul (runtime/moe.py GroupedExperts) timed alone at the run's tokens per expert, against
               the rate the predictor assumes for that shape; which kernel ran (torch._grouped_mm or the loop over
               experts) is recorded, for the training run too
  fp8          the dense model with precision fp8 (torchao Float8, tensorwise and rowwise: the runtime's fp8 path),
               compiled (--fp8-mode), set against the dense part's bf16 row of the same mode
  single_card  bench_predict_device.py's plain-PyTorch single-card steps (step time and peak memory)

Every measured run is set against the predictor for this card's catalog row ("datasheet") and, when calibrate
wrote a profile, for `CARD:1@PROFILE.toml` ("profile"): step time, MFU and peak memory, as measured / predicted
(issue 20 asks for 1.00 ± 0.05). Everything goes to --out/gpu_check.json (rewritten after every run), with a short
table printed at the end.

    python3 benchmarks/gpu_check.py                       # on the GPU machine: $OUT/gpu_check.json
    python3 benchmarks/gpu_check.py --smoke               # the same code paths on CPU at tiny shapes
    python3 benchmarks/gpu_check.py --parts dense,fp8 --budget-s 300

Needs only torch (and torchao for fp8: without it the fp8 rows record the runtime's refusal); puts ../src on
sys.path itself, so `PYTHONPATH=src` or an installed bastion are both fine.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpu_runs import (
    ROOT,
    device_cluster,
    prepare_corpus,
    release_device_memory,
    single_process_group,
    train_run,
)

PARTS = ("calibrate", "dense", "moe", "fp8", "single_card")
#: default budget for the whole script, seconds: inside one device call of 480 s with the machine's start
#: apart (expected on an H100 from the H200's recorded 1.5B runs: about 4-5 minutes; not yet run on a GPU)
DEFAULT_BUDGET_S = 450
#: seconds a run needs at least on a GPU (the H200's 1.5B runs: 37 s compiled, 4 s eager, in gpu_1p5b_h200.json);
#: a run is skipped, and says so, when less is left of the budget. The smoke's tiny runs need a tenth.
NEEDS_S = {"compile": 60, "eager": 20, "moe": 30, "grouped_gemm": 10, "single_card": 15}
#: the MoE model on one card: the qwen3-30b-a3b preset's layer (hidden 2048, 32 heads / 4 kv, expert width 768,
#: top-8), 6 layers and 64 experts: 2.55B parameters, 0.96B active, ~49 GiB predicted at micro-batch 2 × 2048
#: tokens, which is 512 tokens per expert
MOE_BASE, MOE_LAYERS, MOE_EXPERTS, MOE_SEQ, MOE_MICRO_BATCH = "qwen3-30b-a3b", 6, 64, 2048, 2
FP8_RECIPES = ("tensorwise", "rowwise")
RESULT_FILE, PROFILE_FILE = "gpu_check.json", "calibration_profile.toml"


# ---- predictions -------------------------------------------------------------------------------------------
def predictions(spec: Any, plan: Any, ctx: dict, compiled: bool = False, fp8_recipe: str = "tensorwise") -> dict:
    """The predictor's figures for a run (rundir/predicted.py, as summary.json holds them) on the card's
    datasheet and on the calibrated profile."""
    from bastion.rundir.predicted import predicted_figures

    return {source: predicted_figures(spec, plan, cluster, spec.seq_len, compiled=compiled, fp8_recipe=fp8_recipe)
            if cluster else {"note": "no profile: `bastion calibrate` wrote none (see the calibrate part)"}
            for source, cluster in clusters(ctx).items()}


def clusters(ctx: dict) -> dict[str, str | None]:
    return {"datasheet": ctx["datasheet_cluster"], "profile": ctx["profile_cluster"]}


def judge(row: dict, predicted: dict) -> dict:
    """measured / predicted step time, memory and MFU under each source of rates."""
    row["predicted"] = predicted
    for source, figures in predicted.items():
        if not figures.get("step_time_s"):
            continue
        row[f"{source}_step_s"] = figures["step_time_s"]
        row[f"{source}_step_ratio"] = row["step_time_s"] / figures["step_time_s"]
        row[f"{source}_mfu"] = figures.get("mfu")
        total = figures.get("memory_bytes", {}).get("total")
        if total and row.get("peak_mem_bytes"):
            row[f"{source}_mem_gib"] = total / 2**30
            row[f"{source}_mem_ratio"] = row["peak_mem_bytes"] / total
    return row


# ---- the parts (each in its own process) -------------------------------------------------------------------
class Part:
    """One part's rows, written to its result file after every run; each run guarded and held to the budget."""

    def __init__(self, name: str, ctx: dict) -> None:
        self.name, self.ctx = name, ctx
        self.result: dict = {"rows": []}
        self.path = Path(ctx["work"]) / f"{name}.json"

    def save(self) -> None:
        self.path.write_text(json.dumps(self.result, indent=2, default=str) + "\n")

    def run(self, name: str, needs: str, measure: Callable[[], dict]) -> dict | None:
        left = self.ctx["deadline"] - time.time()
        needed = NEEDS_S[needs] * (0.1 if self.ctx["smoke"] else 1.0)
        if left < needed:
            row: dict = {"run": name, "skipped": f"budget: {left:.0f} s left, this run needs about {needed:.0f} s"}
        elif self.ctx["smoke"] and needs == "compile":
            row = {"run": name, "skipped": "smoke: a cold torch.compile takes 20-100 s on a shared 2-core CPU; a "
                                           "compiled run is the same train(compile=True) call as the eager one"}
        else:
            try:
                row = measure()
                row.setdefault("run", name)
            except Exception as exc:  # noqa: BLE001 - record it; the next run goes on
                row = {"run": name, "error": f"{type(exc).__name__}: {exc}"[:3000],
                       "traceback": traceback.format_exc()[-4000:]}
                release_device_memory()
        self.result["rows"].append(row)
        self.save()
        print(f"[{self.name}] " + json.dumps({k: v for k, v in row.items() if not isinstance(v, dict | list)},
                                             default=str), flush=True)
        return row


def dense_setup(ctx: dict, precision: str) -> tuple[Any, Any, Path]:
    """gpu_1p5b.py's model and plan (tiny in the smoke), the plan saved for `train`."""
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    spec = load_model("tiny" if ctx["smoke"] else "llama-1.5b")
    micro_batch = 2 if ctx["smoke"] else 8
    plan = ParallelPlan(micro_batch=micro_batch, global_batch=micro_batch,
                        precision="fp32" if ctx["smoke"] and precision == "bf16" else precision)
    return spec, plan, plan.save(Path(ctx["work"]) / f"plan-dense-{precision}.json")


def measured_train(ctx: dict, name: str, spec: Any, plan: Any, plan_path: Path, compiled: bool,
                   fp8_recipe: str = "tensorwise") -> dict:
    row = train_run(name, spec, plan_path, Path(ctx["data"]), ctx["steps"], Path(ctx["work"]),
                    ctx["datasheet_cluster"], compile=compiled, fp8_recipe=fp8_recipe)
    row.update(model=spec.name, micro_batch=plan.micro_batch, seq_len=spec.seq_len, precision=plan.precision,
               compiled=compiled)
    return judge(row, predictions(spec, plan, ctx, compiled, fp8_recipe))


def part_dense(part: Part) -> None:
    spec, plan, plan_path = dense_setup(part.ctx, "bf16")
    for mode in ("compile", "eager"):
        part.run(mode, mode, lambda mode=mode: measured_train(part.ctx, mode, spec, plan, plan_path,
                                                              mode == "compile"))


def part_fp8(part: Part) -> None:
    import torch

    spec, plan, plan_path = dense_setup(part.ctx, "fp8")
    mode = part.ctx["fp8_mode"]
    for recipe in FP8_RECIPES:
        row = part.run(f"fp8-{recipe}-{mode}", mode, lambda recipe=recipe: measured_train(
            part.ctx, f"fp8-{recipe}-{mode}", spec, plan, plan_path, mode == "compile", recipe))
        if row and "error" in row and not torch.cuda.is_available():
            # the runtime refuses fp8 off CUDA (runtime/float8.py) rather than train another precision
            row["skipped"] = "needs CUDA: " + row.pop("error")
            row.pop("traceback", None)
            part.save()


def moe_spec(ctx: dict) -> Any:
    from bastion.specs.model import load_model

    if ctx["smoke"]:
        return load_model("tiny-moe")
    return replace(load_model(MOE_BASE), name=f"{MOE_BASE}-{MOE_LAYERS}l-{MOE_EXPERTS}e", num_layers=MOE_LAYERS,
                   num_experts=MOE_EXPERTS, seq_len=MOE_SEQ)


def part_moe(part: Part) -> None:
    from bastion.specs.plan import ParallelPlan

    ctx = part.ctx
    spec = moe_spec(ctx)
    micro_batch = 2 if ctx["smoke"] else MOE_MICRO_BATCH
    plan = ParallelPlan(micro_batch=micro_batch, global_batch=micro_batch, precision="fp32" if ctx["smoke"]
                        else "bf16")
    plan_path = plan.save(Path(ctx["work"]) / "plan-moe.json")
    part.result.update(model=spec.to_dict(), total_params=spec.total_params())
    part.run("moe-eager", "moe", lambda: with_expert_path(lambda: measured_train(
        ctx, "moe-eager", spec, plan, plan_path, compiled=False)))
    rows = micro_batch * spec.seq_len * spec.top_k / spec.num_experts
    for variant in grouped_gemm_variants():
        part.run(f"grouped-gemm {variant}", "grouped_gemm",
                 lambda variant=variant: grouped_gemm_rate(spec, round(rows), variant, ctx))


def with_expert_path(measure: Callable[[], dict]) -> dict:
    """`measure()`'s row, with the expert matmul each MoE layer call ran: runtime/moe.py chooses
    torch._grouped_mm or its loop per call (grouped_mm_available); the calls are counted here."""
    from bastion.runtime import moe as runtime_moe

    chosen: Counter = Counter()
    available = runtime_moe.grouped_mm_available

    def counting(weight: Any) -> bool:
        grouped = available(weight)
        chosen["torch._grouped_mm" if grouped else "loop over experts"] += 1
        return grouped

    runtime_moe.grouped_mm_available = counting
    try:
        row = measure()
    finally:
        runtime_moe.grouped_mm_available = available
    row["expert_matmul_calls"] = dict(chosen)
    return row


def grouped_gemm_variants() -> tuple[str, ...]:
    """The expert weights as a one-card run holds them (fp32 parameters, bf16 autocast: what `train` runs
    without FSDP2) and as FSDP2's bf16 compute copies hold them; fp32 alone on a CPU."""
    import torch

    return ("fp32 weights, bf16 autocast", "bf16 weights") if torch.cuda.is_available() else ("fp32 weights",)


def grouped_gemm_rate(spec: Any, rows_per_expert: int, variant: str, ctx: dict) -> dict:
    """The runtime's GroupedExperts forward and forward + backward on `rows_per_expert` rows for every expert,
    TFLOP/s, against the predictor's rate for one expert's GEMMs at that many rows (predict/moe.py)."""
    import torch
    from bench_predict_device import timeit

    from bastion.predict.kernels import DENSE_RATE_GROUPED_GEMM
    from bastion.predict.moe import expert_forward_time, expert_gemm_shapes
    from bastion.runtime.moe import GroupedExperts, grouped_mm_available
    from bastion.specs.hardware import load_cluster

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    experts = GroupedExperts(spec).to(device)
    with torch.no_grad():
        for weight in experts.parameters():
            weight.normal_(0.0, 0.02)
    bf16_weights = variant == "bf16 weights"
    if bf16_weights:
        experts.to(torch.bfloat16)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if "autocast" in variant
                else contextlib.nullcontext())
    counts = [rows_per_expert] * spec.num_experts
    x_TH = torch.randn(sum(counts), spec.hidden_size, device=device,
                       dtype=torch.bfloat16 if bf16_weights else torch.float32, requires_grad=True)
    with autocast:
        grad = torch.randn_like(experts(x_TH, counts))

    def forward() -> None:
        with autocast:
            experts(x_TH, counts)

    def forward_backward() -> None:
        with autocast:
            out = experts(x_TH, counts)
        out.backward(grad)

    reps = 3 if ctx["smoke"] else 20
    forward_s, forward_backward_s = timeit(forward, reps), timeit(forward_backward, reps)
    flops = 2.0 * sum(m * k * n for m, k, n in expert_gemm_shapes(spec, rows_per_expert)) * spec.num_experts
    precision = "bf16" if device.type == "cuda" else "fp32"
    row = {"path": "torch._grouped_mm" if grouped_mm_available(experts.w1) else "loop over experts",
           "variant": variant, "experts": spec.num_experts, "rows_per_expert": rows_per_expert,
           "shapes_per_expert_mkn": expert_gemm_shapes(spec, rows_per_expert), "forward_s": forward_s,
           "forward_backward_s": forward_backward_s, "forward_tflops": flops / forward_s / 1e12,
           "forward_backward_tflops": 3 * flops / forward_backward_s / 1e12}
    for source, cluster in clusters(ctx).items():
        if cluster:
            # the implementation the runtime ran: torch._grouped_mm at its published rate (data/grouped_gemm.toml)
            per_expert = expert_forward_time(spec, load_cluster(cluster), rows_per_expert, 1, precision,
                                             grouped_gemm="torch_grouped_mm" if row["path"] == "torch._grouped_mm"
                                             else DENSE_RATE_GROUPED_GEMM)
            row[f"{source}_tflops"] = flops / spec.num_experts / per_expert / 1e12
            row[f"{source}_rate_ratio"] = row["forward_tflops"] / row[f"{source}_tflops"]
    with autocast:
        row["uneven_routing"] = grouped_against_loop(experts, spec, rows_per_expert, x_TH.dtype)
    return row


def grouped_against_loop(experts: Any, spec: Any, rows_per_expert: int, dtype: Any) -> dict:
    """The runtime's expert matmul on uneven routing (one expert without tokens, group sizes that are not
    multiples of 8), on the path it chooses, against its loop over experts on the same rows: the largest
    difference of the output and of the input's gradient, relative to the loop's largest value. On a card with
    torch._grouped_mm this is the first check of that path (the CPU tests run the loop only)."""
    import torch

    from bastion.runtime import moe as runtime_moe

    counts = [0] + [round(rows_per_expert * (0.5 + e / spec.num_experts)) + e % 7 for e in range(1, spec.num_experts)]
    generator = torch.Generator(device=experts.w1.device).manual_seed(0)
    x_TH = torch.randn(sum(counts), spec.hidden_size, device=experts.w1.device, dtype=dtype, generator=generator)
    grad = torch.randn(sum(counts), spec.hidden_size, device=experts.w1.device, dtype=dtype, generator=generator)

    def run() -> tuple[Any, Any]:
        x = x_TH.clone().requires_grad_(True)
        out = experts(x, counts)
        out.backward(grad.to(out.dtype))
        return out.detach().float(), x.grad.float()

    chosen = "torch._grouped_mm" if runtime_moe.grouped_mm_available(experts.w1) else "loop over experts"
    out, x_grad = run()
    available = runtime_moe.grouped_mm_available
    runtime_moe.grouped_mm_available = lambda weight: False
    try:
        loop_out, loop_x_grad = run()
    finally:
        runtime_moe.grouped_mm_available = available

    def relative(a: Any, b: Any) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    return {"path": chosen, "against": "loop over experts", "counts_min_max": [min(counts), max(counts)],
            "rows": sum(counts), "output_max_rel_diff": relative(out, loop_out),
            "input_grad_max_rel_diff": relative(x_grad, loop_x_grad)}


def part_single_card(part: Part) -> None:
    import torch
    from bench_predict_device import CONFIGS, measure_steps, predicted_step, tiny_configs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps, warmup = (2, 1) if part.ctx["smoke"] else (5, 3)

    def measure(config: tuple) -> dict:
        row = measure_steps(config, device, steps, warmup)
        row.update(run=config[0], step_time_s=row["step_s"],
                   peak_mem_bytes=row["peak_mem_GiB"] * 2**30 if row["peak_mem_GiB"] else None)
        for source, cluster in clusters(part.ctx).items():
            if cluster:
                step_s, mem_gib = predicted_step(row, cluster)
                row.update({f"{source}_step_s": step_s, f"{source}_step_ratio": row["step_s"] / step_s,
                            f"{source}_mem_gib": mem_gib})
                if row["peak_mem_GiB"]:
                    row[f"{source}_mem_ratio"] = row["peak_mem_GiB"] / mem_gib
        release_device_memory()
        return row

    for config in tiny_configs() if part.ctx["smoke"] else CONFIGS:
        part.run(config[0], "single_card", lambda config=config: measure(config))


PART_RUNS = {"dense": part_dense, "moe": part_moe, "fp8": part_fp8, "single_card": part_single_card}


def child(name: str, context_file: Path) -> None:
    """One part, in this process (started by run_child)."""
    ctx = json.loads(context_file.read_text())
    part = Part(name, ctx)
    part.save()
    if name != "single_card":
        with socket.socket() as free:  # each part's own port: the last part's may still be in TIME_WAIT
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        single_process_group(port)
    PART_RUNS[name](part)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of the process group (PYTORCH_NOTES: abort at exit)


# ---- the parent: parts in order, within the budget ----------------------------------------------------------
def run_child(name: str, ctx: dict) -> dict:
    work = Path(ctx["work"])
    context_file = work / f"{name}-context.json"
    context_file.write_text(json.dumps(ctx))
    left = ctx["deadline"] - time.time()
    if left < 5:
        return {"skipped": f"budget spent ({left:.0f} s left)"}
    status = None
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--context",
                               str(context_file)], timeout=left, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode:
            status = f"the part's process exited with {done.returncode} (its output above says why)"
    except subprocess.TimeoutExpired:
        status = f"stopped at the end of the budget ({left:.0f} s)"
    result_file = work / f"{name}.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {"rows": []}
    if status:
        result["error"] = status
    return result


def run_calibrate(ctx: dict, out: Path) -> dict:
    """`bastion calibrate --quick` for this card, the profile written to --out; on success the later parts
    predict with it too."""
    left = ctx["deadline"] - time.time()
    accelerator = ctx["datasheet_cluster"].split(":")[0] if ctx["datasheet_cluster"] else "cpu"
    profile = out / PROFILE_FILE
    command = [sys.executable, "-m", "bastion", "calibrate", "--quick", "--no-progress", "--nproc", "1",
               "--accelerator", accelerator, "--models", "tiny" if ctx["smoke"] else "llama-1.5b",
               "--out", str(profile), "--run-dir", str(Path(ctx["work"]) / "calibrate")]
    result: dict = {"command": " ".join(command[1:])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(left, 1), cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])})
    except subprocess.TimeoutExpired:
        result["error"] = f"stopped at the end of the budget ({left:.0f} s)"
        return result
    result.update(exit=done.returncode, output=(done.stdout + done.stderr)[-3000:])
    print(f"[calibrate] exit {done.returncode}: {(done.stdout + done.stderr).strip()[-600:]}", flush=True)
    if done.returncode or not profile.exists():
        result["error"] = f"`bastion calibrate` exited {done.returncode} and wrote no profile"
        return result
    from bastion.specs.hardware import load_cluster

    cluster = f"{accelerator}:1@{profile}"
    try:
        load_cluster(cluster)
    except Exception as exc:  # noqa: BLE001 - a profile the predictor cannot read is the part's result
        result["error"] = f"the profile does not load as a cluster: {exc}"
        return result
    result["profile_cluster"] = ctx["profile_cluster"] = cluster
    # where and how it measured: the device, its driver / CUDA / torch, the SDPA kernel, single device or NCCL
    result["machine"] = tomllib.loads(profile.read_text())["machine"]
    return result


def fp8_against_bf16(parts: dict) -> list[dict]:
    """Each fp8 row against the dense bf16 row of the same mode: measured and predicted (datasheet) ratios."""
    bf16 = {row["run"]: row for row in parts.get("dense", {}).get("rows", []) if "step_time_s" in row}
    out = []
    for row in parts.get("fp8", {}).get("rows", []):
        base = bf16.get(row["run"].rsplit("-", 1)[-1])
        if base is None or "step_time_s" not in row:
            continue
        entry = {"run": row["run"], "measured_speedup": base["step_time_s"] / row["step_time_s"],
                 "measured_memory_ratio": row["peak_mem_bytes"] / base["peak_mem_bytes"]}
        if row.get("datasheet_step_s") and base.get("datasheet_step_s"):
            entry["predicted_speedup"] = base["datasheet_step_s"] / row["datasheet_step_s"]
        out.append(entry)
    return out


def table(results: dict) -> str:
    def number(value: Any, form: str) -> str:
        return format(value, form) if isinstance(value, int | float) else "-"

    lines = [f"{'part':11} {'run':30} {'step s':>8} {'/sheet':>7} {'/profile':>8} {'peak GiB':>8} {'/sheet':>7} "
             f"{'MFU':>6} {'sheet MFU':>9}  note"]
    for name, part in results["parts"].items():
        if "error" in part or "skipped" in part:
            lines.append(f"{name:11} {'(part)':30} {part.get('error') or part.get('skipped')}"[:200])
        for row in part.get("rows", []):
            if "path" in row:  # a grouped-GEMM row
                uneven = row.get("uneven_routing", {})
                lines.append(f"{name:11} {row['run'][:30]:30} {row['forward_s']:8.5f} fwd {row['forward_tflops']:.3g} "
                             f"TFLOP/s on {row['rows_per_expert']} rows/expert via {row['path']}; predictor "
                             f"{number(row.get('datasheet_tflops'), '.3g')} TFLOP/s "
                             f"(measured/predicted {number(row.get('datasheet_rate_ratio'), '.2f')}); uneven "
                             f"routing vs the loop: output {number(uneven.get('output_max_rel_diff'), '.1e')}, "
                             f"input grad {number(uneven.get('input_grad_max_rel_diff'), '.1e')}")
                continue
            note = row.get("error") or row.get("skipped") or ", ".join(f"{k} ×{v}" for k, v in
                                                                       row.get("expert_matmul_calls", {}).items())
            gib = row["peak_mem_bytes"] / 2**30 if row.get("peak_mem_bytes") else None
            lines.append(f"{name:11} {row['run'][:30]:30} {number(row.get('step_time_s'), '8.4f'):>8} "
                         f"{number(row.get('datasheet_step_ratio'), '7.2f'):>7} "
                         f"{number(row.get('profile_step_ratio'), '8.2f'):>8} {number(gib, '8.2f'):>8} "
                         f"{number(row.get('datasheet_mem_ratio'), '7.2f'):>7} {number(row.get('mfu'), '6.3f'):>6} "
                         f"{number(row.get('datasheet_mfu'), '9.3f'):>9}  {note[:150]}")
    for entry in results.get("fp8_vs_bf16", []):
        lines.append(f"fp8 vs bf16 {entry['run']:30} speedup measured {entry['measured_speedup']:.2f}× predicted "
                     f"{number(entry.get('predicted_speedup'), '.2f')}×, peak memory ×{entry['measured_memory_ratio']:.2f}")
    lines.append("(/sheet, /profile: measured ÷ predicted with the card's datasheet rates / the calibrated profile)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same code paths on CPU at tiny shapes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, in order: {', '.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="stop starting runs (and stop a running part) after this many seconds")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per training run (2 left out)")
    parser.add_argument("--fp8-mode", choices=("compile", "eager"), default="compile",
                        help="run the fp8 recipes compiled (torchao's fp8 casts fuse) or eager")
    parser.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--context", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.context)
        return 0
    started = time.time()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")

    import torch

    device, datasheet = device_cluster()
    if device == "cpu" and not args.smoke:
        parser.error("no CUDA device here: run with --smoke to check the script on the CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bastion-gpu-check-"))
    ctx = {"smoke": args.smoke, "work": str(work), "data": str(work / "data"), "deadline": started + args.budget_s,
           "steps": min(args.steps, 3) if args.smoke else args.steps,
           "fp8_mode": "eager" if args.smoke else args.fp8_mode,
           "datasheet_cluster": datasheet, "profile_cluster": None}
    prepare_corpus(work / "data", max_bytes=200_000 if args.smoke else 3_000_000)
    try:
        torchao_version = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        torchao_version = None
    results: dict = {"script": "benchmarks/gpu_check.py", "smoke": args.smoke, "torch": torch.__version__,
                     "torchao": torchao_version, "device": device, "datasheet_cluster": datasheet,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget_s,
                     "parts": {}}
    for name in parts:
        part_started = time.time()
        result = run_calibrate(ctx, out) if name == "calibrate" else run_child(name, ctx)
        result["wall_s"] = time.time() - part_started
        results["parts"][name] = result
        results["profile_cluster"] = ctx["profile_cluster"]
        results["fp8_vs_bf16"] = fp8_against_bf16(results["parts"])
        results["wall_s"] = time.time() - started
        (out / RESULT_FILE).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"wrote {out / RESULT_FILE} in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
