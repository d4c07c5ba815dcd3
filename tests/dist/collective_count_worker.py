"""equivalence_worker.py counting the collectives each rank issues inside every step's forward and backward
(test_gradient_reduction.py).

Usage: torchrun --nproc-per-node N collective_count_worker.py CASES.json
Each case's run directory gets collectives-rank<R>.json: per step, {torch.distributed function: calls}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: the torch.distributed functions FSDP2 reduces and gathers with (torch 2.13 names the single-tensor ones
#: reduce_scatter_single and all_gather_single; 2.11 reduce_scatter_tensor and all_gather_into_tensor)
SPIED = ("all_reduce", "reduce_scatter_tensor", "reduce_scatter_single", "all_gather_into_tensor",
         "all_gather_single")


def install() -> None:
    """Count the SPIED calls made inside `Trainer._forward_backward` (FSDP2 looks them up on torch.distributed at
    each call) and append each step's counts to the case's file."""
    import torch.distributed as dist

    from bastion.runtime.trainer import Trainer

    counts: dict[str, int] = {}
    counting = [False]
    for name in SPIED:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            if counting[0]:
                counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)
    forward_backward = Trainer._forward_backward

    def counting_forward_backward(self: Trainer, inputs: Any, targets: Any) -> Any:
        counts.clear()
        counting[0] = True
        try:
            return forward_backward(self, inputs, targets)
        finally:
            counting[0] = False
            path = Path(self.config.run_dir) / f"collectives-rank{dist.get_rank()}.json"
            steps = json.loads(path.read_text()) if path.exists() else []
            path.write_text(json.dumps([*steps, dict(counts)]))

    Trainer._forward_backward = counting_forward_backward


if __name__ == "__main__":
    install()
    from equivalence_worker import main

    main(sys.argv[1])
