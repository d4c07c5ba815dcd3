"""runtime/calibrate.py's synchronisation probe fit (`sync_wait_rows`): the idle wall time per sync point beyond
the work alone in the window before it and the sync alone."""

from __future__ import annotations

import pytest

from bastion.runtime.calibrate import sync_wait_rows


def _rounds(op: str, work: float, synced: list[float], alone: list[float], transport: float = 0.0) -> list[list]:
    return [[op, work, i, s, a, transport] for i, (s, a) in enumerate(zip(synced, alone, strict=True))]


def test_the_idle_cost_is_what_the_synced_loop_takes_beyond_the_work_alone_and_the_sync_alone() -> None:
    # 4 ranks at 0.5 of a core: 1 ms of work alone takes 2 ms of wall; the all-reduce alone 0.3 ms; the host's
    # other load moves the work alone's window from round to round, and only adds to the synced loop's beyond
    # it (rounds of 1, 11 and 3 ms idle: the least)
    measured = (_rounds("all_reduce", 0.0, [0.0003, 0.0002, 0.0004], [0, 0, 0])
                + _rounds("all_reduce", 0.001, [0.0033, 0.0153, 0.0063], [0.002, 0.004, 0.003])
                + _rounds("send_recv", 0.0, [0.0001] * 3, [0, 0, 0])
                + _rounds("send_recv", 0.001, [0.0021] * 3, [0.002] * 3, transport=0.0004))
    rows = sync_wait_rows(measured, world=4)
    assert [(r["op"], r["work_s"]) for r in rows] == [("all_reduce", 0.001), ("send_recv", 0.001)]
    assert [r["idle_s"] for r in rows] == pytest.approx([0.001, 0.0])
    assert [r["ranks_per_core"] for r in rows] == pytest.approx([3.0, 2.0])
    assert all(r["ranks"] == 4 for r in rows)
    assert [r["transport_cpu_s"] for r in rows] == pytest.approx([0.0, 0.0004])


def test_noise_that_makes_a_sync_look_faster_than_its_work_is_no_negative_cost() -> None:
    measured = _rounds("all_reduce", 0.0, [0.001] * 3, [0] * 3) + _rounds("all_reduce", 0.002, [0.002] * 3,
                                                                         [0.0025] * 3)
    assert sync_wait_rows(measured, world=2)[0]["idle_s"] == 0.0
