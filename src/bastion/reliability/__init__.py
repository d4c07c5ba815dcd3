"""Reliability arithmetic, pure Python: failure rates, the Young/Daly checkpoint interval, goodput."""

from bastion.reliability.failures import FailureModel, default_failure_model, failure_models
from bastion.reliability.goodput import GoodputBreakdown, expected_goodput
from bastion.reliability.interval import daly_interval, young_interval

__all__ = ["FailureModel", "GoodputBreakdown", "daly_interval", "default_failure_model", "expected_goodput",
           "failure_models", "young_interval"]
