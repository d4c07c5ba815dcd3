"""Atomic commit, manifest verification, quarantine and retention of checkpoint directories (no torch)."""

import json

import pytest

from bastion.errors import CheckpointError
from bastion.rundir import checkpoints as cf


def _write_temp(root, step, payload=b"x" * 1000):
    temp = root / cf.temp_dir_name(step)
    temp.mkdir(parents=True)
    (temp / "__0_0.distcp").write_bytes(payload)
    (temp / "state.json").write_text(json.dumps({"step": step}))
    return temp


def _commit(root, step, payload=b"x" * 1000):
    temp = _write_temp(root, step, payload)
    return cf.commit(temp, root / cf.step_dir_name(step), step)


def test_commit_writes_manifest_with_sizes_and_hashes(tmp_path):
    path = _commit(tmp_path, 4, b"abc")
    manifest = json.loads((path / cf.MANIFEST).read_text())
    assert manifest["step"] == 4
    # sha256("abc") is the FIPS 180-2 test vector
    assert manifest["files"]["__0_0.distcp"] == {
        "bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert not (tmp_path / cf.temp_dir_name(4)).exists()
    assert cf.verify(path) is None
    assert [c.step for c in cf.committed(tmp_path)] == [4]


def test_commit_refuses_to_overwrite(tmp_path):
    _commit(tmp_path, 2)
    with pytest.raises(CheckpointError, match="already exists"):
        _commit(tmp_path, 2)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda p: (p / "__0_0.distcp").write_bytes(b"y" * 1000), "sha256"),
    (lambda p: (p / "__0_0.distcp").write_bytes(b"x" * 999), "bytes"),
    (lambda p: (p / "__0_0.distcp").unlink(), "missing"),
    (lambda p: (p / "extra.distcp").write_bytes(b"1"), "not in the manifest"),
    (lambda p: (p / cf.MANIFEST).unlink(), "no manifest"),
    (lambda p: (p / cf.MANIFEST).write_text("{"), "not valid JSON"),
])
def test_verify_names_what_is_wrong(tmp_path, damage, reason):
    path = _commit(tmp_path, 1)
    damage(path)
    assert reason in cf.verify(path)


def test_newest_valid_quarantines_corrupt_and_falls_back(tmp_path):
    _commit(tmp_path, 3)
    newest = _commit(tmp_path, 6)
    data = bytearray((newest / "__0_0.distcp").read_bytes())
    data[500] ^= 0xFF
    (newest / "__0_0.distcp").write_bytes(bytes(data))
    seen = []
    info = cf.newest_valid(tmp_path, on_bad=lambda i, why, moved: seen.append((i.step, why, moved)))
    assert info.step == 3
    assert seen[0][0] == 6 and "sha256" in seen[0][1]
    moved = seen[0][2]
    assert moved.parent.name == "quarantine" and "sha256" in (moved / "QUARANTINED.txt").read_text()
    assert [c.step for c in cf.committed(tmp_path)] == [3]


def test_unfinished_save_does_not_exist(tmp_path):
    _commit(tmp_path, 3)
    _write_temp(tmp_path, 6)  # killed before the commit
    assert cf.newest_valid(tmp_path).step == 3
    moved = cf.discard_unfinished(tmp_path)
    assert len(moved) == 1 and not (tmp_path / cf.temp_dir_name(6)).exists()
    assert cf.newest_valid(tmp_path / "nothing-here") is None


def test_retention_keeps_last_k_and_every_nth(tmp_path):
    for step in range(2, 21, 2):
        _commit(tmp_path, step)
    deleted = cf.prune(tmp_path, cf.RetentionPolicy(keep_last=2, keep_every=8))
    assert [c.step for c in cf.committed(tmp_path)] == [8, 16, 18, 20]
    assert deleted == [2, 4, 6, 10, 12, 14]
    assert not list(tmp_path.glob(".trash-*"))
    assert cf.RetentionPolicy(keep_last=0).keeps([1, 2]) == {2}  # never delete the newest
