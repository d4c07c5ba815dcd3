"""Prediction of memory per device and time per step for a ParallelPlan (pure Python, no torch)."""

from bastion.predict.estimate import MFU_CONVENTION, Estimate, TimeBreakdown, estimate
from bastion.predict.memory import MemoryBreakdown, model_state_bytes
from bastion.predict.options import PredictOptions

__all__ = ["MFU_CONVENTION", "Estimate", "MemoryBreakdown", "PredictOptions", "TimeBreakdown", "estimate",
           "model_state_bytes"]
