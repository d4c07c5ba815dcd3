"""The records of metrics.jsonl: one step record per completed optimizer step, one event record per event.

A record is a JSON object with a wall-clock `time` (Unix seconds). A step record has a `step` and no `event`; an
event record has an `event` naming its kind. The kinds, what each means and the fields its writer gives are
registered here (`EVENT_KINDS`); `rundir.metrics.log_event` refuses a kind not registered, so every kind a reader
may meet is listed here. The TypedDicts type the JSON objects as they are on disk (readers keep them as dicts:
a run directory from an older bastion may lack newer optional fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict


class StepRecord(TypedDict):
    """One completed optimizer step (rank 0's MetricsWriter). A step recomputed after a restart or a rollback
    appears again, later in the file; the last record of a step is the one the final model holds."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    step_time_s: float
    time: float
    tokens_per_s: float
    #: None when the device has no known peak
    mfu: float | None
    mem_gib: float
    #: [first, last + 1) of the global sample ids of the step (absent in records from before it was written)
    sample_ids: NotRequired[list[int]]
    #: mixture-of-experts models only (runtime/moe.py step_stats): the load-balancing loss (coefficient included,
    #: summed over layers; not part of `loss`), the tokens routed to each expert summed over the MoE layers and
    #: per MoE layer (in layer order; absent in records from before it was written), and the largest per-layer
    #: ratio of the busiest expert's tokens to the mean (1.0 = balanced)
    moe_aux_loss: NotRequired[float]
    expert_tokens: NotRequired[list[int]]
    expert_tokens_by_layer: NotRequired[list[list[int]]]
    expert_imbalance: NotRequired[float]
    #: with DeepSeek-V3's auxiliary-loss-free balancing (router_bias_update_rate > 0): the largest |routing bias|
    #: over every MoE layer and expert after the step's update
    router_bias_absmax: NotRequired[float]

    #: every rank's section times of the step, seconds: {"forward_backward" | "optimizer" | "sync_wait" | "step":
    #: [rank 0's, rank 1's, ...]} (runtime/stragglers.py says what each covers; absent before they were recorded)
    rank_sections_s: NotRequired[dict[str, list[float]]]
    #: the same sections' CPU seconds on every rank (the process's threads; a rank blocked on a peer adds none;
    #: absent before they were recorded)
    rank_cpu_sections_s: NotRequired[dict[str, list[float]]]
    #: --fault-tolerance torchft: the replica groups that took part in the step, and the [start, end) global
    #: sample ids of the groups that did not (not trained on: the step's batch was the participants' shares)
    replica_groups: NotRequired[list[int]]
    dropped_sample_ids: NotRequired[list[list[int]]]


#: the step-record fields only a mixture-of-experts run writes
MOE_STEP_FIELDS = ("moe_aux_loss", "expert_tokens", "expert_tokens_by_layer", "expert_imbalance",
                   "router_bias_absmax")
#: step fields only a --fault-tolerance torchft run writes
REPLICA_STEP_FIELDS = ("replica_groups", "dropped_sample_ids")


@dataclass(frozen=True)
class EventKind:
    """One kind of event record: its name (the `event` field), what it means and the fields its writer gives."""

    name: str
    meaning: str
    #: the fields its writers give besides `event` and `time`
    fields: tuple[str, ...]


RUN_START = EventKind("run_start", "a new run begins in this directory (its wall clock starts here); records "
                      "before the last one belong to an earlier run", ("world_size", "plan"))
RESUME = EventKind("resume", "a launch continues this run from a checkpoint (--resume, a Slurm requeue; under "
                   "torchft one event per replica group, `replica_group`)",
                   ("attempt", "resumed_from_step", "world_size", "plan", "replica_group"))
RESTART = EventKind("restart", "the worker group was restarted after a failure and resumed from a checkpoint "
                    "(a torchft replica group, `replica_group`: heals from a live peer instead, from the newest "
                    "checkpoint only when no peer is live, and logs it in its first quorum, when it knows the "
                    "step); `attempt` counts from 0 again in each launch",
                    ("attempt", "resumed_from_step", "world_size", "plan", "replica_group"))
REPLICA_GROUP_DROP = EventKind("replica_group_drop", "--fault-tolerance torchft: from `step` on the run steps "
                               "without replica groups `groups` (failed or gone); their shares of its batches are "
                               "not trained on", ("step", "groups", "participating"))
REPLICA_GROUP_JOIN = EventKind("replica_group_join", "--fault-tolerance torchft: replica groups `groups` take part "
                               "again from `step` on (a restarted group, healed from a live peer)",
                               ("step", "groups", "participating"))
FAULT = EventKind("fault", "an injected fault fired (checkpoint_step: the checkpoint a save fault hit; back_at: "
                  "the step a lost node is back, None for never)",
                  ("fault", "spec", "rank", "step", "checkpoint_step", "back_at"))
HANG = EventKind("hang", "the watchdog found a step past its deadline and ended the process",
                 ("rank", "step", "elapsed_s", "deadline_s", "stacks"))
PREEMPTED = EventKind("preempted", "SIGTERM: the run checkpoints after this step and stops", ("step", "signal"))
ROLLBACK = EventKind("rollback", "a bad step (NaN or spiking gradient norm) was refused; the run went back to "
                     "the last good checkpoint and skips the batch", ("step", "reason", "skipped_sample_ids",
                                                                      "resumed_from_step", "checkpoint"))
SKIP_BATCH = EventKind("skip_batch", "a batch refused earlier was skipped", ("step", "sample_ids"))
CHECKPOINT = EventKind("checkpoint", "a save began; `stall_s` is how long the loop was blocked (an async save "
                       "reaches disk later: checkpoint_committed)", ("step", "stall_s", "mode"))
CHECKPOINT_WAIT = EventKind("checkpoint_wait", "an optimizer step waited for an async save's copy (counted in "
                            "its step time)", ("step", "stall_s"))
CHECKPOINT_COMMITTED = EventKind("checkpoint_committed", "a save is committed on disk (manifest, rename)",
                                 ("step", "committed_unix"))
CHECKPOINT_CORRUPT = EventKind("checkpoint_corrupt", "a checkpoint failed its check and was set aside",
                               ("step", "reason", "moved_to"))
CHECKPOINT_INTERVAL = EventKind("checkpoint_interval", "--checkpoint-every auto chose its interval",
                                ("every_steps", "interval_s", "stall_s", "step_s", "mtbf_hours", "why"))
EVAL = EventKind("eval", "the held-out loss after `step` (--eval-every): the mean over `samples` held-out samples, "
                 "the same ones under every plan; perplexity = exp(eval_loss)",
                 ("step", "eval_loss", "perplexity", "samples", "eval_time_s"))

STRAGGLER = EventKind("straggler", "a rank's median compute time over the last `window` steps is `factor` × the "
                      "baseline (`baseline`: the median of its peers, or the predicted step time); once per "
                      "episode", ("rank", "step", "factor", "compute_s", "baseline_s", "baseline", "window"))
HEALTH_CHECK = EventKind("health_check", "the pre-flight check of a worker group (at start and after each restart): "
                         "a timed all-reduce on the job's own group against the predictor's time for the cluster, "
                         "and each GPU's ECC/clock/throttling state (or why it was skipped); `ok` false with "
                         "`problems` when something is wrong, `failing_ranks` the ranks whose own device failed "
                         "(runtime/health.py)",
                         ("attempt", "world_size", "cluster", "bytes", "all_reduce_s", "all_reduce_s_by_rank",
                          "busbw_gbs", "predicted_s", "predicted_busbw_gbs", "ratio", "ok", "problems",
                          "failing_ranks", "gpus", "took_s", "bandwidth_note"))
PLAN_CHANGE = EventKind("plan_change", "the launcher re-planned the run for another world size (--on-failure "
                        "shrink: ranks lost their node) and relaunched it from the checkpoint of `step`",
                        ("step", "from_world", "to_world", "plan", "from_plan", "lost_ranks", "reason"))

NODE_EXCLUDED = EventKind("node_excluded", "a Slurm job stopped using one of its nodes (`reason`: down — failed, "
                          "drained or taken out of the job —, unhealthy, the node of `rank` whose device failed "
                          "the health check, or straggler, the node of slow `rank`); the job "
                          "steps of that start of the job (`start`: Slurm's restart count) exclude it "
                          "(launch/slurm_nodes.py)", ("node", "reason", "rank", "job_id", "start"))
RESUBMITTED = EventKind("resubmitted", "a Slurm job that had to start again with fewer usable nodes than its plan "
                        "needs submitted its script again as `new_job_id`, excluding `excluded`, instead of being "
                        "requeued onto them (launch/slurm.py)", ("job_id", "new_job_id", "excluded"))

EVENT_KINDS: dict[str, EventKind] = {kind.name: kind for kind in (
    RUN_START, RESUME, RESTART, FAULT, HANG, PREEMPTED, ROLLBACK, SKIP_BATCH, CHECKPOINT, CHECKPOINT_WAIT,
    CHECKPOINT_COMMITTED, CHECKPOINT_CORRUPT, CHECKPOINT_INTERVAL, EVAL, STRAGGLER, HEALTH_CHECK, PLAN_CHANGE,
    NODE_EXCLUDED, RESUBMITTED, REPLICA_GROUP_DROP, REPLICA_GROUP_JOIN)}
#: events after which the next step runs in a freshly started process
RESTART_EVENTS = (RESTART.name, RESUME.name)
#: events whose blocking time is checkpoint stall
STALL_EVENTS = (CHECKPOINT.name, CHECKPOINT_WAIT.name)


def is_step(record: dict[str, Any]) -> bool:
    return "event" not in record and "step" in record


def is_event(record: dict[str, Any], *kinds: str) -> bool:
    """An event record (of one of `kinds`, when given)."""
    return "event" in record and (not kinds or record["event"] in kinds)


def current_run(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records from the last `run_start` on (earlier ones belong to an older run in the same directory). A
    `run_start` right after a `plan_change` (no step between) is the same run relaunched on another world
    before its first checkpoint (--on-failure shrink), not a new one."""
    starts = [i for i, r in enumerate(records) if r.get("event") == RUN_START.name]
    while len(starts) > 1 and _relaunched_after_plan_change(records, starts[-1]):
        starts.pop()
    return records[starts[-1] if starts else 0:]


def _relaunched_after_plan_change(records: list[dict[str, Any]], start: int) -> bool:
    for record in reversed(records[:start]):
        if is_step(record) or record.get("event") == RUN_START.name:
            return False
        if record.get("event") == PLAN_CHANGE.name:
            return True
    return False
