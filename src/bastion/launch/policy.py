"""`--on-failure`: which recovery policy a run uses, and `auto` decided by the reliability model's predicted goodput
(reliability/policies.py) over the policies this launch can actually run.

- requeue  restart the same world from the newest checkpoint (torchrun locally, a requeue under Slurm);
- shrink   continue on the ranks left with fewer data-parallel replicas (launch/shrink.py, launch/elastic.py);
- spares   Slurm: N + K nodes allocated (`bastion launch --on slurm --spare-nodes K`), every job step on N of the
           usable ones (launch/slurm_nodes.py), so a lost node is swapped for a spare at the next step without a
           re-plan or a requeue. Locally a restart already gets a replacement at once (a lost node under requeue
           restarts with one), so there `spares` runs as requeue; Kubernetes has no spare pods: refused.
- auto     the candidate with the best predicted goodput: requeue always, shrink where the plan has dp replicas to
           drop and checkpoints (and no torchft), spares where spare nodes are allocated, replica-drop with --fault-tolerance
           torchft. The inputs are the run's own: the predictor's step time on the run's cluster, the MTBF
           (--mtbf-hours or the failure data's default, as `--checkpoint-every auto` and `bastion cost` use), the
           checkpoint stall and interval `bastion cost` predicts.
The run config's `on_failure` section records what was asked, what runs and (auto) why; the report shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bastion.errors import ConfigError
from bastion.reliability.policies import PolicyGoodput, PolicyInputs, policy_goodputs, recommend
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

#: --on-failure values
ON_FAILURE = ("requeue", "shrink", "spares", "auto")
#: the run config's key recording the decision
ON_FAILURE_KEY = "on_failure"


@dataclass(frozen=True)
class PolicyChoice:
    """`--on-failure auto` decided: the policy that runs and every candidate's predicted goodput."""

    policy: str
    candidates: tuple[PolicyGoodput, ...]
    #: the job's MTBF the goodputs were predicted for
    mtbf_hours: float

    def line(self) -> str:
        shown = ", ".join(f"{c.policy} {c.goodput:.1%}" for c in self.candidates)
        return f"on-failure auto: {self.policy} (predicted goodput {shown}; job MTBF {self.mtbf_hours:,.1f} h)"

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.policy, "why": self.line(), "mtbf_hours": self.mtbf_hours,
                "predicted_goodput": {c.policy: c.goodput for c in self.candidates}}


def candidate_policies(plan: ParallelPlan, spare_nodes: int, torchft: bool, checkpoints: bool = True
                       ) -> tuple[str, ...]:
    """The policies a launch can run: requeue always; shrink with dp replicas to drop and checkpoints to continue
    from (not under torchft, whose groups recover on their own); spares with spare nodes allocated; replica-drop
    under torchft."""
    found = ["requeue"]
    if plan.dp > 1 and checkpoints and not torchft:
        found.append("shrink")
    if spare_nodes > 0:
        found.append("spares")
    if torchft:
        found.append("replica-drop")
    return tuple(found)


def on_failure_record(asked: str, running: str, choice: PolicyChoice | None) -> dict[str, Any]:
    """The run config's `on_failure` section: the value asked for, the policy that runs (`replica-drop` under
    torchft, `requeue` for spares on this machine) and, for auto, its choice and why."""
    return {"asked": asked, "policy": running, **(choice.to_dict() if choice is not None else {})}


def choose_policy(inputs: PolicyInputs, candidates: tuple[str, ...]) -> PolicyChoice:
    """The candidate with the best predicted goodput (reliability/policies.py's `recommend` over the candidates
    that apply to `inputs`)."""
    applicable = [g for g in policy_goodputs(inputs) if g.policy in candidates and g.applicable]
    return PolicyChoice(recommend(applicable).policy, tuple(applicable), inputs.mtbf_s / 3600.0)


def run_policy_inputs(spec: ModelSpec, plan: ParallelPlan, cluster_name: str | None, mtbf_hours: float | None,
                      checkpoint_every: int, spare_nodes: int, nodes: int | None = None) -> PolicyInputs:
    """The reliability model's inputs for this run: the predicted step time on the run's cluster (default
    cpu:<world>, as the workers predict), the MTBF (given, or the failure data's for the run's devices), the
    checkpoint stall `bastion cost` predicts, the interval (every N steps, or Young/Daly's for `auto` and 0).
    `nodes`: the machines the job runs on (None: this machine, where each rank is a node-equivalent, as
    `--inject lose-node` takes one rank's)."""
    from bastion.cost.tco import checkpoint_stall
    from bastion.predict import estimate
    from bastion.reliability import default_failure_model
    from bastion.specs import load_cluster

    cluster = load_cluster(cluster_name or f"cpu:{plan.num_gpus}")
    est = estimate(spec, cluster, plan, seq_len=spec.seq_len)
    stall_s, _ = checkpoint_stall(cluster, est.memory.params + est.memory.optimizer)
    hours = mtbf_hours if mtbf_hours is not None else default_failure_model().mtbf_hours(plan.num_gpus)
    interval_s = checkpoint_every * est.step_time_s if checkpoint_every > 0 else None
    return PolicyInputs(mtbf_s=hours * 3600.0, nodes=nodes if nodes is not None else plan.num_gpus,
                        step_s=est.step_time_s, checkpoint_stall_s=stall_s, checkpoint_interval_s=interval_s,
                        spares=spare_nodes, replicas=plan.dp)


def check_spares(on_failure: str, engine: str, spare_nodes: int) -> None:
    """Refuse `spares` where it cannot run: on Kubernetes, or on Slurm without spare nodes; refuse spare nodes
    outside Slurm."""
    if spare_nodes and engine != "slurm":
        raise ConfigError(f"--spare-nodes allocates hot spare nodes for a Slurm job, but this launch is {engine}.",
                          fix="drop --spare-nodes, or launch --on slurm.")
    if on_failure != "spares":
        return
    if engine == "k8s":
        raise ConfigError("--on-failure spares needs spare nodes in the job's allocation, which a Kubernetes job "
                          "does not have (its pods are rescheduled by the cluster).",
                          fix="use --on-failure requeue (the job restarts its pods) or shrink (an elastic job).")
    if engine == "slurm" and spare_nodes == 0:
        raise ConfigError("--on-failure spares swaps a lost node for a spare, but the job has no spare nodes.",
                          fix="add --spare-nodes K to `bastion launch --on slurm` (the job allocates N + K nodes), "
                              "or use --on-failure requeue or shrink.")
