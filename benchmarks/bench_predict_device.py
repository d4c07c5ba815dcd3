"""Out-of-sample check of the predictor on a real GPU (run on the device machine; needs only torch).

The efficiency curves were measured on an H200; this measures plain-PyTorch training steps (fp32 parameters, bf16
autocast, SDPA causal attention, fused AdamW, fp32 cross-entropy, as in the calibration) on whatever GPU it runs on,
plus a few GEMM and attention rates, and writes JSON. `--compare FILE` (no GPU needed) prints the predictor's
figures for the same configurations next to the measured ones.

    python3 benchmarks/bench_predict_device.py --out results.json          # on the GPU machine
    .venv/bin/python benchmarks/bench_predict_device.py --compare results.json --cluster h100-sxm:1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: (name, layers, hidden, heads, kv_heads, ffn, ffn_type, vocab, seq, micro_batch, checkpoint)
CONFIGS = [
    ("llama-1B-ish", 16, 2048, 32, 8, 8192, "swiglu", 128256, 2048, 4, False),
    ("llama-1B-ish-ckpt", 16, 2048, 32, 8, 8192, "swiglu", 128256, 2048, 8, True),
    ("llama-3B-ish", 28, 3072, 24, 8, 8192, "swiglu", 128256, 2048, 2, False),
    ("llama-long-16k", 8, 2048, 16, 8, 8192, "swiglu", 32000, 16384, 1, False),
    ("mpt-760m-like", 24, 1536, 12, 12, 6144, "gelu", 50368, 2048, 8, False),
    ("mpt-760m-like-32k", 24, 1536, 12, 12, 6144, "gelu", 50368, 32768, 1, True),
]


def tiny_configs() -> list[tuple]:
    """CONFIGS at tiny shapes (a smoke test of a script on a CPU): the same names, kinds and checkpointing."""
    return [(n, 2, 64, 4, 2 if t == "swiglu" else 4, 128, t, 256, 64, 2, c)
            for n, _, _, _, _, _, t, _, _, _, c in CONFIGS]


def build(cfg, device):
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    _, layers, h, heads, kv, ffn, ffn_type, vocab, _, _, ckpt = cfg
    hd = h // heads

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.RMSNorm(h), nn.RMSNorm(h)
            self.wq, self.wk = nn.Linear(h, heads * hd, bias=False), nn.Linear(h, kv * hd, bias=False)
            self.wv, self.wo = nn.Linear(h, kv * hd, bias=False), nn.Linear(heads * hd, h, bias=False)
            self.w1, self.w2 = nn.Linear(h, ffn, bias=False), nn.Linear(ffn, h, bias=False)
            self.w3 = nn.Linear(h, ffn, bias=False) if ffn_type == "swiglu" else None

        def inner(self, x):
            b, s, _ = x.shape
            y = self.n1(x)
            q = self.wq(y).view(b, s, heads, hd).transpose(1, 2)
            k = self.wk(y).view(b, s, kv, hd).transpose(1, 2)
            v = self.wv(y).view(b, s, kv, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != heads)
            x = x + self.wo(o.transpose(1, 2).reshape(b, s, heads * hd))
            y = self.n2(x)
            a = F.silu(self.w1(y)) * self.w3(y) if self.w3 is not None else F.gelu(self.w1(y))
            return x + self.w2(a)

        def forward(self, x):
            return checkpoint(self.inner, x, use_reentrant=False) if ckpt else self.inner(x)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, h)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.RMSNorm(h)
            self.out = nn.Linear(h, vocab, bias=False)

        def forward(self, tokens):
            x = self.emb(tokens)
            for blk in self.blocks:
                x = blk(x)
            return self.out(self.norm(x))

    model = Model().to(device)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else None
    return model


def measure_steps(cfg, device, steps: int, warmup: int) -> dict:
    import torch
    import torch.nn.functional as F

    name, layers, h, heads, kv, ffn, ffn_type, vocab, seq, mb, ckpt = cfg
    torch.manual_seed(0)
    model = build(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    tokens = torch.randint(0, vocab, (mb, seq + 1), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().view(-1, vocab), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"name": name, "layers": layers, "hidden": h, "heads": heads, "kv_heads": kv, "ffn": ffn,
            "ffn_type": ffn_type, "vocab": vocab, "seq": seq, "micro_batch": mb, "checkpoint": ckpt,
            "step_s": times[len(times) // 2], "peak_mem_GiB": peak}


def timeit(fn, reps: int = 20, warmup: int = 3) -> float:
    """Mean seconds of fn() over `reps` calls after `warmup` calls, the device synchronised around them."""
    import torch

    def synchronize() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize()
    return (time.perf_counter() - t0) / reps


def measure_kernels(device) -> dict:
    import torch
    import torch.nn.functional as F

    out = {"gemm": [], "sdpa": []}
    for m, k, n in [(8192, 8192, 8192), (8192, 4096, 12288), (8192, 4096, 16384), (8192, 16384, 4096),
                    (16384, 2048, 8192), (16384, 1536, 6144), (32768, 8192, 8192)]:
        a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
        s = timeit(lambda a=a, b=b: a @ b)
        out["gemm"].append({"m": m, "k": k, "n": n, "s": s, "tflops": 2 * m * k * n / s / 1e12})
    for seq, batch in [(2048, 4), (8192, 1), (16384, 1), (32768, 1)]:
        q = torch.randn(batch, 32, seq, 128, device=device, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn_like(q, requires_grad=True)
        v = torch.randn_like(q, requires_grad=True)
        g = torch.randn_like(q)

        def fwdbwd(q=q, k=k, v=v, g=g):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(g)

        s = timeit(fwdbwd, reps=10)
        flops = 3.5 * 4 * batch * 32 * seq * seq * 128 / 2
        out["sdpa"].append({"seq": seq, "batch": batch, "fwdbwd_s": s, "fwdbwd_tflops": flops / s / 1e12})
    return out


def run_device(out_path: Path, steps: int, warmup: int, tiny: bool) -> None:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "steps": []}
    for cfg in tiny_configs() if tiny else CONFIGS:
        try:
            result["steps"].append(measure_steps(cfg, device, steps, warmup))
        except torch.cuda.OutOfMemoryError as exc:
            result["steps"].append({"name": cfg[0], "error": f"out of memory: {exc}"[:300]})
            torch.cuda.empty_cache()
        print(json.dumps(result["steps"][-1]), flush=True)
    if device.type == "cuda":
        result["kernels"] = measure_kernels(device)
        print(json.dumps(result["kernels"]), flush=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")


def predicted_step(row: dict, cluster_name: str) -> tuple[float, float]:
    """(step seconds, peak memory GiB incl. the 1 GiB runtime reserve) the predictor gives for a measured row."""
    from bastion.predict import PredictOptions, estimate
    from bastion.specs import ModelSpec, ParallelPlan, load_cluster

    model = ModelSpec(name=row["name"], num_layers=row["layers"], hidden_size=row["hidden"], num_heads=row["heads"],
                      num_kv_heads=row["kv_heads"], ffn_hidden_size=row["ffn"], ffn_type=row["ffn_type"],
                      vocab_size=row["vocab"], seq_len=row["seq"])
    plan = ParallelPlan(micro_batch=row["micro_batch"], global_batch=row["micro_batch"],
                        recompute="full" if row["checkpoint"] else "none")
    est = estimate(model, load_cluster(cluster_name), plan, options=PredictOptions())
    return est.step_time_s, est.memory.total / 2**30


def compare(path: Path, cluster_name: str) -> None:
    data = json.loads(path.read_text())
    print(f"measured on {data['device']} (torch {data['torch']}), predicted for {cluster_name}")
    for r in data["steps"]:
        if "error" in r:
            print(f"{r['name']:20s} {r['error'][:60]}")
            continue
        step_s, mem = predicted_step(r, cluster_name)
        print(f"{r['name']:20s} step measured {r['step_s']:.4f} s predicted {step_s:.4f} s "
              f"({100 * (step_s / r['step_s'] - 1):+.1f}%)   peak memory measured "
              f"{r['peak_mem_GiB'] or 0:.1f} GiB predicted {mem:.1f} GiB (incl. 1 GiB runtime reserve)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("predict_device.json"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test of this script)")
    parser.add_argument("--compare", type=Path, help="a results file: print predicted vs measured (no GPU)")
    parser.add_argument("--cluster", default="h100-sxm:1")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args.cluster)
    else:
        run_device(args.out, args.steps, args.warmup, args.tiny)


if __name__ == "__main__":
    main()
