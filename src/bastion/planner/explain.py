"""Why the winner wins: which plan fields and which predicted terms separate it from the runner-up."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.planner.search import RankedPlan
from bastion.specs.plan import ParallelPlan

#: time terms smaller than this share of the winner's step are not worth naming
NEGLIGIBLE_SHARE = 0.005

_SHORT = {"dp": "dp", "tp": "tp", "pp": "pp", "cp": "cp", "ep": "ep", "etp": "etp", "pipeline_layout": "layout",
          "zero_stage": "zero", "micro_batch": "mb",
          "vpp": "vpp", "recompute": "recompute", "sequence_parallel": "sp", "precision": "", "pp_schedule": "",
          "recompute_layers": "layers recomputed per chunk", "activation_offload": "layers offloaded per chunk"}


def describe(plan: ParallelPlan) -> str:
    """A one-line plan: `dp128 tp8 pp16 cp1 zero1 mb1 interleaved-1f1b×4 recompute=selective sp bf16` (with ep,
    etp and an uneven layout `layout=3,4,...,4,3` where the plan has them)."""
    parts = [f"dp{plan.dp}", f"tp{plan.tp}", f"pp{plan.pp}", f"cp{plan.cp}"]
    if plan.ep > 1:
        parts.append(f"ep{plan.ep}")
    if plan.etp > 1:
        parts.append(f"etp{plan.etp}")
    parts += [f"zero{plan.zero_stage}", f"mb{plan.micro_batch}"]
    if plan.pp > 1:
        parts.append(plan.pp_schedule + (f"×{plan.vpp}" if plan.vpp > 1 else ""))
    if plan.pipeline_layout:
        parts.append(f"layout={plan.pipeline_layout}")
    parts.append(f"recompute={plan.recompute}" + (f"({plan.recompute_layers}/chunk)" if plan.recompute_layers else ""))
    if plan.activation_offload:
        parts.append(f"offload={plan.activation_offload}/chunk")
    if plan.sequence_parallel:
        parts.append("sp")
    parts.append(plan.precision)
    return " ".join(parts)


@dataclass(frozen=True)
class TermDelta:
    term: str
    winner_s: float
    runner_up_s: float

    @property
    def delta_s(self) -> float:
        return self.winner_s - self.runner_up_s


@dataclass(frozen=True)
class Comparison:
    """winner − runner-up."""

    #: (field, winner value, runner-up value) for every plan field that differs
    plan_changes: list[tuple[str, object, object]]
    step_delta_s: float
    #: relative step-time advantage of the winner (0.05 = 5 % shorter step)
    advantage: float
    #: per-term time differences, largest first, negligible ones dropped
    terms: list[TermDelta]
    memory_delta_gib: float


def term_floor(step_s: float, step_delta_s: float) -> float:
    """Smallest term difference worth naming: 0.5 % of the step, or a tenth of the gap between the two plans
    when they are closer than that (so near-ties still name what moves), never rounding noise."""
    return max(1e-9 * step_s, min(NEGLIGIBLE_SHARE * step_s, 0.1 * abs(step_delta_s)))


def compare(winner: RankedPlan, runner_up: RankedPlan) -> Comparison:
    a, b = winner.plan.to_dict(), runner_up.plan.to_dict()
    changes = [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    ta, tb = winner.time_breakdown(), runner_up.time_breakdown()
    step_delta = winner.step_time_s - runner_up.step_time_s
    floor = term_floor(winner.step_time_s, step_delta)
    terms = [TermDelta(k, ta.get(k, 0.0), tb.get(k, 0.0)) for k in dict.fromkeys([*ta, *tb]) if k != "step"]
    terms = sorted((t for t in terms if abs(t.delta_s) > floor), key=lambda t: (-abs(t.delta_s), t.term))
    return Comparison(plan_changes=changes, step_delta_s=step_delta,
                      advantage=-step_delta / runner_up.step_time_s if runner_up.step_time_s else 0.0,
                      terms=terms, memory_delta_gib=winner.memory_gib - runner_up.memory_gib)


def explain(winner: RankedPlan, runner_up: RankedPlan, other: str = "the runner-up") -> str:
    """One paragraph: what differs from `other` and which predicted terms it moves."""
    c = compare(winner, runner_up)
    changes = ", ".join(f"{_SHORT.get(k) or k} {w} instead of {r}" for k, w, r in c.plan_changes) or "nothing"
    if winner.num_gpus != runner_up.num_gpus:
        changes = f"{winner.num_gpus} GPUs instead of {runner_up.num_gpus}; " + changes
    if abs(c.step_delta_s) <= NEGLIGIBLE_SHARE * winner.step_time_s:
        lead = (f"The winner and {other} are within {100 * NEGLIGIBLE_SHARE:.1f}% of each other "
                f"({winner.step_time_s:.4g} s vs {runner_up.step_time_s:.4g} s per step); they differ in: {changes}.")
    else:
        lead = (f"The winner's step is {abs(c.step_delta_s):.4g} s ({100 * abs(c.advantage):.1f}%) "
                f"{'shorter' if c.step_delta_s < 0 else 'longer'} than {other}'s; it differs in: {changes}.")
    lead += (f" Intervals (p10-p90): {winner.p10_s:.4g}-{winner.p90_s:.4g} s vs {runner_up.p10_s:.4g}-"
             f"{runner_up.p90_s:.4g} s.")
    if c.terms:
        moved = "; ".join(f"{t.term} {t.winner_s:.4g} s vs {t.runner_up_s:.4g} s ({t.delta_s:+.4g} s)"
                          for t in c.terms[:5])
        lead += f" Terms that differ: {moved}."
    else:
        lead += " No time term differs noticeably."
    if abs(c.memory_delta_gib) >= 0.05:
        lead += (f" It needs {abs(c.memory_delta_gib):.1f} GiB {'more' if c.memory_delta_gib > 0 else 'less'} "
                 f"memory per device ({winner.memory_gib:.1f} vs {runner_up.memory_gib:.1f} GiB).")
    return lead


def expert_placement_line(plan: RankedPlan) -> str:
    """The winner's expert placement in words ("" for a dense model or a plan without its Estimate)."""
    experts = getattr(plan.estimate, "experts", None)
    if not experts:
        return ""
    from bastion.predict.moe import placement_line

    return (f"{placement_line(experts['placement'])}; all-to-all {experts['all_to_all_s']:.4g} s "
            f"({100 * experts['all_to_all_share']:.1f}% of the step)")
