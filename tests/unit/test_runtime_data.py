"""Token datasets and the global-index sampler: every dp degree sees the same global batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bastion.errors import DataError
from bastion.runtime.data import GlobalSampler, dp_slice, open_dataset, prepare_dataset


@pytest.fixture()
def dataset_dir(tmp_path):
    text = tmp_path / "a.txt"
    text.write_bytes(bytes(range(1, 128)) * 80)  # ASCII 1..127: text (no NUL, valid UTF-8)
    out = tmp_path / "data"
    prepare_dataset([text], out)
    return out


def test_prepare_writes_byte_tokens_and_meta(dataset_dir):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    assert meta == {"dtype": "uint16", "num_tokens": 127 * 80 + 1, "vocab_size": 256, "tokenizer": "byte",
                    "documents": 1, "eod_token": 0}
    tokens = np.memmap(dataset_dir / "tokens.bin", dtype=np.uint16, mode="r")
    assert list(tokens[:3]) == [1, 2, 3] and list(tokens[-2:]) == [127, 0]  # the document ends with EOD


def test_prepare_with_a_huggingface_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2, "</s>": 3},
                                                unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "t.txt").write_text("hello world hello there")
    meta = prepare_dataset([tmp_path / "t.txt"], tmp_path / "d", tokenizer_json=tmp_path / "tokenizer.json")
    assert meta["vocab_size"] == 4 and meta["tokenizer"] == "hf:tokenizer.json" and meta["eod_token"] == 3
    assert list(np.fromfile(tmp_path / "d" / "tokens.bin", dtype=np.uint16)) == [0, 1, 0, 2, 3]


def test_windows_are_input_plus_shifted_target(dataset_dir):
    ds = open_dataset(dataset_dir, seq_len=16)
    assert ds.num_windows == (127 * 80 + 1 - 1) // 16
    sampler = GlobalSampler(ds, global_batch=4, seed=0)
    rows = sampler.tokens_for([0, 1])
    assert rows.shape == (2, 17)
    # byte text 1..127 repeated: each window is consecutive bytes (modulo 127)
    assert all(((row[1:] - row[:-1]) % 127 == 1).all() for row in rows)


def test_global_batches_are_identical_for_every_dp_degree(dataset_dir):
    ds = open_dataset(dataset_dir, seq_len=16)
    sampler = GlobalSampler(ds, global_batch=8, seed=3)
    for _ in range(5):
        ids = sampler.next_global_batch()
        for dp in (1, 2, 4, 8):
            shares = [dp_slice(ids, r, dp) for r in range(dp)]
            assert sum(shares, []) == ids
    assert sampler.consumed_samples == 40


def test_every_window_once_per_epoch_and_epochs_differ(dataset_dir):
    ds = open_dataset(dataset_dir, seq_len=16)
    sampler = GlobalSampler(ds, global_batch=1, seed=0)
    n = ds.num_windows
    first = [sampler.window_of(i) for i in range(n)]
    second = [sampler.window_of(i) for i in range(n, 2 * n)]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert first != second


def test_sampler_state_round_trip_continues_the_sequence(dataset_dir):
    ds = open_dataset(dataset_dir, seq_len=16)
    a = GlobalSampler(ds, global_batch=4, seed=1)
    a.next_global_batch()
    a.next_global_batch()
    b = GlobalSampler(ds, global_batch=4, seed=1)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.next_global_batch() == a.next_global_batch() == [8, 9, 10, 11]
    with pytest.raises(DataError, match="seed"):
        GlobalSampler(ds, global_batch=4, seed=2).load_state_dict(a.state_dict())


def test_missing_or_foreign_directories_give_guidance(tmp_path):
    with pytest.raises(DataError, match="does not exist") as err:
        open_dataset(tmp_path / "nope", seq_len=16)
    assert "bastion data prepare" in err.value.render()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a bastion token dataset"):
        open_dataset(tmp_path / "empty", seq_len=16)


def test_vocabulary_larger_than_the_model_is_refused(dataset_dir):
    with pytest.raises(DataError, match="larger than the model"):
        open_dataset(dataset_dir, seq_len=16, model_vocab=100)


# ---- mixtures ------------------------------------------------------------------------------------------
@pytest.fixture()
def two_datasets(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 3000)
    (tmp_path / "b.txt").write_text("b" * 5000)
    prepare_dataset([tmp_path / "a.txt"], tmp_path / "A")
    prepare_dataset([tmp_path / "b.txt"], tmp_path / "B")
    return tmp_path / "A", tmp_path / "B"


def test_a_mixture_draws_by_weight_deterministically_and_resumes(two_datasets):
    from bastion.runtime.data import open_datasets

    a, b = two_datasets
    datasets, weights = open_datasets(f"{a}=3,{b}=1", seq_len=8)
    assert weights == [0.75, 0.25]
    sampler = GlobalSampler(datasets, global_batch=8, seed=5, weights=weights)
    rows = sampler.tokens_for(list(range(4096)))
    assert float((rows[:, 0] == ord("a")).mean()) == 0.75  # exact in every block of 1024 samples
    # the same global ids give the same rows whatever the batching, and after a state round trip
    again = GlobalSampler(datasets, global_batch=8, seed=5, weights=weights)
    again.load_state_dict(json.loads(json.dumps({"consumed_samples": 1000, "seed": 5})))
    assert (again.tokens_for(again.next_global_batch()) == rows[1000:1008]).all()
    # another seed interleaves differently
    other = GlobalSampler(datasets, global_batch=8, seed=6, weights=weights)
    assert [other.locate(i)[0] for i in range(64)] != [sampler.locate(i)[0] for i in range(64)]


def test_resuming_with_other_mixture_weights_or_datasets_is_refused(two_datasets):
    from bastion.runtime.data import open_datasets

    a, b = two_datasets
    datasets, weights = open_datasets(f"{a}=3,{b}=1", seq_len=8)
    saved = json.loads(json.dumps(GlobalSampler(datasets, global_batch=8, seed=5, weights=weights).state_dict()))
    for data in (f"{a}=1,{b}=1", f"{a}", f"{b}=3,{a}=1"):
        other, other_weights = open_datasets(data, seq_len=8)
        with pytest.raises(DataError, match="other data than this run's --data") as err:
            GlobalSampler(other, global_batch=8, seed=5, weights=other_weights).load_state_dict(saved)
        assert "resume with the --data" in err.value.fix
    same = GlobalSampler(datasets, global_batch=8, seed=5, weights=weights)
    same.load_state_dict(saved)  # unchanged data resumes
    assert same.consumed_samples == 0


@pytest.mark.parametrize("text", ["A=0.7,B=0", "A=0.7,B=-0.3", "A=x", "A=0.5,A=0.5", "=1", "A=0.7,B=0.0001"])
def test_bad_mixture_weights_are_refused(text):
    from bastion.runtime.data import parse_data_mixture

    with pytest.raises(DataError) as err:
        parse_data_mixture(text)
    assert "To fix:" in err.value.render()
