"""Checks of a training request that run before any process or process group starts (no torch import).

Bad input (unknown model, a plan that does not match the model or the world size, a missing data directory)
must be reported as a guidance error by `bastion train` itself, not by N workers after a 15-second start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import ConfigError, DataError, PlanError
from bastion.specs.model import ModelSpec, load_model
from bastion.specs.plan import ParallelPlan


@dataclass(frozen=True)
class CheckedRequest:
    spec: ModelSpec
    plan: ParallelPlan
    data_meta: dict


def check_runtime_supports(spec: ModelSpec) -> None:
    """The runtime builds dense decoders with RoPE or learned positions; say so early for anything else."""
    if spec.num_experts:
        raise ConfigError(f"model '{spec.name}' is a mixture of experts; the runtime builds dense models only.",
                          fix="train a dense model (num_experts = 0); MoE is predicted but not executed.")
    if spec.position_embedding == "alibi":
        raise ConfigError(f"model '{spec.name}' uses ALiBi, which the runtime does not implement.",
                          fix="use position_embedding = 'rope' or 'learned'.")


def check_world_size(plan: ParallelPlan, world_size: int) -> None:
    if plan.ep != 1:
        raise PlanError(f"The runtime executes dp × tp × pp × cp plans; this plan has ep = {plan.ep}.",
                        fix="set ep = 1 (expert parallelism is predicted, not run).",
                        reason="ep not executed")
    if plan.num_gpus != world_size:
        raise PlanError(
            f"The plan needs dp × tp × pp × cp = {plan.dp} × {plan.tp} × {plan.pp} × {plan.cp} = {plan.num_gpus} "
            f"processes, but the world size is {world_size}.",
            fix=f"start {plan.num_gpus} processes (--nproc {plan.num_gpus}), or change the plan so the product "
                f"equals {world_size} (e.g. dp = {max(1, world_size // (plan.tp * plan.pp * plan.cp))}).",
            reason="degrees != devices")


def check_request(model: str, plan_path: str, data_dir: str, world_size: int, steps: int,
                  seq_len: int | None = None) -> CheckedRequest:
    """Everything `bastion train` can verify up front; raises a BastionError with guidance."""
    from bastion.runtime.data import check_dataset_dir

    spec = load_model(model, seq_len)
    check_runtime_supports(spec)
    plan = ParallelPlan.load(plan_path)
    plan.validate(spec, None, spec.seq_len)
    check_world_size(plan, world_size)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}.", fix="pass --steps N with N >= 1.")
    meta = check_dataset_dir(data_dir, spec.vocab_size)  # files agree with meta.json, ids inside the vocab
    if meta["vocab_size"] > spec.vocab_size:
        raise DataError(f"The dataset's vocabulary ({meta['vocab_size']} tokens) is larger than the model's "
                        f"({spec.vocab_size}).", fix="use a model whose vocab_size covers the tokenizer, "
                                                     "or re-tokenise the text.")
    if meta["num_tokens"] < spec.seq_len + 1:
        raise DataError(f"The dataset has {meta['num_tokens']} tokens, fewer than one sequence of "
                        f"{spec.seq_len + 1}.", fix="prepare more text, or lower --seq-len.")
    return CheckedRequest(spec=spec, plan=plan, data_meta=meta)
