"""Checks of a training request that run before any process or process group starts (no torch import).

Bad input (unknown model, a plan that does not match the model or the world size, a missing data directory)
must be reported as a guidance error by `bastion train` itself, not by N workers after a 15-second start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bastion.errors import BastionError, ConfigError, DataError, PlanError
from bastion.specs.model import ModelSpec, load_model
from bastion.specs.plan import ParallelPlan

if TYPE_CHECKING:
    from bastion.rundir.checkpoints import CheckpointInfo
    from bastion.runtime.resilience_config import ResilienceConfig


@dataclass(frozen=True)
class CheckedRequest:
    spec: ModelSpec
    plan: ParallelPlan
    data_meta: dict


def check_runtime_supports(spec: ModelSpec) -> None:
    """The runtime builds decoders (dense or mixture-of-experts) with RoPE or learned positions; say so early for
    anything else."""
    if spec.position_embedding == "alibi":
        raise ConfigError(f"model '{spec.name}' uses ALiBi, which the runtime does not implement.",
                          fix="use position_embedding = 'rope' or 'learned'.")


def check_runtime_executes(spec: ModelSpec, plan: ParallelPlan) -> None:
    """Refuse what the runtime does not execute, for every model, never silently ignored. For a mixture-of-experts
    model it executes ep (carved from dp × cp) with dp, ZeRO 0-3, pp, cp, tp and sp, the experts replicated over
    tp (etp = 1) or split in width over tp ranks (etp dividing tp), and Megatron-Core's parallel folding (ep
    groups folded over tp ranks when ep does not divide dp × cp, ParallelPlan.folds_experts) with any etp the plan
    validates, with or without sp; etp wider than tp without folding (the experts' width split over data-parallel
    ranks) is predicted and planned only."""
    refusal = runtime_refusal(spec, plan)
    if refusal is not None:
        raise refusal


def runtime_refusal(spec: ModelSpec, plan: ParallelPlan) -> BastionError | None:
    """Why `bastion train` would refuse a (valid) plan for this model, or None when the runtime executes it:
    `plan` and `estimate` mark such plans, so a user is never handed one `train` refuses without being told."""
    try:
        check_runtime_supports(spec)
    except ConfigError as refusal:
        return refusal
    if spec.tied_embeddings and (plan.pp > 1 or plan.tp > 1):
        return PlanError(f"{spec.name} ties its embedding and LM head; the runtime ties them only on a single "
                         f"stage without tensor parallelism.", fix="use pp = 1 and tp = 1 for this model.",
                         reason="runtime limitation")
    if spec.position_embedding == "learned" and plan.tp > 1:
        return PlanError("Tensor parallelism with learned position embeddings is not implemented.",
                         fix="use tp = 1 for this model, or a RoPE model.", reason="runtime limitation")
    if plan.folds_experts and spec.seq_len % plan.tp:  # under sp `validate` refuses it already
        return PlanError(f"ep = {plan.ep} is folded over the tp ranks, each routing its own 1/tp of every "
                         f"sequence, but tp = {plan.tp} does not divide seq_len {spec.seq_len}.",
                         fix="choose tp dividing the sequence length, or ep dividing dp × cp.",
                         reason="runtime limitation")
    if not plan.folds_experts and plan.tp % plan.etp:
        return PlanError(f"The runtime does not execute etp = {plan.etp} with tp = {plan.tp} when ep = {plan.ep} "
                         f"divides dp × cp = {plan.shard_degree}: it splits the experts' width over tp ranks "
                         f"only, etp dividing tp (the predictor and planner model any etp, Megatron-Core's "
                         f"parallel folding).",
                         fix=f"set etp = 1 or another divisor of tp = {plan.tp} in the plan to train it.",
                         hint="bastion plan ... --fix etp=1 finds the best plan the runtime executes.",
                         reason="runtime limitation")
    return None


def runtime_status(spec: ModelSpec, plan: ParallelPlan) -> dict[str, object]:
    """The `--json` entry of `plan` and `estimate` saying whether `bastion train` executes the plan: `executes`,
    and when it does not, `refusal` (the problem) and `fix`."""
    refusal = runtime_refusal(spec, plan)
    if refusal is None:
        return {"executes": True}
    return {"executes": False, "refusal": refusal.problem, "fix": refusal.fix}


def check_world_size(plan: ParallelPlan, world_size: int) -> None:
    if plan.num_gpus != world_size:
        raise PlanError(
            f"The plan needs dp × tp × pp × cp = {plan.dp} × {plan.tp} × {plan.pp} × {plan.cp} = {plan.num_gpus} "
            f"processes, but the world size is {world_size}.",
            fix=f"start {plan.num_gpus} processes (--nproc {plan.num_gpus}), or change the plan so the product "
                f"equals {world_size} (e.g. dp = {max(1, world_size // (plan.tp * plan.pp * plan.cp))}).",
            reason="degrees != devices")


def check_request(model: str, plan_path: str | ParallelPlan, data_dir: str | None, world_size: int | None, steps: int,
                  seq_len: int | None = None, evaluate: bool = False) -> CheckedRequest:
    """Everything `bastion train` can verify up front; raises a BastionError with guidance. `data_dir` None: the
    dataset is not visible here (a Kubernetes launch), its checks wait for the workers; else one dataset directory
    or a mixture (`A=0.7,B=0.3`), each with a held-out split when `evaluate`. `world_size` None: the plan's."""
    from bastion.runtime.data import parse_data_mixture

    spec = load_model(model, seq_len)
    check_runtime_supports(spec)
    plan = plan_path if isinstance(plan_path, ParallelPlan) else ParallelPlan.load(plan_path)
    plan.validate(spec, None, spec.seq_len)
    check_runtime_executes(spec, plan)
    check_world_size(plan, plan.num_gpus if world_size is None else world_size)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}.", fix="pass --steps N with N >= 1.")
    if data_dir is None:
        return CheckedRequest(spec=spec, plan=plan, data_meta={})
    if evaluate:
        check_eval_schedule(plan)
    metas = [_check_dataset(name, spec, evaluate) for name, _ in parse_data_mixture(data_dir)]
    return CheckedRequest(spec=spec, plan=plan, data_meta=metas[0])


