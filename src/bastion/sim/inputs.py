"""The simulator's inputs: a cluster inventory (pools and tenants) and a workload (jobs), read from TOML/JSON.

Inventory file::

    name = "campus"
    [[pool]]                      # a homogeneous set of nodes; a job runs inside one pool only
    name = "h100"
    accelerator = "h100-sxm"      # catalog name (`bastion hardware`); GPUs per node and network from the catalog
    nodes = 128
    software = "production"       # optional: the stack its jobs run (`bastion software`; default: bastion)
    [[tenant]]
    name = "research"
    quota_gpus = 512              # guaranteed share (the `fair` policy enforces it)
    borrow = true                 # may run above quota on idle capacity
    pools = ["h100"]              # optional: the pools its jobs may use (default: all)
    priority = 0                  # optional: the `priority` policy lets a higher queue preempt a lower one;
                                  # `multifactor` weighs it as the queue's QOS
    cohort = "ml"                 # optional (`kueue` policy): the ClusterQueue cohort whose unused quota the
                                  # queue may borrow and to which it lends its own
    borrowing_limit_gpus = 64     # optional (`kueue`): at most this many GPUs above quota (default: no limit;
                                  # borrow = false means 0)
    lending_limit_gpus = 32       # optional (`kueue`): at most this much of its unused quota lent (default: all)
    launch_latency_s = 90         # optional, top level: seconds from a job's start to its first step
    [node_failures]               # optional: nodes fail and are repaired (off without this table or with
                                  # --no-failures); jobs on a failed node lose their work since their last
                                  # checkpoint and are requeued
    repair_hours = 24             # how long a failed node is out
    node_mtbf_hours = 6000        # optional: one node's mean time between failures (default: the published
                                  # GPU-hours per failure of bastion's default failure model / GPUs per node)

(`examples/sim/cohort-cluster.toml` is a complete example with cohorts, priorities and node failures.)

A tenant is also a queue: a recorded job's `queue` (`--trace`) names one; a queue the inventory does not name
goes to the queue `default`, without quota, that may use every pool.

Workload file::

    [[job]]
    id = "pretrain-8b"
    tenant = "research"
    model = "llama3-8b"           # preset or model file
    tokens = 2e11
    global_batch = 512            # sequences per step
    seq_len = 8192                # optional (default: the model's)
    gpus = 64                     # optional: omitted = smallest power-of-two number of nodes that a plan fits
    submit_hours = 0.0
    priority = 0                  # optional, higher first
    pools = ["h100"]              # optional: pools the job may use
    kind = "fine-tuning"          # optional: training (default) or fine-tuning: scheduled alike, figures apart
    # min_gpus = 8, max_gpus = 64 # instead of gpus: an elastic job (the `elastic` policy resizes it between;
                                  # others run it at min_gpus)

An inference service is a steady GPU reservation: ahead of every job in the static queue order (the order of
fifo, backfill, kueue and elastic, and the tie-break of the policies with an order of their own), never
preempted, counted apart from the jobs in the results (`services`); `slo_wait_s` is its objective on the wait
for its GPUs::

    [[job]]
    id = "chat"
    tenant = "product"
    kind = "inference"
    gpus = 16
    submit_hours = 0
    duration_hours = 720          # how long it serves
    slo_wait_s = 300              # optional
    accelerator = "h100-sxm"      # optional, as a recorded job's

A recorded job (a trace's; `traces.py` reads public trace formats into these) gives what it did instead of
what it trains: `duration_hours` (its run time on `accelerator`), `gpus` (fractional: a share of one GPU),
optional `user`, `time_limit_hours` (what the scheduler plans with) and `final_state`; `model`, `tokens` and
`global_batch` are then optional (with a model, the planner scales the duration to other pools)::

    [[job]]
    id = "r1"
    tenant = "research"           # the queue
    submit_hours = 0.5
    duration_hours = 3.0
    accelerator = "a100-80g"      # catalog name; omitted = the duration holds on every pool
    gpus = 0.5
    time_limit_hours = 4.0
    final_state = "failed"        # completed (default), failed or cancelled: how the recorded run ended
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, ConfigError, did_you_mean
from bastion.numbers import (
    MAX_DEVICES,
    MAX_GLOBAL_BATCH,
    MAX_JOB_HOURS,
    MAX_JOB_TOKENS,
    MAX_LAUNCH_LATENCY_S,
    MAX_SEQ_LEN,
    MAX_SUBMIT_HOURS,
)
from bastion.predict.software import software_stack
from bastion.specs import Cluster, load_cluster
from bastion.specs._files import read_mapping

#: divisible by every node size in the catalog (1..10 and 72): `ACCEL:PROBE` reveals the catalog's GPUs per node
_NODE_PROBE = 2520


@dataclass(frozen=True)
class Pool:
    """A homogeneous group of nodes; jobs are gang-scheduled on whole nodes of one pool."""

    #: name used in the workload's `pools` and in the output
    name: str
    #: catalog accelerator name
    accelerator: str
    #: number of nodes
    nodes: int
    #: GPUs per node (from the catalog)
    gpus_per_node: int
    #: the whole pool as a bastion Cluster (catalog network); resized per job for planning
    cluster: Cluster
    #: the training software the pool's jobs run (a stack of `bastion software`): what their plans are priced on
    software: str = "bastion"

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class Tenant:
    """A team sharing the cluster."""

    name: str
    #: guaranteed GPUs (over all pools); the `fair` policy keeps a tenant within it unless it may borrow
    quota_gpus: int
    #: whether the tenant may use idle capacity above its quota
    borrow: bool = True
    #: pools the tenant's jobs may use (empty: all)
    pools: tuple[str, ...] = ()
    #: the queue's priority (`priority` preempts lower queues for higher; `multifactor` weighs it as QOS)
    priority: int = 0
    #: the Kueue cohort the queue borrows from and lends to (`kueue` policy); None: none
    cohort: str | None = None
    #: GPUs the queue may hold above its quota, borrowed from its cohort (None: no limit; `borrow` false: 0)
    borrowing_limit_gpus: int | None = None
    #: GPUs of its unused quota the queue lends to its cohort (None: all of it)
    lending_limit_gpus: int | None = None

    @property
    def max_borrow_gpus(self) -> float:
        """GPUs above quota the queue may hold (`borrow` false: none)."""
        if not self.borrow:
            return 0.0
        return math.inf if self.borrowing_limit_gpus is None else float(self.borrowing_limit_gpus)


@dataclass(frozen=True)
class NodeFailures:
    """Whole nodes fail (a Poisson process per pool at `nodes / node_mtbf_hours`) and return after a repair."""

    #: hours a failed node is out
    repair_hours: float
    #: one node's mean time between failures, hours (None: the default failure model's published GPU-hours
    #: per failure over the pool's GPUs per node)
    node_mtbf_hours: float | None = None

    def mtbf_hours(self, pool: Pool) -> float:
        if self.node_mtbf_hours is not None:
            return self.node_mtbf_hours
        from bastion.reliability.failures import default_failure_model

        return default_failure_model().mtbf_hours(pool.gpus_per_node)


#: the queue of recorded jobs whose queue the inventory does not name: no quota, every pool
DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class Inventory:
    name: str
    pools: tuple[Pool, ...]
    tenants: tuple[Tenant, ...]
    #: hours from a job's start to its first step (scheduling, container pull, initialisation)
    launch_hours: float = 0.0
    #: node failures and repairs (None: nodes never fail)
    node_failures: NodeFailures | None = None

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    def pool(self, name: str) -> Pool:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def tenant(self, name: str) -> Tenant:
        for t in self.tenants:
            if t.name == name:
                return t
        raise KeyError(name)

    def queue_for(self, name: str) -> str:
        """The tenant a trace's queue name goes to: itself when the inventory names it, else `DEFAULT_QUEUE`."""
        return name if any(t.name == name for t in self.tenants) else DEFAULT_QUEUE

    def with_default_queue(self) -> Inventory:
        """This inventory with the queue `DEFAULT_QUEUE` (no quota, every pool) when it has none of that name."""
        if any(t.name == DEFAULT_QUEUE for t in self.tenants):
            return self
        return replace(self, tenants=(*self.tenants, Tenant(DEFAULT_QUEUE, 0, True)))


