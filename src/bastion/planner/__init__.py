"""The planner: exhaustive search over hybrid-parallel plans on top of the predictor (`bastion plan`).

space.py enumerates plans and counts static rejections; bounds.py proves groups out of memory; search.py
predicts the rest and ranks them by an objective (objectives/: one file each, registered in OBJECTIVES);
explain.py says why the winner wins; advice.py computes what would help when nothing fits.

The names below load on first use, so that `bastion --help` can read the objective registry without the rest
(the search function itself: `bastion.planner.search.search`).
"""

from __future__ import annotations

from bastion.lazy import lazy_attributes

#: public name -> the module (under bastion.planner) that defines it
_HOMES = {"PlanRequest": "search", "RankedPlan": "search", "SearchResult": "search", "SearchSpace": "space",
          "OBJECTIVES": "objectives"}

__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes(__name__, _HOMES)
