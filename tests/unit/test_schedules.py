"""The pipeline-schedule registry (specs/schedules.py): predictions per schedule are those of the code before the
registry, and a schedule registered from a test is seen by plan validation, the predictor, the planner's space,
the CLI and the runtime's class lookup — adding a schedule touches the registry only."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bastion.cli import main
from bastion.errors import PlanError
from bastion.planner.search import PlanRequest, search
from bastion.planner.space import SearchSpace, enumerate_space, schedule_options
from bastion.predict import estimate
from bastion.predict.schedule import bubble_fraction, layer_microbatches_in_flight
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.schedules import (
    ONE_CHUNK,
    SCHEDULES,
    V_SHAPE,
    PipelineSchedule,
    chunks_of_stage,
    get_schedule,
    register_schedule,
    schedule_names,
)

# llama3-8b on h200:64, tp 2 pp 8, micro-batch 2, global batch 256 (interleaved and V schedules: vpp 2), computed
# by the code before the registry (commit 4c82808, `bastion estimate ... --json`): step time, bubble, memory of the
# fullest rank, and the activations of every pipeline rank
BEFORE_REGISTRY = {
    "gpipe": (6.084041779885733, 1.0684444260908523, 256271852070.4,
              [210604392448.0] * 7 + [210872893440.0]),
    "1f1b": (6.084041779885733, 1.0684444260908523, 70670407001.6,
             [52651098112.0, 46069710848.0, 39488323584.0, 32906936320.0, 26325549056.0, 19744161792.0,
              13162774528.0, 6849888256.0]),
    "zero-bubble": (5.371745495825164, 0.3561481420302841, 70670407001.6,
                    [52651098112.0, 46069710848.0, 39488323584.0, 32906936320.0, 26325549056.0, 19744161792.0,
                     13162774528.0, 6849888256.0]),
    "interleaved-1f1b": (5.651272173418085, 0.5342222130454262, 96008747968.0,
                         [75685953536.0, 69104566272.0, 62523179008.0, 55941791744.0, 49360404480.0,
                          42779017216.0, 36197629952.0, 29884743680.0]),
    "zbv": (5.2979367709718, 0.17807407101514205, 86725920908.8, [52919599104.0] + [52651098112.0] * 7),
    "dualpipev": (5.2979367709718, 0.17807407101514205, 93965446899.2, [59500986368.0] + [59232485376.0] * 7),
}

ALIAS = "test-half-bubble-1f1b"


def _plan(schedule: str, **fields: int) -> ParallelPlan:
    vpp = 1 if get_schedule(schedule).layout.max_vpp == 1 else 2
    values = dict(dp=4, tp=2, pp=8, micro_batch=2, global_batch=256, pp_schedule=schedule, vpp=vpp)
    return ParallelPlan(**{**values, **fields})


@pytest.mark.parametrize("schedule", sorted(BEFORE_REGISTRY))
def test_predictions_per_schedule_are_those_before_the_registry(schedule: str) -> None:
    est = estimate(load_model("llama3-8b"), load_cluster("h200:64"), _plan(schedule))
    step, bubble, total, activations = BEFORE_REGISTRY[schedule]
    assert est.step_time_s == pytest.approx(step, rel=1e-12)
    assert est.time.bubble == pytest.approx(bubble, rel=1e-12)
    assert est.memory.total == pytest.approx(total, rel=1e-12)
    assert [m.activations for m in est.memory_by_stage] == pytest.approx(activations, rel=1e-12)


def test_shipped_schedules_and_their_layouts() -> None:
    assert schedule_names()[:6] == ("gpipe", "1f1b", "interleaved-1f1b", "zero-bubble", "zbv", "dualpipev")
    assert chunks_of_stage("zbv", 4, 2, 0) == [0, 7] and chunks_of_stage("dualpipev", 4, 2, 3) == [3, 4]
    assert chunks_of_stage("interleaved-1f1b", 4, 3, 1) == [1, 5, 9]
    assert chunks_of_stage("1f1b", 4, 1, 2) == [2]
    with pytest.raises(PlanError, match="Did you mean 'zbv'"):
        get_schedule("zbb")
    with pytest.raises(ValueError, match="already registered"):
        register_schedule(SCHEDULES["1f1b"])


def test_v_schedules_are_refused_on_cpu_gloo_before_torch_2_13_only() -> None:
    zbv = get_schedule("zbv")
    refusal = zbv.refusal("2.11.0+cpu", "cpu")
    assert refusal is not None and refusal.reason == "schedule unavailable"
    assert "fails on CPU/gloo with torch 2.11.0+cpu" in refusal.problem
    assert refusal.fix == "use interleaved-1f1b or zero-bubble here, or torch >= 2.13."
    assert zbv.refusal("2.13.0+cpu", "cpu") is None
    assert zbv.refusal("2.11.0", "cuda") is None
    assert get_schedule("interleaved-1f1b").refusal("2.11.0+cpu", "cpu") is None


# ---- a schedule registered from a test ---------------------------------------------------------------------
def _alias_in_flight(pp: int, vpp: int, m: int, stage: int) -> int:
    return min(pp, m)  # every rank keeps the first rank's warm-up


@pytest.fixture
def alias() -> Iterator[PipelineSchedule]:
    """Torch's Schedule1F1B under another name, with half its bubble and the first rank's memory on every rank."""
    entry = register_schedule(PipelineSchedule(
        name=ALIAS, torch_class="Schedule1F1B", layout=ONE_CHUNK,
        bubble=lambda pp, vpp, m: (pp - 1) / (2 * m), bubble_note="test: half the 1F1B bubble",
        chunk_microbatches_in_flight=_alias_in_flight))
    yield entry
    del SCHEDULES[ALIAS]


def test_plan_validation_sees_a_registered_schedule(alias: PipelineSchedule) -> None:
    assert _plan(ALIAS).pp_schedule == ALIAS
    with pytest.raises(PlanError, match=f"{ALIAS} runs one chunk per rank; vpp must be 1, got 2"):
        _plan(ALIAS, vpp=2)
    with pytest.raises(PlanError, match=ALIAS):  # the list of known schedules names it
        ParallelPlan(pp=2, pp_schedule="no-such-schedule")


def test_predictor_uses_the_registered_formulas(alias: PipelineSchedule) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h200:64")
    base, mine = estimate(model, cluster, _plan("1f1b")), estimate(model, cluster, _plan(ALIAS))
    assert bubble_fraction(ALIAS, 8, 1, 32) == pytest.approx(7 / 64)
    assert mine.time.bubble == pytest.approx(base.time.bubble / 2, rel=1e-9)
    assert mine.step_time_s < base.step_time_s
    assert "test: half the 1F1B bubble" in mine.assumptions
    assert layer_microbatches_in_flight(ALIAS, 8, 1, 64, 7, 4) == 8 * 4
    first = base.memory_by_stage[0].activations
    assert [m.activations for m in mine.memory_by_stage][:7] == pytest.approx([first] * 7)
    assert mine.memory_by_stage[7].activations > base.memory_by_stage[7].activations


def test_planner_space_and_search_see_a_registered_schedule(alias: PipelineSchedule) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h200:64")
    assert (ALIAS, 1) in schedule_options(8, model.num_layers, SearchSpace())
    leaves = enumerate_space(model, cluster, 256, model.seq_len, SearchSpace()).leaves
    assert any(leaf.pp_schedule == ALIAS for leaf in leaves)
    pinned = SearchSpace(pins={"pp_schedule": ALIAS, "pp": 8})
    result = search(PlanRequest(model=model, cluster=cluster, global_batch=256, seq_len=model.seq_len, top_k=3,
                                space=pinned, workers=1))
    assert result.plans and all(p.plan.pp_schedule == ALIAS for p in result.plans)


def test_cli_sees_a_registered_schedule(alias: PipelineSchedule, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["estimate", "--model", "llama3-8b", "--cluster", "h200:64", "--tp", "2", "--pp", "8",
              "--micro-batch", "2", "--global-batch", "256", "--schedule", ALIAS, "--json"])
    assert int(exc.value.code or 0) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["pp_schedule"] == ALIAS
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--model", "llama3-8b", "--cluster", "h200:64", "--global-batch", "256", "--fix",
              f"pp_schedule={ALIAS}", "--fix", "pp=8", "--top", "1", "--json"])
    assert int(exc.value.code or 0) == 0
    assert json.loads(capsys.readouterr().out)["plans"][0]["plan"]["pp_schedule"] == ALIAS


def test_runtime_resolves_a_registered_schedule(alias: PipelineSchedule) -> None:
    torch = pytest.importorskip("torch")
    from torch.distributed import pipelining

    from bastion.runtime.parallelize import schedule_class, stage_ids_for_rank

    assert schedule_class(alias, torch.device("cpu")) is pipelining.Schedule1F1B
    by_path = PipelineSchedule(name="test-by-path", torch_class="torch.distributed.pipelining.schedules.ScheduleGPipe",
                               layout=ONE_CHUNK, bubble=alias.bubble, bubble_note="",
                               chunk_microbatches_in_flight=_alias_in_flight)
    assert schedule_class(by_path, torch.device("cpu")) is pipelining.ScheduleGPipe
    assert stage_ids_for_rank(_plan(ALIAS), 3) == [3]
    too_new = PipelineSchedule(name="test-too-new", torch_class="Schedule1F1B", layout=V_SHAPE,
                               bubble=alias.bubble, bubble_note="", chunk_microbatches_in_flight=_alias_in_flight,
                               min_torch="99.0")
    with pytest.raises(PlanError, match="torch >= 99.0"):
        schedule_class(too_new, torch.device("cpu"))
    missing = PipelineSchedule(name="test-missing", torch_class="ScheduleThatTorchLacks", layout=ONE_CHUNK,
                               bubble=alias.bubble, bubble_note="", chunk_microbatches_in_flight=_alias_in_flight)
    with pytest.raises(PlanError, match="needs ScheduleThatTorchLacks"):
        schedule_class(missing, torch.device("cpu"))
