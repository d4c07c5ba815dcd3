"""The cost of one training run: predicted step time → GPU-hours (with failures) → dollars and energy.

Chain: `estimate` gives tokens/s; the token budget gives compute hours; the failure model (job MTBF from a
published run, scaled by GPU count), the checkpoint stall and Daly's interval give expected goodput, so wall hours =
compute hours / goodput; wall GPU-hours are priced at each cloud list price and at the owned cost per busy GPU-hour.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.cost.onprem import OnPremAssumptions, capex_per_gpu, gpu_power_kw, onprem_usd_per_gpu_hour
from bastion.cost.prices import cloud_prices
from bastion.errors import ConfigError
from bastion.predict import estimate
from bastion.reliability import daly_interval, default_failure_model, expected_goodput
from bastion.reliability.policies import DEFAULT_RESTART_S
from bastion.specs import Cluster, ModelSpec, ParallelPlan

#: device-to-host copy rate an async checkpoint stalls on (PCIe Gen5 x16 at about half its 64 GB/s peak)
ASYNC_SNAPSHOT_GBPS = 25.0


def async_checkpoint_stall_s(state_bytes: float) -> float:
    """Seconds an async checkpoint blocks training: each GPU's parameters + optimizer copied to host (at least 1 s)."""
    return max(1.0, state_bytes / (ASYNC_SNAPSHOT_GBPS * 1e9))


def checkpoint_reload_s(cluster: Cluster, state_bytes: float) -> float:
    """Seconds to read the node's states back after a restart, when a machine profile measured the run
    directory's read bandwidth; 0 otherwise (the catalog has no such figure: the restart time stands alone)."""
    read_gbs = cluster.profile.host_overheads.checkpoint_read_gbs if cluster.profile else 0.0
    return state_bytes * cluster.gpus_per_node / (read_gbs * 1e9) if read_gbs > 0 else 0.0


def checkpoint_stall(cluster: Cluster, state_bytes: float) -> tuple[float, str]:
    """(seconds a checkpoint blocks training, where the figure comes from) for `state_bytes` of parameters +
    optimizer per device. A machine profile that measured the run directory's filesystem (a host CPU's: its
    background writer runs on the cores the ranks compute on, so nothing hides the write) gives the node's
    states written at the measured bandwidth; otherwise the async device-to-host snapshot."""
    profile = cluster.profile
    write_gbs = profile.host_overheads.checkpoint_write_gbs if profile else 0.0
    if write_gbs > 0:
        node_bytes = state_bytes * cluster.gpus_per_node
        return node_bytes / (write_gbs * 1e9), (
            f"checkpoint stall {node_bytes / (write_gbs * 1e9):.2f} s: the node's {node_bytes / 1e9:.2f} GB of "
            f"parameters + optimizer written at {write_gbs:.2g} GB/s, measured by {profile.label}")
    stall = async_checkpoint_stall_s(state_bytes)
    return stall, (f"async checkpoint stall {stall:.1f} s: each GPU's {state_bytes / 1e9:.1f} GB of parameters + "
                   f"optimizer copied to host at {ASYNC_SNAPSHOT_GBPS:g} GB/s")


