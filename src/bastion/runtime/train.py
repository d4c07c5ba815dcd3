"""The training loop of one worker: steps, metrics, fault tolerance and the run summary around a `Trainer`.

`train(config)` works inside an existing process group, so a test can run several plans in one launch; a
launched worker enters through `run_worker` (runtime/worker.py). The step itself (AdamW, warmup + cosine,
global-norm clipping, gradient accumulation) is runtime/trainer.py and runtime/optim.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bastion.rundir.layout import write_run_files
from bastion.rundir.metrics import MetricsWriter, log_event
from bastion.rundir.summary import eval_summary, perplexity
from bastion.runtime.faults import node_back_at, parse_fault
from bastion.runtime.health import leave_out_failing_devices, run_health_check
from bastion.runtime.mesh import build_mesh
from bastion.runtime.metrics import current_memory_bytes, model_flops_per_token, model_state_bytes_measured
from bastion.runtime.preemption import PreemptionNotice
from bastion.runtime.replicas import StepNotCommitted
from bastion.runtime.resilience import BadStep, Resilience
from bastion.runtime.run_logs import StepProfiler, TensorBoardLog
from bastion.runtime.run_summary import peak_flops, write_run_summary
from bastion.runtime.stragglers import StragglerReporter
from bastion.runtime.train_config import TrainConfig, profile_steps
from bastion.runtime.trainer import Trainer
from bastion.specs.plan import ParallelPlan


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


def _predicted_step_s(config: TrainConfig, spec: Any, plan: ParallelPlan, cluster_name: str | None) -> float | None:
    """The predictor's step time, for TensorBoard (computed only when it is asked for)."""
    if not config.tensorboard:
        return None
    from bastion.rundir.predicted import predicted_figures

    return predicted_figures(spec, plan, cluster_name, spec.seq_len, compiled=config.compile,
                             fp8_recipe=config.fp8_recipe).get("step_time_s")


def _evaluate(trainer: Trainer, run_dir: Path, rank: int) -> dict[str, Any]:
    """Held-out loss after the trainer's current step (collective); rank 0 logs the `eval` record."""
    start = time.perf_counter()
    loss = trainer.evaluate()
    result = {"step": trainer.step, "eval_loss": loss, "perplexity": perplexity(loss),
              "samples": trainer.config.eval_batches * trainer.plan.global_batch,
              "eval_time_s": round(time.perf_counter() - start, 6)}
    if rank == 0:
        log_event(run_dir, "eval", **result)
    return result


