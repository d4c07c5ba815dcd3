"""The uncertainty of a step-time prediction: a p10-p90 interval that depends on the plan.

The interval is predicted × exp(∓q_S · w(plan)): q_S is calibrated on out-of-sample residuals per stratum, w ≥ 1 is
the plan's width factor, larger when more of its predicted step sits in terms the published runs validate least.

Width factor. The estimate breaks a step into terms (estimate.TimeBreakdown); each term belongs to a class
(TERM_CLASS). With share_c = the class's seconds / the predicted step, w = sqrt(1 + Σ_c (κ_c · share_c)²): the
validated core (compute, memory-bound work, optimizer, host overhead) has κ = 0, so a plan made only of it gets the
stratum's baseline interval. Classes:
- exposed communication (tensor-, data-, pipeline-parallel collectives the compute does not hide), recompute, the
  pipeline bubble of schedules the case files contain up to the depth they contain, and context parallelism at
  chunk lengths (seq_len / cp) the case files contain: κ is DERIVED from the case files (derive_spread): with
  "large" rows = those where the class is at least LARGE_SHARE of the predicted step and "baseline" rows = those
  where no class is, s0 = the conformal quantile of |ln(published/predicted)| over the baseline rows and s_c over
  the large rows, κ_c = sqrt(max(0, s_c² − s0²)) / (s0 · median share_c of the large rows): the width a typical
  large-share row needs beyond the baseline's. It needs MIN_ROWS large rows from MIN_FAMILIES publication
  families, else the class takes the prior below.
- unvalidated: what the case files have no rows of — the bubble of a schedule they never ran (zero-bubble, V
  schedules) or of a deeper pipeline than any they ran with that schedule, context parallelism (its exposed
  communication and the attention it splits) at chunks shorter than any they ran, and any term estimate.py adds
  that TERM_CLASS does not name yet (MoE all-to-all, offload). PRIOR, from the mechanism: an unvalidated term can
  be off by its own size, so it widens the p10-p90 half-width by about its share of the step (κ = 1 / s0, in
  quadrature with the baseline). No published time chooses it.
Context parallelism's share is its exposed communication plus the attention core it splits: the compute share ×
attention's part of the model FLOPs (flops.py), an approximation by FLOPs, not by kernel time.

Calibration (split-conformal, widened per plan). For published runs, r = ln(published / predicted). q_S is the
conformal quantile of |r| over the OUT-OF-SAMPLE rows of stratum S at level 0.8 with publication families, not rows,
as the exchangeable units (family_conformal_quantile: each of the K families weighs 1/K, shared among its rows, and q
is where the cumulative weight reaches 0.8·(K+1)/K — the largest |r| when K ≤ 4): under exchangeability of families
predicted × exp(∓q_S) holds the measured step for at least 80% of a new family's runs on average. The width factor
only widens that interval (w ≥ 1), so coverage can only rise. (Normalised conformal — q_S over |r| / w — gave
narrower intervals at the same nominal level but covered 79.6% of the development files' software-unknown rows held
out by family; see predict/holdout.py.)

The calibration set (since 2026-12-07, branch intervals2): the rows of the case files compiled blind —
heldout_cases.csv, blind_cases.csv, blind2_cases.csv — whose families data/holdout.toml still lists as out of sample
(mt_nlg is not: a recipe was chosen after its rows; nor are blind2's NeMo launcher rows: NeMo 2022-23 entries were
added after them). blind3_cases.csv stays out of the calibration: it is the check of the interval on families
nothing has seen (added to it, its Qwen3-MoE-on-GB200 family, 55% off, would set the known stratum's q alone, a
median width of 386%). Strata are what the request leaves unknown: "software known"
takes the rows whose facts name a framework with documented releases (or a named stack) and their predictions with
those facts (heldout's DGX Cloud NeMo rows, blind2's FlagPerf rows: 77 rows of 2 families); "software unknown" takes
every
row predicted with its software facts blanked, on the default stack (data/frameworks.toml), which for blind_cases.csv
is also how its rows are predicted as given. The development files' residuals
(public, nemo, torchtitan) are NOT in q: every development family is in-sample (holdout.toml), so their residuals
are optimistic. Until then q was calibrated on exactly those residuals (leave-one-family-out, rows pooled), and the
switch was decided after seeing the second blind file: its interval held the published step for 61% of its rows
(nemo_launcher_2023: 0%). So the blind files now choose the interval's q — their point predictions stay out of
sample (nothing in the predictor is chosen from them), their interval coverage no longer is: the honest figure is
the cross-fitted one (predict/holdout.py cross_fit: each out-of-sample family's q computed without it; benchmarks/
results/intervals_crossfit.json). Families, not rows, weigh because one family (DGX Cloud's NeMo recipes, 70 rows of
mostly 6% error) would otherwise set q alone: pooled by row, the known stratum's q was 0.128 and held blind2 for 35%.
The width factor (κ, s0, the coverage of schedules and chunks) is still derived per stratum from the development
files, where it can be fed: the out-of-sample rows hold 0 rows with recompute, 1 with the bubble and 5 with context
parallelism at a tenth of the step in the known stratum, too few (MIN_ROWS) to derive those classes. κ is a ratio of
spreads within one set (large-share rows against baseline rows), less touched by the in-sample optimism that makes
the development files' q too small; the development families hold none of the out-of-sample ones, so the cross-fit
stays held out.

data/intervals.json holds q per stratum (with its rows and families), κ per class with how each was obtained, the
coverage, and which case files gave q and which the width factor; benchmarks/bench_holdout.py computes it
(`--write-intervals`) and the cross-fitted coverage; predict/holdout.py also checks the method leave-one-family-out
within any case files (`bastion validate --holdout family`: everything above recomputed without the held-out family).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from bastion.predict.calibration import DATA_DIR
from bastion.predict.flops import attention_flops_per_token, model_flops_per_token
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

INTERVALS = DATA_DIR / "intervals.json"
#: the share of new runs an interval is meant to hold (p10 to p90)
LEVEL = 0.8
KNOWN, UNKNOWN = "software known", "software unknown"
STRATA = (KNOWN, UNKNOWN)

COMM, RECOMPUTE, BUBBLE, CP, UNVALIDATED = ("exposed communication", "recompute", "pipeline bubble",
                                            "context parallelism", "unvalidated")
#: classes whose κ the case files can give (derive_spread); UNVALIDATED always takes the prior
DERIVED_CLASSES = (COMM, RECOMPUTE, BUBBLE, CP)
#: estimate.TimeBreakdown terms outside the validated core -> their class (the schedule and chunk length may move
#: the bubble and context parallelism to UNVALIDATED); a term in neither this nor CORE_TERMS is UNVALIDATED
TERM_CLASS = {"tp_comm": COMM, "dp_comm": COMM, "pp_comm": COMM, "recompute": RECOMPUTE, "bubble": BUBBLE,
              "cp_comm": CP,
              # the MoE all-to-all and expert-TP collectives: no case file the intervals are calibrated on has MoE
              # rows (moe_cases.csv is kept out of sample), so their share takes the prior
              "ep_comm": UNVALIDATED, "etp_comm": UNVALIDATED,
              # activation offload's exposed host copies: no calibration row offloads
              "offload": UNVALIDATED,
              # synchronisation points of ranks time-sharing a host CPU's cores: no published row runs so
              "sync_wait": UNVALIDATED}
#: the terms every published row exercises (κ = 0)
CORE_TERMS = ("compute", "memory_bound", "optimizer", "host_overhead")
#: a class is "large" in a row from a tenth of the predicted step (stated before looking at the rows)
LARGE_SHARE = 0.10
#: the support a class needs to derive κ from rows
MIN_ROWS, MIN_FAMILIES = 8, 2


def log_residual(published_s: float, predicted_s: float) -> float:
    return math.log(published_s / predicted_s)


def conformal_quantile(residuals: Iterable[float], level: float = LEVEL) -> float:
    """The split-conformal quantile of |residual|: the ceil((n+1)·level)-th smallest (the largest when n is
    small)."""
    values = sorted(abs(r) for r in residuals)
    if not values:
        raise ValueError("no residuals to calibrate an interval on")
    k = math.ceil((len(values) + 1) * level)
    return values[min(k, len(values)) - 1]


def family_conformal_quantile(residuals: Iterable[tuple[str, float]], level: float = LEVEL) -> float:
    """The split-conformal quantile of |residual| with publication families, not rows, as the exchangeable units
    (Dunn, Wasserman and Ramdas 2022, "Distribution-free prediction sets for two-layer hierarchical models", pooled
    CDFs): each of the K families carries weight 1/K shared equally among its rows, and the quantile is the
    smallest |r| whose cumulative weight reaches level·(K+1)/K (the family-level counterpart of ceil((n+1)·level)),
    the largest |r| when that exceeds 1. `residuals`: (family, residual) pairs."""
    by_family: dict[str, list[float]] = {}
    for family, r in residuals:
        by_family.setdefault(family, []).append(abs(r))
    if not by_family:
        raise ValueError("no residuals to calibrate an interval on")
    k = len(by_family)
    weighted = sorted((r, 1.0 / (k * len(rs))) for rs in by_family.values() for r in rs)
    target, reached = level * (k + 1) / k, 0.0
    for r, weight in weighted:
        reached += weight
        if reached >= target - 1e-12:  # the weights' float sum may fall short of 1 by rounding
            return r
    return weighted[-1][0]


def bounds(predicted_s: float, q: float) -> tuple[float, float]:
    return predicted_s * math.exp(-q), predicted_s * math.exp(q)


@dataclass(frozen=True)
class StepShares:
    """What an interval needs of one prediction: each term's share of the predicted step, the attention core's
    share, and the regime (schedule, depth, context-parallel chunk) that decides what is validated."""

    terms: Mapping[str, float]
    attention: float
    pp_schedule: str
    pp: int
    cp: int
    seq_len: int

    @property
    def cp_chunk(self) -> int:
        return self.seq_len // self.cp


@lru_cache(maxsize=256)
def attention_fraction(model: ModelSpec, seq_len: int) -> float:
    """The attention core's part of the model FLOPs per token."""
    return (3.0 * model.num_layers * attention_flops_per_token(model, seq_len, causal=True)
            / model_flops_per_token(model, seq_len))


