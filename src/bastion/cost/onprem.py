"""Owning the GPUs: amortised capital, facility operations and electricity per GPU-hour.

Defaults come from data/onprem_costs.csv (H100 era, 2023–2024): all-in cost per H100 including InfiniBand
$45,800 (small cluster) to $51,600 (large); a typical 8-GPU H100 server draws 6.5–8.5 kW (mid 7.5 kW, i.e.
1.34 × the GPUs' 8 × 700 W TDP, which we apply to other accelerators' TDP); PUE 1.3 for a new large build;
US industrial electricity ~8.25 ¢/kWh; 5-year depreciation (Meta) ; facility operations ~$50,000 per node over
its life. The purchase price per GPU is catalog data (specs/data/accelerators.toml, capex_per_gpu_usd, quoting the
row of onprem_costs.csv it comes from); it is published only for H100-class parts: other accelerators need
--capex-per-gpu.
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.errors import ConfigError
from bastion.specs.hardware import Accelerator, accelerator_names, load_accelerator

HOURS_PER_YEAR = 8760.0
#: typical 8-GPU H100 server power over its GPUs' TDP: 7.5 kW / (8 × 0.7 kW)
SERVER_POWER_OVER_GPU_TDP = 7.5 / 5.6


@dataclass(frozen=True)
class OnPremAssumptions:
    """What owning a GPU costs, per GPU."""

    #: purchase price per GPU incl. server share and cluster network, USD (None = catalog default)
    capex_per_gpu_usd: float | None = None
    #: straight-line depreciation period, years
    amortisation_years: float = 5.0
    #: fraction of owned hours that do useful work (the owner pays for idle hours too)
    utilisation: float = 0.8
    #: data-centre power usage effectiveness
    pue: float = 1.3
    #: USD per kWh
    electricity_usd_per_kwh: float = 0.0825
    #: facility operations (space, cooling upkeep, staff share) per 8-GPU node over its life, USD
    facility_ops_per_node_usd: float = 50_000.0

    def __post_init__(self) -> None:
        if not 0 < self.utilisation <= 1:
            raise ConfigError(f"utilisation must be in (0, 1], got {self.utilisation}.",
                              fix="give the fraction of owned GPU-hours that are busy, e.g. 0.8.")
        if not self.amortisation_years > 0:
            raise ConfigError(f"The amortisation period must be > 0 years, got {self.amortisation_years:g}.",
                              fix="give the depreciation period of owned GPUs, e.g. --years 5.")
        if not self.pue >= 1:
            raise ConfigError(f"PUE must be >= 1 (facility power over IT power), got {self.pue:g}.",
                              fix="e.g. --pue 1.3; 1.0 would be a data centre with no cooling overhead.")
        if not self.electricity_usd_per_kwh >= 0:
            raise ConfigError(f"The electricity price must be >= 0 USD/kWh, got {self.electricity_usd_per_kwh:g}.",
                              fix="e.g. --electricity 0.0825.")


def gpu_power_kw(acc: Accelerator) -> float:
    """Wall power of one GPU with its share of the server (CPUs, NICs, fans), before PUE."""
    if acc.tdp_w <= 0:  # not published (tpu-v5p): no energy figure rather than a silent 0 kWh
        raise ConfigError(f"bastion's catalog has no published power figure for {acc.name}, so its energy and "
                          "owned cost cannot be computed.",
                          fix="describe the cluster in a TOML file whose [accelerator] table sets tdp_w, and pass "
                              "it as --cluster FILE.")
    return acc.tdp_w * SERVER_POWER_OVER_GPU_TDP / 1000.0


def capex_per_gpu(acc: Accelerator, assumptions: OnPremAssumptions) -> tuple[float, str]:
    """All-in purchase price per GPU (USD) and where it comes from: given, or the accelerator's catalog row."""
    if assumptions.capex_per_gpu_usd is not None:
        return assumptions.capex_per_gpu_usd, "given"
    if acc.capex_per_gpu_usd <= 0:
        known = [name for name in accelerator_names() if load_accelerator(name).capex_per_gpu_usd > 0]
        raise ConfigError(f"No published purchase price for {acc.name} in bastion's cost data.",
                          fix="pass --capex-per-gpu USD (all-in per GPU incl. server share and network).",
                          hint=f"known: {', '.join(known)}")
    return acc.capex_per_gpu_usd, acc.capex_source


def onprem_usd_per_gpu_hour(acc: Accelerator, assumptions: OnPremAssumptions) -> dict[str, float]:
    """Cost of one *busy* GPU-hour when owning: idle hours (1 − utilisation) are paid by the busy ones."""
    capex, _ = capex_per_gpu(acc, assumptions)
    busy_hours = assumptions.amortisation_years * HOURS_PER_YEAR * assumptions.utilisation
    capital = capex / busy_hours
    facility = assumptions.facility_ops_per_node_usd / 8.0 / busy_hours
    energy = gpu_power_kw(acc) * assumptions.pue * assumptions.electricity_usd_per_kwh
    return {"capital": capital, "facility": facility, "energy": energy, "total": capital + facility + energy}
