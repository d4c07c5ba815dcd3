"""Fault-spec parsing, the NaN guard, the auto interval, the watchdog and goodput accounting (no torch)."""

import subprocess
import sys
import textwrap

import pytest

from bastion.errors import ConfigError
from bastion.reliability import daly_interval, default_failure_model
from bastion.rundir.accounting import account
from bastion.rundir.metrics import read_records
from bastion.runtime import faults
from bastion.runtime.recovery import NanGuard, NanGuardConfig, choose_interval
from bastion.runtime.watchdog import HANG_EXIT_CODE


@pytest.mark.parametrize(("text", "expected"), [
    ("kill:rank=1,step=7", faults.FaultSpec("kill", 7, 1)),
    ("hang:rank=0,step=5", faults.FaultSpec("hang", 5, 0)),
    ("nan:step=9", faults.FaultSpec("nan", 9, 0)),
    ("kill-during-save:step=8", faults.FaultSpec("kill-during-save", 8, 0)),
    ("corrupt-latest", faults.FaultSpec("corrupt-latest", None, 0)),
    ("bad-gpu:rank=2", faults.FaultSpec("bad-gpu", None, 2)),
])
def test_parse_documented_faults(text, expected):
    assert faults.parse_fault(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("kil:step=3", "Did you mean 'kill'"),
    ("kill:rank=1", "needs a step"),
    ("hang:step=x", "not a whole number"),
    ("nan:when=3", "Cannot read"),
    ("nan:step=0", "step must be >= 1"),
    ("bad-gpu:rank=1,step=3", "Cannot read"),
])
def test_bad_fault_specs_explain_themselves(text, message):
    with pytest.raises(ConfigError, match=message):
        faults.parse_fault(text)


def test_faults_that_cannot_fire_are_rejected_up_front():
    with pytest.raises(ConfigError, match="4 ranks"):
        faults.check_faults([faults.parse_fault("kill:rank=4,step=2")], world_size=4, total_steps=10)
    with pytest.raises(ConfigError, match="after the last step"):
        faults.check_faults([faults.parse_fault("nan:step=11")], world_size=4, total_steps=10)


def test_fault_fires_once_across_restarts(tmp_path):
    spec = faults.parse_fault("nan:step=3")
    first = faults.FaultInjector([spec], tmp_path, rank=0)

    class Param:
        def __init__(self):
            self.grad = Grad()

    class Grad:
        value = 1.0

        def fill_(self, v):
            self.value = v

    params = [Param()]
    assert not first.poison_gradients(2, params)
    assert first.poison_gradients(3, params) and params[0].grad.value != params[0].grad.value  # NaN
    restarted = faults.FaultInjector([spec], tmp_path, rank=0)  # a new process reading the run dir
    assert not restarted.poison_gradients(3, [Param()])
    other_rank = faults.FaultInjector([spec], tmp_path, rank=1)
    assert other_rank.mine == []
    events = [r for r in read_records(tmp_path) if r.get("event") == "fault"]
    assert len(events) == 1 and events[0]["fault"] == "nan" and events[0]["step"] == 3


def test_a_bad_gpu_fails_one_health_check_per_run(tmp_path):
    spec = faults.parse_fault("bad-gpu:rank=1")
    assert spec.describe() == "bad-gpu:rank=1"
    assert faults.FaultInjector([spec], tmp_path, rank=0).gpu_problem(0) is None   # another rank's device
    assert "uncorrected ECC" in faults.FaultInjector([spec], tmp_path, rank=1).gpu_problem(0)
    assert faults.FaultInjector([spec], tmp_path, rank=1).gpu_problem(0) is None   # replaced: healthy again


def test_corrupt_checkpoint_breaks_its_manifest(tmp_path):
    from bastion.rundir import checkpoints as cf

    temp = tmp_path / cf.temp_dir_name(2)
    temp.mkdir()
    (temp / "__0_0.distcp").write_bytes(bytes(range(256)) * 10)
    path = cf.commit(temp, tmp_path / cf.step_dir_name(2), 2)
    assert cf.verify(path) is None
    faults.corrupt_checkpoint(path)
    assert "sha256" in cf.verify(path)


