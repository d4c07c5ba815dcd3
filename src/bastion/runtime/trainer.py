"""One worker's training state and its step: forward, backward, clipping, the optimizer update.

`Trainer` is a `torch.distributed.checkpoint.stateful.Stateful`: the fault-tolerance layer (runtime/resilience.py)
receives it as the state to checkpoint and restore, and never reaches into its optimizer, scheduler, sampler or
step. What happens inside a step on its behalf (poison gradients, judge the gradient norm) comes in as `StepHooks`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful

from bastion.runtime.checkpoint import capture_tensors_and_hparams, restore_tensors_and_hparams
from bastion.runtime.context_parallel import split_sequence
from bastion.runtime.data import GlobalSampler, dp_slice, open_datasets
from bastion.runtime.mesh import RuntimeMesh
from bastion.runtime.metrics import SavedActivationProbe, param_bytes
from bastion.runtime.moe import scale_expert_gradients, step_stats
from bastion.runtime.optim import (
    align_gradient_placements,
    build_optimizer,
    build_scheduler,
    clip_grad_norm,
    scheduler_state,
)
from bastion.runtime.parallelize import (
    ParallelizeConfig,
    cross_entropy_loss,
    defers_gradient_reduction,
    observe_gradient_reductions,
    parallelize,
    set_gradient_reduction,
)
from bastion.runtime.preflight import check_eval_schedule
from bastion.runtime.replicas import ReplicaGroups, StepNotCommitted
from bastion.runtime.stragglers import gather_sections
from bastion.runtime.train_config import TrainConfig
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan


class StepHooks(Protocol):
    """What another layer does inside a step (runtime/resilience.py: fault injection and the NaN guard)."""

    def after_backward(self, step: int, parameters: Iterator[torch.nn.Parameter]) -> None:
        """Gradients are reduced and placed, not yet clipped."""

    def check_grad_norm(self, step: int, grad_norm: float, batch_start: int) -> None:
        """Right before the optimizer update; raises to keep it from being applied."""

    def before_sync(self, step: int, compute_s: float) -> None:
        """This rank's local work of the step is done (`compute_s` so far); the closing collective follows."""


def _state_module(parts: list[torch.nn.Module]) -> torch.nn.Module:
    """One module holding all of this rank's chunks under the full model's parameter names."""
    if len(parts) == 1:
        return parts[0]
    container = torch.nn.Module()
    layers = torch.nn.ModuleDict()
    for part in parts:
        for name, child in part.named_children():
            if name == "layers":
                layers.update(child.items())
            elif child is not None:
                container.add_module(name, child)
    container.add_module("layers", layers)
    return container


