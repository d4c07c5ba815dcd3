"""`bastion estimate` and `bastion validate` (filled in by the predictor work, issue 2)."""

from __future__ import annotations