def train(config: TrainConfig) -> dict[str, Any]:
    """Run `config.steps` optimizer steps in the current process group; returns summary.json's content (rank 0)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    spec, plan = config.resolved_model(), config.resolved_plan()
    plan.validate(spec, None, spec.seq_len)
    rmesh = build_mesh(plan, device)
    run_dir = Path(config.run_dir)
    grouped = config.replica_groups > 1  # --fault-tolerance torchft: the launcher wrote the run's plan files
    if rank == 0 and not grouped:
        write_run_files(run_dir, spec, plan)
    trainer = Trainer(config, spec, plan, rmesh)
    # the trainer is the state resilience checkpoints and restores (Stateful); its step hooks come per call
    resilience = Resilience(config.resilience, run_dir, trainer, spec, plan,
                            replica_group=config.replica_group if grouped else None,
                            replica_groups=config.replica_groups)
    resilience.start()
    if config.init_from and trainer.step == 0:  # a fresh run: resumed runs hold their own weights
        from bastion.runtime.hf_weights import load_hf_weights

        load_hf_weights(trainer.model.parts, config.init_from)
    preemption = PreemptionNotice().install()  # SIGTERM: checkpoint after the current step, stop
    writer = MetricsWriter(run_dir, enabled=rank == 0)
    cluster_name = _cluster_name(config, device, world)
    # every process start (the first, each restart) checks the group it got before spending a step on it
    failing = run_health_check(run_dir, cluster_name, device, resilience.attempt, resilience.before_collective,
                               cluster_named=bool(config.cluster), injected_problem=resilience.injected_gpu_problem())
    leave_out_failing_devices(failing, under_slurm="SLURM_JOB_ID" in os.environ)
    if grouped:  # after the health check's collectives: the lighthouse then finds the group ready to step
        from bastion.runtime.replicas import ReplicaGroups

        group_ranks = range(config.replica_group * world, (config.replica_group + 1) * world)
        back_at = node_back_at([parse_fault(s) for s in config.resilience.inject], run_dir, group_ranks)
        replicas = ReplicaGroups(config.replica_group, config.replica_groups, trainer, run_dir, back_at,
                                 resume_from_disk=resilience.resume_from_disk, restarted_at=resilience.restarted_at)
        trainer.replicas = replicas
        resilience.leads = lambda: replicas.leads  # one group writes; all hold the same state
        resilience.agree = replicas.agree  # one verdict on a bad step for every group
    peak = peak_flops(cluster_name, plan.precision, device)
    tokens_per_step = plan.global_batch * spec.seq_len
    flops_per_step = model_flops_per_token(spec, spec.seq_len) * tokens_per_step
    progress = _progress(config.progress and rank == 0, config.steps)
    board = TensorBoardLog(run_dir, config.tensorboard and rank == 0,
                           predicted_step_s=_predicted_step_s(config, spec, plan, cluster_name),
                           restarts=resilience.attempt)
    profiler = StepProfiler(run_dir, profile_steps(config.profile), rank, device)
    stragglers = StragglerReporter(config, spec, plan, run_dir) if rank == 0 and not config.replica_group else None
    records: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    model_state = None
    wall_start = time.perf_counter()
    try:
        while trainer.step < config.steps and not resilience.should_stop(trainer.step):
            resilience.before_step(trainer.step + 1, trainer.sampler)
            profiler.before_step(trainer.step + 1)
            try:
                record = trainer.train_step(hooks=resilience)
            except StepNotCommitted:  # a replica group failed during the step: the same batch again
                continue
            except BadStep as bad:
                trainer.optimizer.zero_grad(set_to_none=True)  # the update is never applied: drop its gradients
                resilience.rollback(bad)
                records = [r for r in records if r["step"] <= trainer.step]
                evals = [e for e in evals if e["step"] <= trainer.step]
                continue
            record["time"] = time.time()
            if model_state is None:  # after the first step every gradient and moment exists
                model_state = model_state_bytes_measured(trainer.model.parameters(), trainer.optimizer)
                if trainer.params_in_step_bytes is not None:
                    model_state["params_at_rest"] = model_state["params"]
                    model_state["params"] = trainer.params_in_step_bytes
                if trainer.grads_in_step_bytes is not None:
                    model_state["grads_at_rest"] = model_state["grads"]
                    model_state["grads"] = trainer.grads_in_step_bytes
            step_time = record["step_time_s"]
            record["tokens_per_s"] = tokens_per_step / step_time
            record["mfu"] = flops_per_step / (step_time * world * peak) if peak else None
            record["mem_gib"] = current_memory_bytes(device) / 2**30
            if rank == 0:
                record["sample_ids"] = [trainer.last_sample_ids[0], trainer.last_sample_ids[-1] + 1]
            if trainer.replicas is None or trainer.replicas.leads:  # one group writes each step
                writer.write(record)
            board.step(record)
            profiler.after_step(trainer.step)
            records.append(record)
            if stragglers is not None:
                stragglers.observe(record)
            preemption.stop_here_if_asked(resilience, trainer.step)
            resilience.after_step(record, last=trainer.step >= config.steps)
            if config.eval_every and (trainer.step % config.eval_every == 0 or trainer.step >= config.steps):
                evals.append(_evaluate(trainer, run_dir, rank))
                board.evaluation(evals[-1])
            if progress is not None:
                progress.update(progress.task_ids[0], completed=trainer.step,
                                info=f"loss {record['loss']:.4f}  {record['tokens_per_s']:.0f} tok/s")
    finally:
        if progress is not None:
            progress.stop()
        writer.close()
        board.close()
        profiler.close()
    wall = time.perf_counter() - wall_start
    fault_tolerance = resilience.finish()
    if rank == 0:
        fault_tolerance = {**fault_tolerance, **eval_summary(evals)}
    if trainer.replicas is None:
        return write_run_summary(config, trainer, spec, plan, rmesh, records, model_state, cluster_name, wall,
                                 fault_tolerance)
    return finish_replica_group(config, trainer, spec, plan, rmesh, records, model_state, cluster_name, wall,
                                fault_tolerance)


def finish_replica_group(config: TrainConfig, trainer: Trainer, spec: Any, plan: ParallelPlan, rmesh: Any,
                         records: list[dict[str, Any]], model_state: dict[str, int] | None,
                         cluster_name: str | None, wall: float, fault_tolerance: dict[str, Any]) -> dict[str, Any]:
    """The end of a replica group's run: every group's rank 0 writes its own record (steps, final parameters'
    hash) under RUN_DIR/replica_groups/; the leading group's writes summary.json, with the run's plan and the
    `replica_groups` section."""
    from bastion.rundir.layout import replica_group_path
    from bastion.runtime.replicas import replica_summary

    replicas = trainer.replicas
    assert replicas is not None
    leads = replicas.leads
    replicas.shutdown()
    groups = config.replica_groups
    run_plan = dataclasses.replace(plan, dp=plan.dp * groups, global_batch=plan.global_batch * groups)
    extra = {**fault_tolerance, "replica_groups": replica_summary(Path(config.run_dir), groups,
                                                                  run_plan.global_batch)} if leads else {}
    summary = write_run_summary(config, trainer, spec, run_plan, rmesh, records, model_state, cluster_name, wall,
                                extra, write=leads)
    if dist.get_rank() == 0:
        path = replica_group_path(Path(config.run_dir), config.replica_group)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"group": config.replica_group, "steps": trainer.step,
                                    "params_sha256": summary.get("params_sha256"), "restarts": int(
                                        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}) + "\n")
    return summary if leads else {}


