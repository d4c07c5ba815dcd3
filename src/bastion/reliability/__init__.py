"""Reliability arithmetic, pure Python: failure rates, the Young/Daly checkpoint interval, goodput, and the
recovery policies' expected goodput (policies.py)."""

from bastion.reliability.failures import FailureModel, default_failure_model, failure_models
from bastion.reliability.goodput import GoodputBreakdown, expected_goodput
from bastion.reliability.interval import daly_interval, young_interval
from bastion.reliability.policies import POLICIES, PolicyGoodput, PolicyInputs, policy_goodputs, recommend

__all__ = ["POLICIES", "FailureModel", "GoodputBreakdown", "PolicyGoodput", "PolicyInputs", "daly_interval",
           "default_failure_model", "expected_goodput", "failure_models", "policy_goodputs", "recommend",
           "young_interval"]
