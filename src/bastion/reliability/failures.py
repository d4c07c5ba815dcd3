"""How often a job of N accelerators fails, from published job-level observations.

Large-run studies (Llama 3, Meta RSC) find job MTTF inversely proportional to the number of GPUs, so one
observation gives a per-GPU rate: GPU-hours per failure = GPUs × hours / failures, and a job on N GPUs
fails on average every (GPU-hours per failure) / N hours.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bastion.errors import ConfigError, did_you_mean

_DATA = Path(__file__).parent / "data" / "failure_rates.csv"
#: the default observation: the largest and most recent published run
DEFAULT_SOURCE = "llama3-405b-h100"


@dataclass(frozen=True)
class FailureModel:
    """A per-accelerator failure rate derived from one published observation."""

    #: short key of the observation (`llama3-405b-h100`)
    name: str
    #: accelerator-hours between job failures (GPUs × hours / failures)
    gpu_hours_per_failure: float
    #: where the observation comes from
    source: str

    def mtbf_hours(self, num_gpus: int) -> float:
        """Expected hours between failures of a job spanning `num_gpus` accelerators."""
        if num_gpus < 1:
            raise ConfigError(f"num_gpus must be >= 1, got {num_gpus}.")
        return self.gpu_hours_per_failure / num_gpus


@cache
def failure_models() -> dict[str, FailureModel]:
    lines = [line for line in _DATA.read_text().splitlines() if line and not line.startswith("#")]
    models = {}
    for row in csv.DictReader(lines):
        gpu_hours = float(row["gpus"]) * float(row["hours"]) / float(row["failures"])
        models[row["name"]] = FailureModel(row["name"], gpu_hours, row["source"])
    return models


def default_failure_model(name: str = DEFAULT_SOURCE) -> FailureModel:
    models = failure_models()
    if name not in models:
        raise ConfigError(f"Unknown failure observation '{name}'.{did_you_mean(name, models)}",
                          fix=f"use one of: {', '.join(sorted(models))}.")
    return models[name]