#: how a recorded job ended
FINAL_STATES = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Recording:
    """What a trace recorded of a job: it ran `duration_hours` on `gpus` GPUs of `accelerator`."""

    duration_hours: float
    #: GPUs, fractional below one (a share of one GPU)
    gpus: float
    #: catalog accelerator of the recorded run; None: the duration holds on every pool
    accelerator: str | None = None
    user: str = ""
    #: the user's time limit: what a scheduler plans with (None: it plans with the true duration)
    time_limit_hours: float | None = None
    final_state: str = "completed"
    #: when the recorded run started, hours (None: not recorded): for the recorded wait
    recorded_start_hours: float | None = None


@dataclass(frozen=True)
class Job:
    """One training job of a workload."""

    id: str
    tenant: str
    #: model preset name or model file path
    model: str
    #: token budget
    tokens: float
    #: sequences per optimizer step
    global_batch: int
    #: hours from the start of the simulation
    submit_hours: float
    #: tokens per sequence (None: the model's own)
    seq_len: int | None = None
    #: GPUs (None: bastion chooses per pool)
    gpus: int | None = None
    #: higher runs first (fifo/backfill order; fair breaks ties with it)
    priority: int = 0
    #: pools the job may use (empty: all)
    pools: tuple[str, ...] = field(default_factory=tuple)
    #: a recorded job's run (then tokens and global_batch are unused, and model may be empty: not known)
    recorded: Recording | None = None
    #: training, fine-tuning (scheduled as training, its figures reported apart) or inference (a service)
    kind: str = "training"
    #: an elastic job's GPU range (`elastic` policy resizes it within; other policies run it at min_gpus)
    min_gpus: int | None = None
    max_gpus: int | None = None
    #: an inference service's objective: the longest wait for its GPUs, hours (None: none)
    slo_wait_hours: float | None = None

    @property
    def service(self) -> bool:
        """An inference service: a steady GPU reservation, first in the static queue order, never preempted."""
        return self.kind == "inference"


