"""Run several training cases in one torchrun launch (start-up costs 10-15 s per launch on 2 cores).

Usage (helpers/equivalence.run_cases): torchrun --nproc-per-node N equivalence_worker.py CASES.json
CASES.json: {"data": DIR, "steps": N, "cases": [{"name", "model", "plan", "run_dir", "data"?, "steps"?,
"options"?}, ...]} (a case's "steps" overrides N). Each case is a full
`bastion.runtime.train.train` run in the same process group; rank 0 writes summary.json and final_params.pt.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from bastion.runtime.resilience_config import ResilienceConfig
from bastion.runtime.train import train
from bastion.runtime.train_config import TrainConfig
from bastion.runtime.worker import init_distributed, shutdown_and_exit

#: the cases compare parameters and losses: no checkpoint, not even the final one (`--checkpoint-every never`)
REFERENCE_RUN = ResilienceConfig(save_final=False)


def run_in_group(body: Callable[[], None]) -> None:
    """Run `body` in torchrun's process group and exit cleanly; an exception fails the launch (the test reads
    the exit code). Never returns."""
    init_distributed()
    try:
        body()
    except Exception:  # noqa: BLE001 - report and fail the launch, the test reads the exit code
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        import os

        os._exit(1)
    shutdown_and_exit(0)


def main(cases_path: str) -> None:
    spec = json.loads(Path(cases_path).read_text())

    def cases() -> None:
        for case in spec["cases"]:
            train(TrainConfig(model=case["model"], plan=case["plan"], data=case.get("data", spec["data"]),
                              steps=case.get("steps", spec["steps"]), run_dir=case["run_dir"],
                              seed=spec.get("seed", 0), progress=False, save_final_params=True,
                              **{"resilience": REFERENCE_RUN, **case.get("options", {})}))

    run_in_group(cases)


if __name__ == "__main__":
    main(sys.argv[1])
