"""Which recovery policy a job should run: expected goodput of requeue-and-wait, shrink-and-continue, hot spares and
per-step replica drop, from the MTBF, the restart and requeue waits, the checkpoint interval and the step time.

Goodput here is the fraction of the allocated GPU time that ends up as kept training work, relative to the job
running on all N of its nodes without failures. Every policy shares one first-order model (Young 1974, Daly 2006
§3 — the model goodput.py's `expected_goodput` is): failures arrive as a Poisson process at rate 1/M for the whole
job (M: job MTBF, the per-GPU rate of reliability/data/failure_rates.csv × GPUs); between checkpoints the job
computes τ seconds and a save blocks it δ seconds, so a fraction E = τ/(τ + δ) of a failure-free run is compute;
a failure at a uniformly random moment of a cycle loses on average L = (τ + δ)/2 of it (Daly's first-order
term). With C the average cost of one failure, in seconds of the whole job's time, the expected goodput is

    G = E · (1 − C/M) · A,    clipped to [0, 1],

A being the share of the allocated nodes that train (1 except with spares). The policies differ in C and A
(R: restart of the job on nodes at hand and reload from the checkpoint — Kokolis et al. 2024, Meta RSC: 5–20 min;
W: wait for replacement capacity, i.e. a requeue; H: until a failed node is repaired and back; N nodes; s the
step time):

  requeue   the job restarts on N nodes once a replacement is found:      C = L + R + W,           A = 1
  shrink    the survivors re-plan for N − 1 nodes and resume after R; they run at (N − 1)/N of the throughput
            (linear scaling assumed) for H until the node is back, then grow at a checkpoint boundary (a planned
            restart, no lost work):                                        C = L + 2R + H/N,        A = 1
            (not applicable to one node; the plan must also fit the smaller world, which `bastion plan` checks)
  spares    N + k nodes allocated, a failed node swapped for a spare at once and sent to repair. Nodes in repair
            form an M/G/∞ queue with offered load a = H/M, so the number out is Poisson(a) (Palm's theorem) and a
            failure finds no spare with P = P[Poisson(a) ≥ k]; then it waits W like a requeue:
                                                                           C = L + R + P·W,         A = N/(N + k)
  replica   per-step replica-group drop (torchft): of r data-parallel replica groups the failed one drops out,
  -drop     the step in flight is retried by the others (at most one step lost), and the group rejoins after
            W + R, its weights fetched from a live peer (torchft's blog, 2025-06-20: re-init < 1 s); meanwhile the
            job runs at (r − 1)/r:                                         C = s + (W + R)/r,       A = 1
            (needs r ≥ 2; checkpoints still guard against losing every group, so E stays)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from bastion.errors import ConfigError
from bastion.reliability.interval import daly_interval

#: the policies, in the order they are shown (and preferred on a tie: the simpler first)
POLICIES = ("requeue", "shrink", "spares", "replica-drop")
#: defaults where the user gives nothing. R: Kokolis et al. (arXiv 2410.21680) report 5–20 min of restart
#: overhead on Meta's RSC clusters; W and H are assumptions (a requeue that waits an hour for a node, a repair or
#: swap that takes four), stated wherever they are used
DEFAULT_RESTART_S = 600.0
DEFAULT_REQUEUE_WAIT_S = 3600.0
DEFAULT_REPAIR_S = 4 * 3600.0
DEFAULT_SPARES = 1


@dataclass(frozen=True)
class PolicyInputs:
    """What the policies' goodput depends on (seconds throughout)."""

    #: mean time between failures of the whole job on its N nodes
    mtbf_s: float
    #: nodes the job trains on (N)
    nodes: int
    #: optimizer step time of the plan
    step_s: float
    #: time a checkpoint save blocks training (δ)
    checkpoint_stall_s: float
    #: compute time between checkpoints (τ); None = Daly's optimum for δ and M
    checkpoint_interval_s: float | None = None
    #: restart on nodes at hand, reload from the checkpoint (R)
    restart_s: float = DEFAULT_RESTART_S
    #: wait for replacement capacity, a requeue (W)
    requeue_wait_s: float = DEFAULT_REQUEUE_WAIT_S
    #: until a failed node is repaired and back in service (H)
    repair_s: float = DEFAULT_REPAIR_S
    #: hot spare nodes allocated beside the N (k)
    spares: int = DEFAULT_SPARES
    #: data-parallel replica groups of the plan (r)
    replicas: int = 1

    def __post_init__(self) -> None:
        if not (self.mtbf_s > 0 and self.step_s > 0 and self.nodes >= 1):
            raise ConfigError("MTBF and step time must be > 0 and the job must have at least one node.")
        if min(self.checkpoint_stall_s, self.restart_s, self.requeue_wait_s, self.repair_s) < 0 or self.spares < 0:
            raise ConfigError("checkpoint stall, restart, requeue wait, repair time and spares must be >= 0.")

    @property
    def interval_s(self) -> float:
        if self.checkpoint_interval_s is not None:
            return self.checkpoint_interval_s
        return daly_interval(self.checkpoint_stall_s, self.mtbf_s) if self.checkpoint_stall_s > 0 else self.mtbf_s