#: what a workload job is (`kind`)
JOB_KINDS = ("training", "fine-tuning", "inference")


@dataclass(frozen=True)
class Workload:
    name: str
    jobs: tuple[Job, ...]


def _table_list(data: dict[str, Any], key: str, what: str, example: str) -> list[dict[str, Any]]:
    items = data.get(key)
    if items is None:
        raise ConfigError(f"{what} has no '{key}' tables.", fix=f"add at least one, e.g. {example}")
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"'{key}' in {what} must be an array of tables.", fix=f"e.g. {example}")
    if not items:
        raise ConfigError(f"{what} has an empty '{key}' list.", fix=f"add at least one, e.g. {example}")
    return items


def _check_keys(item: dict[str, Any], known: set[str], what: str) -> None:
    for key in item:
        if key not in known:
            raise ConfigError(f"Unknown field '{key}' in {what}.{did_you_mean(key, known)}",
                              fix=f"use only these fields: {', '.join(sorted(known))}.")


def _require(item: dict[str, Any], keys: tuple[str, ...], what: str, example: str) -> None:
    for key in keys:
        if key not in item:
            raise ConfigError(f"{what} is missing '{key}'.", fix=f"every entry needs {', '.join(keys)}, e.g. {example}")


def _number(value: Any, name: str, what: str, *, integer: bool = False, minimum: float | None = None,
            strictly: bool = False, maximum: float | None = None) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"'{name}' in {what} must be {kind}, got {value!r}.", fix=f"correct '{name}'.")
    if minimum is not None and (value < minimum or (strictly and value == minimum)):
        bound = f"> {minimum:g}" if strictly else f">= {minimum:g}"
        raise ConfigError(f"'{name}' in {what} must be {bound}, got {value!r}.", fix=f"correct '{name}'.")
    if maximum is not None and value > maximum:
        raise ConfigError(f"'{name}' in {what} must be <= {maximum:g}, got {value!r}: that is beyond anything "
                          f"bastion simulates.", fix=f"correct '{name}'.")
    return int(value) if integer else float(value)


