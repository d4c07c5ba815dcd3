"""Machine profiles (specs/profile.py): written, read back, refused with guidance when missing or garbled, and
used by `estimate --cluster PROFILE` in place of the catalog's datasheet rates."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bastion.cli import main
from bastion.errors import ConfigError
from bastion.predict import estimate
from bastion.specs import ParallelPlan, load_model
from bastion.specs.hardware import load_cluster
from bastion.specs.profile import PROFILE_FORMAT, profile_toml, read_profile


def profile_data(layer_s: float = 0.004, all_gather_latency_us: float = 900.0) -> dict:
    return {
        "machine": {"format": PROFILE_FORMAT, "accelerator": "cpu", "nproc": 4, "date": "2026-12-07T00:00:00Z",
                    "host": "box", "torch": "2.13.0+cpu", "quick": True},
        "accelerator": {"matmul_efficiency": 0.5, "hbm_bandwidth_gbs": 3.0, "background_load": 0.5,
                        "gemm_efficiency_curve": [[1e6, 0.4], [1e9, 0.7]],
                        "attention_efficiency_curve": [[1024, 0.1, 0.05], [16384, 0.2, 0.1]]},
        "host": {"layer_s": layer_s, "layer_tp_s": 0.02, "layer_sp_s": 0.002, "layer_fsdp_s": 0.006,
                 "micro_batch_s": 0.002, "optimizer_per_tensor_s": 3e-4, "optimizer_dtensor_per_tensor_s": 1e-3,
                 "process_start_s": 12.0},
        "collective": [{"op": op, "group_size": g, "latency_us": all_gather_latency_us if op == "all_gather"
                        else 500.0, "bandwidth_gbs": 0.5}
                       for op in ("all_reduce", "all_gather", "reduce_scatter") for g in (2, 4)]
        + [{"op": "send_recv", "group_size": 2, "latency_us": 300.0, "bandwidth_gbs": 1.0}],
        "raw": {"dispatch_s": 2e-6, "collective_op_size_bytes_s": [["all_reduce", 2, 4096, 0.001]]},
    }


def write(tmp_path: Path, data: dict, name: str = "profile.toml") -> Path:
    path = tmp_path / name
    path.write_text(profile_toml(data, "test profile"))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_profile_round_trips(tmp_path: Path) -> None:
    data = profile_data()
    profile = read_profile(write(tmp_path, data))
    assert profile.accelerator == "cpu" and profile.nproc == 4 and profile.torch == "2.13.0+cpu"
    assert dict(profile.accelerator_overrides)["gemm_efficiency_curve"] == ((1e6, 0.4), (1e9, 0.7))
    assert dict(profile.accelerator_overrides)["hbm_bandwidth_gbs"] == 3.0
    assert profile.host_overheads.layer_tp_s == 0.02
    line = next(c for c in profile.collectives if c.op == "all_gather" and c.group_size == 4)
    assert line.seconds(0.5e9) == pytest.approx(900e-6 + 1.0)
    # the cluster it makes: the catalog's cpu row with the measured fields, as many ranks as measured
    cluster = load_cluster(str(tmp_path / "profile.toml"))
    assert cluster.num_gpus == 4 and cluster.accelerator.matmul_efficiency == 0.5
    assert cluster.accelerator.host_cores == 2  # from the catalog row
    assert load_cluster(f"cpu:2@{tmp_path / 'profile.toml'}").num_gpus == 2


@pytest.mark.parametrize("spec", ["cpu:4@{dir}/missing.toml", "{dir}/garbled.toml", "{dir}/bad-field.toml",
                                  "h100-sxm:4@{dir}/profile.toml", "cpu:4@"])
def test_missing_or_garbled_profile_is_a_guidance_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         spec: str) -> None:
    write(tmp_path, profile_data())
    (tmp_path / "garbled.toml").write_text("[machine]\nformat = 1\naccelerator = 'cpu'\nnproc = 'four'\n")
    bad = profile_data()
    bad["host"]["layer_s"] = -1.0
    write(tmp_path, bad, "bad-field.toml")
    spec = spec.format(dir=tmp_path)
    with pytest.raises(ConfigError):
        load_cluster(spec)
    code, _, err = run(["estimate", "--model", "tiny", "--cluster", spec, "--dp", "4", "--global-batch", "8"],
                       capsys)
    assert code == 2 and "To fix:" in err and "Traceback" not in err


@pytest.mark.parametrize(("table", "field"), [("accelerator", "hbm_bandwidth_gbs"),
                                              ("accelerator", "matmul_efficiency"), ("machine", "nproc")])
def test_a_profile_rate_of_zero_is_a_guidance_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    table: str, field: str) -> None:
    # a zero bandwidth or efficiency used to be a ZeroDivisionError traceback inside the estimate
    data = profile_data()
    data[table][field] = 0
    path = write(tmp_path, data)
    code, out, err = run(["estimate", "--model", "tiny", "--cluster", f"cpu:4@{path}", "--global-batch", "8"],
                         capsys)
    assert code == 2 and out == "" and "To fix:" in err and "Traceback" not in err
    assert f"'{field}' must be a positive number, got 0" in " ".join(err.split())


def _estimate(cluster: str, capsys: pytest.CaptureFixture[str], *plan: str) -> dict:
    code, out, err = run(["estimate", "--model", "tiny", "--cluster", cluster, "--global-batch", "8",
                          "--precision", "fp32", "--json", *plan], capsys)
    assert code == 0, err
    return json.loads(out)


def test_estimate_uses_the_profiles_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = ("--dp", "2", "--tp", "2", "--sp", "--zero", "3", "--micro-batch", "2")
    base = write(tmp_path, profile_data(), "base.toml")
    datasheet = _estimate("cpu:4", capsys, *plan)
    profiled = _estimate(str(base), capsys, *plan)
    assert profiled["step_time_s"] != datasheet["step_time_s"]
    assert datasheet["time"]["host_overhead"] == 0.0 and profiled["time"]["host_overhead"] > 0
    assert any(str(base) in a for a in profiled["assumptions"])
    assert any("datasheet" in a for a in datasheet["assumptions"])
    # a slower block dispatch and slower all-gathers in the profile make the same plan slower, by the profile's
    # own arithmetic: 4 blocks × 2 micro-batches × 10 ms more dispatch, on 2 cores / (4 ranks + 0.5 background)
    slower = _estimate(str(write(tmp_path, profile_data(layer_s=0.014), "slower.toml")), capsys, *plan)
    expected = 4 * 2 * 0.010 / (2 / 4.5)
    assert slower["step_time_s"] - profiled["step_time_s"] == pytest.approx(expected, rel=1e-6)
    later = _estimate(str(write(tmp_path, profile_data(all_gather_latency_us=5000.0), "ar.toml")), capsys, *plan)
    assert later["time"]["tp_comm"] > profiled["time"]["tp_comm"]


# ---- what a profile adds: tensor-parallel collective counts, checkpoint bandwidth, repeats ------------------

def _tp_counts(per_layer: float) -> list[dict]:
    return [{"sequence_parallel": True, "op": op, "per_layer": per_layer, "ends": 2.0}
            for op in ("all_gather", "reduce_scatter")]


def test_counted_tp_collectives_are_timed_by_their_bandwidth_term(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    plan = ("--dp", "2", "--tp", "2", "--sp", "--zero", "3", "--micro-batch", "2", "--seq-len", "4096")
    fewer = {**profile_data(), "tp_collective": _tp_counts(4.0)}
    more = {**profile_data(), "tp_collective": _tp_counts(8.0)}
    assert read_profile(write(tmp_path, more, "more.toml")).tp_collectives[0].per_layer == 8.0
    t_fewer = _estimate(str(write(tmp_path, fewer, "fewer.toml")), capsys, *plan)["time"]["tp_comm"]
    t_more = _estimate(str(tmp_path / "more.toml"), capsys, *plan)["time"]["tp_comm"]
    # 4 more of each per block, 4 blocks, 2 micro-batches: all-gather + reduce-scatter of one activation
    # (2 × 4096 tokens × 64 hidden × 4 B) at 0.5 GB/s, on 2 cores / (4 ranks + 0.5 background)
    nbytes = 2 * 4096 * 64 * 4
    assert t_more - t_fewer == pytest.approx(4 * 4 * 2 * 2 * nbytes / 0.5e9 / (2 / 4.5), rel=1e-6)


def test_checkpoint_stall_comes_from_the_measured_write_bandwidth(tmp_path: Path) -> None:
    from bastion.cost.tco import checkpoint_stall, run_cost

    data = profile_data()
    data["host"]["checkpoint_write_gbs"] = 0.25
    data["host"]["checkpoint_read_gbs"] = 2.0
    cluster = load_cluster(str(write(tmp_path, data)))
    stall, source = checkpoint_stall(cluster, 1e9)
    assert stall == pytest.approx(4 * 1e9 / 0.25e9)  # the node's 4 ranks' states through one filesystem
    assert "0.25 GB/s" in source and str(tmp_path) in source
    datasheet_stall, datasheet_source = checkpoint_stall(load_cluster("cpu:4"), 1e9)
    assert datasheet_stall != stall and "async" in datasheet_source
    plan = ParallelPlan(dp=4, micro_batch=1, global_batch=8, precision="fp32")
    cost = run_cost(load_model("tiny"), cluster, plan, tokens=1e9)
    assert any("0.25 GB/s" in a for a in cost.assumptions) and any("read bandwidth 2 GB/s" in a
                                                                   for a in cost.assumptions)
    # the reload is part of what a failure costs: a slower read, a lower expected goodput
    data["host"]["checkpoint_read_gbs"] = 1e-6
    slow_read = run_cost(load_model("tiny"), load_cluster(str(write(tmp_path, data, "slow.toml"))), plan, tokens=1e9)
    assert slow_read.expected_goodput < cost.expected_goodput


def _with_repeats(**changed: list[float]) -> dict:
    data = profile_data()
    data["repeats"] = {"gemm 256x64x192": [0.0010, 0.0011, 0.0012], "all_reduce 2 ranks 4096 B": [2e-4, 3e-4, 4e-4],
                       "dispatch x100": [1e-4, 1e-4, 1e-4], **changed}
    return data


def test_compare_lists_what_changed_beyond_its_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = write(tmp_path, _with_repeats(), "before.toml")
    # a GEMM 1.5× slower: beyond its ±7% band; the all-reduce 1.2× slower: inside its ±27% band; dispatch 3%
    # slower with no spread: beyond the noise but under --min-change
    after = write(tmp_path, _with_repeats(**{"gemm 256x64x192": [0.00165, 0.00165, 0.0018],
                                             "all_reduce 2 ranks 4096 B": [2.4e-4, 3.6e-4, 4.8e-4],
                                             "dispatch x100": [1.03e-4] * 3}), "after.toml")
    code, out, err = run(["calibrate", "--compare", str(before), str(after)], capsys)
    assert code == 0, err
    assert "1 of 3 measurements changed" in out and "gemm 256x64x192" in out and "all_reduce" not in out
    code, out, _ = run(["calibrate", "--compare", str(before), str(after), "--json", "--min-change", "0.01"],
                       capsys)
    result = json.loads(out)
    assert code == 0 and [m["name"] for m in result["changed"]] == ["gemm 256x64x192", "dispatch x100"]
    assert result["changed"][0]["ratio"] == pytest.approx(1.5)
    code, out, _ = run(["calibrate", "--compare", str(before), str(before)], capsys)
    assert code == 0 and "0 of 3 measurements changed" in out


@pytest.mark.parametrize("which", ["missing", "garbled", "no-repeats", "bad-repeats", "min-change"])
def test_compare_refuses_what_it_cannot_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                which: str) -> None:
    good = write(tmp_path, _with_repeats(), "good.toml")
    other = {"missing": tmp_path / "nowhere.toml", "garbled": tmp_path / "garbled.toml",
             "no-repeats": write(tmp_path, profile_data(), "old.toml"),
             "bad-repeats": write(tmp_path, _with_repeats(**{"dispatch x100": [-1.0]}), "bad.toml"),
             "min-change": good}[which]
    (tmp_path / "garbled.toml").write_text("[machine\nformat = 1\n")
    extra = ["--min-change", "1.5"] if which == "min-change" else []
    code, _, err = run(["calibrate", "--compare", str(good), str(other), *extra], capsys)
    assert code == 2 and "To fix:" in err and "Traceback" not in err


def test_report_says_which_profile_and_interval_its_prediction_used(tmp_path: Path, failing_run: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, profile_data())
    code, out, err = run(["report", str(failing_run), "--cluster", f"cpu:2@{path}"], capsys)
    assert code == 0, err
    text = " ".join(out.split())  # rich wraps long lines
    assert f"rates: profile {path}" in text and "predicted step p10-p90:" in text
    code, out, _ = run(["report", str(failing_run), "--cluster", "cpu:2"], capsys)
    assert "rates: datasheet: catalog row 'cpu'" in " ".join(out.split())


def test_a_profiled_hosts_fsdp_gathers_only_its_own_experts_over_the_ranks_that_hold_them(tmp_path: Path) -> None:
    # bastion's runtime gives the routed experts their own FSDP2 unit over the expert data-parallel ranks: with
    # ep 4 over dp 4 no rank shares its experts, so wider experts add no FSDP collective; with ep 2 they do
    cluster = load_cluster(str(write(tmp_path, profile_data())))
    model = replace(load_model("tiny-moe"), num_shared_experts=0)  # only the routed experts grow below
    wider = replace(model, moe_ffn_hidden_size=4 * model.moe_ffn_hidden_size)

    def dp_comm(m, ep: int) -> float:  # noqa: ANN001
        plan = ParallelPlan(dp=4, ep=ep, global_batch=8)
        return estimate(m, cluster, plan, model.seq_len).time.dp_comm

    assert dp_comm(wider, 4) == pytest.approx(dp_comm(model, 4))
    assert dp_comm(wider, 2) > dp_comm(model, 2) > dp_comm(model, 4)


# ---- pipelines on a host whose ranks share its cores -------------------------------------------------------

def test_a_pipeline_hop_adds_only_its_bytes_when_the_profile_timed_the_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pipeline_micro_batch_s ran the schedule's send/recv at a negligible size: their latency is in it."""
    plan = ("--pp", "2", "--dp", "1", "--micro-batch", "2", "--schedule", "1f1b", "--seq-len", "64")

    def pp_comm(send_latency_us: float, pipeline_micro_batch_s: float) -> float:
        data = profile_data()
        data["host"]["pipeline_micro_batch_s"] = pipeline_micro_batch_s
        data["collective"][-1]["latency_us"] = send_latency_us
        name = f"pp-{send_latency_us}-{pipeline_micro_batch_s}.toml"
        return _estimate(f"cpu:2@{write(tmp_path, data, name)}", capsys, *plan)["time"]["pp_comm"]

    assert pp_comm(300.0, 0.003) == pytest.approx(pp_comm(3000.0, 0.003), rel=1e-9)
    # 2 hops × (4 micro-batches + 1) of 2 × 64 tokens × 64 hidden × 4 B at 1 GB/s, on 2 cores / (2 + 0.5)
    assert pp_comm(300.0, 0.003) == pytest.approx(10 * 2 * 64 * 64 * 4 / 1e9 / (2 / 2.5), rel=1e-6)
    # a profile without the schedule's measurement: the hop's measured latency counts
    assert pp_comm(3000.0, 0.0) > pp_comm(300.0, 0.0) > pp_comm(300.0, 0.003)


