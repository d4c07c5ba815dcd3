"""fp8 plans: torchao's Float8 linear layers replace the blocks' projections (the LM head stays high precision),
training under torchao's CPU emulation tracks the fp32 run within fp8's error, and where fp8 cannot run (this CPU)
`bastion train` refuses the plan with guidance before writing anything, instead of training another precision."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bastion.errors import PlanError  # noqa: E402
from bastion.runtime.float8 import apply_float8, check_fp8_runnable, convertible  # noqa: E402
from bastion.runtime.model import build_model, init_weights  # noqa: E402
from bastion.specs.model import load_model  # noqa: E402
from helpers.cli import bastion  # noqa: E402


def _model(fp8: str | None):
    spec = load_model("tiny")
    net = build_model(spec)
    net.to_empty(device="cpu")
    init_weights(net, spec, seed=0)
    converted = apply_float8(net, fp8, emulate=True) if fp8 else 0
    return net, converted


def _losses(net: nn.Module, steps: int = 4) -> list[float]:
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    tokens = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(steps):
        logits = net(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_block_projections_become_fp8_and_training_tracks_fp32(recipe):
    from torchao.float8.float8_linear import Float8Linear

    net, converted = _model(recipe)
    kinds = {name.split(".")[-1]: type(m) for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert converted == 4 * 7  # wq wk wv wo w1 w2 w3 in each of tiny's 4 blocks
    assert kinds["wq"] is Float8Linear and kinds["w2"] is Float8Linear
    assert kinds["output"] is nn.Linear  # the LM head keeps high precision
    fp8, fp32 = _losses(net), _losses(_model(None)[0])
    assert fp8[-1] < fp8[0]  # it trains
    assert fp8 != fp32  # the casts are real
    assert all(abs(a - b) / b < 0.05 for a, b in zip(fp8, fp32, strict=True))


def test_unaligned_layers_and_unknown_recipes():
    assert not convertible(nn.Linear(24, 64), "layers.0.attention.wq")
    assert convertible(nn.Linear(32, 64), "layers.0.attention.wq")
    with pytest.raises(PlanError, match="Unknown fp8 recipe"):
        apply_float8(nn.Linear(32, 32), "rowwse")
    with pytest.raises(PlanError, match="need a CUDA GPU") as err:
        check_fp8_runnable(torch.device("cpu"), tp=1)
    assert "bf16" in err.value.fix


def test_train_refuses_an_fp8_plan_on_cpu_before_writing_anything(tmp_path):
    plan = tmp_path / "fp8.json"
    plan.write_text(json.dumps({"dp": 1, "micro_batch": 2, "global_batch": 2, "precision": "fp8"}))
    (tmp_path / "t.txt").write_text("some text to tokenise " * 200)
    assert bastion("data", "prepare", str(tmp_path / "t.txt"), "--out", str(tmp_path / "data")).returncode == 0
    done = bastion("train", "--model", "tiny", "--plan", str(plan), "--data", str(tmp_path / "data"),
                   "--run-dir", str(tmp_path / "run"), "--steps", "2", "--nproc", "1")
    assert done.returncode == 2 and "asks for fp8" in done.stderr and "To fix:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
