"""runtime/calibrate.py's synchronisation probe fit (`sync_wait_rows`): the idle wall time per sync point beyond
the work at the ranks' core share and the sync alone."""

from __future__ import annotations

import pytest

from bastion.runtime.calibrate import sync_wait_rows


def test_the_idle_cost_is_what_the_wall_time_holds_beyond_the_work_at_the_share_and_the_sync_alone() -> None:
    # 4 ranks at 0.5 of a core each: 1 ms of work takes 2 ms of wall, the all-reduce alone 0.3 ms
    measured = [["all_reduce", 0.0, 0.0003], ["all_reduce", 0.001, 0.0033], ["all_reduce", 0.01, 0.0303],
                ["send_recv", 0.0, 0.0001], ["send_recv", 0.001, 0.0021]]
    rows = sync_wait_rows(measured, world=4, share=0.5)
    assert [(r["op"], r["work_s"]) for r in rows] == [("all_reduce", 0.001), ("all_reduce", 0.01),
                                                       ("send_recv", 0.001)]
    assert [r["idle_s"] for r in rows] == pytest.approx([0.001, 0.01, 0.0])
    assert all(r["ranks"] == 4 and r["ranks_per_core"] == pytest.approx(2.0) for r in rows)


def test_noise_that_makes_a_sync_look_faster_than_its_work_is_no_negative_cost() -> None:
    rows = sync_wait_rows([["all_reduce", 0.0, 0.001], ["all_reduce", 0.002, 0.002]], world=2, share=1.0)
    assert rows[0]["idle_s"] == 0.0
