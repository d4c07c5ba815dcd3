"""Checkpoints for tests: a fake committed one (JSON + manifest, no tensors), and a real one read back."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.rundir import checkpoints as cf
from bastion.specs.model import load_model


def fake_checkpoint(run_dir: Path, model: str, step: int = 4) -> Path:
    """A committed checkpoint holding only state.json and a dummy tensor file: enough for every check that reads
    JSON and manifests, never tensors."""
    root = run_dir / "checkpoints"
    temp = root / cf.temp_dir_name(step)
    temp.mkdir(parents=True)
    (temp / "state.json").write_text(json.dumps({"step": step, "model": load_model(model).to_dict()}))
    (temp / "__0_0.distcp").write_bytes(b"\0" * 64)
    return cf.commit(temp, root / cf.step_dir_name(step), step)


def final_state(run_dir: Path, steps: int) -> dict:
    """Model weights and Adam moments of the step-`steps` checkpoint, loaded through DCP into plain tensors."""
    import torch
    import torch.distributed.checkpoint as dcp

    path = run_dir / "checkpoints" / f"step-{steps:08d}"
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    wanted = {k: torch.empty(m.size, dtype=m.properties.dtype)
              for k, m in metadata.state_dict_metadata.items()
              if k.startswith("model.") or k.endswith((".exp_avg", ".exp_avg_sq"))}
    dcp.load(wanted, checkpoint_id=str(path), no_dist=True)
    return wanted