def _string(value: Any, name: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"'{name}' in {what} must be a non-empty string, got {value!r}.", fix=f"correct '{name}'.")
    return value


# inline-table form: the usual double-bracket headers would be eaten by rich markup when the CLI prints them
_POOL_EXAMPLE = 'pool = [{name = "h100", accelerator = "h100-sxm", nodes = 128}]'
_TENANT_EXAMPLE = 'tenant = [{name = "research", quota_gpus = 512, borrow = true}]'
_JOB_EXAMPLE = ('job = [{id = "j1", tenant = "research", model = "llama3-8b", tokens = 2e11, global_batch = 512, '
                'submit_hours = 0}]')


def make_pool(name: str, accelerator: str, nodes: int, software: str = "bastion") -> Pool:
    """A pool of `nodes` catalog nodes of `accelerator` (the catalog's GPUs per node and network) whose jobs run
    `software`."""
    software_stack(software)  # an unknown name fails here, with the known ones
    probe = load_cluster(f"{accelerator}:{_NODE_PROBE}")
    per_node = probe.gpus_per_node
    return Pool(name=name, accelerator=probe.accelerator.name, nodes=nodes, gpus_per_node=per_node,
                cluster=load_cluster(f"{accelerator}:{nodes * per_node}"), software=software)


def inventory_from_mapping(data: dict[str, Any], what: str) -> Inventory:
    _check_keys(data, {"name", "pool", "tenant", "source", "launch_latency_s", "node_failures"}, what)
    pools: list[Pool] = []
    for i, item in enumerate(_table_list(data, "pool", what, _POOL_EXAMPLE)):
        where = f"{what}, pool #{i + 1}"
        _check_keys(item, {"name", "accelerator", "nodes", "software"}, where)
        _require(item, ("name", "accelerator", "nodes"), where, _POOL_EXAMPLE)
        name = _string(item["name"], "name", where)
        if any(p.name == name for p in pools):
            raise ConfigError(f"Pool name '{name}' appears twice in {what}.", fix="give each pool its own name.")
        nodes = _number(item["nodes"], "nodes", where, integer=True, minimum=1)
        software = _string(item.get("software", "bastion"), "software", where)
        try:
            software_stack(software)
        except BastionError as exc:
            raise ConfigError(f"{where}: {exc.problem}", fix=exc.fix,
                              hint="bastion software   # lists the stacks") from exc
        try:
            pools.append(make_pool(name, _string(item["accelerator"], "accelerator", where), int(nodes), software))
        except BastionError as exc:
            raise ConfigError(f"{where}: {exc.problem}", fix=exc.fix or "use a catalog accelerator name.",
                              hint="bastion hardware   # lists the accelerators") from exc
    tenants: list[Tenant] = []
    for i, item in enumerate(data.get("tenant") and _table_list(data, "tenant", what, _TENANT_EXAMPLE) or []):
        where = f"{what}, tenant #{i + 1}"
        _check_keys(item, {"name", "quota_gpus", "borrow", "pools", *_QUEUE_FIELDS}, where)
        _require(item, ("name", "quota_gpus"), where, _TENANT_EXAMPLE)
        name = _string(item["name"], "name", where)
        if any(t.name == name for t in tenants):
            raise ConfigError(f"Tenant '{name}' appears twice in {what}.", fix="give each tenant its own name.")
        borrow = item.get("borrow", True)
        if not isinstance(borrow, bool):
            raise ConfigError(f"'borrow' in {where} must be true or false, got {borrow!r}.", fix="correct 'borrow'.")
        quota = _number(item["quota_gpus"], "quota_gpus", where, integer=True, minimum=1)
        tenants.append(Tenant(name=name, quota_gpus=int(quota), borrow=borrow,
                              pools=_pool_names(item.get("pools", []), where, [p.name for p in pools]),
                              **_queue_fields(item, where)))
    total = sum(p.gpus for p in pools)
    if not tenants:
        tenants.append(Tenant(name="default", quota_gpus=total, borrow=True))
    quota_sum = sum(t.quota_gpus for t in tenants)
    if quota_sum > total:
        raise ConfigError(f"Tenant quotas in {what} add up to {quota_sum} GPUs but the pools hold {total}.",
                          fix="quotas are guaranteed shares: make them sum to at most the cluster's GPUs.")
    launch_s = _number(data.get("launch_latency_s", 0), "launch_latency_s", what, minimum=0,
                       maximum=MAX_LAUNCH_LATENCY_S)
    return Inventory(name=str(data.get("name", what)), pools=tuple(pools), tenants=tuple(tenants),
                     launch_hours=launch_s / 3600.0, node_failures=_node_failures(data.get("node_failures"), what))