def check_eval_schedule(plan: ParallelPlan) -> None:
    """torch's pipelining evaluates (`schedule.eval`, forward only) with every schedule but the V-shaped ones."""
    from bastion.specs.schedules import V_SHAPE, get_schedule

    if plan.pp > 1 and get_schedule(plan.pp_schedule).layout is V_SHAPE:
        raise ConfigError(f"--eval-every cannot run under pp_schedule '{plan.pp_schedule}': torch's V-shaped "
                          f"schedules need a backward pass (their forward-only `eval` fails).",
                          fix="use pp_schedule 1f1b, interleaved-1f1b, zero-bubble or gpipe for a run with "
                              "evaluation, or leave --eval-every out.")


def _check_dataset(data_dir: str, spec: ModelSpec, evaluate: bool) -> dict:
    from bastion.runtime.data import check_dataset_dir

    meta = check_dataset_dir(data_dir, spec.vocab_size)  # files agree with meta.json, ids inside the vocab
    if meta["vocab_size"] > spec.vocab_size:
        raise DataError(f"The dataset's vocabulary ({meta['vocab_size']} tokens) is larger than the model's "
                        f"({spec.vocab_size}).", fix="use a model whose vocab_size covers the tokenizer, "
                                                     "or re-tokenise the text.")
    held_out = int(meta.get("eval_tokens", 0))
    if meta["num_tokens"] - held_out < spec.seq_len + 1:
        raise DataError(f"The dataset {data_dir} has {meta['num_tokens'] - held_out} tokens to train on, fewer than "
                        f"one sequence of {spec.seq_len + 1}.", fix="prepare more text, or lower --seq-len.")
    if evaluate and held_out < spec.seq_len + 1:
        what = "no held-out split" if not held_out else f"a held-out split of {held_out} tokens, less than a sequence"
        raise DataError(f"--eval-every needs held-out samples, but the dataset {data_dir} has {what}.",
                        fix="prepare it with `bastion data prepare ... --eval-fraction 0.01` (or a larger "
                            "fraction), or leave --eval-every out.")
    return meta