@dataclass(frozen=True)
class RunCost:
    model: str
    cluster: str
    num_gpus: int
    tokens: float
    step_time_s: float
    tokens_per_s: float
    mfu: float
    compute_hours: float
    mtbf_hours: float
    checkpoint_stall_s: float
    checkpoint_interval_s: float
    expected_goodput: float
    wall_hours: float
    gpu_hours: float
    energy_mwh: float
    onprem_usd: float | None
    onprem_usd_per_gpu_hour: dict[str, float] | None
    cloud: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_cost(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, tokens: float, seq_len: int | None = None,
             onprem: OnPremAssumptions | None = None, mtbf_hours: float | None = None,
             checkpoint_stall_s: float | None = None, restart_s: float = DEFAULT_RESTART_S,
             options: Any = None) -> RunCost:
    """Predict the wall time, energy and cost of training `model` on `tokens` tokens with `plan`, on the
    software `options` (a PredictOptions; None = bastion's runtime) describes."""
    if not (math.isfinite(tokens) and tokens > 0):
        raise ConfigError(f"token budget must be positive, got {tokens:g}.", fix="pass --tokens, e.g. 1e12.")
    onprem = onprem or OnPremAssumptions()
    assumptions: list[str] = []
    est = estimate(model, cluster, plan, seq_len=seq_len, options=options)
    assumptions.append(f"step time from rates: {cluster.rates_source}")
    if not est.fits:
        assumptions.append(f"the plan does NOT fit in memory ({est.memory.total / 2**30:.1f} GiB > "
                           f"{est.hbm_bytes / 2**30:.1f} GiB): costs are for a run that cannot start")
    compute_hours = tokens / est.tokens_per_s / 3600.0

    if mtbf_hours is None:
        failures = default_failure_model()
        mtbf_hours = failures.mtbf_hours(cluster.num_gpus)
        assumptions.append(f"MTBF {mtbf_hours:.1f} h for {cluster.num_gpus} GPUs from {failures.source}")
    if checkpoint_stall_s is None:
        checkpoint_stall_s, source = checkpoint_stall(cluster, est.memory.params + est.memory.optimizer)
        assumptions.append(source)
    mtbf_s = mtbf_hours * 3600.0
    interval_s = daly_interval(checkpoint_stall_s, mtbf_s)
    reload_s = checkpoint_reload_s(cluster, est.memory.params + est.memory.optimizer)
    if reload_s:
        assumptions.append(f"a restart also reloads the checkpoint: {reload_s:.2f} s at the read bandwidth "
                           f"{cluster.profile.host_overheads.checkpoint_read_gbs:.2g} GB/s measured by "
                           f"{cluster.profile.label}")
        restart_s += reload_s
    goodput = expected_goodput(interval_s, checkpoint_stall_s, mtbf_s, restart_s)
    if goodput <= 0:
        raise ConfigError(f"With an MTBF of {mtbf_hours:.2f} h the job would never make progress.",
                          fix="use fewer GPUs per job, a faster checkpoint or a larger --mtbf-hours.")
    assumptions.append(f"checkpoint every {interval_s / 60:.1f} min (Daly), restart {restart_s / 60:.0f} min")
    wall_hours = compute_hours / goodput
    gpu_hours = wall_hours * cluster.num_gpus
    acc = cluster.accelerator
    energy_mwh = gpu_hours * gpu_power_kw(acc) * onprem.pue / 1000.0
    assumptions.append(f"power {gpu_power_kw(acc) * 1000:.0f} W per GPU with its server share "
                       f"(1.34 × {acc.tdp_w:g} W TDP) × PUE {onprem.pue:g}")

    try:
        per_hour = onprem_usd_per_gpu_hour(acc, onprem)
        capex, capex_source = capex_per_gpu(acc, onprem)
        onprem_usd: float | None = gpu_hours * per_hour["total"]
        assumptions.append(f"owned: ${capex:,.0f}/GPU ({capex_source}) over {onprem.amortisation_years:g} y at "
                           f"{onprem.utilisation:.0%} utilisation, ${onprem.electricity_usd_per_kwh:g}/kWh")
    except ConfigError as exc:
        per_hour, onprem_usd = None, None
        assumptions.append(f"no on-prem figure: {exc.problem}")

    cloud = [{"provider": p.provider, "offering": p.offering, "pricing": p.pricing,
              "usd_per_gpu_hour": p.usd_per_gpu_hour, "as_of": p.as_of, "usd": gpu_hours * p.usd_per_gpu_hour}
             for p in cloud_prices(acc.name)]
    if not cloud:
        assumptions.append(f"no cloud list price for {acc.name} in bastion's price data")
    return RunCost(model=model.name, cluster=cluster.name, num_gpus=cluster.num_gpus, tokens=tokens,
                   step_time_s=est.step_time_s, tokens_per_s=est.tokens_per_s, mfu=est.mfu,
                   compute_hours=compute_hours, mtbf_hours=mtbf_hours, checkpoint_stall_s=checkpoint_stall_s,
                   checkpoint_interval_s=interval_s, expected_goodput=goodput, wall_hours=wall_hours,
                   gpu_hours=gpu_hours, energy_mwh=energy_mwh, onprem_usd=onprem_usd,
                   onprem_usd_per_gpu_hour=per_hour, cloud=cloud, assumptions=assumptions)
