"""Pipeline schedules: one registry entry per schedule, the single home of what bastion knows about each.

The plan checks (specs/plan.py), the predictor (predict/schedule.py), the planner's space (planner/space.py), the
CLI and the runtime (runtime/parallelize.py) all read `SCHEDULES`. An entry names the torch.distributed.pipelining
class that runs it as a string, so this module stays torch-free; the runtime resolves it with getattr.

Adding a schedule is one `register_schedule(PipelineSchedule(...))` call (below for the shipped ones, or from a
plugin or a test) — plus its class (a `PipelineScheduleSingle`/`PipelineScheduleMulti` subclass), if torch has
none for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bastion.errors import PlanError, did_you_mean


@dataclass(frozen=True)
class ChunkLayout:
    """How a schedule places the pp·vpp model chunks (chunk 0 holds the first layers) on the pipeline ranks."""

    #: smallest vpp (model chunks per rank) the schedule runs with pp > 1
    min_vpp: int
    #: largest vpp, None = no limit
    max_vpp: int | None
    #: rank r holds chunks r and 2·pp-1-r (a V: rank 0 holds the first and the last chunk); else r, r+pp, ...
    v_shape: bool
    #: the vpp error, formatted with the schedule's `name` and the plan's `vpp`, and how to fix it
    vpp_problem: str
    vpp_fix: str

    def allows(self, vpp: int) -> bool:
        return vpp >= self.min_vpp and (self.max_vpp is None or vpp <= self.max_vpp)


#: one chunk per rank (vpp = 1)
ONE_CHUNK = ChunkLayout(min_vpp=1, max_vpp=1, v_shape=False,
                        vpp_problem="{name} runs one chunk per rank; vpp must be 1, got {vpp}.",
                        vpp_fix="set vpp = 1, or use interleaved-1f1b for several chunks.")
#: vpp >= 2 chunks per rank, round robin: rank r holds r, r + pp, r + 2·pp, ...
INTERLEAVED = ChunkLayout(min_vpp=2, max_vpp=None, v_shape=False,
                          vpp_problem="{name} needs vpp >= 2 model chunks per pipeline rank.",
                          vpp_fix="set vpp to 2 or more, or use pp_schedule 1f1b.")
#: exactly two chunks per rank in a V
V_SHAPE = ChunkLayout(min_vpp=2, max_vpp=2, v_shape=True,
                      vpp_problem="{name} places exactly two chunks per rank (a V), so vpp must be 2.",
                      vpp_fix="set vpp = 2.")


#: (pp, vpp, micro-batches) -> idle time of a pipeline rank as a fraction of its busy time; called with pp > 1
BubbleFormula = Callable[[int, int, int], float]
#: (pp, vpp, micro-batches, stage) -> chunk-microbatches (one model chunk's activations for one micro-batch) whose
#: activations pipeline rank `stage` keeps for backward at its peak; called with pp > 1
InFlightFormula = Callable[[int, int, int, int], int]


@dataclass(frozen=True)
class PipelineSchedule:
    """What bastion knows about one pipeline schedule."""

    #: the `pp_schedule` value of a plan
    name: str
    #: class that runs it: a name in torch.distributed.pipelining, or `package.module.Class` (the runtime imports it)
    torch_class: str
    #: which model chunks each pipeline rank holds, and the vpp it allows
    layout: ChunkLayout
    bubble: BubbleFormula
    #: how the bubble is modelled, with its source (stated in estimates)
    bubble_note: str
    chunk_microbatches_in_flight: InFlightFormula
    #: the runtime needs the micro-batch count to be a multiple of pp
    microbatches_multiple_of_pp: bool = False
    #: oldest torch whose pipelining module runs it (the runtime requires 2.11)
    min_torch: str = "2.11"
    #: oldest torch that runs it on CPU/gloo, when that is newer than `min_torch`
    min_torch_cpu: str = ""

    def check_vpp(self, pp: int, vpp: int) -> None:
        """Raise PlanError when the schedule cannot run vpp chunks per rank. With pp = 1 only a one-chunk schedule
        names its own rule; the others leave it to the plan's "vpp > 1 needs pipeline parallelism"."""
        if self.layout.allows(vpp) or (pp == 1 and self.layout.max_vpp != 1):
            return
        raise PlanError(self.layout.vpp_problem.format(name=self.name, vpp=vpp), fix=self.layout.vpp_fix,
                        reason="bad vpp")

    def chunks_of_stage(self, pp: int, vpp: int, stage: int) -> list[int]:
        """Which model chunks (0 = first layers) pipeline rank `stage` holds; there are pp·vpp chunks."""
        if self.layout.v_shape and pp > 1:
            return [stage, 2 * pp - 1 - stage]
        return [stage + k * pp for k in range(vpp)]

    def torch_needed(self, device_type: str) -> str:
        """The oldest torch that runs this schedule on a device of `device_type` ("cpu", "cuda")."""
        if device_type == "cpu" and self.min_torch_cpu and _version(self.min_torch_cpu) > _version(self.min_torch):
            return self.min_torch_cpu
        return self.min_torch

    def refusal(self, torch_version: str, device_type: str) -> PlanError | None:
        """Why the runtime cannot run this schedule on `torch_version` (torch.__version__) and a device of
        `device_type`, or None when it can."""
        needed = self.torch_needed(device_type)
        if _version(torch_version) >= _version(needed):
            return None
        # a refusal beats a crash of every rank; it names the two newest schedules that do run here
        runnable = [s.name for s in SCHEDULES.values()
                    if _version(torch_version) >= _version(s.torch_needed(device_type))]
        where = "on CPU/gloo " if needed != self.min_torch else ""
        return PlanError(f"pp_schedule '{self.name}' fails {where}with torch {torch_version}.",
                         fix=f"use {' or '.join(runnable[-2:]) or 'pp = 1'} here, or torch >= {needed}.",
                         reason="schedule unavailable")