def test_nan_guard_flags_non_finite_and_spikes_only_after_history():
    guard = NanGuard(NanGuardConfig(spike_factor=10, window=5, min_history=3))
    assert guard.check(float("nan")) == "gradient norm is nan"
    assert guard.check(float("inf")) is not None
    assert guard.check(100.0) is None  # no history yet: not judged
    for norm in (1.0, 1.2, 0.9):
        assert guard.check(norm) is None
    assert "× the recent median" in guard.check(50.0)
    assert guard.check(5.0) is None


def test_nan_guard_judges_without_remembering():
    # a verdict another torchft replica group may overrule: only a step taken as good joins the history
    guard = NanGuard(NanGuardConfig(spike_factor=10, window=5, min_history=1))
    assert guard.judge(1.0) is None and guard.judge(50.0) is None  # nothing remembered: no history to judge by
    guard.remember(1.0)
    assert "× the recent median" in guard.judge(50.0)


def test_auto_interval_uses_daly_and_default_failure_data():
    choice = choose_interval(stall_s=0.5, step_s=0.25, num_devices=4, mtbf_hours=1.0)
    assert choice.interval_s == pytest.approx(daly_interval(0.5, 3600.0))
    assert choice.every_steps == round(choice.interval_s / 0.25) == 239  # (√3600·1.0028 − 0.5) / 0.25
    assert "--mtbf-hours" in choice.explain() and "239 steps" in choice.explain()
    default = choose_interval(stall_s=0.5, step_s=0.25, num_devices=1024)
    assert default.mtbf_s == pytest.approx(default_failure_model().mtbf_hours(1024) * 3600)
    assert "llama3-405b-h100" in default.explain()


def test_account_splits_wall_time_into_productive_lost_recovery_and_stall():
    records = [
        {"event": "run_start", "time": -50.0},  # an earlier run in the same directory: ignored
        {"step": 1, "step_time_s": 9.0, "time": -40.0},
        {"event": "run_start", "time": 0.0},
        {"step": 1, "step_time_s": 1.0, "time": 2.0},
        {"step": 2, "step_time_s": 1.0, "time": 3.0},
        {"event": "checkpoint", "step": 2, "stall_s": 0.5, "time": 3.5},
        {"step": 3, "step_time_s": 1.0, "time": 4.5},
        {"event": "fault", "fault": "kill", "step": 4, "time": 4.6},
        {"event": "restart", "attempt": 1, "resumed_from_step": 2, "time": 10.0},
        {"step": 3, "step_time_s": 1.0, "time": 12.6},  # recomputed: the first step 3 is lost
        {"step": 4, "step_time_s": 1.0, "time": 13.6},
    ]
    result = account(records, end_time=14.0)
    assert result["restarts"] == 1 and result["faults_injected"] == 1
    assert result["lost_steps"] == 1
    assert result["checkpoint_stall_s"] == 0.5
    # the failure began after the last progress (step 3 at 4.5); the first step after it starts at 12.6 − 1.0
    assert result["recovery_s"] == pytest.approx(11.6 - 4.5)
    breakdown = result["time_breakdown_s"]
    assert breakdown["productive_s"] == 4.0 and breakdown["lost_s"] == 1.0 and breakdown["wall_s"] == 14.0
    assert result["goodput"] == pytest.approx(4.0 / 14.0, abs=1e-4)


def test_a_re_plan_and_the_grow_back_count_as_recovery():
    """--on-failure shrink relaunches the workers (they log `resume`, not `restart`): the time from the last
    progress before each `plan_change` to the next step's start is recovery, not `other`."""
    records = [
        {"event": "run_start", "time": 0.0},
        {"step": 1, "step_time_s": 1.0, "time": 1.0},
        {"event": "checkpoint", "step": 1, "stall_s": 0.5, "time": 1.5},
        {"event": "fault", "fault": "lose-node", "step": 2, "time": 1.6},
        {"event": "plan_change", "step": 1, "from_world": 4, "to_world": 2, "reason": "lose-node", "time": 3.0},
        {"event": "resume", "attempt": 0, "resumed_from_step": 1, "time": 8.0},
        {"step": 2, "step_time_s": 2.0, "time": 11.0},
        {"event": "checkpoint", "step": 2, "stall_s": 0.5, "time": 11.5},
        {"event": "plan_change", "step": 2, "from_world": 2, "to_world": 4, "reason": "node back", "time": 12.0},
        {"event": "resume", "attempt": 0, "resumed_from_step": 2, "time": 15.0},
        {"step": 3, "step_time_s": 1.0, "time": 17.0},
    ]
    result = account(records, end_time=17.0)
    # lost at 1.5 → step 2 starts at 9.0; the smaller world saved at 11.5 → step 3 starts at 16.0
    assert result["recovery_s"] == pytest.approx((9.0 - 1.5) + (16.0 - 11.5))
    assert result["restarts"] == 0
    assert result["time_breakdown_s"]["other_s"] == pytest.approx(17.0 - 4.0 - 1.0 - 12.0)


