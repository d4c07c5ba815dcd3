"""The 1.5B Llama-style model on one GPU through bastion's runtime: MFU, tokens/s, peak memory vs prediction.

Self-contained (no network, no installed bastion needed: it puts ../src on sys.path). World size 1, started
directly (no torchrun needed). Runs `torch.compile` first (the headline), then eager if `--modes` says so.

    python benchmarks/gpu_1p5b.py                  # on the GPU machine; writes $OUT/gpu_1p5b.json
    python benchmarks/gpu_1p5b.py --smoke          # tiny model on CPU, to check the script end to end

MFU follows PaLM (6 · matmul params + 12 · layers · hidden · seq FLOPs per token) over 989.4 TFLOP/s, as
../shared/calibration does; the plain-PyTorch reference on an H200 reached 45.4% eager and 54.0% compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from gpu_runs import ROOT, device_cluster, prepare_corpus, single_process_group, train_run

H200_BF16_PEAK = 989.4e12
REFERENCE = {"plain_pytorch_eager_mfu": 0.4543, "plain_pytorch_compile_mfu": 0.5402,
             "source": "shared/calibration/h200-torch2.11-2026-11.json (llama-1B-ish rows)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (checks the script)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per mode")
    parser.add_argument("--modes", default="compile,eager", help="comma-separated: compile, eager")
    parser.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "benchmarks" / "results")))
    args = parser.parse_args()

    import torch

    from bastion.runtime.metrics import model_flops_per_token
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    on_gpu = torch.cuda.is_available() and not args.smoke
    model = "tiny" if args.smoke else "llama-1.5b"
    micro_batch = 2 if args.smoke else 8
    steps = min(args.steps, 4) if args.smoke else args.steps
    spec = load_model(model)
    work = Path(tempfile.mkdtemp(prefix="bastion-gpu-"))
    plan = ParallelPlan(micro_batch=micro_batch, global_batch=micro_batch, precision="bf16" if on_gpu else "fp32")
    plan_path = plan.save(work / "plan.json")
    prepare_corpus(work / "data")
    _, cluster = device_cluster()  # the card's catalog row (the H200 figures were recorded with "h200:1")
    single_process_group()

    flops_per_step = model_flops_per_token(spec, spec.seq_len) * plan.global_batch * spec.seq_len
    peak = H200_BF16_PEAK if on_gpu else None
    results = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
               "model": spec.name, "params": spec.total_params(), "seq_len": spec.seq_len,
               "micro_batch": micro_batch, "tokens_per_step": plan.global_batch * spec.seq_len,
               "model_flops_per_step": flops_per_step, "mfu_peak_flops": peak,
               "mfu_convention": "PaLM: 6·matmul params + 12·L·h·s per token, over 989.4 TFLOP/s (H200 bf16)",
               "reference": REFERENCE, "modes": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        try:
            row = train_run(mode, model, plan_path, work / "data", steps, work, cluster, compile=mode == "compile")
            row["mode"] = row.pop("run")
        except Exception as exc:  # noqa: BLE001 - keep the other mode's figures
            row = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"}
        else:
            row["tokens_per_s"] = plan.global_batch * spec.seq_len / row["step_time_s"]
            row["mfu"] = flops_per_step / row["step_time_s"] / peak if peak else None
            predicted = row["predicted"]
            if predicted.get("step_time_s"):
                row["predicted_step_time_s"] = predicted["step_time_s"]
                row["predicted_mfu"] = predicted.get("mfu")
                row["predicted_mem_gib"] = predicted["memory_bytes"]["total"] / 2**30
                row["measured_over_predicted_step_time"] = row["step_time_s"] / predicted["step_time_s"]
                row["measured_over_predicted_memory"] = (row["peak_mem_bytes"] / predicted["memory_bytes"]["total"])
        results["modes"][mode] = row
        print(json.dumps({k: v for k, v in row.items() if k not in ("predicted", "step_times_s", "losses")}),
              flush=True)
        (out / "gpu_1p5b.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'gpu_1p5b.json'}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of the process group (PYTORCH_NOTES: abort at exit)


if __name__ == "__main__":
    main()
