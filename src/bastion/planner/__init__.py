"""The planner: exhaustive search over hybrid-parallel plans on top of the predictor (`bastion plan`).

space.py enumerates plans and counts static rejections; bounds.py proves groups out of memory; search.py
predicts the rest and ranks them by an objective (objectives.py); explain.py says why the winner wins;
advice.py computes what would help when nothing fits.
"""

from bastion.planner.search import PlanRequest, RankedPlan, SearchResult, search
from bastion.planner.space import SearchSpace

__all__ = ["PlanRequest", "RankedPlan", "SearchResult", "SearchSpace", "search"]