def check_run_dir(run_dir: Path, resilience: ResilienceConfig, spec: ModelSpec, plan: ParallelPlan,
                  steps: int, data: str | None = None, seed: int = 0) -> CheckpointInfo | None:
    """The run directory can take this run (the one pre-check of `bastion train` and every `bastion launch`
    engine whose paths are visible here): a directory or nothing yet, not in use by a running run, with --no-resume
    free of another run's checkpoints (new ones would collide with them, and retention would delete them), and a
    resume source that fits the model and plan, whose sample order was drawn from `data` and `seed` (when given)
    and is not past --steps. Returns that source (None: a fresh start). Reads only; nothing is written (so a
    refused resume leaves the run directory as it was)."""
    from bastion.rundir import checkpoints as cf
    from bastion.rundir.layout import checkpoints_dir
    from bastion.rundir.lock import check_free
    from bastion.runtime.checkpoint_key import checkpoint_key
    from bastion.runtime.resume_source import preflight_resume

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory.",
                          fix="give a new directory (it is created) or an existing run directory to continue.")
    _check_creatable(run_dir)
    check_free(run_dir)
    existing = cf.committed(checkpoints_dir(run_dir))
    if not resilience.resume and existing:
        raise ConfigError(f"--no-resume, but {run_dir} already holds {len(existing)} checkpoint(s) of a run "
                          f"(newest: step {existing[-1].step}); starting over there would overwrite or delete them.",
                          fix="give a new --run-dir for a fresh start (--resume-from can seed it from this one), "
                              "or drop --no-resume to continue the run.")
    source = preflight_resume(run_dir, resilience.resume, resilience.resume_from, spec, plan,
                              key=checkpoint_key(resilience.checkpoint_key_file),
                              restart_from_scratch=resilience.restart_from_scratch)
    if source is not None and data is not None:
        _check_same_data(source, data, seed, spec, plan)
    if source is not None and source.step > steps:
        raise ConfigError(f"The run resumes from step {source.step} ({source.path}), past --steps {steps}: there is "
                          f"nothing to train.", fix=f"give --steps above {source.step} to continue the run, or a "
                                                   f"new --run-dir to start another.")
    if source is not None and source.step == steps and resilience.resume and not resilience.resume_from:
        raise ConfigError(f"The run in {run_dir} already reached --steps {steps} (its final checkpoint is "
                          f"{source.path}): there is nothing to train.",
                          fix=f"give --steps above {steps} to continue the run, or a new --run-dir to start "
                              f"another.")
    return source


def _check_same_data(source: CheckpointInfo, data: str, seed: int, spec: ModelSpec, plan: ParallelPlan) -> None:
    """The checkpoint's data position was drawn from this run's datasets, mixture weights and seed (the worker
    checks it again before loading; here it is refused before run_config.json is rewritten)."""
    from bastion.runtime.checkpoint import read_run_state
    from bastion.runtime.data import GlobalSampler, open_datasets

    saved = read_run_state(source.path).get("sampler")
    if isinstance(saved, dict):
        datasets, weights = open_datasets(data, spec.seq_len, spec.vocab_size)
        GlobalSampler(datasets, plan.global_batch, seed, weights).check_resumable(saved)


def _check_creatable(run_dir: Path) -> None:
    """An existing directory must be writable; a new one must have a directory it can be created in."""
    import os

    parent = run_dir
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--run-dir {run_dir} cannot be created: {parent} is a file.",
                          fix="give a run directory whose parent is a directory.")
    if not os.access(parent, os.W_OK | os.X_OK) or str(parent.resolve()).startswith(("/proc", "/sys")):
        raise ConfigError(f"--run-dir {run_dir} is not writable ({parent} refuses new files).",
                          fix="give a run directory in a place you can write.")
