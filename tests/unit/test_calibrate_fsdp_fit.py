"""runtime/calibrate.py's fsdp_unit_costs: FSDP2's per-unit cost from the timed models of 1 and 3 blocks, with
and without FSDP2 (what a [[fsdp_unit]] row of a profile holds)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.runtime.calibrate import fsdp_unit_costs
from bastion.specs.hardware import load_accelerator


def test_a_unit_is_what_fsdp2_adds_per_block_and_the_root_what_remains() -> None:
    # without FSDP2: 2 ms per block, 5 ms for the ends; under ZeRO 3 on 4 ranks: 12 ms per block, 9 ms ends
    rows = [[-1, 4, 1, 0.007], [-1, 4, 3, 0.011], [3, 4, 1, 0.021], [3, 4, 3, 0.045]]
    (cost,) = fsdp_unit_costs(rows, 0.5)
    assert (cost["zero_stage"], cost["group_size"]) == (3, 4)
    # wall × the share of a core the busy ranks had: seconds on whole cores
    assert cost["unit_s"] == pytest.approx((0.012 - 0.002) * 0.5)
    assert cost["root_s"] == pytest.approx((0.021 - 0.007 - 0.010) * 0.5)


def test_noise_that_makes_fsdp2_look_free_is_no_negative_cost() -> None:
    rows = [[-1, 2, 1, 0.010], [-1, 2, 3, 0.020], [0, 2, 1, 0.009], [0, 2, 3, 0.018]]
    (cost,) = fsdp_unit_costs(rows, 1.0)
    assert cost["unit_s"] == 0.0 and cost["root_s"] == 0.0


def test_a_plan_of_the_measured_world_at_the_measured_load_gets_back_the_measured_wall_time() -> None:
    # 4 ranks on 2 cores got 0.485 of a core each while all were busy: the profile's background load is what
    # makes Accelerator.core_share(4) that share again, and a unit's whole-core cost divided by it is the wall
    # time measured (converting with another share, e.g. the one the ranks had around barriers, would not be)
    share, cores, world = 0.485, 2, 4
    rows = [[-1, 4, 1, 0.007], [-1, 4, 3, 0.011], [0, 4, 1, 0.021], [0, 4, 3, 0.045]]
    (cost,) = fsdp_unit_costs(rows, share)
    acc = replace(load_accelerator("cpu"), background_load=cores / share - world)
    assert acc.host_cores == cores
    assert cost["unit_s"] / acc.core_share(world) == pytest.approx(0.012 - 0.002)


def _cpu_rows(zero: int, size: int, per_byte: float) -> list[list]:
    """[zero_stage, group_size, layers, parameter bytes, CPU s] at two widths: blocks of 0.1 and 12 MB, roots of
    0.2 MB; without FSDP2 1 ms a block (4 ms wide) and 3 ms the ends; FSDP2 adds 5 ms a block and 2 ms the root
    at no bytes, plus `per_byte` per byte of each."""
    rows = []
    for block, root, eager in ((1e5, 2e5, 1e-3), (12e6, 2e5, 4e-3)):
        for layers in (1, 3):
            nbytes = root + layers * block
            rows.append([-1, size, layers, nbytes, 3e-3 + layers * eager])
            rows.append([zero, size, layers, nbytes, 3e-3 + layers * eager + 2e-3 + layers * 5e-3 + nbytes * per_byte])
    return rows


def test_the_cpu_cost_per_unit_is_a_line_in_its_parameter_bytes_through_the_two_widths() -> None:
    wall = [[-1, 4, 1, 0.007], [-1, 4, 3, 0.011], [0, 4, 1, 0.021], [0, 4, 3, 0.045]]
    (cost,) = fsdp_unit_costs(wall, 0.5, _cpu_rows(0, 4, 2e-9))
    assert cost["cpu_s_per_byte"] == pytest.approx(2e-9)
    assert cost["unit_cpu_s"] == pytest.approx(5e-3)
    assert cost["root_cpu_s"] == pytest.approx(2e-3)
    # CPU seconds are work: no core share converts them; the wall figures stay as before
    assert cost["unit_s"] == pytest.approx((0.012 - 0.002) * 0.5)


def test_one_width_gives_no_cpu_line() -> None:
    wall = [[-1, 4, 1, 0.007], [-1, 4, 3, 0.011], [3, 4, 1, 0.021], [3, 4, 3, 0.045]]
    narrow = [row for row in _cpu_rows(3, 4, 2e-9) if row[3] < 1e6]
    (cost,) = fsdp_unit_costs(wall, 0.5, narrow)
    assert set(cost) == {"zero_stage", "group_size", "unit_s", "root_s"}