def test_a_rank_idle_in_the_bubble_leaves_its_core_to_the_others(tmp_path: Path) -> None:
    from bastion.predict.estimate import _shared_core_bubble

    profile = write(tmp_path, profile_data())  # 2 cores, background load 0.5
    four = load_cluster(f"cpu:4@{profile}")
    # busy 1 s and idle 0.5 s at the share all 4 ranks get (2 / 4.5): on average 4 × 2/3 ranks are busy, and
    # they get 2 / (8/3 + 0.5) of a core each
    share_all, share_busy = 2 / 4.5, 2 / (8 / 3 + 0.5)
    assert _shared_core_bubble(four, 1.0, 0.5) == pytest.approx(1.5 * share_all / share_busy - 1.0, rel=1e-9)
    assert _shared_core_bubble(four, 1.0, 0.5) < 0.5
    # so few ranks that every one has a whole core: the bubble is the schedule's
    roomy = write(tmp_path, {**profile_data(), "accelerator": {**profile_data()["accelerator"],
                                                                "background_load": 0.0}}, "roomy.toml")
    assert _shared_core_bubble(load_cluster(f"cpu:2@{roomy}"), 1.0, 0.5) == pytest.approx(0.5, rel=1e-9)


def test_pipeline_times_on_shared_cores_follow_the_busy_ranks(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """pp 2 × dp 2 on 4 ranks and 2 cores: the step's bubble is 1F1B's idle time (half the busy time at 2
    stages and 2 micro-batches) shrunk by the cores the idle ranks leave to the busy ones."""
    import importlib

    estimate_module = importlib.import_module("bastion.predict.estimate")  # the module, not the function

    real = estimate_module._shared_core_bubble
    seen = []

    def recording(node, busy: float, bubble: float) -> float:
        seen.append((node, busy, bubble))
        return real(node, busy, bubble)
    monkeypatch.setattr(estimate_module, "_shared_core_bubble", recording)
    cluster = load_cluster(f"cpu:4@{write(tmp_path, profile_data())}")
    plan = ParallelPlan(pp=2, dp=2, micro_batch=2, global_batch=8, pp_schedule="1f1b", precision="fp32")
    est = estimate_module.estimate(load_model("tiny"), cluster, plan, seq_len=64)
    (node, busy, schedule_idle), = seen
    assert schedule_idle == pytest.approx(0.5 * (busy - est.time.pp_comm), rel=1e-9)
    assert est.time.bubble == pytest.approx(real(node, busy, schedule_idle), rel=1e-12)
    assert 0 < est.time.bubble < schedule_idle


def test_the_planners_step_time_bound_holds_for_pipelines_on_shared_cores(tmp_path: Path) -> None:
    """The bound the planner prunes with stays below the estimate when idle pipeline ranks give their cores
    away, also where compute dwarfs the host's overheads (a bubble at the schedule's full fraction would not)."""
    from bastion.predict import estimate
    from bastion.predict.estimate import step_time_lower_bound

    light = profile_data(layer_s=1e-6)
    light["host"] = {k: 1e-6 for k in light["host"]}
    model = load_model("small")
    bubbles = []
    for name, data in (("measured.toml", profile_data()), ("light.toml", light)):
        cluster = load_cluster(f"cpu:4@{write(tmp_path, data, name)}")
        for schedule, micro_batch in (("1f1b", 1), ("1f1b", 4), ("gpipe", 2), ("interleaved-1f1b", 1)):
            plan = ParallelPlan(pp=2, dp=2, micro_batch=micro_batch, global_batch=8, pp_schedule=schedule,
                                vpp=2 if schedule == "interleaved-1f1b" else 1, precision="fp32")
            est = estimate(model, cluster, plan, seq_len=256)
            assert step_time_lower_bound(model, cluster, plan, 256) <= est.step_time_s
            bubbles.append(est.time.bubble)
    assert all(b > 0 for b in bubbles)


# ---- FSDP2's measured per-unit cost ------------------------------------------------------------------------

def _fsdp_units(unit_s: float = 0.01, root_s: float = 0.004, **cpu: float) -> list[dict]:
    """Every layout and group size; `cpu`: the CPU line's fields (FsdpUnitCost.cpu_line) on every row."""
    return [{"zero_stage": zero, "group_size": g, "unit_s": unit_s * (1 + zero), "root_s": root_s, **cpu}
            for zero in (0, 2, 3) for g in (2, 4)]


def test_fsdp_unit_costs_round_trip_and_are_looked_up_by_layout_and_group(tmp_path: Path) -> None:
    profile = read_profile(write(tmp_path, {**profile_data(), "fsdp_unit": _fsdp_units()}))
    assert len(profile.fsdp_units) == 6
    assert profile.fsdp_unit_cost(3, 4).unit_s == pytest.approx(0.04)
    # ZeRO 1 runs the layout measured as 2 (sharded, not resharded after forward); 8 ranks: the nearest, 4
    assert profile.fsdp_unit_cost(1, 8) == profile.fsdp_unit_cost(2, 4)
    assert profile.fsdp_unit_cost(0, 3).group_size == 4  # a tie: the larger
    assert read_profile(write(tmp_path, profile_data(), "old.toml")).fsdp_unit_cost(3, 4) is None


@pytest.mark.parametrize("row", [{"zero_stage": 1}, {"zero_stage": True}, {"group_size": 1},
                                 {"group_size": 2.5}, {"unit_s": -0.1}, {"root_s": "x"}])
def test_a_garbled_fsdp_unit_row_is_a_guidance_error(tmp_path: Path, row: dict) -> None:
    units = _fsdp_units()
    units[0] = {**units[0], **row}
    with pytest.raises(ConfigError, match=r"\[\[fsdp_unit\]\] #1"):
        read_profile(write(tmp_path, {**profile_data(), "fsdp_unit": units}))


def _fsdp_estimate(tmp_path: Path, name: str, zero: int, plan: ParallelPlan | None = None,
                   **changes: object) -> estimate:
    """`tiny` on a profile with [[fsdp_unit]] rows (dp 4 unless `plan`), `changes` made to it."""
    data = {**profile_data(), "fsdp_unit": _fsdp_units(changes.pop("unit_s", 0.01), **changes.pop("cpu", {}))}
    data["host"]["layer_fsdp_s"] = changes.pop("layer_fsdp_s", 0.006)
    for line in data["collective"]:
        if line["op"] == changes.get("op"):
            line.update(changes["line"])
    cluster = load_cluster(str(write(tmp_path, data, f"{name}.toml")))
    plan = plan or ParallelPlan(dp=4, zero_stage=zero, micro_batch=1, global_batch=8, precision="fp32")
    return estimate(load_model("tiny"), cluster, plan)


@pytest.mark.parametrize(("zero", "micro_batch"), [(0, 2), (2, 1), (3, 1)])
def test_a_profiled_hosts_fsdp_costs_the_measured_unit_plus_only_its_bytes(tmp_path: Path, zero: int,
                                                                          micro_batch: int) -> None:
    """Every micro-batch runs the collectives: ZeRO 2 and 3 (2 micro-batches), ZeRO 0 with one (with more, its
    reduction waits for the last: the next test)."""
    plan = ParallelPlan(dp=4, zero_stage=zero, micro_batch=micro_batch, global_batch=8, precision="fp32")
    base = _fsdp_estimate(tmp_path, "base", zero, plan)
    # the measured unit: 4 blocks × each micro-batch × 10 ms more per unit, on 2 cores / (4 ranks + 0.5 background)
    dearer = _fsdp_estimate(tmp_path, "dearer", zero, plan, unit_s=0.02)
    assert dearer.time.step - base.time.step == pytest.approx(
        4 * plan.grad_accumulation * 0.01 * (1 + zero) / (2 / 4.5), rel=1e-6)
    # its hooks' host work is in it: the one-process FSDP figure no longer adds
    hooks = _fsdp_estimate(tmp_path, "hooks", zero, plan, layer_fsdp_s=0.5)
    assert hooks.time.step == pytest.approx(base.time.step, rel=1e-12)
    # and so is its collectives' latency: never counted twice
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        slow = _fsdp_estimate(tmp_path, f"latency-{op}", zero, plan, op=op, line={"latency_us": 50_000.0})
        assert slow.time.dp_comm == pytest.approx(base.time.dp_comm, rel=1e-12), op
    # the bytes: ZeRO 0 runs FSDP2 replicated (gradients all-reduced, nothing gathered), 1-3 gather and scatter
    for op in ("all_gather", "all_reduce"):
        narrow = _fsdp_estimate(tmp_path, f"narrow-{op}", zero, plan, op=op, line={"bandwidth_gbs": 0.001})
        assert (narrow.time.dp_comm > base.time.dp_comm) == ((op == "all_reduce") == (zero == 0)), op


def _deferred_fsdp(tmp_path: Path, name: str, zero: int, pp: int, micro_batch: int, **changes: object
                   ) -> estimate:
    """A plan whose FSDP2 gradient reduction waits for the last micro-batch: 4 ranks, 4 · dp samples a step."""
    dp = 4 // pp
    plan = ParallelPlan(pp=pp, dp=dp, zero_stage=zero, micro_batch=micro_batch, global_batch=4 * dp,
                        precision="fp32")
    return _fsdp_estimate(tmp_path, name, zero, plan, **{"layer_fsdp_s": 0.001, **changes})


@pytest.mark.parametrize(("pp", "zero"), [(2, 0), (2, 2), (1, 0), (1, 1)])
def test_fsdp2_that_defers_its_reduction_gathers_and_reduces_once_per_step_and_hooks_each_micro_batch(
        tmp_path: Path, pp: int, zero: int) -> None:
    # torch.distributed.pipelining turns FSDP2's gradient sync off for every micro-batch but the last, and so
    # does the training loop for ZeRO 0 and 1: the measured unit cost (the first micro-batch's hooks in it)
    # counts once whatever the micro-batches, the hooks once per further micro-batch
    share = 2 / 4.5
    blocks = 4 // pp  # a stage's blocks, and its root unit
    layout = 2 if zero == 1 else zero  # ZeRO-1 runs FSDP2's sharded layout (runtime/mesh.py)
    for micro_batch, m in ((4, 1), (1, 4)):
        base = _deferred_fsdp(tmp_path, f"base-{micro_batch}", zero, pp, micro_batch)
        dearer = _deferred_fsdp(tmp_path, f"dearer-{micro_batch}", zero, pp, micro_batch, unit_s=0.02)
        assert dearer.time.dp_comm - base.time.dp_comm == pytest.approx(blocks * 0.01 * (1 + layout) / share,
                                                                        rel=1e-6)
        hooks = _deferred_fsdp(tmp_path, f"hooks-{micro_batch}", zero, pp, micro_batch, layer_fsdp_s=0.002)
        assert hooks.time.dp_comm - base.time.dp_comm == pytest.approx((m - 1) * (blocks + 1) * 0.001 / share,
                                                                       abs=1e-12)
    # the gradients' bytes once per step too, not per micro-batch
    op = "all_reduce" if zero == 0 else "reduce_scatter"
    one = _deferred_fsdp(tmp_path, "one", zero, pp, 4)
    one_narrow = _deferred_fsdp(tmp_path, "one-narrow", zero, pp, 4, op=op, line={"bandwidth_gbs": 0.001})
    four = _deferred_fsdp(tmp_path, "four", zero, pp, 1)
    four_narrow = _deferred_fsdp(tmp_path, "four-narrow", zero, pp, 1, op=op, line={"bandwidth_gbs": 0.001})
    assert four_narrow.time.dp_comm - four.time.dp_comm == pytest.approx(
        one_narrow.time.dp_comm - one.time.dp_comm, rel=1e-9)


def test_under_a_pipeline_zero3_still_gathers_every_micro_batch(tmp_path: Path) -> None:
    one = _deferred_fsdp(tmp_path, "one", 3, 2, 4)
    four = _deferred_fsdp(tmp_path, "four", 3, 2, 1)
    one_dear = _deferred_fsdp(tmp_path, "one-dear", 3, 2, 4, unit_s=0.02)
    four_dear = _deferred_fsdp(tmp_path, "four-dear", 3, 2, 1, unit_s=0.02)
    assert four_dear.time.dp_comm - four.time.dp_comm == pytest.approx(
        4 * (one_dear.time.dp_comm - one.time.dp_comm), rel=1e-6)


#: an [[fsdp_unit]] row's CPU line (FsdpUnitCost.cpu_line): 20 ms a block's unit, 5 ms the root's, 2 ms per MB
_CPU_LINE = {"unit_cpu_s": 0.02, "root_cpu_s": 0.005, "cpu_s_per_byte": 2e-9}


def test_fsdp_unit_cpu_lines_round_trip_and_their_fields_go_together(tmp_path: Path) -> None:
    profile = read_profile(write(tmp_path, {**profile_data(), "fsdp_unit": _fsdp_units(**_CPU_LINE)}))
    cost = profile.fsdp_unit_cost(3, 4)
    assert cost.cpu_line and (cost.unit_cpu_s, cost.root_cpu_s, cost.cpu_s_per_byte) == (0.02, 0.005, 2e-9)
    assert cost.unit_s == pytest.approx(0.04)  # the wall figures stay as measured
    old = read_profile(write(tmp_path, {**profile_data(), "fsdp_unit": _fsdp_units()}, "old.toml"))
    assert not old.fsdp_unit_cost(3, 4).cpu_line and old.fsdp_unit_cost(3, 4).unit_cpu_s is None
    with pytest.raises(ConfigError, match=r"\[\[fsdp_unit\]\] #1: .*go together"):
        read_profile(write(tmp_path, {**profile_data(), "fsdp_unit": _fsdp_units(cpu_s_per_byte=1e-9)}, "half.toml"))


@pytest.mark.parametrize("zero", [0, 3])
def test_a_cpu_line_costs_each_units_bytes_at_its_slope_over_the_core_share(tmp_path: Path, zero: int) -> None:
    from bastion.predict.memory import fsdp_units

    model = load_model("tiny")
    base = _fsdp_estimate(tmp_path, "cpu", zero, cpu=_CPU_LINE)
    # the per-byte term: each time the step runs the unit's collectives (ZeRO 3: both micro-batches; ZeRO 0: once,
    # its gradients reduced after the last) × every unit's fp32 parameter bytes (4 blocks and the root) × the
    # slope, on 2 cores / (4 ranks + 0.5 background)
    dearer = _fsdp_estimate(tmp_path, "cpu-per-byte", zero, cpu={**_CPU_LINE, "cpu_s_per_byte": 3e-9})
    block = sum(n for n, _ in fsdp_units(model, 1, "layer"))
    root = 2 * model.vocab_size * model.hidden_size + model.hidden_size
    share = 2 / 4.5
    runs = 1 if zero == 0 else 2
    assert dearer.time.step - base.time.step == pytest.approx(
        runs * (4 * block + root) * 4 * 1e-9 / share, rel=1e-6)
    # the size-free part stays the wall figure at negligible size (it holds the waiting the CPU line does not):
    # the line's own fixed CPU seconds do not count, the wall figure does
    fixed = _fsdp_estimate(tmp_path, "cpu-fixed", zero, cpu={**_CPU_LINE, "unit_cpu_s": 0.03, "root_cpu_s": 0.007})
    assert fixed.time.step == pytest.approx(base.time.step, rel=1e-12)
    assert _fsdp_estimate(tmp_path, "cpu-unit-s", zero, unit_s=0.5, cpu=_CPU_LINE).time.step > base.time.step
    # the collective probe's bytes no longer count: the CPU line holds the unit's bytes
    for op in ("all_gather", "reduce_scatter", "all_reduce"):
        narrow = _fsdp_estimate(tmp_path, f"cpu-narrow-{op}", zero, op=op, line={"bandwidth_gbs": 0.001},
                                cpu=_CPU_LINE)
        assert narrow.time.dp_comm == pytest.approx(base.time.dp_comm, rel=1e-12), op
    # an older profile's rows (no CPU line) cost the wall figure plus the probe's bytes, as before
    old = _fsdp_estimate(tmp_path, "old", zero)
    assert _fsdp_estimate(tmp_path, "old-dearer", zero, unit_s=0.02).time.step > old.time.step
    op = "all_reduce" if zero == 0 else "all_gather"
    narrow_old = _fsdp_estimate(tmp_path, "old-narrow", zero, op=op, line={"bandwidth_gbs": 0.001})
    assert narrow_old.time.dp_comm > old.time.dp_comm


def test_the_attention_curve_is_read_at_the_layout_it_was_measured_at(tmp_path: Path) -> None:
    """calibrate keys the attention curve by seq_len · head_dim; the predictor must read it there: a layout of
    seq 256 × head dim 64 gets the point measured at 16,384, not the clamped low end (seq 256 alone)."""
    from bastion.predict import compute
    from bastion.specs.profile import cluster_from_profile

    acc = cluster_from_profile(f"cpu:4@{write(tmp_path, profile_data())}").accelerator
    small_layout = compute.flash_attention_time(acc, "fp32", 1e9, 256, 64, "fwd") * 0.2
    tiny_layout = compute.flash_attention_time(acc, "fp32", 1e9, 64, 16, "fwd") * 0.1
    assert small_layout == pytest.approx(tiny_layout)  # time × efficiency: each at its own measured efficiency (0.2 and 0.1)


# ---- the elementwise bandwidth by working set (cache-resident to DRAM-sized), host CPUs only ----------------

#: a curve as calibrate fits it: ops of 48 KiB moved stream 4× the reference rate, 48 MiB (the reference) 1×
_CURVE = [[48 * 2**10, 4.0], [48 * 2**20, 1.0]]


def _with_curve() -> dict:
    data = profile_data()
    data["accelerator"]["elementwise_bandwidth_curve"] = _CURVE
    return data


def test_the_elementwise_curve_round_trips_and_sets_the_rate_by_op_size(tmp_path: Path) -> None:
    from bastion.predict import compute
    from bastion.specs.profile import cluster_from_profile

    profile = read_profile(write(tmp_path, _with_curve()))
    assert dict(profile.accelerator_overrides)["elementwise_bandwidth_curve"] == tuple(map(tuple, _CURVE))
    acc = cluster_from_profile(f"cpu:4@{tmp_path / 'profile.toml'}").accelerator
    streamed = 1e6 / 3.0e9
    assert compute.membound_time(acc, 1e6, 48 * 2**10) == pytest.approx(streamed / 4)
    assert compute.membound_time(acc, 1e6, 48 * 2**20) == pytest.approx(streamed)
    # log-interpolated between the points, clamped beyond them; an unknown op size streams
    assert compute.membound_time(acc, 1e6, 48 * 2**15) == pytest.approx(streamed / 2.5)
    assert compute.membound_time(acc, 1e6, 1.0) == pytest.approx(streamed / 4)
    assert compute.membound_time(acc, 1e6) == pytest.approx(streamed)


def test_without_the_curve_or_on_a_gpu_memory_bound_work_streams_at_every_size(tmp_path: Path) -> None:
    """A profile measured before the working-set sweep loads and costs memory-bound work as before: every op at
    hbm_bandwidth_gbs; a GPU's memory-bound work never reads the curve."""
    from bastion.predict import compute
    from bastion.specs.hardware import load_accelerator
    from bastion.specs.profile import cluster_from_profile

    old = cluster_from_profile(f"cpu:4@{write(tmp_path, profile_data())}").accelerator
    assert old.elementwise_bandwidth_curve == ()
    for op_bytes in (0.0, 1e3, 48 * 2**10, 1e9):
        assert compute.membound_time(old, 1e6, op_bytes) == pytest.approx(1e6 / 3.0e9)
    gpu = replace(load_accelerator("h100-sxm"), elementwise_bandwidth_curve=tuple(map(tuple, _CURVE)))
    assert compute.membound_time(gpu, 1e6, 48 * 2**10) == compute.membound_time(gpu, 1e6)


def test_small_activations_make_a_profiled_hosts_memory_bound_term_cheaper(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """tiny's micro-batch of 256 tokens: its activations' ops move 100s of KiB, read from the curve's cached end;
    the same plan on the same profile without the curve streams them, 1.6-4× slower."""
    plan = ("--dp", "4", "--micro-batch", "1", "--seq-len", "256")
    cached = _estimate(str(write(tmp_path, _with_curve(), "curve.toml")), capsys, *plan)
    streamed = _estimate(str(write(tmp_path, profile_data(), "old.toml")), capsys, *plan)
    ratio = streamed["time"]["memory_bound"] / cached["time"]["memory_bound"]
    assert 1.6 < ratio < 4.0
    assert cached["time"]["compute"] == streamed["time"]["compute"]


def test_calibrate_fits_the_curve_from_the_sweep_without_the_ops_dispatch() -> None:
    from bastion.runtime.calibrate import elementwise_bandwidth_curve

    dispatch = 5e-6
    rows = [[48e3, dispatch + 48e3 / 40e9],  # cache: 40 GB/s once the op's dispatch is off
            [4.8e6, dispatch + 4.8e6 / 20e9],
            [4.8e7, dispatch + 4.8e7 / 3e9],  # slower than DRAM by noise: held at DRAM's rate
            [1.9e8, dispatch + 1.9e8 / 4e9]]  # the largest: DRAM
    curve = elementwise_bandwidth_curve(rows, dispatch)
    assert [row[0] for row in curve] == [48e3, 4.8e6, 4.8e7, 1.9e8]
    assert [row[1] for row in curve] == pytest.approx([10.0, 5.0, 1.0, 1.0], rel=1e-3)


def _sync_waits(idle_ms: tuple[float, ...] = (0.5, 1.5, 4.0), ranks_per_core: float = 2.25) -> list[dict]:
    """[[sync_wait]] rows as `bastion calibrate` writes them (4 ranks, background 0.5, on 2 cores)."""
    return [{"op": op, "ranks": 4, "ranks_per_core": ranks_per_core, "work_s": work, "idle_s": idle * 1e-3}
            for op in ("all_reduce", "send_recv") for work, idle in zip((0.001, 0.003, 0.01), idle_ms, strict=True)]


def test_sync_wait_rows_round_trip_and_an_old_profile_charges_none(tmp_path: Path) -> None:
    profile = read_profile(write(tmp_path, {**profile_data(), "sync_wait": _sync_waits()}))
    assert len(profile.sync_waits) == 6
    # linear in the work from none at none, held at the largest measured work beyond it
    assert profile.sync_cost("all_reduce", 2.25, 0.0005) == pytest.approx(0.25e-3)
    assert profile.sync_cost("all_reduce", 2.25, 0.002) == pytest.approx(1.0e-3)
    assert profile.sync_cost("send_recv", 2.25, 1.0) == pytest.approx(4.0e-3)
    # it grows with the ranks per core beyond one, and vanishes on whole cores
    assert profile.sync_cost("all_reduce", 3.5, 0.003) == pytest.approx(1.5e-3 * 2.5 / 1.25)
    assert profile.sync_cost("all_reduce", 1.0, 0.003) == 0.0
    old = read_profile(write(tmp_path, profile_data(), "old.toml"))
    assert old.sync_waits == () and old.sync_cost("all_reduce", 3.0, 0.003) == 0.0
    # rows measured on nearly whole cores cannot say how it grows with the ranks per core: no idle time charged
    whole = read_profile(write(tmp_path, {**profile_data(), "sync_wait": _sync_waits(ranks_per_core=1.05)}, "w.toml"))
    assert whole.sync_cost("all_reduce", 3.0, 0.003) == 0.0
    # gloo's transport CPU per sync, at the plan's share of a core (× its ranks per core), the same linear rule
    rows = _sync_waits((0.0, 0.0, 0.0))
    for row in rows:
        row["transport_cpu_s"] = 0.4e-3
    transport = read_profile(write(tmp_path, {**profile_data(), "sync_wait": rows}, "t.toml"))
    assert transport.sync_cost("all_reduce", 2.0, 0.0005) == pytest.approx(0.2e-3 * 2.0)
    assert transport.sync_cost("all_reduce", 2.0, 0.05) == pytest.approx(0.4e-3 * 2.0)
    assert transport.sync_cost("all_reduce", 1.0, 0.05) == 0.0


@pytest.mark.parametrize("row", [{"op": "barrier"}, {"work_s": 0.0}, {"idle_s": -1.0}])
def test_a_garbled_sync_wait_row_is_a_guidance_error(tmp_path: Path, row: dict) -> None:
    rows = _sync_waits()
    rows[0].update(row)
    with pytest.raises(ConfigError, match=r"\[\[sync_wait\]\] #1"):
        read_profile(write(tmp_path, {**profile_data(), "sync_wait": rows}))


@pytest.mark.parametrize("plan", [
    ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32"),
    ParallelPlan(tp=2, dp=2, sequence_parallel=True, micro_batch=1, global_batch=8, precision="fp32"),
    ParallelPlan(pp=2, dp=2, micro_batch=1, global_batch=8, precision="fp32"),
    ParallelPlan(cp=4, micro_batch=1, global_batch=4, precision="fp32")], ids=["zero3", "tp_sp", "pp_dp", "cp"])
def test_ranks_sharing_cores_pay_the_measured_idle_time_per_sync_point(tmp_path: Path, plan: ParallelPlan) -> None:
    model = load_model("tiny")
    old = write(tmp_path, profile_data(), "old.toml")
    new = write(tmp_path, {**profile_data(), "sync_wait": _sync_waits()}, "new.toml")
    before = estimate(model, load_cluster(f"cpu:4@{old}"), plan)
    after = estimate(model, load_cluster(f"cpu:4@{new}"), plan)
    assert before.time.sync_wait == 0.0
    assert after.time.sync_wait > 0.0
    assert after.time.step == pytest.approx(before.time.step + after.time.sync_wait, rel=1e-9)
    # more ranks per core idle longer at every sync point; on whole cores (2 ranks, no background) none
    crowded = estimate(model, load_cluster(f"cpu:8@{new}"), replace(plan, dp=plan.dp * 2,
                                                                      global_batch=plan.global_batch * 2))
    assert crowded.time.sync_wait > after.time.sync_wait
    data = profile_data()
    data["accelerator"]["background_load"] = 0.0
    whole = write(tmp_path, {**data, "sync_wait": _sync_waits()}, "whole.toml")
    half = replace(plan, dp=max(plan.dp // 2, 1), cp=max(plan.cp // 2, 1) if plan.cp > 1 else 1,
                   global_batch=plan.global_batch // 2)
    assert estimate(model, load_cluster(f"cpu:2@{whole}"), half).time.sync_wait == 0.0


def test_sync_wait_is_no_term_on_a_gpu(tmp_path: Path) -> None:
    plan = ParallelPlan(dp=8, zero_stage=3, micro_batch=1, global_batch=8)
    assert estimate(load_model("tiny"), load_cluster("h100-sxm:8"), plan).time.sync_wait == 0.0


def test_measured_fsdp_units_carry_their_own_waiting(tmp_path: Path) -> None:
    """[[fsdp_unit]] rows were timed on real groups of ranks sharing the cores, waiting included: a plan costed by
    them charges no further sync wait for FSDP2's collectives, only for the loop's two scalar all-reduces; without
    the rows every unit's gathers and reductions are sync points."""
    def sync_wait(units: bool) -> float:
        data = {**profile_data(), "sync_wait": _sync_waits()}
        if units:
            data["fsdp_unit"] = _fsdp_units()
        cluster = load_cluster(str(write(tmp_path, data, f"units-{units}.toml")))
        plan = ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32")
        return estimate(load_model("tiny"), cluster, plan).time.sync_wait

    with_units, without = sync_wait(True), sync_wait(False)
    assert 0 < with_units < without / 10


def _pipelined_zero3(tmp_path: Path, name: str, micro_batch: int, zero3_per_byte: float) -> estimate:
    """pp 2 × dp 2 ZeRO-3 with a CPU line on every row: ZeRO-2's slope 2e-9, ZeRO-3's `zero3_per_byte`."""
    data = {**profile_data(), "fsdp_unit": [
        {**row, **_CPU_LINE, "cpu_s_per_byte": zero3_per_byte if row["zero_stage"] == 3 else 2e-9}
        for row in _fsdp_units()]}
    data["host"]["layer_fsdp_s"] = 0.001
    plan = ParallelPlan(pp=2, dp=2, zero_stage=3, micro_batch=micro_batch, global_batch=8, precision="fp32")
    return estimate(load_model("tiny"), load_cluster(str(write(tmp_path, data, f"{name}.toml"))), plan)


def test_under_a_pipeline_zero3s_cpu_line_recurs_for_its_gathers_and_runs_once_for_its_reduction(
        tmp_path: Path) -> None:
    # ZeRO-3's line = two gathers + one reduce-scatter, ZeRO-2's 2e-9 = one of each, so a gather costs their
    # difference a byte. At 3e-9: gathers 2e-9 (every micro-batch under a pipeline), reduction 1e-9 (once a
    # step); at 3.5e-9: gathers 3e-9, reduction 0.5e-9. So m micro-batches cost m × 1e-9 - 0.5e-9 more a byte.
    from bastion.predict.memory import fsdp_units

    model = load_model("tiny")
    share = 2 / 4.5
    block = sum(n for n, _ in fsdp_units(model, 1, "layer"))
    stage_bytes = 4 * (2 * block + model.vocab_size * model.hidden_size + model.hidden_size)  # fp32, one stage
    for micro_batch, m in ((4, 1), (1, 4)):
        base = _pipelined_zero3(tmp_path, f"base-{micro_batch}", micro_batch, 3e-9)
        dearer = _pipelined_zero3(tmp_path, f"dearer-{micro_batch}", micro_batch, 3.5e-9)
        assert dearer.time.dp_comm - base.time.dp_comm == pytest.approx(
            stage_bytes * (m * 1e-9 - 0.5e-9) / share, rel=1e-6), m


def _time_shared(curve: list[list[float]]) -> dict:
    data = profile_data()
    return {**data, "accelerator": {**data["accelerator"], "time_shared_gemm_efficiency_curve": curve}}


def test_ranks_time_sharing_the_cores_run_their_gemms_at_the_rate_measured_while_they_did(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More ranks than cores (4 on the profile's 2): the GEMMs at the time-shared curve's efficiency; as many ranks
    as cores (2) or a profile without the curve: the one-process curve."""
    from bastion.predict import compute
    from bastion.specs.profile import cluster_from_profile

    slower = [[1e6, 0.4], [1e9, 0.35]]  # large GEMMs half as efficient once their caches are shared
    path = write(tmp_path, _time_shared(slower))
    assert dict(read_profile(path).accelerator_overrides)["time_shared_gemm_efficiency_curve"] == ((1e6, 0.4),
                                                                                                   (1e9, 0.35))
    acc = cluster_from_profile(f"cpu:4@{path}").accelerator
    old = cluster_from_profile(f"cpu:4@{write(tmp_path, profile_data(), 'old.toml')}").accelerator
    shape = ("fp32", 1024, 1024, 1024)  # 2.1 GFLOP: beyond both curves' last point, 0.7 alone and 0.35 shared
    assert compute.gemm_time(acc.shared_by(2), *shape) == compute.gemm_time(old.shared_by(2), *shape)
    assert compute.gemm_time(acc.shared_by(4), *shape) == pytest.approx(2 * compute.gemm_time(old.shared_by(4), *shape))
    # a plan of 4 ranks pays it in its compute term; one of 2 ranks does not (small: GEMMs beyond the test
    # profile's memory roofline)
    def compute_s(cluster: str, dp: int) -> float:
        code, out, err = run(["estimate", "--model", "small", "--cluster", cluster, "--global-batch", "8",
                              "--precision", "fp32", "--json", "--dp", str(dp), "--micro-batch", "1"], capsys)
        assert code == 0, err
        return json.loads(out)["time"]["compute"]

    without = tmp_path / "old.toml"
    assert compute_s(f"cpu:4@{path}", 4) > 1.2 * compute_s(f"cpu:4@{without}", 4)
    assert compute_s(f"cpu:2@{path}", 2) == compute_s(f"cpu:2@{without}", 2)


def test_calibrate_fits_the_time_shared_curve_only_with_more_ranks_than_cores() -> None:
    """combine_ranks + fit_profile: each rank's CPU seconds per GEMM while all multiplied at once, the median rank's,
    become the time-shared curve when the ranks outnumbered the cores; with one rank per core there is none."""
    from bastion.runtime.calibrate import combine_ranks, fit_profile

    def rank(seconds: float) -> dict:
        return {"start_s": 1.0, "core_share": [0.5] * 3, "elementwise": [[1 << 20, 1e-3]], "collectives": [],
                "gemm": [[64, 64, 64, 1e-5], [512, 512, 512, seconds]]}

    raw = {"dispatch_s": 0.0, "gemm": [[64, 64, 64, 1e-5], [512, 512, 512, 2e-3]],
           "attention": [[64, 16, 2, 1e-4, 3e-4]], "elementwise": [[1 << 20, 1e-3]], "host": {"layer_s": 1e-3}}
    ranks = [rank(2.4e-3), rank(2.6e-3), rank(2.5e-3), rank(9e-3)]  # one rank disturbed: the median's 2.55 ms
    fitted = fit_profile({**raw, "shared": combine_ranks(ranks, ranks_per_host=4)}, 1e12, 2)["accelerator"]
    alone = dict(map(tuple, fitted["gemm_efficiency_curve"]))
    shared = dict(map(tuple, fitted["time_shared_gemm_efficiency_curve"]))
    flops = 2.0 * 512**3
    assert alone[flops] == pytest.approx(flops / 2e-3 / 1e12)
    assert shared[flops] == pytest.approx(flops / 2.55e-3 / 1e12)
    assert shared[2.0 * 64**3] == pytest.approx(alone[2.0 * 64**3])
    one_per_core = fit_profile({**raw, "shared": combine_ranks(ranks[:2], ranks_per_host=2)}, 1e11, 2)
    assert "time_shared_gemm_efficiency_curve" not in one_per_core["accelerator"]
