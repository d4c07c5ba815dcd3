"""`bastion calibrate`'s microbenchmarks: this machine's rates, measured with the ops bastion's runtime runs.

Single process (one thread, as a training rank runs): GEMMs at the shapes the predictor costs for the models it
is asked about, causal SDPA forward / backward by sequence length and head size, eager elementwise bandwidth,
per-op dispatch, and the runtime's own blocks at shapes too small to compute anything (eager; under DTensor
tensor parallelism with and without sequence parallelism; under FSDP2), the ends of the model and AdamW with
clipping per parameter tensor; checkpoint write / read bandwidth to the run directory's filesystem. Then N
processes on the host at once (gloo): their start-up, how GEMM throughput and elementwise bandwidth hold up when
they share the cores, all-reduce, all-gather, reduce-scatter and send/recv by message size for every group size a
plan of N ranks forms (all groups of a size at once), what the runtime's FSDP2 costs per unit on real groups of
each of those sizes (wall time at a negligible size; CPU time as a line in the unit's bytes), and, on tensor-parallel and pipeline pairs of the runtime's real code, what tensor
parallelism and the pipeline schedule cost a rank and which collectives they issue.

Every figure is the median of repeats unless said otherwise (the optimizer's is a low quantile) and CPU time
unless said otherwise (what the work costs a core, whatever else the host runs; the pipeline's and the
optimizer's the rank's own thread's); every repeat is kept (`Repeats`) for the profile's noise bands. Each benchmark stops after a
time budget, or runs a fixed count where ranks must stay in step. Memory: the largest tensors are 64 MiB (the
checkpoint state), 32 MiB (elementwise) and the collectives' buffers (at most 16 MiB per rank), a few hundred
MiB per process with torch itself. `fit_profile` turns the raw measurements into the rates specs/profile.py
reads.

A GPU node runs the same kernel functions on a `Device` (bf16, wall time between torch.cuda.synchronize()
calls, the caching allocator capped at GPU_MEMORY_SHARE of the card): GEMMs, SDPA on the flash kernel where it
runs, elementwise bandwidth, per-op dispatch, checkpoint I/O, plus an AdamW step and NCCL collectives among the
node's GPUs (none with one); `fit_device_profile` turns them into the GPU rates of specs/profile.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from bastion.specs.model import ModelSpec
from bastion.specs.profile import SYNC_OPS

Progress = Callable[[str], None]


#: every measurement's repeats, seconds, by name: written to the profile's [repeats] table, the noise band that
#: `bastion calibrate --compare` judges a change against
Repeats = dict[str, list[float]]


#: the shortest repeat: a faster call is repeated within one repeat (a clock tick, or the OS's accounting of CPU
#: time, would otherwise be most of what is measured)
MIN_REPEAT_S = 2e-3


def _timings(fn: Callable[[], Any], budget_s: float, min_reps: int = 3, max_reps: int = 200,
             clock: Callable[[], float] = time.process_time, sync: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of one fn() in each repeat, after one warm-up, repeated until `budget_s` of wall time is spent
    (at least min_reps); a repeat runs fn() as many times as take MIN_REPEAT_S. By default the seconds are this
    process's CPU time: what the work costs a core, whatever else the host runs meanwhile (how much of a core a
    rank gets is measured apart: `core_share`). `sync` (a device's: its work runs asynchronously) waits for the
    queued work: after a first warm-up (a library's one-time set-up), around the second, which sizes a repeat."""
    if sync is not None:
        fn()
        sync()
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    calls = max(1, math.ceil(MIN_REPEAT_S / max(time.perf_counter() - start, 1e-9)))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        before = clock()
        for _ in range(calls):
            fn()
        times.append((clock() - before) / calls)
    return times


def _median_time(fn: Callable[[], Any], budget_s: float, name: str, repeats: Repeats | None,
                 clock: Callable[[], float] = time.process_time, sync: Callable[[], Any] | None = None) -> float:
    """The median of `_timings` (robust to the repeat a busy host delays), its repeats kept under `name`."""
    times = _timings(fn, budget_s, clock=clock, sync=sync)
    if repeats is not None:
        repeats[name] = times
    return statistics.median(times)


def core_share(work: Callable[[], Any], wall_s: float) -> float:
    """The share of a core this process got while running `work` repeatedly for `wall_s`: CPU time / wall."""
    start, start_cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < wall_s:
        work()
    return (time.process_time() - start_cpu) / (time.perf_counter() - start)


