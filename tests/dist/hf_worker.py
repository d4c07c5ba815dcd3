"""Load Hugging Face models into bastion's model under several plans (one torchrun launch) and save the logits.

Usage: torchrun --nproc-per-node N hf_worker.py CASES.json
CASES.json: {"tokens": [[...]], "cases": [{"hf_dir": DIR, "plan": PLAN_FILE, "out": LOGITS_FILE}, ...]}. For each
plan every rank builds its share of the model, loads only its shards of the weights (runtime/hf_weights.py) and
runs a forward pass (pipeline stages by hand: stage 0 sends its hidden states to stage 1); the rank holding the
last stage at dp rank 0 and tp rank 0 saves the full logits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from equivalence_worker import run_in_group

from bastion.runtime.hf_weights import load_hf_weights
from bastion.runtime.mesh import build_mesh
from bastion.runtime.parallelize import ParallelizeConfig, parallelize
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan


@torch.no_grad()
def logits_of(hf_dir: str, plan_path: str, tokens: torch.Tensor) -> torch.Tensor | None:
    from torch.distributed.tensor import DTensor

    spec = load_model(hf_dir)
    plan = ParallelPlan.load(plan_path)
    rmesh = build_mesh(plan, torch.device("cpu"))
    model = parallelize(spec, plan, rmesh, ParallelizeConfig(seed=123))   # the random init is overwritten
    load_hf_weights(model.parts, hf_dir)
    part = model.parts[0]
    if model.num_stages == 1:
        out = part(tokens)
    elif model.has_first_stage:
        hidden = part(tokens)
        hidden = hidden.full_tensor() if isinstance(hidden, DTensor) else hidden
        dist.send(hidden.contiguous(), dist.get_global_rank(rmesh.pp_group, 1), group=rmesh.pp_group)
        return None
    else:
        hidden = torch.empty(*tokens.shape, spec.hidden_size)
        dist.recv(hidden, dist.get_global_rank(rmesh.pp_group, 0), group=rmesh.pp_group)
        out = part(hidden)
    out = out.full_tensor() if isinstance(out, DTensor) else out
    return out if rmesh.dp_rank == 0 and rmesh.tp_rank == 0 else None


def main(cases_path: str) -> None:
    spec = json.loads(Path(cases_path).read_text())

    def cases() -> None:
        tokens = torch.tensor(spec["tokens"])
        for case in spec["cases"]:
            logits = logits_of(case["hf_dir"], case["plan"], tokens)
            if logits is not None:
                torch.save(logits, case["out"])
            dist.barrier()

    run_in_group(cases)


if __name__ == "__main__":
    main(sys.argv[1])
