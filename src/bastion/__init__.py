"""bastion: plan, run, recover and account hybrid-parallel LLM training."""

__version__ = "0.1.0"
