"""The plan space: every ParallelPlan the planner considers, as a tree of choices.

Choices are made coarse to fine — parallel degrees, pipeline schedule, micro-batch/precision/sequence
parallelism, then ZeRO stage × recompute — and each inner node is checked with `ParallelPlan.validate` on a
representative plan. A node that fails is not expanded: every plan under it fails the same check, so the census
adds the size of the whole subtree under that reason. Only valid leaves reach the predictor.

Canonical forms keep equal plans from being counted twice: with pp = 1 the schedule is irrelevant and only
`1f1b`/vpp 1 is listed; with tp = 1 sequence parallelism does nothing and only `off` is listed; with dp = 1
there is nothing to shard, so only the lowest allowed ZeRO stage is listed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from bastion.errors import ConfigError, PlanError
from bastion.specs.hardware import Cluster
from bastion.specs.model import ModelSpec
from bastion.specs.plan import (
    RECOMPUTE_MODES,
    ParallelPlan,
    chunk_layer_counts,
    expert_grid,
    parse_layout,
    uneven_layout,
)
from bastion.specs.schedules import DEFAULT_SCHEDULE, SCHEDULES, schedule_names

#: plan fields a user may pin with `--fix FIELD=VALUE`
PINNABLE = ("dp", "tp", "pp", "cp", "ep", "etp", "zero_stage", "micro_batch", "pp_schedule", "vpp", "recompute",
            "sequence_parallel", "precision", "recompute_layers", "activation_offload")

#: partial full recompute the planner tries besides recomputing every layer: these shares of each pipeline
#: chunk's layers recomputed whole (Megatron's --recompute-num-layers), the rest keeping their activations. Few,
#: because each is one more prediction per plan; the planner picks the least recompute that fits.
PARTIAL_RECOMPUTE_SHARES = (0.5,)
#: activation offload the planner tries on an accelerator with a host link: this share of each chunk's layers,
#: under no recompute (what offloading replaces: it keeps the activations instead of recomputing them)
OFFLOAD_SHARES = (0.5,)


class MemoryChoice(NamedTuple):
    """How a plan saves activation memory: its recompute mode, the layers per chunk recomputed whole under
    "full" (0 = all) and the layers per chunk whose activations go to host memory."""

    recompute: str
    recompute_layers: int = 0
    activation_offload: int = 0


@dataclass(frozen=True)
class SearchSpace:
    """What the planner may vary. Each tuple lists the allowed values; `pins` narrows any plan field to one
    value (plans with another value are outside the space, not rejected)."""

    #: ZeRO stages to try
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    #: activation recomputation modes to try
    recompute: tuple[str, ...] = RECOMPUTE_MODES
    #: pipeline schedules to try when pp > 1 (default: every registered one)
    schedules: tuple[str, ...] = field(default_factory=schedule_names)
    #: matmul precisions the user allows (an accelerator without fp8 units rejects fp8 plans)
    precisions: tuple[str, ...] = ("bf16",)
    #: sequence parallelism settings to try when tp > 1
    sequence_parallel: tuple[bool, ...] = (False, True)
    #: field -> required value, from `--fix`
    pins: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.pins) - set(PINNABLE)
        if unknown:
            raise ConfigError(f"Cannot pin plan field(s) {', '.join(sorted(unknown))}.",
                              fix=f"pin one of: {', '.join(PINNABLE)}.")

    def allows(self, name: str, value: Any) -> bool:
        return name not in self.pins or self.pins[name] == value

    def allowed(self, name: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(v for v in values if self.allows(name, v))


class Leaf(NamedTuple):
    """A statically valid plan skeleton: everything except zero_stage and recompute, which are crossed in
    at the leaf (neither can make a plan invalid). A named tuple: the planner makes one per leaf of a space of
    millions of plans, and a tuple is built several times faster than a frozen dataclass."""

    dp: int
    tp: int
    pp: int
    cp: int
    ep: int
    pp_schedule: str
    vpp: int
    micro_batch: int
    precision: str
    sequence_parallel: bool
    #: ZeRO stages to cross in (one when dp = 1)
    zero_stages: tuple[int, ...] = (0,)
    #: expert tensor parallelism (1: experts whole; tp: split like the attention; expert_options says between)
    etp: int = 1
    #: per-chunk layer counts when the layers do not split evenly (uneven_layout), else ""
    pipeline_layout: str = ""

    def plan(self, global_batch: int, zero_stage: int = 0, recompute: str | MemoryChoice = "none") -> ParallelPlan:
        choice = MemoryChoice(recompute) if isinstance(recompute, str) else recompute
        return ParallelPlan(dp=self.dp, tp=self.tp, pp=self.pp, cp=self.cp, ep=self.ep, zero_stage=zero_stage,
                            micro_batch=self.micro_batch, global_batch=global_batch,
                            pp_schedule=self.pp_schedule, vpp=self.vpp, recompute=choice.recompute,
                            sequence_parallel=self.sequence_parallel, precision=self.precision, etp=self.etp,
                            pipeline_layout=self.pipeline_layout, recompute_layers=choice.recompute_layers,
                            activation_offload=choice.activation_offload)


def memory_choices(space: SearchSpace, model: ModelSpec, cluster: Cluster, pp: int, vpp: int
                   ) -> tuple[MemoryChoice, ...]:
    """The recompute / offload combinations the planner tries for plans with pp × vpp chunks: each allowed
    recompute mode; partial full recompute (PARTIAL_RECOMPUTE_SHARES of a chunk's layers) when "full" is
    allowed; and, where the accelerator has a host link, offloading OFFLOAD_SHARES of a chunk's layers under no
    recompute. A chunk of one layer has nothing to split; a pinned recompute_layers / activation_offload is tried
    as given."""
    return _memory_choices(space.allowed("recompute", space.recompute), model.num_layers, pp * vpp,
                           cluster.accelerator.host_link_gbs > 0, space.pins.get("recompute_layers"),
                           space.pins.get("activation_offload"))


@lru_cache(maxsize=4096)
def _memory_choices(modes: tuple[str, ...], num_layers: int, chunks: int, host_link: bool,
                    pinned_layers: int | None, pinned_offload: int | None) -> tuple[MemoryChoice, ...]:
    # the even split, else the uneven layout the enumeration gives these chunks
    counts = chunk_layer_counts(num_layers, chunks) or parse_layout(uneven_layout(num_layers, chunks))
    per_chunk = max(counts) if counts else 1

    def layers(pinned: int | None, shares: tuple[float, ...]) -> list[int]:
        if pinned is not None:
            return [pinned] if pinned > 0 else []
        return sorted({min(per_chunk - 1, max(1, round(share * per_chunk))) for share in shares})

    choices = [MemoryChoice(mode) for mode in modes]
    if per_chunk > 1:
        if "full" in modes:
            choices += [MemoryChoice("full", r) for r in layers(pinned_layers, PARTIAL_RECOMPUTE_SHARES)]
        if host_link and "none" in modes:
            choices += [MemoryChoice("none", 0, o) for o in layers(pinned_offload, OFFLOAD_SHARES)]
    return tuple(c for c in choices if pinned_layers in (None, c.recompute_layers)
                 and pinned_offload in (None, c.activation_offload))


@dataclass
class Enumeration:
    """Valid leaves of one GPU count, and the census of plans rejected before any prediction."""

    cluster: Cluster
    leaves: list[Leaf]
    rejected: Counter[str]
    #: reason -> how to fix it (from the first plan rejected for that reason)
    fixes: dict[str, str]
    #: plans in the space (valid or not) = Σ leaves' zero stages × memory choices + sum(rejected)
    total: int


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def factorisations(num_gpus: int) -> Iterator[tuple[int, int, int, int]]:
    """Every ordered (dp, tp, pp, cp) with dp·tp·pp·cp = num_gpus, in a fixed order."""
    for tp in divisors(num_gpus):
        for pp in divisors(num_gpus // tp):
            for cp in divisors(num_gpus // (tp * pp)):
                yield num_gpus // (tp * pp * cp), tp, pp, cp


def schedule_options(pp: int, num_layers: int, space: SearchSpace) -> list[tuple[str, int]]:
    """(schedule, vpp) pairs to try for a pipeline degree: each vpp the schedule's layout allows — for a layout
    without an upper limit (interleaved), every one from its minimum that splits the layers evenly (uneven layouts
    are searched for the schedules with a fixed number of chunks only: one, or the V's two — an interleaved
    schedule's many chunk counts would multiply the space for little gain)."""
    if pp == 1:
        options = [(DEFAULT_SCHEDULE, 1)]
    else:
        options = []
        for name in space.schedules:
            layout = SCHEDULES[name].layout
            if layout.max_vpp is None:
                vpps = [v for v in range(layout.min_vpp, num_layers // pp + 2)
                        if chunk_layer_counts(num_layers, pp * v)]
                options += [(name, v) for v in vpps]
                if not vpps:
                    options.append((name, layout.min_vpp))  # listed so that the census names why it cannot run
            else:
                options += [(name, v) for v in range(layout.min_vpp, layout.max_vpp + 1)]
    return [(s, v) for s, v in options if space.allows("pp_schedule", s) and space.allows("vpp", v)]


def expert_options(model: ModelSpec, dp: int, tp: int, cp: int, space: SearchSpace) -> list[tuple[int, int]]:
    """(ep, etp) pairs to try for one factorisation: ep among the divisors of the expert count, etp from 1 to tp,
    whose grid etp × ep × expert-dp fits the tp × dp × cp ranks of a pipeline stage (ParallelPlan.validate's
    rule). ep need not divide dp × cp: wider ep groups fold over tensor-parallel ranks (Megatron-Core's parallel
    folding, ParallelPlan.folds_experts). Between 1 and tp, an etp that divides the expert width and that
    bastion's runtime executes (dividing tp, or any where the groups fold: runtime/preflight.py) — the planner
    searches the layouts `train` runs. etp wider than tp, and a pinned etp the runtime refuses, are searched only
    when pinned (such plans are marked as not executed). A pinned ep or etp is tried as given, so that `validate`
    names what is wrong with it (the census counts it) instead of the space dropping it silently."""
    stage_ranks = tp * dp * cp
    # the pins with the other field at 1: kept even when its grid does not fit, so validate says why
    pinned = (space.pins.get("ep", 1), space.pins.get("etp", 1))
    eps, etps = [1], [1]
    if model.num_experts:
        eps = [e for e in divisors(stage_ranks) if model.num_experts % e == 0]
        etps = [t for t in range(1, tp + 1) if t in (1, tp) or model.expert_width % t == 0]
    eps = [space.pins["ep"]] if "ep" in space.pins else eps
    etps = [space.pins["etp"]] if "etp" in space.pins else etps

    def searched(ep: int, etp: int) -> bool:
        if stage_ranks % (ep * etp):
            return False
        return "etp" in space.pins or tp % etp == 0 or expert_grid(dp * cp, tp, ep, etp)[1]

    return [(ep, etp) for ep in eps for etp in etps if searched(ep, etp) or (ep, etp) == pinned]


def _validate(plan_fields: dict[str, Any], model: ModelSpec, cluster: Cluster, seq_len: int,
              fixes: dict[str, str]) -> str | None:
    """None when the (representative) plan is valid, else the PlanError's reason (its fix is kept)."""
    try:
        ParallelPlan(**plan_fields).validate(model, cluster, seq_len)
    except PlanError as exc:
        fixes.setdefault(exc.reason, exc.fix or exc.problem)
        return exc.reason
    return None


def enumerate_space(model: ModelSpec, cluster: Cluster, global_batch: int, seq_len: int,
                    space: SearchSpace) -> Enumeration:
    """All valid leaves for `cluster.num_gpus` devices, and a census of the invalid plans by reason."""
    rejected: Counter[str] = Counter()
    fixes: dict[str, str] = {}
    leaves: list[Leaf] = []
    all_zeros = space.allowed("zero_stage", space.zero_stages)
    precisions = space.allowed("precision", space.precisions)
    total = 0

    def micro_options(dp: int) -> list[int]:
        per_replica = global_batch // dp if global_batch % dp == 0 else 1
        return [m for m in divisors(per_replica) if space.allows("micro_batch", m)]

    def sp_options(tp: int) -> tuple[bool, ...]:
        if tp > 1 and model.num_experts:
            # an MoE layer routes each tp rank's own sequence-parallel slice of the tokens (Megatron-LM refuses
            # expert parallelism with tensor parallelism but without sequence parallelism; predict/moe.py costs
            # that layout), so only `on` is searched
            return space.allowed("sequence_parallel", (True,))
        return space.allowed("sequence_parallel", space.sequence_parallel if tp > 1 else (False,))

    def passing(base: dict[str, Any], name: str, choices: tuple[Any, ...], weight: int,
                census: Counter[str]) -> list[Any]:
        """The `choices` for plan field `name` that pass validation on top of `base`; each failing one adds the
        `weight` plans under it to `census`."""
        ok = []
        for value in choices:
            reason = _validate({**base, name: value}, model, cluster, seq_len, fixes)
            if reason:
                census[reason] += weight
            else:
                ok.append(value)
        return ok

    def below_degrees(degrees: dict[str, Any], base: dict[str, Any], schedules: list[tuple[str, int]],
                      micros: list[int], sps: tuple[bool, ...], width: dict[tuple[str, int], int]
                      ) -> tuple[list[tuple[str, int, int, str, bool, str]], Counter[str]]:
        """Under degrees whose `base` plan is valid: the (schedule, vpp, micro-batch, precision, sp, layout) of
        every valid leaf, and the census of the plans rejected below the degrees."""
        census: Counter[str] = Counter()
        skeletons: list[tuple[str, int, int, str, bool, str]] = []
        widths = sum(width.values())
        # precision and sequence parallelism are checked once per degrees: neither check looks at the
        # schedule or the micro-batch. A failing sp setting counts only plans whose precision passed: the
        # others are in the census already
        ok_precisions = passing(base, "precision", precisions, widths * len(micros) * len(sps), census)
        ok_sps = passing(base, "sequence_parallel", sps, widths * len(micros) * len(ok_precisions), census)
        for schedule, vpp in schedules:
            layout = uneven_layout(model.num_layers, pp * vpp) if SCHEDULES[schedule].layout.max_vpp else ""
            reason = _validate({**degrees, "pp_schedule": schedule, "vpp": vpp, "pipeline_layout": layout},
                               model, cluster, seq_len, fixes)
            if reason:
                census[reason] += len(micros) * len(ok_precisions) * len(ok_sps) * width[schedule, vpp]
                continue
            for micro in micros:
                # the only micro-batch-dependent rule is a schedule's micro-batches % pp
                if SCHEDULES[schedule].microbatches_multiple_of_pp and micro > 1:
                    reason = _validate({**degrees, "pp_schedule": schedule, "vpp": vpp, "micro_batch": micro,
                                        "pipeline_layout": layout}, model, cluster, seq_len, fixes)
                    if reason:
                        census[reason] += len(ok_precisions) * len(ok_sps) * width[schedule, vpp]
                        continue
                skeletons += [(schedule, vpp, micro, precision, sp, layout)
                              for precision in ok_precisions for sp in ok_sps]
        return skeletons, census

    for dp, tp, pp, cp in factorisations(cluster.num_gpus):
        if not (space.allows("dp", dp) and space.allows("tp", tp) and space.allows("pp", pp)
                and space.allows("cp", cp)):
            continue
        schedules = schedule_options(pp, model.num_layers, space)
        micros = micro_options(dp)
        sps = sp_options(tp)
        # ZeRO shards over dp × cp (context-parallel ranks hold the same parameters): one form when both are 1
        zeros = all_zeros[:1] if dp * cp == 1 else all_zeros
        # plans under one (schedule, vpp) per micro-batch, precision and sp setting: its memory choices depend
        # on the layers per chunk
        width = {(s, v): len(zeros) * len(memory_choices(space, model, cluster, pp, v)) for s, v in schedules}
        subtree = sum(width.values()) * len(micros) * len(precisions) * len(sps)
        below = None
        for ep, etp in expert_options(model, dp, tp, cp, space):
            degrees = dict(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, global_batch=global_batch)
            total += subtree
            base = {**degrees, "pp_schedule": DEFAULT_SCHEDULE, "vpp": 1,
                    "pipeline_layout": uneven_layout(model.num_layers, pp)}
            reason = _validate(base, model, cluster, seq_len, fixes)
            if reason:
                rejected[reason] += subtree
                continue
            # no check past the degrees (precision, sp, schedule, micro-batches) reads ep or etp
            # (ParallelPlan.validate): the plans below them are checked once, for the first expert layout that
            # passes, and are the same for every other
            if below is None:
                below = below_degrees(degrees, base, schedules, micros, sps, width)
            skeletons, census = below
            rejected.update(census)
            leaves.extend(Leaf(dp, tp, pp, cp, ep, schedule, vpp, micro, precision, sp, zeros, etp, layout)
                          for schedule, vpp, micro, precision, sp, layout in skeletons)
    return Enumeration(cluster=cluster, leaves=leaves, rejected=rejected, fixes=fixes, total=total)


def gpu_counts_between(low: int, high: int, gpus_per_node: int) -> tuple[int, ...]:
    """The device counts a `--gpus LOW..HIGH` range searches: LOW, HIGH, and every size in between that is
    2^k or 3·2^k whole nodes (or that many devices inside one node) — the sizes clusters are built in."""
    if low < 1 or high < low:
        raise ConfigError(f"--gpus {low}..{high} is not a range of device counts.",
                          fix="write MIN..MAX with 1 <= MIN <= MAX, e.g. --gpus 64..1024.")
    counts = {low, high}
    for unit in (1, gpus_per_node):
        n = 1
        while n * unit <= high:
            for size in (n * unit, 3 * n * unit):
                if low <= size <= high and (size <= gpus_per_node or size % gpus_per_node == 0):
                    counts.add(size)
            n *= 2
    return tuple(sorted(counts))