_QUEUE_FIELDS = ("priority", "cohort", "borrowing_limit_gpus", "lending_limit_gpus")


def _queue_fields(item: dict[str, Any], where: str) -> dict[str, Any]:
    fields_: dict[str, Any] = {}
    if "priority" in item:
        fields_["priority"] = int(_number(item["priority"], "priority", where, integer=True))
    if "cohort" in item:
        fields_["cohort"] = _string(item["cohort"], "cohort", where)
    for key in ("borrowing_limit_gpus", "lending_limit_gpus"):
        if key in item:
            fields_[key] = int(_number(item[key], key, where, integer=True, minimum=0))
    return fields_


def _node_failures(item: Any, what: str) -> NodeFailures | None:
    if item is None:
        return None
    where = f"{what}, [node_failures]"
    example = "node_failures = {repair_hours = 24}"
    if not isinstance(item, dict):
        raise ConfigError(f"'node_failures' in {what} must be a table.", fix=f"e.g. {example}")
    _check_keys(item, {"repair_hours", "node_mtbf_hours"}, where)
    _require(item, ("repair_hours",), where, example)
    repair = _number(item["repair_hours"], "repair_hours", where, minimum=0, strictly=True)
    mtbf = item.get("node_mtbf_hours")
    return NodeFailures(repair_hours=repair, node_mtbf_hours=None if mtbf is None else
                        _number(mtbf, "node_mtbf_hours", where, minimum=0, strictly=True))


def load_inventory(path: str | Path) -> Inventory:
    path = Path(path)
    data = read_mapping(path)
    data.setdefault("name", path.stem)
    return inventory_from_mapping(data, str(path))


_JOB_FIELDS = {f.name for f in fields(Job)} - {"recorded", "slo_wait_hours"}
_SERVICE_EXAMPLE = ('job = [{id = "chat", tenant = "product", kind = "inference", gpus = 16, submit_hours = 0, '
                    'duration_hours = 720, slo_wait_s = 300}]')


def _kind(item: dict[str, Any], where: str) -> str:
    kind = _string(item.get("kind", "training"), "kind", where)
    if kind not in JOB_KINDS:
        raise ConfigError(f"'kind' in {where} must be one of {', '.join(JOB_KINDS)}, got {kind!r}.",
                          fix="correct 'kind' (training is the default).")
    return kind


