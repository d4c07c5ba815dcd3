"""A checkpoint cannot run code: DCP's `.metadata` goes through a restricted unpickler (single process)."""

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from bastion.errors import CheckpointError
from bastion.rundir import checkpoints as cf
from bastion.runtime import checkpoint as ck
from bastion.runtime import checkpoint_trust as trust


class RunsCommand:
    """Unpickling this runs a shell command (what an attacker puts in a checkpoint)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _model_and_optim():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    optim.step()
    return model, optim


def _save(root, step, async_save=False):
    model, optim = _model_and_optim()
    saver = ck.Checkpointer(ck.CheckpointConfig(root, every=1, async_save=async_save))
    tensors, hparams = ck.capture_tensors_and_hparams([model], [optim])
    saver.save(step, tensors, {"step": step}, {"rng": ck.capture_rng(), "optimizer": hparams})
    saver.close()
    return root / cf.step_dir_name(step)


def _template():
    model, optim = _model_and_optim()
    return ck.capture_tensors_and_hparams([model], [optim])[0]


def _forge(path, name, data: bytes):
    """Replace a file of a committed checkpoint and recompute its manifest, so the sha256 check passes."""
    step = int(path.name.removeprefix("step-"))
    temp = path.with_name(cf.temp_dir_name(step))
    os.rename(path, temp)
    (temp / cf.MANIFEST).unlink()
    (temp / name).write_bytes(data)
    return cf.commit(temp, path, step)


@pytest.mark.parametrize("async_save", [False, True])
def test_real_checkpoints_load_through_the_restricted_unpickler(tmp_path, async_save):
    path = _save(tmp_path, 1, async_save)
    assert trust.metadata_problem(path) is None
    metadata = trust.load_metadata((path / ".metadata").read_bytes())
    assert set(metadata.state_dict_metadata) == set(_template())
    template = _template()
    ck.load_tensors(path, template, distributed=False)


def test_malicious_metadata_never_runs_and_the_checkpoint_is_quarantined(tmp_path):
    marker = tmp_path / "code-ran"
    payload = pickle.dumps(RunsCommand(f"touch {marker}"))
    pickle.loads(payload)  # the payload is live: plain pickle (what DCP uses) runs it
    assert marker.exists()
    marker.unlink()

    root = tmp_path / "checkpoints"
    _save(root, 1)
    bad = _forge(_save(root, 2), ".metadata", payload)
    assert cf.verify(bad) is None  # the sha256 manifest does not stop it
    seen = []
    info = ck.Checkpointer(ck.CheckpointConfig(root)).newest_valid(on_bad=lambda *args: seen.append(args))
    assert info.step == 1 and not marker.exists()
    (bad_info, reason, moved), = seen
    assert bad_info.step == 2 and "untrusted checkpoint" in reason and "posix.system" in reason
    assert moved.parent.name == "quarantine" and "untrusted" in (moved / "QUARANTINED.txt").read_text()
    with pytest.raises(CheckpointError, match="untrusted checkpoint"):
        ck.load_tensors(moved, _template(), distributed=False)
    with pytest.raises(BaseException, match="posix.system"):  # the reader alone refuses too (in every rank)
        dcp.load(_template(), checkpoint_id=str(moved), storage_reader=trust.SafeFileSystemReader(moved),
                 no_dist=True)
    assert not marker.exists()


def _rewritten_metadata(path, change):
    metadata = trust.load_metadata((path / ".metadata").read_bytes())
    change(metadata)
    return pickle.dumps(metadata)


def test_a_bytes_entry_is_refused_as_it_would_be_unpickled_unrestricted(tmp_path):
    # DCP loads a value its metadata calls bytes with torch.load(weights_only=False): a second way in
    marker = tmp_path / "code-ran"
    root = tmp_path / "checkpoints"
    temp = root / cf.temp_dir_name(3)
    template = _template()
    evil = {key: RunsCommand(f"touch {marker}") for key in template}
    dcp.save(evil, checkpoint_id=str(temp), no_dist=True)
    path = cf.commit(temp, root / cf.step_dir_name(3), 3)
    assert "not a tensor" in trust.metadata_problem(path)
    with pytest.raises(CheckpointError, match="not a tensor"):
        ck.load_tensors(path, template, distributed=False)
    # the planner refuses it even behind DCP's own (unrestricted) reader
    with pytest.raises(BaseException, match="tensors only"):
        dcp.load(template, checkpoint_id=str(path), storage_reader=FileSystemReader(path),
                 planner=trust.TensorsOnlyLoadPlanner(), no_dist=True)
    assert not marker.exists()


def _escape_storage(metadata):
    for info in metadata.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"


@pytest.mark.parametrize(("change", "message"), [
    (_escape_storage, "outside the checkpoint"),
    (lambda m: setattr(m, "state_dict_metadata", []), "no table of saved values"),
    (lambda m: setattr(m, "storage_data", None), "where the tensors are stored"),
])
def test_metadata_of_another_shape_is_refused(tmp_path, change, message):
    path = _save(tmp_path, 1)
    forged = _forge(path, ".metadata", _rewritten_metadata(path, change))
    assert message in trust.metadata_problem(forged)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not readable DCP metadata"),
    (b"\x80\x04K\x01.", "holds a int, not DCP Metadata"),
    (pickle.dumps({"state_dict_metadata": {}}), "holds a dict"),
    (b"cbuiltins\neval\n(V1+1\ntR.", "builtins.eval"),
])
def test_garbage_metadata_is_a_reason_not_a_crash(tmp_path, data, message):
    path = _forge(_save(tmp_path, 1), ".metadata", data)
    assert message in trust.metadata_problem(path)


def test_keyed_checkpointer_signs_and_refuses_what_its_key_does_not_authenticate(tmp_path):
    key = b"k" * 32
    model, optim = _model_and_optim()
    tensors, hparams = ck.capture_tensors_and_hparams([model], [optim])
    signed = ck.Checkpointer(ck.CheckpointConfig(tmp_path, async_save=False, key=key))
    signed.save(1, tensors, {"step": 1}, {"optimizer": hparams})
    assert "k" * 32 not in repr(signed.config)
    ck.Checkpointer(ck.CheckpointConfig(tmp_path, async_save=False)).save(2, tensors, {"step": 2}, {})
    reasons = []
    assert signed.newest_valid(on_bad=lambda info, why, moved: reasons.append(why)).step == 1
    assert reasons == ["manifest is not authenticated (no HMAC), but a checkpoint key is set"]
    other = ck.Checkpointer(ck.CheckpointConfig(tmp_path, key=b"another key of 32 bytes, at least"))
    assert other.newest_valid(on_bad=lambda info, why, moved: reasons.append(why)) is None
    assert "HMAC does not match" in reasons[-1]
