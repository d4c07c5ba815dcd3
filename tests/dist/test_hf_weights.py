"""Hugging Face weights under real multi-process plans: logits equal transformers' under dp2×tp2 and pp2×dp2 (a
Llama), dp4×ep2 and dp2×tp2×ep2 (a Mixtral), dp2×tp2×ep2 (a Qwen3-MoE: per-head q/k norms under tp), and
the README walk-through (prepare with a HF tokenizer, fine-tune from --init-from under FSDP, export, load the
export with transformers) with its logits equal to bastion's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers.cli import bastion  # noqa: E402
from helpers.hf_models import hf_logits, make_llama, make_mixtral, make_qwen3_moe, tokens_for  # noqa: E402

pytestmark = pytest.mark.dist
WORKER = Path(__file__).with_name("hf_worker.py")
#: the commands run in the test's directory: the package under test is found by absolute path
_SOURCES = str(Path(__import__("bastion").__file__).parents[1])
ENV = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
           PYTHONPATH=os.pathsep.join([_SOURCES, *filter(None, [os.environ.get("PYTHONPATH")])]))


#: the plans each group of HF models is loaded under (test id -> {model maker: {plan name: plan}})
LOGITS_CASES = {
    "llama": {make_llama: {"dp2tp2": {"dp": 2, "tp": 2, "zero_stage": 3},
                           "pp2dp2": {"dp": 2, "pp": 2, "pp_schedule": "1f1b", "zero_stage": 3}}},
    "mixtral-qwen3-moe": {
        make_mixtral: {"dp4ep2": {"dp": 4, "ep": 2, "zero_stage": 3}, "dp2tp2ep2": {"dp": 2, "tp": 2, "ep": 2}},
        make_qwen3_moe: {"dp2tp2ep2": {"dp": 2, "tp": 2, "ep": 2, "zero_stage": 3}}},
}


@pytest.fixture(scope="module")
def loaded_logits(tmp_path_factory) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Every case of LOGITS_CASES in one torchrun launch of 4 processes (start-up dominates these forwards):
    test id -> {case: (the plan's logits, transformers' logits)}."""
    from bastion.launch.local import free_port

    tmp_path = tmp_path_factory.mktemp("hf-logits")
    tokens = tokens_for(96)
    cases, expected = [], {}
    for group, models in LOGITS_CASES.items():
        for make, plans in models.items():
            hf_dir = tmp_path / make.__name__
            reference = make(hf_dir)
            with torch.no_grad():
                logits = reference(tokens).logits
            for name, plan in plans.items():
                case = f"{make.__name__}-{name}"
                path = tmp_path / f"{case}.json"
                path.write_text(json.dumps({**plan, "micro_batch": 1, "global_batch": 4, "precision": "fp32"}))
                cases.append({"hf_dir": str(hf_dir), "plan": str(path), "out": str(tmp_path / f"{case}.pt")})
                expected.setdefault(group, {})[case] = logits
    (tmp_path / "cases.json").write_text(json.dumps({"tokens": tokens.tolist(), "cases": cases}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(WORKER), str(tmp_path / "cases.json")]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    return {group: {case: (torch.load(tmp_path / f"{case}.pt"), logits) for case, logits in of_group.items()}
            for group, of_group in expected.items()}


@pytest.mark.parametrize("group", list(LOGITS_CASES))
def test_loaded_weights_give_transformers_logits_under_tp_dp_and_pp(loaded_logits, group):
    """Each rank reads only its shard of every tensor (a mixture's experts: its own experts, each from its own
    HF tensor) and the plan's logits equal transformers'."""
    for case, (got, logits) in loaded_logits[group].items():
        assert float((got - logits).abs().max()) < 1e-5, case


def _bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = bastion(*args, cwd=cwd, timeout=600)
    assert done.returncode == 0, f"bastion {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def test_walkthrough_fine_tune_from_hf_and_export(tmp_path):
    """The README's walk-through, command by command."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from bastion.runtime.checkpoint import load_tensors
    from bastion.runtime.data import GlobalSampler, open_dataset
    from bastion.runtime.model import build_model, init_weights
    from bastion.specs.model import load_model

    # a tiny HF model with its tokenizer, as a downloaded one would be
    text = "the quick brown fox jumps over the lazy dog while the cat sleeps " * 60
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    reference = make_llama(tmp_path / "tiny-llama")
    tokenizer.save(str(tmp_path / "tiny-llama" / "tokenizer.json"))
    sentences = text.strip().split(" while ")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "text": sentences[i % 2] + " "}) + "\n"
                                                   for i in range(120)))
    (tmp_path / "plan.json").write_text(json.dumps({"dp": 2, "zero_stage": 3, "micro_batch": 2, "global_batch": 4,
                                                    "precision": "fp32"}))
    _bastion("data", "prepare", "corpus.jsonl", "--field", "text", "--out", "data", "--eval-fraction", "0.25",
             "--tokenizer", "tiny-llama/tokenizer.json", cwd=tmp_path)
    _bastion("train", "--model", "tiny-llama/config.json", "--init-from", "tiny-llama", "--plan", "plan.json",
             "--data", "data", "--steps", "3", "--checkpoint-every", "3", "--lr", "1e-3", "--run-dir", "run",
             "--nproc", "2", "--no-progress", "--eval-every", "3", cwd=tmp_path)
    _bastion("export", "run", "--format", "hf", "--out", "exported", cwd=tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evals"][-1]["step"] == 3 and 0 < summary["eval_loss"] < 20   # evaluated on the held-out split

    # step 1 trained the HF weights: its loss is transformers' loss on the same batch
    spec = load_model(str(tmp_path / "tiny-llama"))
    sampler = GlobalSampler(open_dataset(tmp_path / "data", spec.seq_len, spec.vocab_size), 4, seed=0)
    rows = torch.from_numpy(sampler.tokens_for(sampler.next_global_batch()))
    with torch.no_grad():
        first = torch.nn.functional.cross_entropy(reference(rows[:, :-1]).logits.flatten(0, 1), rows[:, 1:].flatten())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r]
    assert abs(losses[0] - float(first)) < 1e-5 and len(losses) == 3

    # transformers loads the export; its logits are bastion's from the final checkpoint
    net = build_model(spec)
    net.to_empty(device="cpu")
    init_weights(net, spec, 0)
    load_tensors(tmp_path / "run" / "checkpoints" / "step-00000003",
                 {f"model.{n}": p.detach() for n, p in net.named_parameters()}, distributed=False)
    tokens = tokens_for(spec.vocab_size)
    with torch.no_grad():
        ours = net(tokens)
        before = reference(tokens).logits
    theirs = hf_logits(tmp_path / "exported", tokens)
    assert float((theirs - ours).abs().max()) < 1e-5
    assert float((theirs - before).abs().max()) > 1e-4   # fine-tuned: not the weights it started from
    from transformers import AutoTokenizer

    exported = json.loads((tmp_path / "exported" / "generation_config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (1, 2)   # carried from the --init-from config
    loaded = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert loaded("the lazy cat")["input_ids"] == tokenizer.encode("the lazy cat").ids