def step_shares(time: Any, step_s: float, plan: ParallelPlan, seq_len: int, model: ModelSpec) -> StepShares:
    """`time`: an estimate's TimeBreakdown (or its dict)."""
    seconds = time if isinstance(time, Mapping) else time.to_dict()
    terms = {k: float(v) / step_s for k, v in seconds.items() if k != "step" and v}
    return StepShares(terms=terms, attention=terms.get("compute", 0.0) * attention_fraction(model, seq_len),
                      pp_schedule=plan.pp_schedule, pp=plan.pp, cp=plan.cp, seq_len=seq_len)


def estimate_shares(est: Any, model: ModelSpec) -> StepShares:
    """The shares of a predict.Estimate of `model`."""
    return step_shares(est.time, est.step_time_s, est.plan, est.seq_len, model)


@dataclass(frozen=True)
class Coverage:
    """What the case files contain: per pipeline schedule the deepest pp, and the shortest context-parallel chunk."""

    deepest_pp: Mapping[str, int]
    shortest_cp_chunk: int | None

    @classmethod
    def of(cls, rows: Iterable[StepShares]) -> Coverage:
        deepest: dict[str, int] = {}
        chunks = []
        for s in rows:
            if s.pp > 1:
                deepest[s.pp_schedule] = max(deepest.get(s.pp_schedule, 0), s.pp)
            if s.cp > 1:
                chunks.append(s.cp_chunk)
        return cls(dict(sorted(deepest.items())), min(chunks) if chunks else None)

    def to_dict(self) -> dict[str, Any]:
        return {"deepest_pp": dict(self.deepest_pp), "shortest_cp_chunk": self.shortest_cp_chunk}


