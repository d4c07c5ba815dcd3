"""The training loop of one worker: AdamW, warmup + cosine, global-norm clipping, gradient accumulation.

`run_worker(config)` is what `bastion train` runs in every process started by torchrun/Slurm/Kubernetes: it
creates the process group, calls `train(config)` and exits through the shutdown sequence PYTORCH_NOTES requires
(barrier, destroy_process_group, flush, os._exit) so that no rank aborts at interpreter exit.
`train(config)` works inside an existing process group, so a test can run several plans in one launch.

Threads: every worker runs with OMP_NUM_THREADS (the launcher sets 1 on CPU; default 1 when unset), because
results are bitwise reproducible only at a fixed thread count.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bastion.errors import BastionError
from bastion.rundir.layout import write_run_files
from bastion.rundir.metrics import MetricsWriter
from bastion.runtime.context_parallel import split_sequence
from bastion.runtime.data import GlobalSampler, dp_slice, open_dataset
from bastion.runtime.mesh import RuntimeMesh, build_mesh
from bastion.runtime.metrics import (
    SavedActivationProbe,
    current_memory_bytes,
    model_flops_per_token,
    model_state_bytes_measured,
    param_bytes,
)
from bastion.runtime.parallelize import ParallelizeConfig, ParallelModel, cross_entropy_loss, parallelize
from bastion.runtime.preemption import PreemptionNotice
from bastion.runtime.resilience import BadStep, Resilience
from bastion.runtime.resilience_config import ResilienceConfig
from bastion.runtime.run_summary import peak_flops, write_run_summary
from bastion.specs.model import ModelSpec, load_model
from bastion.specs.plan import ParallelPlan


@dataclass(frozen=True)
class TrainConfig:
    """One training run (the CLI builds it from `bastion train` options)."""

    #: model preset name or model file
    model: str
    #: ParallelPlan file (JSON/TOML)
    plan: str
    #: token dataset directory (`bastion data prepare`)
    data: str
    #: optimizer steps to run
    steps: int
    #: where metrics.jsonl, summary.json, plan.json, model.json and checkpoints/ go
    run_dir: str
    #: seed of the parameter init and the data order
    seed: int = 0
    #: sequence length (default: the model's)
    seq_len: int | None = None
    #: peak learning rate
    lr: float = 1e-3
    #: linear warmup steps (capped at a tenth of the run)
    warmup_steps: int = 10
    #: cosine decay floor as a fraction of lr
    min_lr_ratio: float = 0.1
    #: AdamW decoupled weight decay (matrices only)
    weight_decay: float = 0.1
    #: global gradient-norm clip
    max_grad_norm: float = 1.0
    #: torch.compile each block (the whole model on one device)
    compile: bool = False
    #: cluster spec used for MFU and the prediction (default cpu:<world> on CPU)
    cluster: str | None = None
    #: show a progress bar on rank 0
    progress: bool = True
    #: hash the full parameters into summary.json (gathers them to rank 0)
    hash_params: bool = True
    #: also save the full final parameters to RUN_DIR/final_params.pt (equivalence tests)
    save_final_params: bool = False
    #: checkpoints, resume, fault injection, watchdog, NaN rollback (runtime/resilience.py)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)


# ---- optimizer and schedule ------------------------------------------------------------------------------
def build_optimizer(model: ParallelModel, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    from torch.distributed.tensor import DTensor

    plain_cuda = device.type == "cuda" and not any(isinstance(p, DTensor) for p in model.parameters())
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=True if plain_cuda else None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Warmup then cosine: the multiplier of the peak lr for optimizer step `step` (0-based)."""
    warmup = min(warmup_steps, max(1, total_steps // 10))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup_steps, config.min_lr_ratio))


# ---- gradient clipping across dp, tp and pp ----------------------------------------------------------------
@torch.no_grad()
def align_gradient_placements(model: ParallelModel) -> None:
    """Give every DTensor gradient its parameter's placements.

    Under sequence parallelism the gradient of a replicated norm weight comes out Partial (each TP rank saw part
    of the sequence) and a vocab-sharded embedding's gradient comes out Replicate; reducing/slicing here makes
    the norm, the clipping and the optimizer see the true gradient, and its memory the predicted size.
    """
    from torch.distributed.tensor import DTensor

    for param in model.parameters():
        grad = param.grad
        if isinstance(grad, DTensor) and tuple(grad.placements) != tuple(param.placements):
            param.grad = grad.redistribute(param.device_mesh, param.placements)


@torch.no_grad()
def clip_grad_norm(model: ParallelModel, max_norm: float, rmesh: RuntimeMesh) -> float:
    """Global L2 norm over every gradient of the whole model, then scale all gradients by min(1, max/norm).

    Sharded DTensor gradients contribute the sum of squares of their local shards, reduced over the mesh
    dimensions they are sharded (or partial) on; replicated ones count once. Pipeline stages then add their
    sums over the pp group so every rank clips with the same norm.
    """
    from torch.distributed.tensor import DTensor

    groups: dict[tuple, list[torch.Tensor]] = {}
    reduce_over: dict[tuple, list[dist.ProcessGroup]] = {}
    for param in model.parameters():
        grad = param.grad
        if grad is None:
            continue
        if isinstance(grad, DTensor):
            key = (id(grad.device_mesh), tuple(grad.placements))
            if key not in reduce_over:
                reduce_over[key] = [grad.device_mesh.get_group(i) for i, placement in enumerate(grad.placements)
                                    if not placement.is_replicate()]  # Shard, _StridedShard (FSDP×TP)
            groups.setdefault(key, []).append(grad.to_local())
        else:
            groups.setdefault(("plain",), []).append(grad)
    total_sq = torch.zeros((), dtype=torch.float32, device=rmesh.device)
    for key, grads in groups.items():
        norms = torch._foreach_norm([g.float() for g in grads], 2)
        sq = torch.stack(norms).pow(2).sum()
        for group in reduce_over.get(key, []):
            dist.all_reduce(sq, group=group)
        total_sq += sq
    if rmesh.plan.pp > 1:
        dist.all_reduce(total_sq, group=rmesh.pp_group)
    # replicated gradients (plain data parallel, TP-replicated norms) are not reduced above, so a replica whose
    # gradients went non-finite on its own (a bit flip, an injected fault) would be judged alone: it would roll
    # back while the others step on, and the next collective would deadlock. Every rank sees a NaN/inf anywhere.
    anywhere = total_sq.clone()
    dist.all_reduce(anywhere)
    total_sq = torch.where(torch.isfinite(anywhere), total_sq, anywhere)
    total = total_sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grads in groups.values():
        torch._foreach_mul_(grads, coef)
    return float(total)


# ---- one step ------------------------------------------------------------------------------------------------
class Trainer:
    """Everything one worker holds for a run; `train_step` advances one optimizer step."""

    def __init__(self, config: TrainConfig, spec: ModelSpec, plan: ParallelPlan, rmesh: RuntimeMesh) -> None:
        self.config = config
        self.spec = spec
        self.plan = plan
        self.rmesh = rmesh
        self.seq_len = spec.seq_len
        self.model = parallelize(spec, plan, rmesh, ParallelizeConfig(compile=config.compile, seed=config.seed))
        # compiled, the loss fuses the fp32 upcast into the cross-entropy, so the fp32 copy of the
        # (tokens × vocab) logits is never materialised (DTensor logits under loss_parallel stay eager)
        self.loss_fn = torch.compile(cross_entropy_loss) if config.compile and plan.tp == 1 else cross_entropy_loss
        self.optimizer = build_optimizer(self.model, config, rmesh.device)
        self.scheduler = build_scheduler(self.optimizer, config)
        dataset = open_dataset(config.data, self.seq_len, spec.vocab_size)
        self.sampler = GlobalSampler(dataset, plan.global_batch, config.seed)
        #: optimizer steps completed
        self.step = 0
        #: global sample ids of the last step (every rank computes the same list)
        self.last_sample_ids: list[int] = []
        self.activation_bytes: int | None = None
        #: parameter bytes as the step computes with them (between forward and backward of the first
        #: micro-batch): FSDP2 holds zero 0-2 parameters unsharded there, zero 3 parameters sharded
        self.params_in_step_bytes: int | None = None
        #: fault-tolerance hooks (NaN injection and guard), set by train(); None = none
        self.guard: Resilience | None = None

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.plan.tp > 1:
            from torch.distributed.tensor.parallel import loss_parallel

            # under pipelining this must wrap the whole schedule.step(): the schedule runs backward
            stack.enter_context(loss_parallel())
        return stack

    def _autocast(self) -> Any:
        dtype = self.model.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rmesh.device.type, dtype=dtype)

    def _local_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.last_sample_ids = self.sampler.next_global_batch()
        mine = dp_slice(self.last_sample_ids, self.rmesh.dp_rank, self.plan.dp)
        rows = torch.from_numpy(self.sampler.tokens_for(mine)).to(self.rmesh.device)
        inputs, targets = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        if self.plan.cp > 1:  # every cp rank of a replica read the same sequences; each keeps its two chunks
            inputs = split_sequence(inputs, self.plan.cp, self.rmesh.cp_rank)
            targets = split_sequence(targets, self.plan.cp, self.rmesh.cp_rank)
        return inputs, targets

    def _forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over this rank's micro-batches of loss / n_micro (0 on ranks without the last stage)."""
        model = self.model
        n_micro = self.plan.grad_accumulation
        with self._context():
            if model.schedule is not None:
                losses: list[torch.Tensor] = []
                args = (inputs,) if model.has_first_stage else ()
                target = targets if model.has_last_stage else None
                with self._autocast():
                    model.schedule.step(*args, target=target, losses=losses)
                if not model.has_last_stage:
                    return torch.zeros((), device=self.rmesh.device)
                return torch.stack([_plain(loss).detach().float() for loss in losses]).mean()
            part = model.parts[0]
            total = torch.zeros((), device=self.rmesh.device)
            for index in range(n_micro):
                rows = slice(index * self.plan.micro_batch, (index + 1) * self.plan.micro_batch)
                probe = SavedActivationProbe() if (self.step == 0 and index == 0) else None
                hooks = probe.hooks() if probe else contextlib.nullcontext()
                with hooks, self._autocast():
                    loss = self.loss_fn(part(inputs[rows]), targets[rows]) / n_micro
                if probe is not None:
                    self.activation_bytes = probe.activation_bytes(part.parameters())
                    self.params_in_step_bytes = param_bytes(part.parameters())
                loss.backward()
                total += _plain(loss).detach().float()
            return total

    def train_step(self) -> dict[str, Any]:
        device = self.rmesh.device
        start = time.perf_counter()
        inputs, targets = self._local_batch()
        self.optimizer.zero_grad(set_to_none=True)
        local_loss = self._forward_backward(inputs, targets)
        align_gradient_placements(self.model)
        if self.guard is not None:
            self.guard.after_backward(self.step + 1, self.model.parameters())
        grad_norm = clip_grad_norm(self.model, self.config.max_grad_norm, self.rmesh)
        if self.guard is not None:  # raises BadStep before a NaN/spiking update is applied
            self.guard.check_grad_norm(self.step + 1, grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        # every dp × cp × tp rank of the last stage holds the mean over the same number of tokens (tp ranks the
        # same value); the other stages contribute 0
        dist.all_reduce(local_loss)
        loss = float(local_loss) / (self.plan.dp * self.plan.cp * self.plan.tp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - start
        self.step += 1
        return {"step": self.step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "step_time_s": step_time}


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


# ---- prediction ------------------------------------------------------------------------------------------
def _cluster_name(config: TrainConfig, device: torch.device, world: int) -> str | None:
    if config.cluster:
        return config.cluster
    if device.type == "cpu":
        return f"cpu:{world}"
    from bastion.specs.hardware import accelerator_for_device

    accelerator = accelerator_for_device(torch.cuda.get_device_name(device))  # the catalog's device_names
    return f"{accelerator}:{world}" if accelerator else None


# ---- the run ------------------------------------------------------------------------------------------------
def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # on stderr: stdout carries what a script reads (the final summary, `--json`)
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False,
                        console=Console(stderr=True))
    progress.start()
    progress.add_task("train", total=total, info="")
    return progress


def train(config: TrainConfig) -> dict[str, Any]:
    """Run `config.steps` optimizer steps in the current process group; returns summary.json's content (rank 0)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    spec = load_model(config.model, config.seq_len)
    plan = ParallelPlan.load(config.plan)
    plan.validate(spec, None, spec.seq_len)
    rmesh = build_mesh(plan, device)
    run_dir = Path(config.run_dir)
    if rank == 0:
        write_run_files(run_dir, spec, plan)
    trainer = Trainer(config, spec, plan, rmesh)
    resilience = Resilience(config.resilience, run_dir, trainer, spec, plan)
    trainer.guard = resilience
    resilience.start()
    preemption = PreemptionNotice().install()  # SIGTERM: checkpoint after the current step, stop
    writer = MetricsWriter(run_dir, enabled=rank == 0)
    cluster_name = _cluster_name(config, device, world)
    peak = peak_flops(cluster_name, plan.precision, device)
    tokens_per_step = plan.global_batch * spec.seq_len
    flops_per_step = model_flops_per_token(spec, spec.seq_len) * tokens_per_step
    progress = _progress(config.progress and rank == 0, config.steps)
    records: list[dict[str, Any]] = []
    model_state = None
    wall_start = time.perf_counter()
    try:
        while trainer.step < config.steps and not resilience.should_stop():
            resilience.before_step(trainer.step + 1)
            try:
                record = trainer.train_step()
            except BadStep as bad:
                resilience.rollback(bad)
                records = [r for r in records if r["step"] <= trainer.step]
                continue
            record["time"] = time.time()
            if model_state is None:  # after the first step every gradient and moment exists
                model_state = model_state_bytes_measured(trainer.model.parameters(), trainer.optimizer)
                if trainer.params_in_step_bytes is not None:
                    model_state["params_at_rest"] = model_state["params"]
                    model_state["params"] = trainer.params_in_step_bytes
            step_time = record["step_time_s"]
            record["tokens_per_s"] = tokens_per_step / step_time
            record["mfu"] = flops_per_step / (step_time * world * peak) if peak else None
            record["mem_gib"] = current_memory_bytes(device) / 2**30
            if rank == 0:
                record["sample_ids"] = [trainer.last_sample_ids[0], trainer.last_sample_ids[-1] + 1]
            writer.write(record)
            records.append(record)
            preemption.stop_here_if_asked(resilience, trainer.step)
            resilience.after_step(record)
            if progress is not None:
                progress.update(progress.task_ids[0], completed=trainer.step,
                                info=f"loss {record['loss']:.4f}  {record['tokens_per_s']:.0f} tok/s")
    finally:
        if progress is not None:
            progress.stop()
        writer.close()
    wall = time.perf_counter() - wall_start
    fault_tolerance = resilience.finish()
    return write_run_summary(config, trainer, spec, plan, rmesh, records, model_state, cluster_name, wall,
                             fault_tolerance)


# ---- process entry point ---------------------------------------------------------------------------------------
def init_distributed() -> None:
    if dist.is_initialized():
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    backend = "cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)


def shutdown_and_exit(code: int) -> None:
    """The exit sequence that avoids the SIGABRT-at-shutdown trap (PYTORCH_NOTES)."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_worker(config: TrainConfig) -> None:
    """Entry point of a torchrun/Slurm/Kubernetes worker; never returns."""
    init_distributed()
    try:
        train(config)
    except BastionError as exc:
        if dist.get_rank() == 0:
            print(f"error: {exc.render()}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    shutdown_and_exit(0)
