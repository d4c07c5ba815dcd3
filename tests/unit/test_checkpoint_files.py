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


def test_a_bad_checkpoint_another_process_set_aside_first_is_passed_over(tmp_path, monkeypatch):
    # the torchft replica groups of a fresh launch each check the run's one checkpoint directory: the group
    # that finds a bad checkpoint second finds it gone, and both fall back to the same previous one
    _commit(tmp_path, 3)
    _commit(tmp_path, 6)
    verify = cf.verify

    def another_group_moves_it_first(path, key=None):
        if path.name == cf.step_dir_name(6):
            cf.quarantine(path, "bad (seen by another group)")
            return "bad"
        return verify(path, key)

    monkeypatch.setattr(cf, "verify", another_group_moves_it_first)
    seen = []
    assert cf.newest_valid(tmp_path, on_bad=lambda *bad: seen.append(bad)).step == 3
    assert seen == [] and len(list((tmp_path / "quarantine").glob("step-*[0-9]"))) == 1


def test_retention_keeps_last_k_and_every_nth(tmp_path):
    for step in range(2, 21, 2):
        _commit(tmp_path, step)
    deleted = cf.prune(tmp_path, cf.RetentionPolicy(keep_last=2, keep_every=8))
    assert [c.step for c in cf.committed(tmp_path)] == [8, 16, 18, 20]
    assert deleted == [2, 4, 6, 10, 12, 14]
    assert not list(tmp_path.glob(".trash-*"))
    assert cf.RetentionPolicy(keep_last=0).keeps([1, 2]) == {2}  # never delete the newest


KEY = b"0123456789abcdef0123456789abcdef"


def test_keyed_manifest_is_authenticated(tmp_path):
    temp = _write_temp(tmp_path, 5)
    path = cf.commit(temp, tmp_path / cf.step_dir_name(5), 5, key=KEY)
    assert cf.verify(path, KEY) is None and cf.verify(path) is None  # without a key: a checksum, as before
    assert "does not match the checkpoint key" in cf.verify(path, b"another key of the same length!!")
    # an attacker edits a file and recomputes the manifest's sha256 (not the HMAC: no key)
    (path / "__0_0.distcp").write_bytes(b"evil")
    manifest = json.loads((path / cf.MANIFEST).read_text())
    manifest["files"]["__0_0.distcp"] = {"bytes": 4, "sha256": cf._sha256(path / "__0_0.distcp")}
    (path / cf.MANIFEST).write_text(json.dumps(manifest))
    assert "does not match the checkpoint key" in cf.verify(path, KEY)
    del manifest[cf.MANIFEST_MAC]
    (path / cf.MANIFEST).write_text(json.dumps(manifest))
    assert cf.verify(path) is None  # the checksum alone is satisfied ...
    assert "not authenticated" in cf.verify(path, KEY)  # ... a key is not


def test_symbolic_links_are_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)  # the same bytes: the manifest's sha256 alone would accept the link
    path = _commit(tmp_path / "a", 1)
    (path / "__0_0.distcp").unlink()
    (path / "__0_0.distcp").symlink_to(outside)
    assert "__0_0.distcp is a symbolic link" in cf.verify(path)
    linked_dir = _commit(tmp_path / "b", 1)
    (linked_dir / "sub").symlink_to(tmp_path, target_is_directory=True)
    assert "sub is a symbolic link" in cf.verify(linked_dir)
    elsewhere = _commit(tmp_path / "c", 1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / cf.step_dir_name(1)).symlink_to(elsewhere, target_is_directory=True)
    reasons = []
    assert cf.newest_valid(tmp_path / "d", on_bad=lambda i, why, moved: reasons.append((why, moved))) is None
    assert "symbolic link" in reasons[0][0] and elsewhere.is_dir()  # only the link was moved aside
    assert not (elsewhere / "QUARANTINED.txt").exists()  # nothing written through it


def test_quarantine_never_writes_through_a_link_the_checkpoint_holds(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = _commit(tmp_path / "checkpoints", 1)
    (path / "QUARANTINED.txt").symlink_to(victim)
    assert "symbolic link" in cf.verify(path)
    moved = cf.quarantine(path, "bad")
    assert victim.read_text() == "precious\n"
    assert (moved.parent / f"{moved.name}.QUARANTINED.txt").read_text() == "bad\n"
    assert cf.quarantine_reason(moved) == "bad"
    assert [p.name for p in cf.quarantined_checkpoints(tmp_path / "checkpoints")] == [moved.name]


def test_checkpoint_key_comes_from_the_file_or_the_environment(tmp_path, monkeypatch):
    from bastion.errors import ConfigError
    from bastion.runtime.checkpoint_key import KEY_ENV, checkpoint_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    assert checkpoint_key() is None
    monkeypatch.setenv(KEY_ENV, " env-key-of-enough-bytes \n")
    assert checkpoint_key() == b"env-key-of-enough-bytes"
    key_file = tmp_path / "ckpt.key"
    key_file.write_bytes(KEY + b"\n")
    assert checkpoint_key(key_file) == KEY  # the file, when given, wins
    key_file.write_text("short")
    with pytest.raises(ConfigError, match="5 byte") as short:
        checkpoint_key(key_file)
    assert short.value.fix and short.value.hint
    with pytest.raises(ConfigError, match="cannot read it"):
        checkpoint_key(tmp_path / "missing.key")