def job_from_mapping(item: dict[str, Any], where: str, inventory: Inventory) -> Job:
    kind = _kind(item, where)
    if kind == "inference" and "duration_hours" not in item:
        raise ConfigError(f"{where} is an inference service without 'duration_hours' (how long it serves).",
                          fix=f"give its GPUs and how long it serves, e.g. {_SERVICE_EXAMPLE}")
    recorded = "duration_hours" in item
    _check_keys(item, _RECORDED_FIELDS if recorded else _JOB_FIELDS, where)
    _require(item, ("id", "tenant", "submit_hours") if recorded else
             ("id", "tenant", "model", "tokens", "global_batch", "submit_hours"), where, _JOB_EXAMPLE)
    job_id = str(_string(item["id"], "id", where) if isinstance(item["id"], str) else
                 _number(item["id"], "id", where, integer=True))
    tenant = _string(item["tenant"], "tenant", where)
    tenant_names = [t.name for t in inventory.tenants]
    if tenant not in tenant_names:
        raise ConfigError(f"{where} names tenant '{tenant}', which the inventory does not define."
                          f"{did_you_mean(tenant, tenant_names)}",
                          fix=f"use one of: {', '.join(tenant_names)}, or add that tenant to the cluster file.")
    pools = _pool_names(item.get("pools", []), where, [p.name for p in inventory.pools])
    if recorded:
        return _recorded_job(item, where, job_id, tenant, pools)
    seq_len = item.get("seq_len")
    gpus = item.get("gpus")
    sizes = {key: int(_number(item[key], key, where, integer=True, minimum=1, maximum=MAX_DEVICES))
             for key in ("min_gpus", "max_gpus") if key in item}
    if sizes and (len(sizes) != 2 or gpus is not None or sizes["min_gpus"] > sizes["max_gpus"]):
        raise ConfigError(f"{where}: an elastic job gives 'min_gpus' <= 'max_gpus' and no 'gpus'.",
                          fix="e.g. min_gpus = 8, max_gpus = 64 (or a fixed gpus = 16 alone).")
    return Job(id=job_id, tenant=tenant, model=_string(item["model"], "model", where),
               tokens=_number(item["tokens"], "tokens", where, minimum=0, strictly=True, maximum=MAX_JOB_TOKENS),
               global_batch=int(_number(item["global_batch"], "global_batch", where, integer=True, minimum=1,
                                        maximum=MAX_GLOBAL_BATCH)),
               submit_hours=_number(item["submit_hours"], "submit_hours", where, minimum=0,
                                    maximum=MAX_SUBMIT_HOURS),
               seq_len=None if seq_len is None else int(_number(seq_len, "seq_len", where, integer=True, minimum=1,
                                                                maximum=MAX_SEQ_LEN)),
               gpus=None if gpus is None else int(_number(gpus, "gpus", where, integer=True, minimum=1,
                                                          maximum=MAX_DEVICES)),
               priority=int(_number(item.get("priority", 0), "priority", where, integer=True)),
               pools=pools, kind=kind, **sizes)


def _pool_names(pools: Any, where: str, known: list[str]) -> tuple[str, ...]:
    if isinstance(pools, str):
        pools = [pools]
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise ConfigError(f"'pools' in {where} must be a list of pool names, got {pools!r}.", fix='e.g. pools = ["h100"].')
    for name in pools:
        if name not in known:
            raise ConfigError(f"{where} allows pool '{name}', which the inventory does not define."
                              f"{did_you_mean(name, known)}", fix=f"use one of: {', '.join(known)}.")
    return tuple(pools)


def catalog_accelerator(name: str, where: str) -> str:
    """The catalog name of a recorded run's accelerator (a catalog name, or a device name the catalog knows)."""
    from bastion.specs.hardware import accelerator_for_device, accelerator_names

    if name in accelerator_names():
        return name
    found = accelerator_for_device(name)
    if found is None:
        raise ConfigError(f"{where} names accelerator '{name}', which the catalog does not know."
                          f"{did_you_mean(name, accelerator_names())}",
                          fix="use a catalog name, or leave it empty to take the duration as is on every pool.",
                          hint="bastion hardware   # lists the accelerators")
    return found