def class_shares(s: StepShares, coverage: Coverage) -> dict[str, float]:
    """Share of the predicted step per class (the validated core left out)."""
    out = dict.fromkeys((*DERIVED_CLASSES, UNVALIDATED), 0.0)
    for term, share in s.terms.items():
        if term not in CORE_TERMS:
            out[TERM_CLASS.get(term, UNVALIDATED)] += share
    if s.pp > 1 and s.pp > coverage.deepest_pp.get(s.pp_schedule, 0):
        out[UNVALIDATED] += out[BUBBLE]
        out[BUBBLE] = 0.0
    if s.cp > 1:
        out[CP] += s.attention
        if coverage.shortest_cp_chunk is None or s.cp_chunk < coverage.shortest_cp_chunk:
            out[UNVALIDATED] += out[CP]
            out[CP] = 0.0
    return out


def width_factor(s: StepShares, spread: Mapping[str, Any]) -> float:
    """w ≥ 1 of a prediction under a stratum's spread calibration (derive_spread's result)."""
    kappa = spread["classes"]
    return math.sqrt(1.0 + sum((kappa[c]["kappa"] * share) ** 2
                               for c, share in class_shares(s, _coverage(spread)).items()))


def _coverage(spread: Mapping[str, Any]) -> Coverage:
    c = spread["coverage"]
    return Coverage(c["deepest_pp"], c["shortest_cp_chunk"])