@dataclass(frozen=True)
class PolicyGoodput:
    """One policy's predicted goodput."""

    policy: str
    #: kept work / allocated GPU time (0 where not applicable)
    goodput: float
    #: average cost of one failure, seconds of the whole job's time (C); None where not applicable
    cost_per_failure_s: float | None
    #: nodes allocated (N, or N + k with spares)
    allocated_nodes: int
    applicable: bool
    #: the formula's terms, or why it does not apply
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def poisson_tail(mean: float, k: int) -> float:
    """P[X ≥ k] for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    below = sum(math.exp(-mean) * mean**i / math.factorial(i) for i in range(k))
    return max(0.0, 1.0 - below)


def policy_goodputs(inputs: PolicyInputs) -> list[PolicyGoodput]:
    """Every policy's expected goodput, in POLICIES order."""
    tau, delta, mtbf = inputs.interval_s, inputs.checkpoint_stall_s, inputs.mtbf_s
    efficiency = tau / (tau + delta) if tau + delta > 0 else 1.0
    lost = (tau + delta) / 2.0
    restart, wait, repair, nodes = inputs.restart_s, inputs.requeue_wait_s, inputs.repair_s, inputs.nodes

    def result(policy: str, cost: float, allocated: int, note: str, share: float = 1.0) -> PolicyGoodput:
        goodput = max(0.0, min(1.0, efficiency * (1.0 - cost / mtbf) * share))
        return PolicyGoodput(policy, goodput, cost, allocated, True, note)

    def not_applicable(policy: str, why: str) -> PolicyGoodput:
        return PolicyGoodput(policy, 0.0, None, nodes, False, why)

    out = [result("requeue", lost + restart + wait, nodes,
                  f"C = L {lost:.0f} + R {restart:.0f} + W {wait:.0f} s")]
    if nodes > 1:
        out.append(result("shrink", lost + 2 * restart + repair / nodes, nodes,
                          f"C = L {lost:.0f} + 2R {2 * restart:.0f} + H/N {repair / nodes:.0f} s"))
    else:
        out.append(not_applicable("shrink", "one node: nothing to shrink to"))
    if inputs.spares > 0:
        no_spare = poisson_tail(repair / mtbf, inputs.spares)
        out.append(result("spares", lost + restart + no_spare * wait, nodes + inputs.spares,
                          f"C = L {lost:.0f} + R {restart:.0f} + P(no spare) {no_spare:.3f} × W {wait:.0f} s; "
                          f"{inputs.spares} of {nodes + inputs.spares} nodes idle",
                          share=nodes / (nodes + inputs.spares)))
    else:
        out.append(not_applicable("spares", "no spare nodes asked for (k = 0 is requeue)"))
    if inputs.replicas >= 2:
        out.append(result("replica-drop", inputs.step_s + (wait + restart) / inputs.replicas, nodes,
                          f"C = s {inputs.step_s:.1f} + (W + R)/r {(wait + restart) / inputs.replicas:.0f} s, "
                          f"r = {inputs.replicas}"))
    else:
        out.append(not_applicable("replica-drop", "the plan has one data-parallel replica (dp = 1)"))
    return out


def recommend(results: list[PolicyGoodput]) -> PolicyGoodput:
    """The applicable policy with the highest goodput (the earlier in POLICIES on a tie)."""
    return max((r for r in results if r.applicable), key=lambda r: (r.goodput, -POLICIES.index(r.policy)))


def best_goodput(inputs: PolicyInputs) -> float:
    """The recommended policy's goodput."""
    return recommend(policy_goodputs(inputs)).goodput
