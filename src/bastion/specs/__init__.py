"""Pure-data descriptions: the model, the hardware, and the parallel plan that joins them."""

from bastion.specs.hardware import Accelerator, Cluster, Network, load_accelerator, load_cluster
from bastion.specs.model import ModelSpec, load_model
from bastion.specs.plan import ParallelPlan

__all__ = ["Accelerator", "Cluster", "ModelSpec", "Network", "ParallelPlan", "load_accelerator",
           "load_cluster", "load_model"]