def derive_spread(rows: Sequence[tuple[str, float, StepShares]]) -> dict[str, Any]:
    """κ per class and the coverage from (family, log residual, shares) of one stratum's predictions."""
    coverage = Coverage.of(s for _, _, s in rows)
    classified = [(family, r, class_shares(s, coverage)) for family, r, s in rows]
    baseline = [r for _, r, c in classified if all(v < LARGE_SHARE for v in c.values())]
    # rows where every class is large leave no baseline (a small case file): then every row is the baseline
    s0 = conformal_quantile(baseline or [r for _, r, _ in classified])
    prior = 1.0 / s0
    classes: dict[str, dict[str, Any]] = {}
    for name in DERIVED_CLASSES:
        large = [(family, r, c[name]) for family, r, c in classified if c[name] >= LARGE_SHARE]
        families = sorted({f for f, _, _ in large})
        entry: dict[str, Any] = {"large_rows": len(large), "families": families}
        if len(large) >= MIN_ROWS and len(families) >= MIN_FAMILIES:
            s_large = conformal_quantile(r for _, r, _ in large)
            share = statistics.median(x for _, _, x in large)
            entry.update(kappa=math.sqrt(max(0.0, s_large**2 - s0**2)) / (s0 * share), how="derived",
                         spread_large=s_large, median_share=share)
        else:
            entry.update(kappa=prior, how=f"prior (fewer than {MIN_ROWS} rows from {MIN_FAMILIES} families with "
                                          f"it at {LARGE_SHARE:.0%} of the step): κ = 1 / s0")
        classes[name] = entry
    classes[UNVALIDATED] = {"kappa": prior, "how": "prior: an unvalidated term can be off by its own size "
                                                   "(κ = 1 / s0)"}
    return {"large_share": LARGE_SHARE, "baseline_rows": len(baseline), "s0": s0, "classes": classes,
            "coverage": coverage.to_dict()}


@cache
def stored_intervals() -> dict[str, Any]:
    return json.loads(INTERVALS.read_text())


def stratum(software_known: bool) -> str:
    return KNOWN if software_known else UNKNOWN


def stratum_q(software_known: bool = True) -> float:
    """q_S: the half-width in ln(step) of a plan whose width factor is 1 (the narrowest any plan gets)."""
    return stored_intervals()["strata"][stratum(software_known)]["q"]


def shares_width(s: StepShares, software_known: bool = True) -> float:
    """The width factor of a prediction under the stored calibration of its stratum."""
    return width_factor(s, stored_intervals()["strata"][stratum(software_known)]["spread"])