#: every schedule, by name, in the order the planner tries them
SCHEDULES: dict[str, PipelineSchedule] = {}
#: the schedule of a plan that names none (and the canonical one when pp = 1)
DEFAULT_SCHEDULE = "1f1b"


def register_schedule(entry: PipelineSchedule) -> PipelineSchedule:
    """Add a schedule to the registry; a name is registered once."""
    if entry.name in SCHEDULES:
        raise ValueError(f"pipeline schedule '{entry.name}' is already registered")
    SCHEDULES[entry.name] = entry
    return entry


def schedule_names() -> tuple[str, ...]:
    return tuple(SCHEDULES)


def get_schedule(name: str) -> PipelineSchedule:
    """The registry entry of `name`, or a PlanError naming the known ones."""
    if name not in SCHEDULES:
        raise PlanError(f"Unknown pp_schedule '{name}'.{did_you_mean(name, SCHEDULES)}",
                        fix=f"use one of {', '.join(SCHEDULES)}.", reason="bad field")
    return SCHEDULES[name]


def schedule_for_vpp(vpp: int) -> str:
    """The schedule a plan runs when it gives vpp but no schedule: the default, or the first that interleaves."""
    if vpp <= 1:
        return DEFAULT_SCHEDULE
    return next(s.name for s in SCHEDULES.values() if s.layout is INTERLEAVED)


def chunks_of_stage(schedule: str, pp: int, vpp: int, stage: int) -> list[int]:
    """Which model chunks (0 = first layers) pipeline rank `stage` holds under `schedule`."""
    return SCHEDULES[schedule].chunks_of_stage(pp, vpp, stage)


def _version(text: str) -> tuple[int, int]:
    """(major, minor) of a version such as "2.13.0+cpu"."""
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int(minor)


# ---- the shipped schedules -------------------------------------------------------------------------------
def _one_f_one_b_in_flight(pp: int, vpp: int, m: int, stage: int) -> int:
    return min(pp - stage, m)  # warm-up: stage i holds p - i micro-batches


def _interleaved_in_flight(pp: int, vpp: int, m: int, stage: int) -> int:
    # Megatron's interleaved schedule warms up (p - i - 1)·2 + (v - 1)·p chunk-microbatches, plus one
    return min(m * vpp, (pp - stage - 1) * 2 + (vpp - 1) * pp + 1)


register_schedule(PipelineSchedule(
    name="gpipe", torch_class="ScheduleGPipe", layout=ONE_CHUNK,
    bubble=lambda pp, vpp, m: (pp - 1) / m, bubble_note="GPipe bubble (p-1)/m",
    chunk_microbatches_in_flight=lambda pp, vpp, m, stage: m))  # all forwards before any backward
register_schedule(PipelineSchedule(
    name="1f1b", torch_class="Schedule1F1B", layout=ONE_CHUNK,
    bubble=lambda pp, vpp, m: (pp - 1) / m, bubble_note="1F1B bubble (p-1)/m (Narayanan et al. 2021)",
    chunk_microbatches_in_flight=_one_f_one_b_in_flight))
register_schedule(PipelineSchedule(
    name="interleaved-1f1b", torch_class="ScheduleInterleaved1F1B", layout=INTERLEAVED,
    bubble=lambda pp, vpp, m: (pp - 1) / (vpp * m),
    bubble_note="interleaved 1F1B bubble (p-1)/(v*m) (Narayanan et al. 2021)",
    chunk_microbatches_in_flight=_interleaved_in_flight, microbatches_multiple_of_pp=True))
register_schedule(PipelineSchedule(
    name="zero-bubble", torch_class="ScheduleInterleavedZeroBubble", layout=ONE_CHUNK,
    bubble=lambda pp, vpp, m: (pp - 1) / (3 * m),
    bubble_note="ZB-H1 bubble (p-1)/(3m): F, B and W taken as equal thirds (Qi et al. 2024)",
    chunk_microbatches_in_flight=_one_f_one_b_in_flight))  # ZB-H1 keeps 1F1B's memory
register_schedule(PipelineSchedule(
    name="zbv", torch_class="ScheduleZBVZeroBubble", layout=V_SHAPE,
    bubble=lambda pp, vpp, m: (pp - 1) / (6 * m),
    bubble_note="ZB-V bubble taken as (p-1)/(6m): half of ZB-H1, near zero as published (Qi et al. 2024)",
    # ZB-V keeps 1F1B's peak, p micro-batches of a stage (two chunks each), on every rank (Qi et al. 2024, Table 3)
    chunk_microbatches_in_flight=lambda pp, vpp, m, stage: min(pp, m) * vpp,
    # torch 2.11 + gloo: "Pair is not connected" in the first step (benchmarks/results/equivalence_torch211.json)
    min_torch_cpu="2.13"))
register_schedule(PipelineSchedule(
    name="dualpipev", torch_class="ScheduleDualPipeV", layout=V_SHAPE,
    bubble=lambda pp, vpp, m: (pp - 1) / (6 * m),
    bubble_note="DualPipeV bubble taken as (p-1)/(6m), like ZB-V (DeepSeek-V3 report)",
    # DualPipe(V): activations of PP + 1 micro-batches of a stage (DeepSeek-V3 report, Table 2)
    chunk_microbatches_in_flight=lambda pp, vpp, m, stage: min(pp + 1, m) * vpp,
    # torch 2.11 + gloo: "Pair is not connected" in the first step (benchmarks/results/equivalence_torch211.json)
    min_torch_cpu="2.13"))
