"""equivalence_worker.py with a test-only pipeline schedule registered first (test_registered_schedule.py).

Usage: torchrun --nproc-per-node N registered_schedule_worker.py CASES.json
"""

from __future__ import annotations

import sys

from bastion.specs.schedules import INTERLEAVED, SCHEDULES, PipelineSchedule, register_schedule

#: torch's interleaved 1F1B under a name and a bubble formula of its own: adding it touches only the registry
ALIAS = PipelineSchedule(
    name="test-interleaved-alias", torch_class="ScheduleInterleaved1F1B", layout=INTERLEAVED,
    bubble=lambda pp, vpp, m: (pp - 1) / (2 * vpp * m), bubble_note="test: half the interleaved 1F1B bubble",
    chunk_microbatches_in_flight=lambda pp, vpp, m, stage: min(m * vpp, pp * vpp),
    microbatches_multiple_of_pp=True)


def register() -> None:
    if ALIAS.name not in SCHEDULES:
        register_schedule(ALIAS)


if __name__ == "__main__":
    register()
    from equivalence_worker import main

    main(sys.argv[1])