def least_p90(step_floor: float, term_floors: Mapping[str, float], pp_schedule: str, pp: int, cp: int,
              seq_len: int, model: ModelSpec, software_known: bool = True) -> float:
    """The smallest p90 a prediction of `model` can have whose step is at least `step_floor` seconds and whose
    terms are at least `term_floors` seconds (estimate.TimeBreakdown names; the rest at least 0), for a plan of
    this pipeline schedule and depth and context-parallel degree (what decides each term's class).

    Why it holds. p90 = step · exp(q · w) with w = sqrt(1 + Σ_c (κ_c · x_c / step)²), x_c the class's seconds.
    Each x_c is a sum of terms (and, for context parallelism, the compute term × attention's FLOPs part), so x_c
    ≥ a_c, the same sum of the floors; with K² = Σ_c (κ_c · a_c)², p90 ≥ f(step) = step · exp(q · sqrt(1 +
    K²/step²)). d ln f / d step = (1 − q · u² / sqrt(1 + u²)) / step with u = K / step: u² / sqrt(1 + u²) grows
    with u, so f falls while u > u* (q · u*² = sqrt(1 + u*²)) and rises after: its least value over step ≥
    step_floor is at step_floor when K / step_floor ≤ u*, else at step = K / u*."""
    q, kappa, coverage = _stratum_widths(software_known)
    # class_shares is linear in the terms: given seconds, it returns each class's seconds
    seconds = StepShares(terms=term_floors, attention=term_floors.get("compute", 0.0) * attention_fraction(
        model, seq_len), pp_schedule=pp_schedule, pp=pp, cp=cp, seq_len=seq_len)
    k = math.sqrt(sum((kappa[c] * a) ** 2 for c, a in class_shares(seconds, coverage).items()))
    if k == 0 or q <= 0:
        return narrowest_p90(step_floor, software_known)
    u_star = math.sqrt((1 + math.sqrt(1 + 4 * q * q)) / (2 * q * q))
    step = max(step_floor, k / u_star)
    return step * math.exp(q * math.sqrt(1 + (k / step) ** 2))


def narrowest_p90(step: float, software_known: bool = True) -> float:
    """The p90 of a `step`-second prediction whose width factor is 1, the narrowest: what the p90 of any
    prediction of a step at least `step` is at least (least_p90's when no term widens it)."""
    return step * math.exp(_stratum_widths(software_known)[0])


@cache
def _stratum_widths(software_known: bool) -> tuple[float, dict[str, float], Coverage]:
    """q, κ per class and the coverage of a stratum's stored calibration (least_p90 asks per plan group)."""
    spread = stored_intervals()["strata"][stratum(software_known)]["spread"]
    return (stratum_q(software_known), {c: v["kappa"] for c, v in spread["classes"].items()}, _coverage(spread))


def step_interval(est: Any, model: ModelSpec, software_known: bool = True) -> tuple[float, float]:
    """(p10, p90) of the step time of a predict.Estimate of `model`, from the stored calibration."""
    return bounds(est.step_time_s,
                  stratum_q(software_known) * shares_width(estimate_shares(est, model), software_known))


def interval_note(est: Any, model: ModelSpec, software_known: bool = True) -> str:
    """The assumption line that says how a prediction's interval was obtained."""
    stored = stored_intervals()
    s = stored["strata"][stratum(software_known)]
    shares = estimate_shares(est, model)
    w = shares_width(shares, software_known)
    classes = s["spread"]["classes"]
    widening = [f"{name} {share:.0%} of the step ({'prior' if classes[name]['how'].startswith('prior') else 'derived'})"
                for name, share in class_shares(shares, _coverage(s["spread"])).items()
                if share and classes[name]["kappa"] > 0]
    return (f"interval p10-p90: × exp(±{s['q'] * w:.3f}) = split-conformal q {s['q']:.3f} on {s['rows']} "
            f"out-of-sample published runs of {len(s['families'])} publication families, each family weighed alike "
            f"({stratum(software_known)}) × this "
            f"plan's width factor {w:.2f}" + (f" ({'; '.join(widening)})" if widening else "")
            + " (predict/intervals.py; predict/data/intervals.json)")
