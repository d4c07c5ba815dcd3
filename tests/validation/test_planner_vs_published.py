"""The planner against published expert plans (bastion/predict/data/public_cases.csv).

- Every published plan that bastion can express must fit in memory under the predictor.
- The planner's best can never be slower than the experts' plan (which lies in its space): a search that
  missed it would not be exhaustive.
- How far apart they are is reported (run with -s); the full table over every row comes from
  `benchmarks/bench_planner.py --published`. Here the single-node rows are searched, to keep the suite fast.
"""

from __future__ import annotations

import pytest

from bastion.planner.published import CLAIM_THRESHOLD, PublishedRuns
from bastion.predict.validate import PUBLIC_CASES, RowSkipped, case_estimate, read_cases

ROWS = read_cases(PUBLIC_CASES)
#: rows whose published plan bastion cannot express, and why. Empty since R0040 (BLOOM, 70 layers on 12 stages,
#: the embedding and the head each in a layer's slot) became expressible.
INEXPRESSIBLE: dict[str, str] = {}
#: published plans the predictor says do not fit, though they ran. Empty since R0014 (530B, DeepSpeed ZeRO-3, mb 4 on
#: 640 A100-80GB) fits when ZeRO-3 gathers one sub-module at a time (validate's stated assumption when whole-layer
#: gathers would not fit): 68 GiB instead of 87.
KNOWN_INFEASIBLE: set[str] = set()


def test_every_expressible_published_plan_fits_under_the_predictor() -> None:
    infeasible, skipped = [], {}
    for row in ROWS:
        try:
            _, chosen, _, cluster = case_estimate(row)  # with the publication's software
        except RowSkipped as exc:
            skipped[row["case_id"]] = str(exc)
            continue
        if not chosen.fits:
            infeasible.append(f"{row['case_id']} {row['model']} ({chosen.memory.total / 2**30:.1f} GiB > "
                              f"{cluster.accelerator.hbm_gib:g})")
    new = [i for i in infeasible if i.split()[0] not in KNOWN_INFEASIBLE]
    assert not new, f"published plans predicted not to fit: {new}"
    now_fitting = KNOWN_INFEASIBLE - {i.split()[0] for i in infeasible}
    assert not now_fitting, f"{sorted(now_fitting)} now fit under the predictor: remove them from KNOWN_INFEASIBLE"
    assert set(skipped) == set(INEXPRESSIBLE), skipped
    for case_id, why in INEXPRESSIBLE.items():
        assert why in skipped[case_id]


SINGLE_NODE = [r for r in ROWS if int(r["num_gpus"]) <= 8 and r["case_id"] not in INEXPRESSIBLE]


@pytest.fixture(scope="module")
def runs() -> PublishedRuns:
    return PublishedRuns(workers=1)


# one row in eight of the single-node runs (Megatron 22B and llm-foundry MPT on A100/H100) keeps this quick
@pytest.mark.parametrize("row", SINGLE_NODE[::8], ids=lambda r: r["case_id"])
def test_planner_is_never_worse_than_the_published_plan(row, runs: PublishedRuns) -> None:
    try:
        c = runs.compare(row)
    except RowSkipped as exc:
        pytest.fail(f"{row['case_id']}: {exc}")
    assert c.published_fits
    assert c.free is not None and c.same_techniques is not None
    # the published plan is in both spaces, so neither best may be slower (to rounding)
    assert c.free.step_time_s <= c.predicted_s * (1 + 1e-9)
    assert c.same_techniques.step_time_s <= c.predicted_s * (1 + 1e-9)
    assert c.free.step_time_s <= c.same_techniques.step_time_s * (1 + 1e-9)
    claim = " (over the claim threshold)" if c.free_gain > CLAIM_THRESHOLD else ""
    print(f"\n{c.case_id} {c.model} × {c.num_gpus} {c.accelerator}: published plan {c.predicted_s:.3f} s predicted "
          f"({c.published_s:.3f} s published); planner {c.free.step_time_s:.3f} s ({100 * c.free_gain:+.0f}%){claim}, "
          f"same techniques {c.same_techniques.step_time_s:.3f} s ({100 * c.same_techniques_gain:+.0f}%)")
