"""The straggler detector's judgement and the slow / flaky-link fault specs (runtime/stragglers.py, faults.py)."""

from __future__ import annotations

import pytest

from bastion.errors import ConfigError
from bastion.runtime.faults import FaultSpec, check_faults, parse_fault
from bastion.runtime.stragglers import StragglerConfig, StragglerDetector, compute_times


def feed(detector: StragglerDetector, steps: list[list[float]]) -> list[tuple[int, int, float, str]]:
    found = []
    for step, times in enumerate(steps, start=1):
        found += [(s.rank, s.step, round(s.factor, 3), s.baseline) for s in detector.observe(step, times)]
    return found


def test_a_persistently_slow_rank_is_found_once_after_warmup_and_window() -> None:
    detector = StragglerDetector(StragglerConfig(factor=1.5, window=3))
    # step 1 is warm-up (left out, however uneven); rank 2 is 3× its peers from then on
    steps = [[9.0, 0.1, 0.1]] + [[1.0, 1.0, 3.0]] * 5
    assert feed(detector, steps) == [(2, 4, 3.0, "peers")]  # window full at step 4; reported once
    assert detector.flagged == {2}


def test_one_slow_step_is_noise_and_a_recovered_rank_can_be_reported_again() -> None:
    detector = StragglerDetector(StragglerConfig(factor=1.5, window=3))
    steps = [[1.0, 1.0]] * 3 + [[1.0, 5.0]] + [[1.0, 1.0]] * 3 + [[1.0, 2.0]] * 3 + [[1.0, 1.0]] * 3 + [[1.0, 2.0]] * 2
    # the single 5 s step never moves the window's median; 2.0 s for two of three steps does, twice
    assert feed(detector, steps) == [(1, 9, 2.0, "peers"), (1, 15, 2.0, "peers")]


def test_below_the_factor_nobody_is_a_straggler_and_the_prediction_is_a_baseline_too() -> None:
    assert feed(StragglerDetector(StragglerConfig(factor=1.5, window=2)), [[1.0, 1.4]] * 4) == []
    detector = StragglerDetector(StragglerConfig(factor=1.5, window=2, predicted_step_s=0.5))
    # every rank 2× the predicted step time: peers agree, the prediction does not
    assert feed(detector, [[1.0, 1.0]] * 3) == [(0, 3, 2.0, "predicted"), (1, 3, 2.0, "predicted")]


def test_compute_time_is_the_step_less_the_wait_in_the_closing_collective() -> None:
    sections = {"step": [1.0, 1.0], "sync_wait": [0.7, 0.01], "forward_backward": [0.2, 0.9], "optimizer": [0, 0]}
    assert compute_times(sections) == pytest.approx([0.3, 0.99])


def test_slow_and_flaky_link_specs() -> None:
    slow = parse_fault("slow:rank=1,factor=3")
    assert slow == FaultSpec("slow", None, 1, factor=3.0, from_step=1)
    assert slow.describe() == "slow:rank=1,factor=3,from_step=1" and slow.fault_id == "slow-rank1"
    assert parse_fault("slow:rank=0,factor=2.5,from_step=4").from_step == 4
    assert parse_fault("flaky-link:rank=2,delay_ms=20").delay_ms == 20.0
    assert parse_fault("flaky-link:rank=2").delay_ms == 50.0
    for bad, message in (("slow:rank=1", "needs a factor"), ("slow:rank=1,factor=0.5", "factor must be >= 1"),
                         ("slow:rank=1,factor=x", "not a number"), ("slow:rank=1,factor=2,step=3", "Cannot read"),
                         ("flaky-link:rank=1,factor=2", "Cannot read"), ("slow:factor=2,from_step=0", ">= 1")):
        with pytest.raises(ConfigError, match=message):
            parse_fault(bad)
    with pytest.raises(ConfigError, match="after the last step"):
        check_faults([parse_fault("slow:rank=1,factor=2,from_step=20")], world_size=2, total_steps=10)


@pytest.mark.parametrize("factor", ["1", "0.5", "nan"])
def test_a_straggler_factor_that_flags_everyone_is_guidance(factor: str, tmp_path, capsys) -> None:
    from bastion.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "tiny", "--plan", str(tmp_path / "plan.json"), "--data", str(tmp_path),
              "--steps", "3", "--run-dir", str(tmp_path / "run"), "--straggler-factor", factor])
    assert exc.value.code == 2 and "--straggler-factor must be a number above 1" in capsys.readouterr().err