class Trainer(Stateful):
    """Everything one worker holds for a run; `train_step` advances one optimizer step."""

    def __init__(self, config: TrainConfig, spec: ModelSpec, plan: ParallelPlan, rmesh: RuntimeMesh) -> None:
        self.config = config
        self.spec = spec
        self.plan = plan
        self.rmesh = rmesh
        self.seq_len = spec.seq_len
        self.model = parallelize(spec, plan, rmesh, ParallelizeConfig(compile=config.compile, seed=config.seed,
                                                                         fp8_recipe=config.fp8_recipe))
        # compiled, the loss fuses the fp32 upcast into the cross-entropy, so the fp32 copy of the
        # (tokens × vocab) logits is never materialised (DTensor logits under loss_parallel stay eager)
        self.loss_fn = torch.compile(cross_entropy_loss) if config.compile and plan.tp == 1 else cross_entropy_loss
        self.optimizer = build_optimizer(self.model, config, rmesh.device)
        self.scheduler = build_scheduler(self.optimizer, config)
        datasets, weights = open_datasets(config.data, self.seq_len, spec.vocab_size)
        # replica groups (--fault-tolerance torchft) each run `plan` on their share of the run's global batch
        self.sampler = GlobalSampler(datasets, plan.global_batch * config.replica_groups, config.seed, weights)
        #: the torchft replica groups this worker's group steps with (runtime/replicas.py; None: not used)
        self.replicas: ReplicaGroups | None = None
        #: the held-out samples `evaluate` reads: always the first eval_batches × global_batch of the eval split
        self.eval_sampler: GlobalSampler | None = None
        if config.eval_every > 0:
            check_eval_schedule(plan)
            held_out, weights = open_datasets(config.data, self.seq_len, spec.vocab_size, split="eval")
            self.eval_sampler = GlobalSampler(held_out, plan.global_batch, config.seed, weights)
        #: optimizer steps completed
        self.step = 0
        #: global sample ids of the last step (every rank computes the same list)
        self.last_sample_ids: list[int] = []
        self.activation_bytes: int | None = None
        #: bytes the activation-offload hooks copied to host memory in the last step (None: the plan offloads
        #: none); not the first step's, to which a pipeline stage adds a forward of its own (shape inference)
        self.offloaded_bytes: int | None = None
        #: parameter bytes as the step computes with them (between forward and backward of the first
        #: micro-batch): FSDP2 holds zero 0-2 parameters unsharded there, zero 3 parameters sharded; under a
        #: pipeline, right before each stage's gradient reduction (`_held_before_reduction`), where every zero stage
        #: holds them unsharded
        self.params_in_step_bytes: int | None = None
        #: gradient bytes while a step accumulates (after the first of several micro-batches' backward), where the
        #: loop defers their reduction to the last (zero 0 and 1: whole); under a pipeline, which defers it for every
        #: zero stage, right before each stage's reduction (whole); None where the gradients the step ends with are
        #: the most it holds, or where FSDP2 keeps them out of `.grad` (`_accumulated_gradient_bytes`)
        self.grads_in_step_bytes: int | None = None
        #: all of this rank's pipeline chunks as one module under the full model's parameter names
        self._rank_module = _state_module(self.model.parts)

    # ---- Stateful: what a checkpoint keeps of this rank's training --------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's training state, one entry per part of a checkpoint (runtime/resilience.py files them):

        "tensors": model and optimizer tensors for DCP, keyed `model.<name>` / `optim.<name>` with the full
        model's parameter names, so a checkpoint saved under one plan loads under any other; "optimizer": the
        optimizer's per-parameter settings this rank holds (JSON); "scheduler", "sampler", "step": the LR
        schedule, the data position and the optimizer steps done (JSON). The tensors are the live ones: loading
        fills them in place and hands the dict back to `load_state_dict`.
        """
        tensors, hparams = capture_tensors_and_hparams([self._rank_module], [self.optimizer])
        return {"step": self.step, "sampler": self.sampler.state_dict(), "scheduler": scheduler_state(self.scheduler),
                "tensors": tensors, "optimizer": hparams}

    def check_resumable(self, state: dict[str, Any]) -> None:
        """Raise a BastionError when a checkpoint's run state cannot continue under this run's request (other
        data or mixture weights), before anything is loaded."""
        self.sampler.check_resumable(state["sampler"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_tensors_and_hparams([self._rank_module], [self.optimizer], state_dict["tensors"],
                                    state_dict["optimizer"])
        self.scheduler.load_state_dict(state_dict["scheduler"])
        self.sampler.load_state_dict(state_dict["sampler"])
        self.step = int(state_dict["step"])

    # ---- one step ------------------------------------------------------------------------------------------
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
        return self._local_rows(self.sampler, self.last_sample_ids)

    def _local_rows(self, sampler: GlobalSampler, sample_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's inputs and targets of a global batch."""
        groups = self.config.replica_groups
        mine = dp_slice(sample_ids, self.config.replica_group * self.plan.dp + self.rmesh.dp_rank,
                        self.plan.dp * groups)
        rows = torch.from_numpy(sampler.tokens_for(mine)).to(self.rmesh.device)
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
                held: list[tuple[int, int | None]] = []
                observing = (observe_gradient_reductions(model, lambda part: held.append(_held_before_reduction(part)))
                             if self.step == 0 else contextlib.nullcontext())
                with observing, self._autocast():
                    model.schedule.step(*args, target=target, losses=losses)
                if held:  # each stage's most, summed over this rank's stages
                    self.params_in_step_bytes = sum(params for params, _ in held)
                    grads = [grads for _, grads in held if grads is not None]
                    self.grads_in_step_bytes = sum(grads) if len(grads) == len(held) else None
                if not model.has_last_stage:
                    return torch.zeros((), device=self.rmesh.device)
                return torch.stack([_plain(loss).detach().float() for loss in losses]).mean()
            part = model.parts[0]
            deferred = n_micro > 1 and defers_gradient_reduction(self.plan)
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
                if deferred:  # one reduction per step, after the last micro-batch's backward
                    set_gradient_reduction(part, index == n_micro - 1)
                loss.backward()
                if deferred and probe is not None:
                    self.grads_in_step_bytes = _accumulated_gradient_bytes(part)
                total += _plain(loss).detach().float()
            return total

    def _forward_only(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Like `_forward_backward` without the backward: the mean micro-batch loss on this rank."""
        model = self.model
        n_micro = self.plan.grad_accumulation
        with self._context(), self._autocast():
            if model.schedule is not None:
                losses: list[torch.Tensor] = []
                args = (inputs,) if model.has_first_stage else ()
                model.schedule.eval(*args, target=targets if model.has_last_stage else None, losses=losses)
                if not model.has_last_stage:
                    return torch.zeros((), device=self.rmesh.device)
                return torch.stack([_plain(loss).detach().float() for loss in losses]).mean()
            total = torch.zeros((), device=self.rmesh.device)
            for index in range(n_micro):
                rows = slice(index * self.plan.micro_batch, (index + 1) * self.plan.micro_batch)
                loss = self.loss_fn(model.parts[0](inputs[rows]), targets[rows]) / n_micro
                total += _plain(loss).detach().float()
            return total

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the held-out batches (collective; the same samples under every plan)."""
        assert self.eval_sampler is not None, "evaluate() needs config.eval_every > 0"
        total = torch.zeros((), device=self.rmesh.device)
        for batch in range(self.config.eval_batches):
            total += self._forward_only(*self._local_rows(self.eval_sampler, self.eval_sampler.batch_ids(batch)))
        dist.all_reduce(total)
        return float(total) / (self.config.eval_batches * self.plan.dp * self.plan.cp * self.plan.tp)

    def train_step(self, hooks: StepHooks | None = None) -> dict[str, Any]:
        """One optimizer step; the record holds every rank's section times, wall and CPU (`rank_sections_s`,
        `rank_cpu_sections_s`, gathered: a collective, runtime/stragglers.py)."""
        device = self.rmesh.device
        start, start_cpu = time.perf_counter(), time.process_time()
        replicas = self.replicas
        previous_groups: list[int] = []
        if replicas is not None:  # the step's quorum: a restarted group heals here (state, data position, step)
            replicas.begin_step()
            position = self.sampler.state_dict()
            previous_groups = replicas.participants
        inputs, targets = self._local_batch()
        self.optimizer.zero_grad(set_to_none=True)
        local_loss = self._forward_backward(inputs, targets)
        if self.model.offload is not None:
            self.offloaded_bytes = self.model.offload.take_bytes_moved()
        scale_expert_gradients(self.model.parts, self.plan)
        align_gradient_placements(self.model)
        if hooks is not None:
            hooks.after_backward(self.step + 1, self.model.parameters())
        if replicas is not None:  # the group's reduced gradients averaged over the participating groups
            replicas.average([_local(p.grad) for p in self.model.parameters() if p.grad is not None], local_loss)
        backward_done, backward_done_cpu = time.perf_counter(), time.process_time()
        grad_norm = clip_grad_norm(self.model, self.config.max_grad_norm, self.rmesh)
        try:
            if hooks is not None:  # raises BadStep before a NaN/spiking update is applied
                hooks.check_grad_norm(self.step + 1, grad_norm, self.last_sample_ids[0])
            if replicas is not None and not replicas.should_commit():
                raise StepNotCommitted(f"step {self.step + 1}")
        except StepNotCommitted:  # retried on the same batch (the verdict could not be shared, or a peer failed)
            self.sampler.load_state_dict(position)
            self.optimizer.zero_grad(set_to_none=True)
            raise
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        optimizer_done, optimizer_done_cpu = time.perf_counter(), time.process_time()
        if hooks is not None:
            hooks.before_sync(self.step + 1, optimizer_done - start)
        sync_start, sync_start_cpu = time.perf_counter(), time.process_time()
        # every dp × cp × tp rank of the last stage holds the mean over the same number of tokens (tp ranks the
        # same value); the other stages contribute 0
        dist.all_reduce(local_loss)
        loss = float(local_loss) / (self.plan.dp * self.plan.cp * self.plan.tp)
        end, end_cpu = time.perf_counter(), time.process_time()
        step_time = end - start
        sections, cpu_sections = gather_sections(
            {"forward_backward": backward_done - start, "optimizer": optimizer_done - backward_done,
             "sync_wait": end - sync_start, "step": step_time},
            {"forward_backward": backward_done_cpu - start_cpu, "optimizer": optimizer_done_cpu - backward_done_cpu,
             "sync_wait": end_cpu - sync_start_cpu, "step": end_cpu - start_cpu}, device)
        self.step += 1
        record = {"step": self.step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "step_time_s": step_time,
                  "rank_sections_s": sections, "rank_cpu_sections_s": cpu_sections}
        if replicas is not None:
            record.update(replicas.step_fields(self.step, self.last_sample_ids, previous_groups))
        if self.spec.num_experts:  # after the step's timing: one small all-reduce of routing counters
            record.update(step_stats(self.model.parts, self.spec, self.plan, device))
        return record


def _held_before_reduction(part: torch.nn.Module) -> tuple[int, int | None]:
    """(parameter, gradient) bytes a pipeline stage holds right before the schedule reduces its gradients: the
    most of its step, every ZeRO stage's parameters gathered and gradients whole (runtime/parallelize.py
    observe_gradient_reductions). A rank with several stages (interleaved schedules) holds all their gradients
    whole together at its first stage's reduction (each accumulates from its first backward to its own
    reduction), but there another ZeRO-3 stage that has run a forward since its latest backward holds its
    parameters resharded: the sum over the stages is then the most the rank could hold, not one moment's bytes."""
    return param_bytes(part.parameters()), _accumulated_gradient_bytes(part)


def _accumulated_gradient_bytes(part: torch.nn.Module) -> int | None:
    """Bytes of the gradients a module's parameters hold between micro-batches whose reduction is deferred: the
    parameters stay gathered then, so these are the whole (tensor-parallel-local) gradients. None under a
    mixed-precision policy, where FSDP2 keeps them out of `.grad`, in its reduce dtype, until it reduces them."""
    grads = [p.grad for p in part.parameters() if p.grad is not None]
    return param_bytes(grads) if grads else None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor."""
    from torch.distributed.tensor import DTensor

    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
