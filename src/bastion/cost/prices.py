"""Cloud GPU list prices (data/cloud_prices.csv), newest row per provider, offering and pricing model."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class CloudPrice:
    provider: str
    offering: str
    accelerator: str
    #: `on-demand`, `spot`, `reserved-1y`, `reserved-3y` or `capacity-block`
    pricing: str
    usd_per_gpu_hour: float
    as_of: str
    source: str


@cache
def _all_prices() -> tuple[CloudPrice, ...]:
    with (_DATA / "cloud_prices.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return tuple(CloudPrice(r["provider"], r["offering"], r["accelerator"], r["pricing"],
                            float(r["usd_per_gpu_hour"]), r["as_of"], r["source"]) for r in rows)


def _offering_family(offering: str) -> str:
    # "p5.48xlarge (after June 2025 price cut)" and "p5.48xlarge" are the same offering at two dates
    return offering.split(" (")[0].strip()


def cloud_prices(accelerator: str, pricing: str | None = None) -> list[CloudPrice]:
    """Current list prices for an accelerator: for each provider/offering/pricing, only the newest row."""
    newest: dict[tuple[str, str, str], CloudPrice] = {}
    for price in _all_prices():
        if price.accelerator != accelerator or (pricing and price.pricing != pricing):
            continue
        key = (price.provider, _offering_family(price.offering), price.pricing)
        if key not in newest or price.as_of > newest[key].as_of:
            newest[key] = price
    return sorted(newest.values(), key=lambda p: (p.usd_per_gpu_hour, p.provider))
