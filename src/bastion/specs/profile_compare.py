"""`bastion calibrate --compare A B`: which measurements of two machine profiles differ beyond their noise.

Every measurement a profile holds comes with its repeats (`[repeats]`, specs/profile.py). Its noise band is half
the p10-p90 spread of its repeats around their median; a measurement changed when the two medians are further apart than
their two bands together (the bands do not overlap) and by at least `min_change` of the first. A slow GEMM, a
degraded link (a collective's times) or a busier host (a rank's core share) shows up as such a change. Torch-free.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from bastion.errors import ConfigError
from bastion.specs.profile import MachineProfile

#: the smallest relative change reported, whatever the noise (repeats that happen to agree closely)
DEFAULT_MIN_CHANGE = 0.05


def noise_band(times: tuple[float, ...]) -> float:
    """Half the p10-p90 spread of the repeats, relative to their median (0 for one repeat or a zero median): the
    repeat a busy host stalled now and then does not widen it."""
    middle = statistics.median(times)
    if len(times) < 2 or middle <= 0:
        return 0.0
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    return (deciles[-1] - deciles[0]) / 2 / middle


@dataclass(frozen=True)
class MeasurementChange:
    """One measurement in both profiles: medians of its repeats (seconds; a share of a core for `core share`
    rows) and their relative noise bands."""

    name: str
    before: float
    after: float
    before_noise: float
    after_noise: float
    repeats_before: int
    repeats_after: int

    @property
    def ratio(self) -> float:
        return self.after / self.before if self.before > 0 else float("inf")

    def changed(self, min_change: float) -> bool:
        beyond_noise = abs(self.after - self.before) > self.before * self.before_noise + self.after * self.after_noise
        return beyond_noise and abs(self.ratio - 1) >= min_change


@dataclass(frozen=True)
class ProfileComparison:
    before: str
    after: str
    min_change: float
    measurements: tuple[MeasurementChange, ...]
    only_before: tuple[str, ...]
    only_after: tuple[str, ...]

    @property
    def changed(self) -> list[MeasurementChange]:
        """The changed measurements, the largest relative change first."""
        found = [m for m in self.measurements if m.changed(self.min_change)]
        return sorted(found, key=lambda m: -abs(m.ratio - 1))

    def to_dict(self) -> dict[str, Any]:
        def row(m: MeasurementChange) -> dict[str, Any]:
            return {**asdict(m), "ratio": m.ratio, "changed": m.changed(self.min_change)}
        return {"before": self.before, "after": self.after, "min_change": self.min_change,
                "changed": [row(m) for m in self.changed], "measurements": [row(m) for m in self.measurements],
                "only_before": list(self.only_before), "only_after": list(self.only_after),
                "rule": "changed: the medians of the repeats differ by more than the two noise bands (half the "
                        "p10-p90 spread of each one's repeats) together, and by at least min_change"}

    def text(self) -> str:
        changed = self.changed
        lines = [f"{len(changed)} of {len(self.measurements)} measurements changed beyond their noise "
                 f"(and by at least {self.min_change:.0%}): {self.before} -> {self.after}"]
        if changed:
            width = max(len(m.name) for m in changed)
            lines.append(f"  {'measurement':{width}}  {'before':>11}  {'after':>11}  {'ratio':>6}  noise before/after")
            lines.extend(f"  {m.name:{width}}  {m.before:11.4g}  {m.after:11.4g}  {m.ratio:6.2f}  "
                         f"±{m.before_noise:.1%} / ±{m.after_noise:.1%}" for m in changed)
        for label, names in (("only in the first", self.only_before), ("only in the second", self.only_after)):
            if names:
                lines.append(f"{len(names)} measurement(s) {label}: {', '.join(names[:8])}"
                             + (", ..." if len(names) > 8 else ""))
        return "\n".join(lines)


def compare_profiles(before: MachineProfile, after: MachineProfile,
                     min_change: float = DEFAULT_MIN_CHANGE) -> ProfileComparison:
    """The measurements both profiles hold, each judged against its noise; a profile without repeats is a
    ConfigError (it cannot state its noise)."""
    for profile in (before, after):
        if not profile.repeats:
            raise ConfigError(f"{profile.path} holds no [repeats]: its measurements have no noise band to compare "
                              "against (written by an older `bastion calibrate`).",
                              fix="run `bastion calibrate --out PROFILE.toml` again on that machine.")
    if not 0 <= min_change < 1:
        raise ConfigError(f"--min-change must be in [0, 1), got {min_change}.", fix="e.g. --min-change 0.05.")
    a, b = dict(before.repeats), dict(after.repeats)
    rows = tuple(MeasurementChange(name, statistics.median(a[name]), statistics.median(b[name]),
                                   noise_band(a[name]), noise_band(b[name]), len(a[name]), len(b[name]))
                 for name in a if name in b)
    return ProfileComparison(before=before.path, after=after.path, min_change=min_change, measurements=rows,
                             only_before=tuple(n for n in a if n not in b),
                             only_after=tuple(n for n in b if n not in a))
