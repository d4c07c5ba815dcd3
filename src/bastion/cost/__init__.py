"""What a training run costs: cloud list prices versus owning the GPUs, and the energy it draws (no torch)."""

from bastion.cost.onprem import OnPremAssumptions, onprem_usd_per_gpu_hour
from bastion.cost.prices import CloudPrice, cloud_prices
from bastion.cost.tco import RunCost, run_cost

__all__ = ["CloudPrice", "OnPremAssumptions", "RunCost", "cloud_prices", "onprem_usd_per_gpu_hour", "run_cost"]