def final_state(value: str, where: str) -> str:
    state = value.strip().lower() or "completed"
    if state not in FINAL_STATES:
        raise ConfigError(f"final_state in {where} must be one of {', '.join(FINAL_STATES)}, got {value!r}.",
                          fix="correct it, or leave it empty for completed.")
    return state


_RECORDED_FIELDS = {"id", "tenant", "submit_hours", "duration_hours", "gpus", "accelerator", "user",
                    "time_limit_hours", "final_state", "model", "tokens", "global_batch", "seq_len", "priority",
                    "pools", "kind", "slo_wait_s"}


def _recorded_job(item: dict[str, Any], where: str, job_id: str, tenant: str, pools: tuple[str, ...]) -> Job:
    _require(item, ("gpus",), where, 'job = [{id = "r1", tenant = "research", submit_hours = 0, '
                                     'duration_hours = 2.5, gpus = 0.5}]')
    kind = _kind(item, where)
    slo = item.get("slo_wait_s")
    if slo is not None and kind != "inference":
        raise ConfigError(f"{where} has 'slo_wait_s', which only an inference service has.",
                          fix=f'add kind = "inference" or remove slo_wait_s; e.g. {_SERVICE_EXAMPLE}')
    limit = item.get("time_limit_hours")
    accelerator = item.get("accelerator")
    seq_len = item.get("seq_len")
    recording = Recording(
        duration_hours=_number(item["duration_hours"], "duration_hours", where, minimum=0, maximum=MAX_JOB_HOURS),
        gpus=_number(item["gpus"], "gpus", where, minimum=0, strictly=True),
        accelerator=None if accelerator is None else catalog_accelerator(_string(accelerator, "accelerator", where),
                                                                         where),
        user=str(item.get("user", "")),
        time_limit_hours=None if limit is None else _number(limit, "time_limit_hours", where, minimum=0,
                                                            strictly=True),
        final_state=final_state(_string(item.get("final_state", "completed"), "final_state", where), where))
    return Job(id=job_id, tenant=tenant, model=str(item.get("model", "")),
               tokens=_number(item.get("tokens", 0), "tokens", where, minimum=0, maximum=MAX_JOB_TOKENS),
               global_batch=int(_number(item.get("global_batch", 0), "global_batch", where, integer=True, minimum=0,
                                        maximum=MAX_GLOBAL_BATCH)),
               submit_hours=_number(item["submit_hours"], "submit_hours", where, minimum=0,
                                    maximum=MAX_SUBMIT_HOURS),
               seq_len=None if seq_len is None else int(_number(seq_len, "seq_len", where, integer=True, minimum=1,
                                                                maximum=MAX_SEQ_LEN)),
               priority=int(_number(item.get("priority", 0), "priority", where, integer=True)),
               pools=pools, recorded=recording, kind=kind,
               slo_wait_hours=None if slo is None else _number(slo, "slo_wait_s", where, minimum=0) / 3600.0)


def workload_from_mapping(data: dict[str, Any], what: str, inventory: Inventory) -> Workload:
    _check_keys(data, {"name", "job", "source"}, what)
    jobs = [job_from_mapping(item, f"{what}, job #{i + 1}", inventory)
            for i, item in enumerate(_table_list(data, "job", what, _JOB_EXAMPLE))]
    seen: set[str] = set()
    for job in jobs:
        if job.id in seen:
            raise ConfigError(f"Job id '{job.id}' appears twice in {what}.", fix="give each job its own id.")
        seen.add(job.id)
    return Workload(name=str(data.get("name", what)), jobs=tuple(jobs))


def load_workload(path: str | Path, inventory: Inventory) -> Workload:
    path = Path(path)
    data = read_mapping(path)
    data.setdefault("name", path.stem)
    return workload_from_mapping(data, str(path), inventory)
