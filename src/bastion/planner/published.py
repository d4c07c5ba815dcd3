"""The planner against practice: for each published run, the experts' plan under the predictor versus the
planner's best plan for the same model, devices, batch and sequence length.

Two searches per run:
- `free`: the whole space (what bastion would recommend today);
- `same techniques`: only the ZeRO stage, recompute mode, sequence-parallel setting and context-parallel
  degree the publication used, and the classic 1F1B / interleaved schedules — so a large gain here cannot come from software the authors
  did not have, only from the degrees and micro-batch they chose (or from the predictor misjudging them).

Rows are read with the predictor's own case reader (bastion.predict.validate), so both sides see the same
model, cluster and plan, and the same software: the stack the publication ran (validate.row_software), for the
published plan and for the planner's search alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bastion.planner.search import PlanRequest, RankedPlan, search
from bastion.planner.space import SearchSpace
from bastion.specs.plan import ParallelPlan

#: a planner plan this much faster than the experts' (relative to the experts' predicted step) is a "claim"
CLAIM_THRESHOLD = 0.25


@dataclass
class PublishedComparison:
    case_id: str
    source_group: str
    model: str
    accelerator: str
    num_gpus: int
    published_plan: ParallelPlan
    #: the step the publication reports
    published_s: float
    #: the predictor's step for the published plan
    predicted_s: float
    published_fits: bool
    published_memory_gib: float
    #: best plan of the whole space and of the same-techniques space (None when nothing fits)
    free: RankedPlan | None
    same_techniques: RankedPlan | None

    @staticmethod
    def _gain(best: RankedPlan | None, predicted_s: float) -> float | None:
        return None if best is None else 1.0 - best.step_time_s / predicted_s

    @property
    def free_gain(self) -> float | None:
        """How much shorter the planner's best step is than the experts' predicted step (0.3 = 30 %)."""
        return self._gain(self.free, self.predicted_s)

    @property
    def same_techniques_gain(self) -> float | None:
        return self._gain(self.same_techniques, self.predicted_s)

    def to_dict(self) -> dict[str, Any]:
        def plan_of(p: RankedPlan | None) -> dict | None:
            return None if p is None else {"plan": p.plan.to_dict(), "step_time_s": p.step_time_s,
                                           "time_s": p.time_breakdown(), "memory_gib": p.memory_gib}
        return {"case_id": self.case_id, "source_group": self.source_group, "model": self.model,
                "accelerator": self.accelerator, "num_gpus": self.num_gpus,
                "published_plan": self.published_plan.to_dict(), "published_s": self.published_s,
                "predicted_s": self.predicted_s, "published_fits": self.published_fits,
                "published_memory_gib": self.published_memory_gib,
                "free_gain": self.free_gain, "same_techniques_gain": self.same_techniques_gain,
                "free_best": plan_of(self.free), "same_techniques_best": plan_of(self.same_techniques)}


def same_techniques_space(plan: ParallelPlan) -> SearchSpace:
    return SearchSpace(precisions=(plan.precision,), schedules=("1f1b", "interleaved-1f1b"),
                       pins={"zero_stage": plan.zero_stage, "recompute": plan.recompute,
                             "sequence_parallel": plan.sequence_parallel, "cp": plan.cp})


class PublishedRuns:
    """Compares rows of a case file; searches are shared between rows that ask the same question."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers
        self._searches: dict[tuple, RankedPlan | None] = {}

    def best(self, model: Any, cluster: Any, global_batch: int, space: SearchSpace,
             options: Any = None) -> RankedPlan | None:
        """The planner's best plan with the predictor's `options` (the bounds included)."""
        key = (model, cluster, global_batch, space.precisions, space.schedules, tuple(sorted(space.pins.items())),
               options)
        if key not in self._searches:
            # the fastest predicted plan: the comparison is of point predictions (the published plan is in the
            # space, so a search that found a slower one would not be exhaustive)
            result = search(PlanRequest(model=model, cluster=cluster, global_batch=global_batch,
                                        seq_len=model.seq_len, top_k=1, space=space, workers=self.workers,
                                        objective="time-median"),
                            options=options)
            self._searches[key] = result.plans[0] if result.plans else None
        return self._searches[key]

    def compare(self, row: dict[str, str], searches: tuple[str, ...] = ("free", "same")) -> PublishedComparison:
        """Raises bastion.predict.validate.RowSkipped when the row cannot be predicted."""
        from bastion.predict.validate import case_estimate, row_software

        # the published plan as `bastion validate` predicts it (its software and stated assumptions included)
        options, _ = row_software(row)
        _, chosen, model, cluster = case_estimate(row, options)
        batch = chosen.plan.global_batch
        free = (self.best(model, cluster, batch, SearchSpace(precisions=(chosen.plan.precision,)), options)
                if "free" in searches else None)
        same = (self.best(model, cluster, batch, same_techniques_space(chosen.plan), options)
                if "same" in searches else None)
        return PublishedComparison(
            case_id=row["case_id"], source_group=row.get("source_group", ""), model=model.name,
            accelerator=cluster.accelerator.name, num_gpus=cluster.num_gpus, published_plan=chosen.plan,
            published_s=float(row["iteration_time_s"]), predicted_s=chosen.step_time_s, published_fits=chosen.fits,
            published_memory_gib=chosen.memory.total / 2**30, free=free, same_techniques=same)
