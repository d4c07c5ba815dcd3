"""Training-loop stall of an asynchronous checkpoint as a fraction of a synchronous one (~100M parameters, CPU).

One process trains a ~100M-parameter Llama-style model (bastion's runtime model, AdamW) and checkpoints it through
bastion's Checkpointer (DCP + fsync + sha256 manifest + rename), first synchronously, then asynchronously. For
each save it records how long the loop was blocked (inside save(), plus the wait of the next optimizer step for
the background copy of the state), how long until the checkpoint was committed, and the step time while the
background write ran (a shared CPU slows the loop down instead of stopping it).

    .venv/bin/python benchmarks/bench_checkpoint.py [--saves 3] [--out benchmarks/results/checkpoint.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from bastion.runtime import checkpoint as ck  # noqa: E402
from bastion.runtime.model import build_model, init_weights  # noqa: E402
from bastion.specs.model import ModelSpec  # noqa: E402

SPEC = ModelSpec(name="bench-100m", num_layers=12, hidden_size=768, num_heads=12, num_kv_heads=12,
                 ffn_hidden_size=2048, vocab_size=8192, seq_len=128, source="bench_checkpoint.py")


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_model(SPEC)
    model.to_empty(device="cpu")
    init_weights(model, SPEC, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, optimizer


def train_step(model, optimizer, generator, saver=None) -> float:
    start = time.perf_counter()
    tokens = torch.randint(0, SPEC.vocab_size, (1, SPEC.seq_len + 1), generator=generator)
    logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    if saver is not None:
        saver.wait_staged()  # as the trainer does: no update before the async save has copied the state
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def run(saves: int, root: Path) -> dict:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model, optimizer = build()
    params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    baseline = [train_step(model, optimizer, generator) for _ in range(3)][1:]
    step_s = statistics.median(baseline)
    results: dict = {"params": params, "step_s_no_save": step_s}
    for mode in ("sync", "async"):
        saver = ck.Checkpointer(ck.CheckpointConfig(root / mode, every=1, async_save=mode == "async"))
        rows = []
        for index in range(saves):
            step = index + 1
            tensors, hparams = ck.capture_tensors_and_hparams([model], [optimizer])
            start = time.perf_counter()
            stalled_before = saver.stall_s
            saver.save(step, tensors, {"step": step}, {"optimizer": hparams})
            # keep training while the write runs; the checkpoint is done once committed
            during = []
            while saver._pending is not None and not saver._pending.done.is_set():
                during.append(train_step(model, optimizer, generator, saver))
            # blocked = inside save() + what the next optimizer step waited for the copy
            blocked = saver.stall_s - stalled_before
            saver.wait()
            committed = time.perf_counter() - start
            rows.append({"blocked_s": blocked, "committed_s": committed, "steps_during_write": len(during),
                         "step_s_during_write": statistics.median(during) if during else None})
        saver.close()
        results[mode] = rows
        shutil.rmtree(root / mode, ignore_errors=True)
    bytes_per_save = sum(t.numel() * t.element_size() for t in ck.capture_tensors_and_hparams(
        [model], [optimizer])[0].values())
    sync_blocked = statistics.median(r["blocked_s"] for r in results["sync"])
    # the first async save allocates its staging copies; later ones reuse them (the steady state)
    async_steady = [r["blocked_s"] for r in results["async"][1:]] or [results["async"][0]["blocked_s"]]
    async_blocked = statistics.median(async_steady)
    dips = [r["step_s_during_write"] for r in results["async"] if r["step_s_during_write"]]
    results["summary"] = {
        "checkpoint_bytes": bytes_per_save,
        "sync_save_blocked_s": sync_blocked,
        "async_save_blocked_s": async_blocked,
        "async_first_save_blocked_s": results["async"][0]["blocked_s"],
        "async_stall_fraction_of_sync": async_blocked / sync_blocked,
        "target_fraction": 0.05,
        "async_time_to_commit_s": statistics.median(r["committed_s"] for r in results["async"]),
        "step_time_ratio_during_background_write": (statistics.median(dips) / step_s) if dips else None,
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "checkpoint.json")
    parser.add_argument("--dir", type=Path, default=None, help="where to write checkpoints (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bastion-bench-ckpt-"))
    try:
        results = run(args.saves, root)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    results["machine"] = {"cpus": os.cpu_count(), "omp_threads": os.environ["OMP_NUM_THREADS"],
                          "torch": torch.__version__, "python": platform.python_version(),
                          "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    s = results["summary"]
    print(f"{results['params'] / 1e6:.1f}M params, {s['checkpoint_bytes'] / 2**30:.2f} GiB per checkpoint")
    print(f"sync save blocks the loop {s['sync_save_blocked_s']:.2f} s; async {s['async_save_blocked_s']:.3f} s "
          f"(first {s['async_first_save_blocked_s']:.3f} s) = {100 * s['async_stall_fraction_of_sync']:.1f}% "
          f"of sync (target <= 5%); async commit after {s['async_time_to_commit_s']:.2f} s")
    if s["step_time_ratio_during_background_write"]:
        print(f"step time while the background write runs / without: "
              f"{s['step_time_ratio_during_background_write']:.2f}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
