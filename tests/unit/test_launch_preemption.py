"""The workers' side of a polite stop (runtime/preemption.py): SIGTERM, as Slurm's time-limit path and Kubernetes
send it, turns into "checkpoint this step, then stop" through the fault-tolerance layer's stop_after_step."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the preemption hook runs inside torch workers")

from bastion.runtime.preemption import PreemptionNotice  # noqa: E402
from bastion.runtime.resilience_config import ResilienceConfig  # noqa: E402


@dataclass
class FakeResilience:
    run_dir: Path
    config: ResilienceConfig
    rank: int = 0


def test_sigterm_turns_into_stop_after_the_current_step(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        notice = PreemptionNotice().install()
        resilience = FakeResilience(tmp_path, ResilienceConfig(checkpoint_every=50))
        assert notice.stop_here_if_asked(resilience, 7) is False
        assert resilience.config.stop_after_step == 0
        assert not (tmp_path / "metrics.jsonl").exists()

        os.kill(os.getpid(), signal.SIGTERM)   # the process survives: the handler only takes note
        assert notice.requested and notice.agreed()
        assert notice.stop_here_if_asked(resilience, 8) is True
        assert resilience.config.stop_after_step == 8          # resilience saves step 8, then should_stop()
        assert resilience.config.checkpoint_every == 50        # everything else is kept
        (event,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert (event["event"], event["step"], event["signal"]) == ("preempted", 8, signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_only_rank_zero_records_the_event(tmp_path: Path) -> None:
    notice = PreemptionNotice()
    notice.requested = True
    resilience = FakeResilience(tmp_path, ResilienceConfig(), rank=3)
    assert notice.stop_here_if_asked(resilience, 2) is True
    assert resilience.config.stop_after_step == 2
    assert not (tmp_path / "metrics.jsonl").exists()