def test_a_re_plan_before_the_first_checkpoint_stays_in_the_run():
    """A shrink before any checkpoint relaunches the smaller world from step 0, and its workers log `run_start`:
    that start continues the run (its wall clock, its fault and its plan change), a later run's does not."""
    from bastion.rundir.summary import plan_change_entries

    records = [
        {"event": "run_start", "time": 0.0},
        {"step": 1, "step_time_s": 1.0, "time": 1.0},
        {"event": "fault", "fault": "lose-node", "step": 2, "time": 1.1},
        {"event": "plan_change", "step": 0, "from_world": 2, "to_world": 1, "plan": {"dp": 1}, "time": 2.0},
        {"event": "run_start", "time": 5.0},
        {"event": "health_check", "time": 5.5},
        {"step": 1, "step_time_s": 1.0, "time": 7.0},
        {"step": 2, "step_time_s": 1.0, "time": 8.0},
    ]
    result = account(records, end_time=8.0)
    assert result["time_breakdown_s"]["wall_s"] == 8.0 and result["faults_injected"] == 1
    assert result["lost_steps"] == 1 and result["recovery_s"] == pytest.approx(6.0 - 1.0)
    assert plan_change_entries(records) == [{"step": 0, "from_world": 2, "to_world": 1, "plan": {"dp": 1}}]
    later = [*records, {"event": "run_start", "time": 20.0}, {"step": 1, "step_time_s": 1.0, "time": 22.0}]
    assert account(later, end_time=22.0)["time_breakdown_s"]["wall_s"] == 2.0 and not plan_change_entries(later)


def test_restarts_are_counted_across_launches():
    """A --resume launch (or a Slurm requeue) numbers its torchrun attempts from 0 again: two restarts in two
    launches are two, not the highest attempt number (1)."""
    records = [
        {"event": "run_start", "time": 0.0},
        {"step": 1, "step_time_s": 1.0, "time": 1.0},
        {"event": "restart", "attempt": 1, "resumed_from_step": 0, "time": 5.0},
        {"step": 1, "step_time_s": 1.0, "time": 6.0},
        {"event": "resume", "attempt": 0, "resumed_from_step": 1, "time": 50.0},
        {"event": "restart", "attempt": 1, "resumed_from_step": 1, "time": 60.0},
        {"step": 2, "step_time_s": 1.0, "time": 62.0},
    ]
    assert account(records, end_time=63.0)["restarts"] == 2


def test_watchdog_dumps_stacks_and_aborts_a_hung_step(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from bastion.runtime.watchdog import StepWatchdog, WatchdogConfig
        dog = StepWatchdog(WatchdogConfig(factor=5, min_timeout_s=0.3, warmup_steps=0, poll_s=0.05),
                           Path({str(tmp_path)!r}), rank=3)
        for step in range(1, 4):
            dog.step_began(step); time.sleep(0.02); dog.step_ended(step)
        dog.step_began(4)
        time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert proc.returncode == HANG_EXIT_CODE
    dump = (tmp_path / "hang-rank3.txt").read_text()
    assert "step 4 ran" in dump and "File \"<string>\"" in dump  # the main thread, stuck in sleep
    hang = [r for r in read_records(tmp_path) if r.get("event") == "hang"]
    assert hang[0]["step"] == 4 and hang[0]["rank"] == 3 and hang[0]["deadline_s"] == pytest.approx(0.3)