# ---- where the kernels run --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """Where the microbenchmarks run and how a repeat is timed: the same functions measure a host CPU or a GPU,
    only the clock, the dtype and the tensors' device differ."""

    #: the torch device type: "cpu" or "cuda"
    kind: str
    #: the dtype training computes in there, as the predictor assumes: fp32 on a CPU, bf16 on a GPU
    dtype: torch.dtype
    #: reads a repeat's time: this process's CPU time on a CPU (what the work costs a core); on a GPU wall time
    #: read after the device's queue drained (its kernels run asynchronously to the host)
    clock: Callable[[], float]
    #: waits for the device's queued work; None on a CPU (its ops are done when they return)
    sync: Callable[[], Any] | None = None

    @property
    def element_bytes(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def tensor(self, *shape: int, requires_grad: bool = False) -> torch.Tensor:
        """Random values of `shape` on the device, in its dtype."""
        return torch.randn(*shape, device=self.kind, dtype=self.dtype, requires_grad=requires_grad)

    def median_time(self, fn: Callable[[], Any], budget_s: float, name: str, repeats: Repeats | None) -> float:
        return _median_time(fn, budget_s, name, repeats, self.clock, self.sync)


CPU = Device("cpu", torch.float32, time.process_time)


def cuda_device() -> Device:
    """The current CUDA device, timed by wall clock after torch.cuda.synchronize() (a repeat lasts at least
    MIN_REPEAT_S, so the synchronisation's few microseconds are noise)."""
    def synced_clock() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()
    return Device("cuda", torch.bfloat16, synced_clock, torch.cuda.synchronize)


def sdpa_backend(device: Device, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                 ) -> tuple[str, Callable[[], contextlib.AbstractContextManager]]:
    """(the kernel's name, a context that selects it) for causal SDPA on q, k, v: on a GPU the first of flash,
    cuDNN, memory-efficient that runs forward and backward at this shape (training's kernels); on a CPU
    PyTorch's own choice."""
    if device.kind == "cpu":
        return "default", contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(backend):
                _causal_sdpa(q, k, v).sum().backward()
        except RuntimeError:
            continue
        finally:
            for t in (q, k, v):
                t.grad = None
        return backend.name.lower(), lambda backend=backend: sdpa_kernel(backend)
    return "default", contextlib.nullcontext


# ---- single-process kernels -------------------------------------------------------------------------------

def gemm_shapes(models: list[ModelSpec], micro_batches: tuple[int, ...], tps: tuple[int, ...]
                ) -> list[tuple[int, int, int]]:
    """(m, k, n) of every forward GEMM the predictor costs for these models (estimate._layer_gemm_shapes and the
    LM head), distinct."""
    shapes = set()
    for spec in models:
        h, q, kv, f = spec.hidden_size, spec.q_width, spec.kv_width, spec.ffn_hidden_size
        for b in micro_batches:
            tokens = b * spec.seq_len
            for tp in tps:
                shapes |= {(tokens, h, (q + 2 * kv) // tp), (tokens, q // tp, h),
                           (tokens, h, (spec.ffn_matrices - 1) * f // tp), (tokens, f // tp, h),
                           (tokens, h, spec.vocab_size // tp)}
    return sorted(shapes, key=lambda s: s[0] * s[1] * s[2])


def measure_dispatch(budget_s: float, repeats: Repeats | None = None, device: Device | None = None) -> float:
    """Seconds of one eager op on tiny tensors (what every op pays before its kernel does any work; on a GPU, a
    tiny kernel's launch)."""
    device = device or CPU
    a, b = device.tensor(8), device.tensor(8)

    def ops() -> None:
        for _ in range(100):
            torch.add(a, b)
    return device.median_time(ops, budget_s, "dispatch x100", repeats) / 100


def measure_gemms(shapes: list[tuple[int, int, int]], budget_s: float,
                  repeats: Repeats | None = None, device: Device | None = None) -> list[list[float]]:
    """[m, k, n, seconds] per shape (in the device's dtype: fp32 on one CPU thread, bf16 on a GPU)."""
    device = device or CPU
    rows = []
    for m, k, n in shapes:
        a, b = device.tensor(m, k), device.tensor(k, n)
        rows.append([m, k, n, device.median_time(lambda a=a, b=b: a @ b, budget_s, f"gemm {m}x{k}x{n}", repeats)])
        del a, b
    return rows


def _causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA as runtime/model.py calls it: grouped-query where k and v have fewer heads than q."""
    if k.shape[1] != q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def measure_attention(layouts: list[tuple[int, ...]], budget_s: float, repeats: Repeats | None = None,
                      device: Device | None = None, batch_tokens: int = 0,
                      backends: dict[str, str] | None = None) -> list[list[float]]:
    """[seq_len, head_dim, heads, forward s, forward + backward s] of causal SDPA per layout (seq_len, head_dim,
    heads[, kv heads: grouped-query attention, as the runtime runs it]), batch max(1, batch_tokens // seq_len)
    (1 by default), in the device's dtype. On a GPU the flash kernel where it runs these shapes (else the next
    fused one, `sdpa_backend`); `backends` gets each layout's kernel by measurement name."""
    device = device or CPU
    rows = []
    for seq, head_dim, heads, *grouped in layouts:
        kv_heads = grouped[0] if grouped else heads
        batch = max(1, batch_tokens // seq)
        q = device.tensor(batch, heads, seq, head_dim, requires_grad=True)
        k, v = (device.tensor(batch, kv_heads, seq, head_dim, requires_grad=True) for _ in range(2))
        name = f"attention s{seq} d{head_dim} h{heads}" + (f" kv{kv_heads}" if kv_heads != heads else "")
        backend, kernel = sdpa_backend(device, q, k, v)
        if backends is not None:
            backends[name] = backend

        def fwd(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v, kernel: Any = kernel) -> Any:
            with kernel():
                return _causal_sdpa(q, k, v)

        def fwdbwd(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v, kernel: Any = kernel) -> None:
            with kernel():
                _causal_sdpa(q, k, v).sum().backward()
        rows.append([seq, head_dim, heads, device.median_time(fwd, budget_s, f"{name} fwd", repeats),
                     device.median_time(fwdbwd, budget_s, f"{name} fwd+bwd", repeats)])
        del q, k, v
    return rows


def measure_elementwise(sizes_mib: tuple[int, ...], budget_s: float,
                        repeats: Repeats | None = None, device: Device | None = None) -> list[list[float]]:
    """[bytes moved, seconds] of an eager multiply into a fresh tensor (two reads, one write), as eager training
    runs its norms, activations and residuals."""
    return _elementwise_rows({f"elementwise {mib} MiB": mib * 2**20 for mib in sizes_mib}, budget_s, repeats,
                             device or CPU)


def _elementwise_rows(operand_bytes: dict[str, int], budget_s: float, repeats: Repeats | None,
                      device: Device) -> list[list[float]]:
    """[bytes moved, seconds] of the multiply on operands of each size, its repeats kept under its name."""
    rows = []
    for name, size in operand_bytes.items():
        n = size // device.element_bytes
        a, b = device.tensor(n), device.tensor(n)
        rows.append([3.0 * n * device.element_bytes,
                     device.median_time(lambda a=a, b=b: a * b, budget_s, name, repeats)])
        del a, b
    return rows


#: operand sizes of the working-set sweep on a host CPU, KiB: from inside a core's L2 to past the L3 (a `tiny`
#: block's activations are tens of KiB, a large model's micro-batch many MiB); the largest streams from DRAM
ELEMENTWISE_WORKING_SETS_KIB = (16, 64, 256, 1024, 4096, 16384, 65536)


def measure_elementwise_working_sets(budget_s: float, repeats: Repeats | None = None) -> list[list[float]]:
    """[bytes moved, CPU seconds] of the eager multiply of `measure_elementwise` at every operand size of
    ELEMENTWISE_WORKING_SETS_KIB, one process: a small op's operands stay in the caches and stream faster than
    DRAM allows (fit_profile turns these into the profile's elementwise_bandwidth_curve)."""
    return _elementwise_rows({f"elementwise {kib} KiB": kib * 2**10 for kib in ELEMENTWISE_WORKING_SETS_KIB},
                             budget_s, repeats, CPU)


def elementwise_bandwidth_curve(rows: list[list[float]], dispatch_s: float) -> list[list[float]]:
    """[bytes moved, bandwidth / the largest size's] from `measure_elementwise_working_sets` rows. The largest
    size streams from DRAM, as the shared ranks' 16 MiB each do together (hbm_bandwidth_gbs: one rank's CPU-time
    rate there, 4.6-5.4 GB/s on the 2026-12-07 profile, against 4.1 GB/s of one process at 64 MiB at load 50),
    so the ratio carries the profile's DRAM rate to a cache-resident op. One op's dispatch (`dispatch_s`) comes
    off each time: the profile's layer_s and micro_batch_s already charge it, and at tens of KiB it is most of
    the op's time. No size is taken slower than DRAM (a noisy repeat cannot make a small op dearer)."""
    rates = {nbytes: nbytes / max(t - dispatch_s, t * 0.05) for nbytes, t in rows}
    dram = rates[max(rates)]
    return [[nbytes, max(1.0, rate / dram)] for nbytes, rate in sorted(rates.items())]


def measure_checkpoint_io(directory: Path, mib: int, budget_s: float,
                          repeats: Repeats | None = None, device: Device | None = None) -> dict[str, float]:
    """Write and read bandwidth, bytes/s, of `torch.save` / `torch.load` of a `mib` MiB state to a file in
    `directory` (the run directory's filesystem), the write fsynced as a checkpoint commit is. Wall time: the
    device's time is the point, not this process's CPU. On a GPU the state lives on it (the save copies it to
    the host, the load back). The file is removed."""
    device = device or CPU
    state = {"weight": torch.randn(mib * 2**20 // 4, device=device.kind)}
    nbytes = float(mib * 2**20)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bastion-calibrate-io-", dir=directory) as tmp:
        path = Path(tmp, "state.pt")

        def write() -> None:
            with path.open("wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())

        write_s = _median_time(write, budget_s, f"checkpoint write {mib} MiB", repeats, time.perf_counter,
                               device.sync)
        # the read finds the file in the page cache, as a restore soon after the save does
        read_s = _median_time(lambda: torch.load(path, weights_only=True, map_location=device.kind), budget_s,
                              f"checkpoint read {mib} MiB", repeats, time.perf_counter, device.sync)
    return {"checkpoint_write_gbs": nbytes / write_s / 1e9, "checkpoint_read_gbs": nbytes / read_s / 1e9}


# ---- the runtime's own blocks at negligible shapes --------------------------------------------------------

def _probe_spec(base: ModelSpec, layers: int) -> ModelSpec:
    return replace(base, num_layers=layers, seq_len=16)


def _init_single_process_group() -> None:
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def _blocks_time(module: Any, spec: ModelSpec, budget_s: float, name: str, repeats: Repeats | None) -> float:
    """Median seconds of forward + backward through the module's blocks alone (micro-batch 1)."""
    x = torch.randn(1, spec.seq_len, spec.hidden_size, requires_grad=True)
    rope = module.rope

    def run() -> None:
        h = x
        for block in module.layers.values():
            h = block(h, rope)
        h.sum().backward()
    return _median_time(run, budget_s, f"blocks x{len(module.layers)} {name}", repeats)


#: the fewest rounds of the optimizer probe (`optimizer_seconds`), whatever its time budget: its statistic is a low
#: quantile, which needs enough rounds that a few undisturbed ones are among them
OPTIMIZER_ROUNDS = 15


def optimizer_seconds(steps: dict[str, tuple[Callable[[], Any], int]], budget_s: float,
                      repeats: Repeats | None = None) -> dict[str, float]:
    """Seconds per parameter tensor of each named optimizer step (step(), its tensor count): the thread CPU time
    (`time.thread_time`) of one step, the lower quartile of at least OPTIMIZER_ROUNDS rounds (more while
    `budget_s` lasts), the steps taking turns within a round so each sees the same load, after two warm-up steps
    each (AdamW creates its state in the first), over the tensor count.

    Why not the median of a process's CPU time: the DTensor step of `tiny` (39 tensors) gave 27 ms on the
    2026-12-07 09:33 profile (3 repeats) and 19-45 ms on reruns, against 17-18 ms of CPU per rank in the
    optimizer section of dp and ZeRO-3 training runs and 16.5-19 ms from this probe at load 6-12. What disturbs
    a repeat (another process evicting the caches, a garbage collection) only adds time, so a low quantile is
    the step's own cost; the thread's clock leaves out gloo's threads, whose share of clipping's all-reduces
    the predictor charges apart (the step's scalar all-reduces)."""
    for step, _ in steps.values():
        step()
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    start = time.perf_counter()
    rounds = 0
    while rounds < OPTIMIZER_ROUNDS or (time.perf_counter() - start < budget_s and rounds < 200):
        for name, (step, _) in steps.items():
            before = time.thread_time()
            step()
            samples[name].append(time.thread_time() - before)
        rounds += 1
    if repeats is not None:
        repeats.update({f"optimizer {name} x{n} tensors": samples[name] for name, (_, n) in steps.items()})
    return {name: statistics.quantiles(samples[name], n=4)[0] / n for name, (_, n) in steps.items()}


def measure_host_overheads(base: ModelSpec, budget_s: float, repeats: Repeats | None = None) -> dict[str, float]:
    """Seconds of host work of the runtime's model at negligible shapes, one process (a world-1 gloo group so
    DTensor and FSDP2 run their real code paths): per block forward + backward eager, and the extra of tensor
    parallelism (DTensor), of sequence parallelism and of FSDP2; the model's ends per micro-batch; AdamW +
    gradient clipping per parameter tensor, plain and DTensor."""
    from bastion.runtime.mesh import build_mesh
    from bastion.runtime.model import build_model, init_weights
    from bastion.runtime.optim import clip_grad_norm
    from bastion.runtime.parallelize import (
        ParallelModel,
        apply_fsdp,
        apply_tensor_parallel,
        cross_entropy_loss,
    )
    from bastion.specs.plan import ParallelPlan

    _init_single_process_group()
    layers = 4
    spec = _probe_spec(base, layers)
    rmesh = build_mesh(ParallelPlan(precision="fp32", micro_batch=1, global_batch=1), torch.device("cpu"))

    def built(tp: bool = False, sp: bool = False, fsdp: bool = False) -> Any:
        module = build_model(spec)
        if tp:
            apply_tensor_parallel(module, rmesh, sp)
        if fsdp:
            apply_fsdp(module, rmesh, 3, None)
        module.to_empty(device="cpu")
        init_weights(module, spec, 0)
        return module

    eager = built()
    per_layer = _blocks_time(eager, spec, budget_s, "eager", repeats) / layers
    tp_extra = _blocks_time(built(tp=True), spec, budget_s, "tp", repeats) / layers - per_layer
    sp_extra = _blocks_time(built(tp=True, sp=True), spec, budget_s, "tp+sp", repeats) / layers - per_layer - tp_extra
    fsdp = built(fsdp=True)
    fsdp_extra = _blocks_time(fsdp, spec, budget_s, "fsdp", repeats) / layers - per_layer

    tokens = torch.randint(0, spec.vocab_size, (1, spec.seq_len))

    def whole() -> None:
        cross_entropy_loss(eager(tokens), tokens).backward()
    ends = max(0.0, _median_time(whole, budget_s, f"model x{layers} eager", repeats) - layers * per_layer)

    def optimizer_step(module: Any) -> tuple[Callable[[], None], int]:
        params = list(module.parameters())
        for p in params:
            p.grad = torch.zeros_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
        model = ParallelModel(parts=[module], stage_ids=[0], num_stages=1)

        def step() -> None:
            clip_grad_norm(model, 1.0, rmesh)
            opt.step()
        return step, len(params)

    optimizer = optimizer_seconds({"plain": optimizer_step(eager), "dtensor": optimizer_step(fsdp)}, budget_s,
                                  repeats)
    return {"layer_s": per_layer, "layer_tp_s": max(0.0, tp_extra), "layer_sp_s": max(0.0, sp_extra),
            "layer_fsdp_s": max(0.0, fsdp_extra), "micro_batch_s": ends,
            "optimizer_per_tensor_s": optimizer["plain"], "optimizer_dtensor_per_tensor_s": optimizer["dtensor"]}


# ---- N processes sharing the host --------------------------------------------------------------------------

def collective_groups(world: int) -> list[int]:
    """Group sizes a plan of `world` ranks forms: every divisor above 1."""
    return [g for g in range(2, world + 1) if world % g == 0]


def _run_collective(op: str, group: Any, group_ranks: list[int], nbytes: int,
                    device: str = "cpu") -> Callable[[], None]:
    """A call of `op` on fp32 buffers of `nbytes` (the collective's full buffer) on `device`."""
    size = len(group_ranks)
    numel = max(size, nbytes // 4 // size * size)
    if op == "all_reduce":
        buf = torch.ones(numel, device=device)
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        out, mine = torch.empty(numel, device=device), torch.ones(numel // size, device=device)
        return lambda: dist.all_gather_into_tensor(out, mine, group=group)
    if op == "reduce_scatter":
        full, mine = torch.ones(numel, device=device), torch.empty(numel // size, device=device)
        return lambda: dist.reduce_scatter_tensor(mine, full, group=group)
    # send_recv: pairs exchange (a pipeline hop in each direction at once)
    me = dist.get_rank()
    index = group_ranks.index(me)
    peer = group_ranks[index ^ 1]
    out, inbox = torch.ones(numel, device=device), torch.empty(numel, device=device)

    def exchange() -> None:
        reqs = [dist.isend(out, peer, group=group), dist.irecv(inbox, peer, group=group)]
        for r in reqs:
            r.wait()
    return exchange


def _lockstep_cpu_times(run: Callable[[], Any], reps: int) -> list[float]:
    """CPU seconds of each of `reps` calls of `run`, which issues collectives: from a barrier on, every rank the
    same number of calls (a time budget would differ between ranks and leave one waiting for the others)."""
    dist.barrier()
    samples = []
    for _ in range(reps):
        before = time.process_time()
        run()
        samples.append(time.process_time() - before)
    return samples


#: the c10d functional ops DTensor issues, by the collective names of the profile
_COLLECTIVE_OPS = {"all_reduce": "all_reduce", "all_gather_into_tensor": "all_gather",
                   "reduce_scatter_tensor": "reduce_scatter"}


def measure_tensor_parallel(base: ModelSpec, world: int, reps: int) -> dict[str, Any]:
    """What the runtime's tensor parallelism of 2 costs a rank (every rank of `world` calls this, all tensor-
    parallel pairs at once), on models of 1 and 3 blocks at negligible shapes, forward + backward with loss
    parallelism, without and with sequence parallelism:

    - `counts`: [{sequence_parallel, op, per_layer, ends}] collectives issued per block and once for the
      model's ends (embedding, final norm, LM head, loss), counted by DTensor's CommDebugMode: exact counts of
      what runtime/parallelize.py does;
    - CPU seconds (the median of `reps`, every rank the same number) over the same model without tensor
      parallelism: per block (`layer_tp_s`; `layer_sp_s` the extra of sequence parallelism on top) and at the
      ends per micro-batch (`micro_batch_tp_s`, `micro_batch_sp_s`): DTensor's dispatch and sharding
      propagation, its redistributions and the host work of their collectives at a negligible message size
      (so the predictor adds only the collectives' bytes / bandwidth on top);
    - `times`: each variant's repeats by name, for the profile's [repeats]."""
    import warnings

    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import loss_parallel

    from bastion.runtime.mesh import build_mesh
    from bastion.runtime.model import build_model, init_weights
    from bastion.runtime.parallelize import apply_tensor_parallel, cross_entropy_loss
    from bastion.specs.plan import ParallelPlan

    # a full backward hook fires on the embedding's output, which needs no input gradient: expected here
    warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
    rows, cpu, times = [], {}, {}
    for variant in ("eager", "tp", "tp+sp"):
        sp = variant == "tp+sp"
        rmesh = None if variant == "eager" else build_mesh(ParallelPlan(
            dp=world // 2, tp=2, sequence_parallel=sp, precision="fp32", micro_batch=1, global_batch=world // 2),
            torch.device("cpu"))
        counted: dict[int, dict[str, int]] = {}
        for layers in (1, 3):
            spec = _probe_spec(base, layers)
            module = build_model(spec)
            if rmesh is not None:
                apply_tensor_parallel(module, rmesh, sp)
            module.to_empty(device="cpu")
            init_weights(module, spec, 0)
            tokens = torch.randint(0, spec.vocab_size, (1, spec.seq_len))

            def run(module: Any = module, tokens: torch.Tensor = tokens) -> None:
                with loss_parallel():
                    cross_entropy_loss(module(tokens), tokens).backward()
            with CommDebugMode() as comms:
                run()
            counted[layers] = {}
            for op, n in comms.get_comm_counts().items():
                name = _COLLECTIVE_OPS.get(str(op).rsplit(".", 1)[-1])
                if name is not None:
                    counted[layers][name] = counted[layers].get(name, 0) + n
            samples = _lockstep_cpu_times(run, reps)
            times[f"model x{layers} {variant}, tp pairs of {world} ranks"] = samples
            cpu[(variant, layers)] = statistics.median(samples)
        for op in sorted(set(counted[1]) | set(counted[3])) if rmesh is not None else ():
            per_layer = (counted[3].get(op, 0) - counted[1].get(op, 0)) / 2
            rows.append({"sequence_parallel": sp, "op": op, "per_layer": per_layer,
                         "ends": max(0.0, counted[1].get(op, 0) - per_layer)})
    layer = {v: (cpu[(v, 3)] - cpu[(v, 1)]) / 2 for v in ("eager", "tp", "tp+sp")}
    ends = {v: cpu[(v, 1)] - layer[v] for v in layer}
    return {"counts": rows, "times": times,
            "layer_tp_s": max(0.0, layer["tp"] - layer["eager"]),
            "layer_sp_s": max(0.0, layer["tp+sp"] - layer["tp"]),
            "micro_batch_tp_s": max(0.0, ends["tp"] - ends["eager"]),
            "micro_batch_sp_s": max(0.0, ends["tp+sp"] - ends["tp"])}


def measure_pipeline(base: ModelSpec, world: int, reps: int, micro_batches: tuple[int, int] = (2, 6)
                     ) -> dict[str, Any]:
    """Seconds per micro-batch that the runtime's pipeline schedule (1F1B over 2 stages, every pair of `world`
    ranks at once) adds to its stage's own forward + backward on the rank's thread: torch.distributed.
    pipelining's bookkeeping and its send/recv's calls, at negligible shapes (one block per stage).

    `reps` rounds, each under one load (every rank the same number, from a barrier): a step of
    `micro_batches[0]` micro-batches (2: the fewest 2 stages run), a step of `micro_batches[1]`, and the stage
    module's own forward + backward timed plainly as often as the two steps differ in micro-batches; a round's figure is (long step − short step −
    the plain runs) / that difference, so what a step costs once (its start, the warm-up and drain of the
    schedule) cancels, and so does a load that shifts between rounds; the median of the rounds
    (`pipeline_extra`). Thread CPU time (`time.thread_time`), not the process's: gloo's transport threads
    (`gloo_tcp_loop`) use CPU that follows the waits for a peer rather than the micro-batches (0.5 or 15-20 ms
    per probe step, from one step to the next, 2 ranks at load 6), which moved the old
    process-CPU figure 0.3-3.3 ms per micro-batch between reruns; in training runs that CPU shows as waiting
    does (an interleaved-1F1B `tiny` run at load 7-9: the last stage's process CPU 45-77 ms per step, the
    first's 31-39), which is the bubble's and the shared cores' to account for, not a per micro-batch term.
    Returns this rank's `stage`, its `rounds` [(long step, short step, stage alone per micro-batch)] and the
    micro-batches the steps differ by (`added`), for `combine_ranks` to pool by stage; `times`: the three series
    by name, for the profile's [repeats] (each rank's: a noisy rank moves its stage's figure)."""
    from torch.distributed import pipelining

    from bastion.runtime.model import build_model, init_weights
    from bastion.runtime.parallelize import cross_entropy_loss, schedule_class, split_stage
    from bastion.specs.schedules import get_schedule

    rank = dist.get_rank()
    pairs = [dist.new_group([r, r + 1]) for r in range(0, world, 2)]
    stage_id = rank % 2
    spec = _probe_spec(base, 2)
    part = split_stage(build_model(spec), stage_id, 2)
    part.to_empty(device="cpu")
    init_weights(part, spec, 0)
    found = schedule_class(get_schedule("1f1b"), torch.device("cpu"))

    def step(m: int) -> Callable[[], None]:
        stage = pipelining.PipelineStage(part, stage_index=stage_id, num_stages=2, device=torch.device("cpu"),
                                         group=pairs[rank // 2])
        schedule = found(stage, n_microbatches=m, loss_fn=cross_entropy_loss)
        tokens = torch.randint(0, spec.vocab_size, (m, spec.seq_len))
        return lambda: schedule.step(*((tokens,) if stage_id == 0 else ()),
                                     target=tokens if stage_id == 1 else None)

    tokens = torch.randint(0, spec.vocab_size, (1, spec.seq_len))
    hidden = torch.randn(1, spec.seq_len, spec.hidden_size, requires_grad=True)

    def plain() -> None:
        if stage_id == 0:
            out = part(tokens)
            out.backward(torch.ones_like(out))
        else:
            cross_entropy_loss(part(hidden), tokens).backward()

    short, long = micro_batches
    steps = {m: step(m) for m in micro_batches}
    for _ in range(2):  # warm-up: the schedules' shape inference and buffers, the allocator's caches
        for run in steps.values():
            run()
        plain()
    rounds: list[tuple[float, float, float]] = []
    for _ in range(reps):
        taken = []
        for run in steps.values():
            dist.barrier()
            before = time.thread_time()
            run()
            taken.append(time.thread_time() - before)
        before = time.thread_time()
        for _ in range(long - short):
            plain()
        rounds.append((taken[1], taken[0], (time.thread_time() - before) / (long - short)))
    names = (f"x{long} micro-batches", f"x{short} micro-batches", "stage alone x1 micro-batch")
    times = {f"pipeline 1f1b {what}, rank {rank} (stage {stage_id}) of {world}": [r[i] for r in rounds]
             for i, what in enumerate(names)}
    return {"stage": stage_id, "rounds": rounds, "added": long - short, "times": times}


def pipeline_extra(rounds: list[tuple[float, float, float]], added: int) -> float:
    """The schedule's seconds per micro-batch from `measure_pipeline`'s rounds (a step of more micro-batches, a
    step of `added` fewer, the stage alone per micro-batch): each round's (long − short) / added − alone, the
    median over the rounds (a round a busy host disturbed is one of many), never below 0."""
    return max(0.0, statistics.median((long - short) / added - alone for long, short, alone in rounds))


def _slowest_stage_extra(measured: list[dict[str, Any]]) -> float:
    """`measure_pipeline`'s per micro-batch extra from every rank's rounds: each stage's from the rounds of all
    its ranks (every pair measures the same stage work; the larger of per-rank figures would pick the noisiest
    rank: 0.59-0.96 ms among 4 ranks at background load 10.7), the larger of the two stages' (a pipeline step
    waits for its slowest stage); 0 without pipeline pairs."""
    stages: dict[int, list[tuple[float, float, float]]] = {}
    for rank in measured:
        stages.setdefault(rank["stage"], []).extend(tuple(r) for r in rank["rounds"])
    return max((pipeline_extra(rounds, measured[0]["added"]) for rounds in stages.values()), default=0.0)


#: the runtime's FSDP2 layouts a plan's ZeRO stage picks (runtime/mesh.py dp_layout, parallelize.apply_fsdp):
#: 0 replicates over the group (HSDP, shard 1: gradients all-reduced), 1-2 shard without resharding after
#: forward, 3 reshards after forward (a second all-gather in backward); stage 2 stands for 1 and 2
FSDP_STAGES = (0, 2, 3)


#: the widths of the second, realistic FSDP2 probe (`small`'s: ~12 MB of fp32 parameters per block), at the
#: probe's sequence length 16 so its compute stays small: with the negligible widths it makes FSDP2's CPU cost
#: per unit a line in the unit's parameter bytes (`fsdp_unit_costs`)
FSDP_WIDE_WIDTHS = {"hidden_size": 512, "ffn_hidden_size": 1408, "num_heads": 8, "num_kv_heads": 4, "head_dim": 64}


def fsdp_wide_probe(base: ModelSpec) -> ModelSpec:
    """`base` at FSDP_WIDE_WIDTHS (its vocabulary, so the root unit stays small)."""
    return replace(base, **FSDP_WIDE_WIDTHS)


def _fsdp_round_robin(base: ModelSpec, meshes: dict[int, Any], reps: int
                      ) -> tuple[dict[tuple[int, int], tuple[list[float], list[float]]], dict[int, int], float]:
    """`measure_fsdp`'s repeats at one width: ({(zero_stage, layers): (wall seconds, process CPU seconds) per
    repeat}, {layers: fp32 parameter bytes of the model}, this rank's CPU / wall over the models without FSDP2)."""
    from bastion.runtime.model import build_model, init_weights
    from bastion.runtime.parallelize import apply_fsdp, cross_entropy_loss

    runs, param_bytes = {}, {}
    for zero in (-1, *FSDP_STAGES):
        for layers in (1, 3):
            spec = _probe_spec(base, layers)
            module = build_model(spec)
            if zero >= 0:
                apply_fsdp(module, meshes[zero], zero, None)
            else:
                param_bytes[layers] = sum(p.numel() * p.element_size() for p in module.parameters())
            module.to_empty(device="cpu")
            init_weights(module, spec, 0)
            tokens = torch.randint(0, spec.vocab_size, (1, spec.seq_len))

            def run(module: Any = module, tokens: torch.Tensor = tokens) -> None:
                cross_entropy_loss(module(tokens), tokens).backward()
            run()
            runs[(zero, layers)] = run
    # round-robin over the variants: the host's other load comes and goes, and each difference taken below is
    # between variants measured under the same load
    samples: dict[tuple[int, int], tuple[list[float], list[float]]] = {key: ([], []) for key in runs}
    eager_cpu = eager_wall = 0.0
    for _ in range(reps):
        for key, run in runs.items():
            dist.barrier()
            # process CPU: every thread's, gloo's transport included (FSDP2's copies and reductions run on
            # both the rank's thread and gloo's)
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            samples[key][0].append(wall)
            samples[key][1].append(cpu)
            if key[0] < 0:
                eager_cpu += cpu
                eager_wall += wall
    return samples, param_bytes, eager_cpu / eager_wall


def measure_fsdp(base: ModelSpec, world: int, group_size: int, reps: int, wide_reps: int = 0) -> dict[str, Any]:
    """What the runtime's FSDP2 costs a rank per unit on real groups of `group_size` (every rank of `world`
    calls this, all groups at once): models of 1 and 3 blocks at negligible shapes (the collectives move almost
    no bytes), forward + backward with the loss, for each of FSDP_STAGES through runtime/parallelize.apply_fsdp,
    and the same models without FSDP2. Wall seconds of each repeat (from a barrier, every rank the same
    number of repeats; a repeat ends when its slowest rank's does), the median: FSDP2's hooks, its collectives'
    latency and the waiting for the group's other ranks, which on shared cores is most of it. With `wide_reps`,
    the same models at FSDP_WIDE_WIDTHS (`fsdp_wide_probe`) too, `wide_reps` repeats each; at both widths this
    rank's process CPU seconds (all threads) of each repeat.

    Returns `rows`: [zero_stage, group_size, layers, this rank's wall repeats] at the negligible widths (the
    rows without FSDP2 have zero_stage -1), `cpu_rows`: [zero_stage, group_size, layers, the model's fp32
    parameter bytes, this rank's CPU repeats] at each width, `times`: the wall repeats by measurement name, and
    `core_share`: this rank's CPU time / wall time over the models without FSDP2 (the share of a core it had
    while these ran; recorded in the profile's [raw], not what the fit converts with: `fsdp_unit_costs` says
    why)."""
    from bastion.runtime.mesh import MESH_DIMS, RuntimeMesh
    from bastion.specs.plan import ParallelPlan

    meshes = {}
    for zero in FSDP_STAGES:
        replicate, shard = (group_size, 1) if zero == 0 else (1, group_size)
        plan = ParallelPlan(dp=group_size, zero_stage=zero, precision="fp32", micro_batch=1,
                            global_batch=group_size)
        mesh = init_device_mesh("cpu", (world // group_size, replicate, shard, 1), mesh_dim_names=MESH_DIMS)
        meshes[zero] = RuntimeMesh(plan=plan, mesh=mesh, device=torch.device("cpu"))
    samples, param_bytes, core_share_ = _fsdp_round_robin(base, meshes, reps)
    rows, cpu_rows, times = [], [], {}
    for (zero, layers), (wall, cpu) in samples.items():
        name = "eager" if zero < 0 else f"fsdp zero {zero}"
        times[f"model x{layers} {name}, groups of {group_size} of {world} ranks"] = wall
        rows.append([zero, group_size, layers, wall])
        cpu_rows.append([zero, group_size, layers, param_bytes[layers], cpu])
    if wide_reps > 0:
        wide, wide_bytes, _ = _fsdp_round_robin(fsdp_wide_probe(base), meshes, wide_reps)
        cpu_rows += [[zero, group_size, layers, wide_bytes[layers], cpu] for (zero, layers), (_, cpu) in wide.items()]
    return {"rows": rows, "cpu_rows": cpu_rows, "times": times, "core_share": core_share_}


def _unit_and_root(at: dict[tuple, float], zero: int, size: int, *width: int) -> tuple[float, float]:
    """(a block's unit, the root unit): what FSDP2 adds per block (the difference of the 3- and 1-block models,
    over 2 blocks, beyond the same without FSDP2) and what the 1-block model adds beyond its block's unit;
    `at` keyed (zero_stage, group_size, layers, *width)."""
    eager_block = (at[(-1, size, 3, *width)] - at[(-1, size, 1, *width)]) / 2
    block = (at[(zero, size, 3, *width)] - at[(zero, size, 1, *width)]) / 2 - eager_block
    return block, at[(zero, size, 1, *width)] - at[(-1, size, 1, *width)] - block


def fsdp_unit_costs(rows: list[list[Any]], share: float, cpu_rows: list[list[Any]] | None = None
                    ) -> list[dict[str, Any]]:
    """Per FSDP2 unit, forward + backward, from `measure_fsdp`'s rows ([zero_stage, group_size, layers,
    seconds]): a block's unit is what a block costs more under FSDP2 than without it (the difference of the 3-
    and 1-block models, over 2 blocks), the root unit (embedding, final norm, LM head) what the 1-block model
    costs more beyond its block's unit. Wall seconds × `share`, the share of a core each of the measured world's
    ranks gets when all are busy (the GEMM windows' share, which the profile's background_load says): seconds on
    whole cores, which the predictor divides by Accelerator.core_share of a plan's ranks, so a plan of the
    measured world's size at the measured load gets back the wall time measured. (The share the ranks had while
    the models without FSDP2 ran, `measure_fsdp`'s `core_share`, is higher: they wait at each repeat's barrier
    and then run on a partly idle host; converting with it and back with the busy share made every unit
    0.60 / 0.485 = 1.24× (groups of 4) and 0.64 / 0.485 = 1.33× (groups of 2) its measured wall time on the
    2026-12-07 4-rank profile.)

    With `cpu_rows` ([zero_stage, group_size, layers, the model's parameter bytes, CPU seconds per rank], at two
    widths: `combine_ranks`' fsdp_cpu) a layout's row also gets FSDP2's CPU cost per unit as a line in the
    unit's parameter bytes through the two widths' block units: `cpu_s_per_byte` its slope, `unit_cpu_s` and
    `root_cpu_s` what the negligible width's block and root units leave at no bytes. On shared cores FSDP2's
    copies, reductions and gloo's transport over a unit's parameters are CPU work at the shared memory
    bandwidth, which the negligible shapes (and the collective probe's raw bandwidth) do not see; CPU seconds
    are work, whatever share of a core the ranks had."""
    at = {(zero, size, layers): t for zero, size, layers, t in rows}
    costs = []
    for zero, size in sorted({(z, g) for z, g, _ in at if z >= 0}):
        block, root = _unit_and_root(at, zero, size)
        cost = {"zero_stage": zero, "group_size": size, "unit_s": max(0.0, block) * share,
                "root_s": max(0.0, root) * share}
        cost.update(_cpu_line(cpu_rows or [], zero, size))
        costs.append(cost)
    return costs


def _cpu_line(cpu_rows: list[list[Any]], zero: int, size: int) -> dict[str, float]:
    """`fsdp_unit_costs`' CPU fields of one layout and group size ({} unless measured at two widths): the
    block units' line through the widths, the narrowest width's units less their bytes on it."""
    # a width is the i-th smallest model of its layer count (a wider probe has more bytes at either count)
    sizes = {count: sorted({n for _, g, c, n, _ in cpu_rows if (g, c) == (size, count)}) for count in (1, 3)}
    at = {(z, g, c, sizes[c].index(n)): t for z, g, c, n, t in cpu_rows if g == size and c in sizes}
    widths = range(min(len(sizes[1]), len(sizes[3])))
    if len(widths) < 2 or any((k, size, c, w) not in at for k in (-1, zero) for c in (1, 3) for w in widths):
        return {}
    units = [_unit_and_root(at, zero, size, w) for w in widths]
    block_bytes = [(sizes[3][w] - sizes[1][w]) / 2 for w in widths]
    root_bytes = [sizes[1][w] - block_bytes[w] for w in widths]
    narrow, wide = widths[0], widths[-1]
    per_byte = max(0.0, (units[wide][0] - units[narrow][0]) / (block_bytes[wide] - block_bytes[narrow]))
    return {"unit_cpu_s": max(0.0, units[narrow][0] - per_byte * block_bytes[narrow]),
            "root_cpu_s": max(0.0, units[narrow][1] - per_byte * root_bytes[narrow]),
            "cpu_s_per_byte": per_byte}


#: CPU seconds of work between two synchronisation points that `measure_sync_wait` loops over (0 is the sync alone)
SYNC_WORK_S = (0.0, 0.001, 0.003, 0.01)


def _cpu_work(seconds: float) -> None:
    """Spin this thread for `seconds` of its own CPU time (work that needs a core, whatever the wall time)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


#: rounds of the paired loops `measure_sync_wait` times per op and work (the median of their differences)
SYNC_ROUNDS = 3


def measure_sync_wait(rank: int, world: int, reps: int) -> list[list[Any]]:
    """Every rank of the world at once loops `reps` times over "SYNC_WORK_S of CPU work, then one small blocking
    synchronisation" (specs/profile.py SYNC_OPS: an all-reduce of one float over the world; a send/recv pair
    with the neighbouring rank, which the even rank sends first), and right before it the same work without the
    syncs (then one barrier): the wall time of the work alone at the share of a core the ranks have in that
    window, whatever the host's other load does between windows. Rows [op, work_s, round, wall seconds per
    iteration with the syncs, without, CPU seconds per synced iteration of the rank's threads other than its
    own (gloo's transport)], SYNC_ROUNDS rounds each (work 0: the sync alone). On shared cores the OS
    deschedules a rank for a time slice mid-work while its peers reach the sync and wait idle, and gloo's
    transport threads spend CPU while a rank waits: what the synced loop takes beyond the work alone and the
    sync alone (`sync_wait_rows`) is that cost per synchronisation point."""
    one = torch.zeros(1)
    peer = rank ^ 1

    def sync(op: str) -> None:
        if op == "all_reduce":
            dist.all_reduce(one)
        elif rank % 2 == 0:
            dist.send(one, peer)
            dist.recv(one, peer)
        else:
            dist.recv(one, peer)
            dist.send(one, peer)

    def loop(work: float, op: str | None) -> tuple[float, float]:
        """(wall seconds per iteration, CPU seconds per iteration of the process's other threads)."""
        dist.barrier()
        start, process, thread = time.perf_counter(), time.process_time(), time.thread_time()
        for _ in range(reps):
            _cpu_work(work)
            if op is not None:
                sync(op)
        if op is None:
            dist.barrier()  # the work alone ends when the slowest rank's does
        transport = (time.process_time() - process) - (time.thread_time() - thread)
        return (time.perf_counter() - start) / reps, transport / reps

    rows = []
    for op in SYNC_OPS:
        if op == "send_recv" and world % 2:
            continue
        for work in SYNC_WORK_S:
            for i in range(SYNC_ROUNDS):
                alone = loop(work, None)[0] if work > 0 else 0.0
                synced, transport = loop(work, op)
                rows.append([op, work, i, synced, alone, transport])
    return rows


def measure_ranks(rank: int, world: int, config: dict[str, Any], hosts: list[str] | None = None) -> dict[str, Any]:
    """What every rank of an initialised gloo group of `world` ranks measures at once (ranks numbered host by
    host): its share of a core while all multiply matrices, elementwise bandwidth, tensor-parallel and pipeline
    pairs (an even world), FSDP2's per-unit cost (`measure_fsdp`) and every collective on every group size
    (contiguous ranks, all groups at once). `hosts`: each rank's host, so a collective row says how many hosts
    its groups span."""
    budget = config["budget_s"]
    m, k, n = config["gemm_shape"]
    a, b = torch.randn(m, k), torch.randn(k, n)
    shares = []
    result: dict[str, Any] = {}
    for _ in range(3):  # the host's other load comes and goes: three windows, the median
        dist.barrier()
        shares.append(core_share(lambda: a @ b, max(0.4, budget * 10)))
    result["core_share"] = shares
    dist.barrier()
    result["elementwise"] = measure_elementwise((16,), budget * 2)
    # the one-process GEMM sweep again with every rank multiplying at once: a rank's CPU time per GEMM grows when
    # more ranks than cores time-share them (each switch refills the caches its operands had), the more the larger
    # the operands (`fit_profile`'s time_shared_gemm_efficiency_curve)
    dist.barrier()
    result["gemm"] = measure_gemms([(m, k, n) for m, k, n in config.get("gemm_shapes", [])], budget)
    if world % 2 == 0:
        result["tensor_parallel"] = measure_tensor_parallel(config["probe_model"], world,
                                                            3 * config["collective_reps"])
        result["pipeline"] = measure_pipeline(config["probe_model"], world, 3 * config["collective_reps"])
    result["fsdp"] = [measure_fsdp(config["probe_model"], world, size, 2 * config["collective_reps"],
                                   config["collective_reps"]) for size in collective_groups(world)]
    result["sync_wait"] = measure_sync_wait(rank, world, 3 * config["collective_reps"])
    collectives = []
    for size in collective_groups(world):
        groups = [list(range(start, start + size)) for start in range(0, world, size)]
        handles = [dist.new_group(ranks) for ranks in groups]
        mine = rank // size
        spans = len({hosts[r] for r in groups[0]}) if hosts else 1
        for op in ("all_reduce", "all_gather", "reduce_scatter", "send_recv"):
            if op == "send_recv" and size != 2:
                continue
            for nbytes in config["message_bytes"]:
                fn = _run_collective(op, handles[mine], groups[mine], nbytes)
                dist.barrier()
                # every member runs the same number of repeats (a time budget would differ between ranks); the
                # median, as a collective waits for its slowest member and a busy host stalls one now and then
                fn()
                times = []
                for _ in range(config["collective_reps"]):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                collectives.append([op, size, nbytes, times, spans])
    result["collectives"] = collectives
    return result


def _rank_main(rank: int, world: int, init: str, out_dir: str, spawned_at: float, config: dict[str, Any]) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # all_gather_into_tensor's rename (torch 2.13)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    dist.barrier()
    result = {"start_s": time.time() - spawned_at, **measure_ranks(rank, world, config)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def ranks_config(gemm_shape: tuple[int, int, int], message_bytes: list[int], budget_s: float,
                 probe_model: ModelSpec, collective_reps: int = 7,
                 gemm_shapes: list[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """What `measure_ranks` measures with: the shared GEMM's shape (the core share), the GEMM shapes every rank
    times at once (`gemm_shapes`: the one-process sweep's), the collectives' message sizes and repeats, the time
    budget and the model whose blocks probe tensor parallelism and the pipeline schedule."""
    return {"gemm_shape": list(gemm_shape), "gemm_shapes": [list(s) for s in gemm_shapes or []],
            "message_bytes": message_bytes, "budget_s": budget_s, "collective_reps": collective_reps,
            "probe_model": probe_model}


def _process_age() -> float:
    """Seconds since this process started (/proc's start time; on a system without it, since bastion loaded):
    a job's ranks were started by torchrun, not by a parent that noted the time."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time() - _LOADED_AT


_LOADED_AT = time.time()


def job_rank(config: dict[str, Any], single: Callable[[], Any]) -> tuple[list[str], Any, list[dict[str, Any]]] | None:
    """One rank of a calibrate job under torchrun (one agent per node, ranks numbered node by node): rank 0
    first runs `single()` (the single-process measurements, on its node, in a group of its own, as
    `bastion calibrate` does here) while the others wait to join the job's gloo group; then every rank runs
    `measure_ranks` over the whole job, so collective groups larger than a node's ranks span nodes. Rank 0 gets
    (each rank's host, single()'s result, every rank's measurements in rank order); the other ranks None. A
    rank's host is its Slurm node name, else its host name (a Kubernetes pod's)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # all_gather_into_tensor's rename (torch 2.13)
    torch.set_num_threads(1)
    start_s = _process_age()
    single_result = None
    if int(os.environ["RANK"]) == 0:
        single_result = single()
        if dist.is_initialized():  # the world-1 group the runtime's blocks were measured in
            dist.destroy_process_group()
    # the other ranks wait here for rank 0 (the default init timeout, 30 minutes, bounds it)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    result = {"start_s": start_s, **measure_ranks(rank, world, config, hosts)}
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    dist.barrier()
    dist.destroy_process_group()
    return (hosts, single_result, gathered) if gathered is not None else None


def measure_shared(world: int, config: dict[str, Any], repeats: Repeats | None = None) -> dict[str, Any]:
    """`world` processes on this host at once (gloo), measuring what `config` (`ranks_config`) says: start-up,
    shared GEMM and elementwise rates, collectives, what FSDP2 costs per unit on every group size
    (`measure_fsdp`: wall time, the slowest rank's per repeat, the median) and (an even world) what tensor parallelism costs a rank (`measure_tensor_parallel`, rank 0's).
    Collective times are wall time, the slowest rank's (a collective is done when its last member is), the
    median of the repeats. `core_share` is each rank's share of a core while all ranks multiply matrices at
    once, the median of three windows."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bastion-calibrate-") as tmp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        spawned_at = time.time()
        mp.start_processes(_rank_main, args=(world, f"tcp://127.0.0.1:{port}", tmp, spawned_at, config),
                           nprocs=world, start_method="spawn")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return combine_ranks(ranks, world, repeats)


def combine_ranks(ranks: list[dict[str, Any]], ranks_per_host: int, repeats: Repeats | None = None
                  ) -> dict[str, Any]:
    """`measure_shared`'s result from every rank's `measure_ranks` (and `start_s`), in rank order; `ranks_per_host`
    is the ranks that shared one host's cores (the world of one host)."""
    world = len(ranks)
    slowest: dict[tuple, list[float]] = {}
    spans: dict[tuple, int] = {}
    for r in ranks:
        for op, size, nbytes, times, *spanned in r["collectives"]:
            # repeat i of a collective ends when its slowest member's does
            key = (op, size, nbytes)
            slowest[key] = [max(a, b) for a, b in zip(slowest.get(key, times), times, strict=True)]
            spans[key] = spanned[0] if spanned else 1
    fsdp_slowest: dict[tuple, list[float]] = {}
    fsdp_names: dict[tuple, str] = {}
    fsdp_shares: dict[int, list[float]] = {}
    fsdp_cpu: dict[tuple, list[float]] = {}
    for r in ranks:
        for size, measured in zip(collective_groups(world), r.get("fsdp", []), strict=False):
            fsdp_shares.setdefault(size, []).append(measured["core_share"])
            for zero, size, layers, nbytes, cpu in measured.get("cpu_rows", []):
                fsdp_cpu.setdefault((zero, size, layers, nbytes), []).append(statistics.median(cpu))
            for (zero, size, layers, times), name in zip(measured["rows"], measured["times"], strict=True):
                key = (zero, size, layers)
                fsdp_slowest[key] = [max(a, b) for a, b in zip(fsdp_slowest.get(key, times), times, strict=True)]
                fsdp_names[key] = name
    if repeats is not None:
        for key, times in fsdp_slowest.items():
            repeats[fsdp_names[key]] = times
        for (op, size, nbytes), times in slowest.items():
            repeats[f"{op} {size} ranks {nbytes} B"] = times
        for rank, r in enumerate(ranks):
            repeats[f"core share rank {rank} of {world}"] = r["core_share"]
        repeats.update(ranks[0].get("tensor_parallel", {}).get("times", {}))
        for r in ranks:
            repeats.update(r.get("pipeline", {}).get("times", {}))
    return {"world": ranks_per_host, "process_start_s": statistics.median(r["start_s"] for r in ranks),
            "core_share": [statistics.median(r["core_share"]) for r in ranks],
            "elementwise": [r["elementwise"][0] for r in ranks],
            # each rank's own CPU time per GEMM: the median rank's, shape by shape
            "gemm": [[*row[:3], statistics.median(r["gemm"][i][3] for r in ranks)]
                     for i, row in enumerate(ranks[0].get("gemm", []))],
            "tensor_parallel": ranks[0].get("tensor_parallel"),
            "pipeline_micro_batch_s": _slowest_stage_extra([r["pipeline"] for r in ranks if "pipeline" in r]),
            "collectives": [[op, size, nbytes, statistics.median(t), spans[(op, size, nbytes)]]
                            for (op, size, nbytes), t in sorted(slowest.items())],
            "fsdp": [[*key, statistics.median(t)] for key, t in sorted(fsdp_slowest.items())],
            # CPU is each rank's own work: the mean over ranks of each rank's median repeat
            "fsdp_cpu": [[*key, statistics.fmean(t)] for key, t in sorted(fsdp_cpu.items())],
            # an iteration's wall time ends with its slowest rank; gloo's CPU per rank, the median rank's
            "sync_wait": [[op, work, i, *(max(r["sync_wait"][j][k] for r in ranks) for k in (3, 4)),
                           statistics.median(r["sync_wait"][j][5] for r in ranks)]
                          for j, (op, work, i, *_) in enumerate(ranks[0].get("sync_wait", []))],
            "fsdp_core_share": {size: statistics.fmean(s) for size, s in sorted(fsdp_shares.items())}}


# ---- a GPU node -------------------------------------------------------------------------------------------

#: the share of a GPU's memory `bastion calibrate` may hold at most (torch.cuda.set_per_process_memory_fraction);
#: its largest tensors (an LM head GEMM's operands and output, the elementwise and optimizer buffers) stay far
#: below it on a 40 GB+ card
GPU_MEMORY_SHARE = 0.5


def cuda_devices() -> tuple[int, str]:
    """(CUDA devices this process sees, the first one's name; 0 and "" without CUDA) — what `bastion calibrate`
    checks before measuring a GPU kind here."""
    import torch

    if not torch.cuda.is_available():
        return 0, ""
    return torch.cuda.device_count(), torch.cuda.get_device_name(0)


def prepare_cuda(memory_share: float = GPU_MEMORY_SHARE) -> Device:
    """The current CUDA device for measuring, its caching allocator capped at `memory_share` of the card's
    memory (an out-of-memory error past it, never another process's memory)."""
    torch.cuda.set_per_process_memory_fraction(memory_share)
    return cuda_device()


def device_facts(device: Device, memory_share: float = GPU_MEMORY_SHARE) -> dict[str, Any]:
    """What the profile records about the GPUs: name, compute capability, memory, count, driver / CUDA / NCCL
    versions and the memory share the measurements were held to (a CPU stand-in: its processor's name)."""
    if device.kind != "cuda":
        import platform

        return {"device_name": platform.processor() or platform.machine(), "device_kind": device.kind}
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    try:
        version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except (AttributeError, RuntimeError):
        nccl = "none"
    return {"device_name": props.name, "device_kind": device.kind, "compute_capability": f"{props.major}.{props.minor}",
            "device_memory_gib": round(props.total_memory / 2**30, 2), "device_count": torch.cuda.device_count(),
            "driver": _nvidia_driver(), "cuda": str(torch.version.cuda), "nccl": nccl,
            "memory_share": memory_share}


def _nvidia_driver() -> str:
    """The NVIDIA driver's version (from the kernel module; 'unknown' where it cannot be read)."""
    try:
        return Path("/proc/driver/nvidia/version").read_text().split("Kernel Module", 1)[1].split()[0]
    except (OSError, IndexError):
        return "unknown"


def measure_optimizer_step(params: int, budget_s: float, repeats: Repeats | None = None,
                           device: Device | None = None, tensors: int = 8) -> float:
    """Seconds of one AdamW step (PyTorch's default implementation for the device: fused on a GPU) over `params`
    fp32 parameters in `tensors` tensors, their gradients set: the optimizer's memory-bound pass."""
    device = device or CPU
    weights = [torch.zeros(params // tensors, device=device.kind, requires_grad=True) for _ in range(tensors)]
    for w in weights:
        w.grad = torch.ones_like(w)
    opt = torch.optim.AdamW(weights, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=device.kind == "cuda")
    return device.median_time(opt.step, budget_s, f"optimizer AdamW {params} params", repeats)


def _device_rank_main(rank: int, world: int, init: str, out_dir: str, message_bytes: list[int], reps: int) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(_device_collectives(rank, world, message_bytes, reps)))
    dist.barrier()
    dist.destroy_process_group()


def _device_collectives(rank: int, world: int, message_bytes: list[int], reps: int) -> list[list[Any]]:
    """[op, group size, bytes, every repeat's wall seconds] on this rank, for every group size a plan of `world`
    GPUs forms (all groups of a size at once), timed between device synchronisations."""
    rows = []
    for size in collective_groups(world):
        groups = [list(range(start, start + size)) for start in range(0, world, size)]
        handles = [dist.new_group(ranks) for ranks in groups]
        mine = rank // size
        for op in ("all_reduce", "all_gather", "reduce_scatter", "send_recv"):
            if op == "send_recv" and size != 2:
                continue
            for nbytes in message_bytes:
                fn = _run_collective(op, handles[mine], groups[mine], nbytes, "cuda")
                fn()  # NCCL sets up a communicator's channels on its first call
                torch.cuda.synchronize()
                dist.barrier()
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    fn()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
                rows.append([op, size, nbytes, times])
    return rows


def measure_device_collectives(world: int, message_bytes: list[int], reps: int = 10,
                               repeats: Repeats | None = None) -> list[list[Any]]:
    """NCCL collectives among this node's first `world` GPUs (one process each): [op, group size, bytes, the
    median of the slowest rank's wall seconds per repeat, hosts spanned (1)], as `combine_ranks` gives gloo's.
    Fewer than two GPUs: none (a single device has no collectives to measure)."""
    if world < 2:
        return []
    import torch.multiprocessing as mp

    torch.cuda.empty_cache()  # what this process measured with: rank 0 shares its GPU
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bastion-calibrate-nccl-") as tmp:
        mp.start_processes(_device_rank_main, args=(world, f"tcp://127.0.0.1:{port}", tmp, message_bytes, reps),
                           nprocs=world, start_method="spawn")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    return combine_device_ranks(ranks, [socket.gethostname()] * world, repeats)


def combine_device_ranks(ranks: list[list[list[Any]]], hosts: list[str], repeats: Repeats | None) -> list[list[Any]]:
    """Every rank's `_device_collectives` rows, in rank order, as [op, group size, bytes, median seconds, hosts
    the first group of that size spans]: repeat j of a collective ends when its slowest member's does."""
    rows = []
    for i, (op, size, nbytes, times) in enumerate(ranks[0]):
        slowest = [max(r[i][3][j] for r in ranks) for j in range(len(times))]
        if repeats is not None:
            repeats[f"nccl {op} {size} ranks {nbytes} B"] = slowest
        rows.append([op, size, nbytes, statistics.median(slowest), len(set(hosts[:size]))])
    return rows


def device_job_rank(message_bytes: list[int], reps: int, single: Callable[[], Any]
                    ) -> tuple[list[str], Any, list[list[Any]]] | None:
    """One rank of a GPU calibrate job under torchrun (one agent per node, one rank per GPU): rank 0 first runs
    `single()` (the one-device measurements, on its node's first GPU) while the others wait to join; then every
    rank measures NCCL collectives over the whole job (groups larger than a node's GPUs span nodes). Rank 0 gets
    (each rank's host, single()'s result, every rank's `_device_collectives` rows in rank order, for
    `combine_device_ranks`); the other ranks None."""
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    single_result = single() if int(os.environ["RANK"]) == 0 else None
    # the other ranks wait here for rank 0 (the default init timeout bounds it)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    rows = _device_collectives(rank, world, message_bytes, reps)
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    dist.barrier()
    dist.destroy_process_group()
    return None if gathered is None else (hosts, single_result, gathered)


def fit_device_profile(raw: dict[str, Any], peak_bf16_flops: float) -> dict[str, Any]:
    """The rates of specs/profile.py from a GPU's raw measurements (`raw`: as commands/calibrate_cmds.py
    gathers them). Each GEMM's efficiency is its FLOPs / time / the bf16 datasheet peak, by shape; attention's
    the same with the predictor's causal FLOPs (flops.py: 2 · heads · s² · head_dim per sequence forward, 3.5×
    that forward + backward), by sequence length and head size; memory-bound work is costed as effective bytes
    calibrated on the H200 (predict/data/membound.toml), so the bandwidth written is the datasheet bandwidth
    that, at the H200's streaming efficiency, gives the measured elementwise rate; collectives a latency +
    bytes/bandwidth line per op and group size (wall time); the fused AdamW step as effective bytes per parameter
    at that bandwidth. What it does not measure (fp8 GEMMs) keeps the catalog row's datasheet scaling."""
    from bastion.predict.calibration import reference_streaming_fraction

    gemm = [[m, k, n, min(1.0, 2.0 * m * k * n / t / peak_bf16_flops)] for m, k, n, t in raw["gemm"]]
    attention = []
    for seq, head_dim, heads, fwd, fwdbwd in raw["attention"]:
        flops = 2.0 * max(1, raw["attention_batch_tokens"] // seq) * heads * seq * seq * head_dim
        attention.append([seq, head_dim, min(1.0, flops / fwd / peak_bf16_flops),
                          min(1.0, 3.5 * flops / fwdbwd / peak_bf16_flops)])
    streamed_gbs = max(b / t for b, t in raw["elementwise"]) / 1e9
    by_line: dict[tuple[str, int], list[tuple[float, float]]] = {}
    spans: dict[tuple[str, int], int] = {}
    for op, size, nbytes, t, hosts in raw["collectives"]:
        by_line.setdefault((op, size), []).append((float(nbytes), t))
        spans[(op, size)] = hosts
    collectives = []
    for (op, size), points in sorted(by_line.items()):
        latency, per_byte = _line_fit(points)
        collectives.append({"op": op, "group_size": size, "latency_us": latency * 1e6,
                            "bandwidth_gbs": 1e-9 / per_byte, "hosts": spans[(op, size)]})
    hbm_gbs = streamed_gbs / reference_streaming_fraction()
    params, step_s = raw["optimizer_params_s"]
    # the catalog's matmul_efficiency stays: it sets the level of what was not measured here (fp8 GEMMs, other
    # attention kernels) from the datasheet, as without a profile
    return {
        "accelerator": {
            "hbm_bandwidth_gbs": hbm_gbs,
            # the step's time as effective bytes at that bandwidth, as predict/data/membound.toml costs it
            "adamw_bytes_per_param": step_s / params * hbm_gbs * 1e9,
            "gemm_shape_efficiency": gemm,
            "attention_layout_efficiency": attention,
        },
        "host": {k: raw["host"][k] for k in ("checkpoint_write_gbs", "checkpoint_read_gbs")},
        "collective": collectives,
    }


# ---- fitting ----------------------------------------------------------------------------------------------

def _line_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(latency, seconds per byte) of t = latency + bytes · per_byte, robust to a few slow repeats (a busy host
    delays a collective now and then): the slope between the two largest messages, the latency the median of
    what the smaller messages leave over."""
    points = sorted(points)
    (b1, t1), (b2, t2) = points[-2], points[-1]
    per_byte = (t2 - t1) / (b2 - b1) if b2 > b1 and t2 > t1 else t2 / b2
    latency = statistics.median(t - per_byte * b for b, t in points[:-1])
    return max(0.0, latency), max(per_byte, 1e-15)


def sync_wait_rows(rows: list[list[Any]], world: int) -> list[dict[str, Any]]:
    """The profile's [[sync_wait]] rows from `measure_sync_wait`'s (each round's slowest rank): per op and work
    between syncs, the wall seconds per iteration the synced loop took beyond the work alone in the window
    before it, less the sync alone (the median of the work-0 rounds: its latency, which the collective lines
    already charge), and `transport_cpu_s`, the CPU gloo's threads spent per synced iteration (the median rank),
    which on shared cores takes core time from the ranks' work: each the least of the rounds, as the host's
    other load only adds to both (one round at 3 ms of work once measured 13 ms of idle time at load 4 where
    its neighbours had 0.5 and 0). `ranks_per_core` is the work alone's wall time / its CPU time (the runnable
    processes per core in those windows, the median round), which the predictor scales the idle time by."""
    alone = {op: statistics.median(row[3] for row in rows if row[0] == op and row[1] == 0)
             for op in {row[0] for row in rows}}
    by_key: dict[tuple[str, float], list[tuple[float, float, float]]] = {}
    for op, work, _, synced, unsynced, transport in rows:
        if work > 0:
            by_key.setdefault((op, work), []).append((synced - unsynced - alone[op], unsynced / work, transport))
    return [{"op": op, "ranks": world, "ranks_per_core": statistics.median(r[1] for r in rounds), "work_s": work,
             "idle_s": max(0.0, min(r[0] for r in rounds)), "transport_cpu_s": min(r[2] for r in rounds)}
            for (op, work), rounds in sorted(by_key.items())]


def _gemm_efficiency(rows: list[list[float]], dispatch_s: float, peak_flops_core: float) -> dict[float, float]:
    """{GEMM FLOPs: fraction of one core's peak} of [m, k, n, CPU seconds] rows, one op's dispatch taken off."""
    efficiency = {}
    for m, k, n, t in rows:
        flops = 2.0 * m * k * n
        efficiency[flops] = min(1.0, flops / max(t - dispatch_s, 1e-9) / peak_flops_core)
    return efficiency


def fit_profile(raw: dict[str, Any], peak_flops_core: float, host_cores: int) -> dict[str, Any]:
    """The rates of specs/profile.py from the raw measurements. Each rate is a measurement through a mechanism,
    not a fit to step times: a GEMM's efficiency is its FLOPs over (CPU time − one op's dispatch) over one core's
    peak (alone, and — more ranks than cores — while every rank ran the sweep at once); attention's the same with
    the predictor's causal FLOPs; memory bandwidth the node's (each of N processes' elementwise rate × the
    cores); the background load from the share of a core N busy processes
    got; collectives a least-squares latency + bytes/bandwidth line (wall time) per
    op and group size; FSDP2's fixed cost per unit by ZeRO layout and group size and its CPU cost per unit as a
    line in the unit's parameter bytes (`fsdp_unit_costs`); the idle
    time and gloo's CPU a synchronisation point costs on shared cores by the work between syncs
    (`sync_wait_rows`)."""
    dispatch = raw["dispatch_s"]
    gemm = _gemm_efficiency(raw["gemm"], dispatch, peak_flops_core)
    attention = {}
    for seq, head_dim, heads, fwd, fwdbwd in raw["attention"]:
        flops = 2.0 * heads * seq * seq * head_dim  # the predictor's causal forward FLOPs (flops.py), batch 1
        attention[seq * head_dim] = (min(1.0, flops / fwd / peak_flops_core),
                                     min(1.0, 3.5 * flops / fwdbwd / peak_flops_core))
    single_bw = statistics.median(b / t for b, t in raw["elementwise"])
    shared = raw["shared"]
    world = shared["world"]
    # each of N busy ranks got s of a core; the OS shares the cores evenly among the runnable processes, so
    # s = cores / (N + background): the rest is other load (and context-switch losses) the ranks competed with
    share = min(1.0, statistics.fmean(shared["core_share"]))
    background = max(0.0, host_cores / share - world) if share < 1.0 else 0.0
    # CPU-time rates: what a running rank streams while the others run on the other cores
    shared_bw = statistics.fmean(b / t for b, t in shared["elementwise"])
    by_line: dict[tuple[str, int], list[tuple[float, float]]] = {}
    hosts_spanned: dict[tuple[str, int], int] = {}
    for op, size, nbytes, t, *spanned in shared["collectives"]:
        by_line.setdefault((op, size), []).append((float(nbytes), t))
        hosts_spanned[(op, size)] = spanned[0] if spanned else 1
    collectives = []
    for (op, size), points in sorted(by_line.items()):
        # a collective on shared cores progresses only while its ranks run: its wall time × the share of a core
        # they had is its time on whole cores, which the predictor divides by the share a plan's ranks get
        latency, per_byte = _line_fit([(b, t * share) for b, t in points])
        # `hosts`: how many hosts one group spanned (1: inside a node; more: across the network, a calibrate job)
        collectives.append({"op": op, "group_size": size, "latency_us": latency * 1e6,
                            "bandwidth_gbs": 1e-9 / per_byte, "hosts": hosts_spanned[(op, size)]})
    fsdp_units = fsdp_unit_costs(shared.get("fsdp", []), share, shared.get("fsdp_cpu", []))
    host = dict(raw["host"])
    host["process_start_s"] = shared["process_start_s"]
    host["pipeline_micro_batch_s"] = shared.get("pipeline_micro_batch_s", 0.0)
    tensor_parallel = shared.get("tensor_parallel")
    if tensor_parallel:  # real tensor-parallel pairs: these replace the one-process DTensor figures
        host.update({k: tensor_parallel[k] for k in ("layer_tp_s", "layer_sp_s", "micro_batch_tp_s",
                                                       "micro_batch_sp_s")})

    top_gemm = max(gemm)
    # more ranks than cores: the GEMMs' efficiency per CPU second while every rank ran them at once
    time_shared = _gemm_efficiency(shared.get("gemm", []), dispatch, peak_flops_core) if world > host_cores else {}
    return {
        "accelerator": {
            "matmul_efficiency": gemm[top_gemm],
            # the node's: a running rank's rate times the cores (Accelerator.shared_by divides it among the ranks)
            "hbm_bandwidth_gbs": (shared_bw if world > 1 else single_bw) * host_cores / 1e9,
            "background_load": background,
            "gemm_efficiency_curve": [[f, e] for f, e in sorted(gemm.items())],
            **({"time_shared_gemm_efficiency_curve": [[f, e] for f, e in sorted(time_shared.items())]}
               if time_shared else {}),
            "attention_efficiency_curve": [[x, *effs] for x, effs in sorted(attention.items())],
            # absent from a profile measured before the sweep: memory-bound work at hbm_bandwidth_gbs, any size
            **({"elementwise_bandwidth_curve": elementwise_bandwidth_curve(raw["elementwise_working_sets"], dispatch)}
               if raw.get("elementwise_working_sets") else {}),
        },
        "host": host,
        "collective": collectives,
        "tp_collective": tensor_parallel["counts"] if tensor_parallel else [],
        "fsdp_unit": fsdp_units,
        "sync_wait": sync_wait_rows(shared.get("sync_wait", []), world),
    }


def one_thread() -> None:
    """Measure as a training rank runs: one intra-op thread."""
    torch.set_num_threads(1)


def torch_version() -> str:
    """The torch the profile was measured with (recorded in the profile)."""
    return torch.__version__
