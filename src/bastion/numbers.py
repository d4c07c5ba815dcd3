"""Numbers a user gives, from a flag or a spec-file field: a real number, finite unless infinity means something,
inside its range, and small enough that the work it sets off stays bounded.

One home for the limits, so that `--cluster h100-sxm:N`, a cluster file and `--global-batch` agree on what is too
large. The limits are far above any real run (the largest published training runs use ~10^5 devices and global
batches of a few thousand sequences) and low enough that enumerating the divisors of a value, or a schedule over
it, takes well under a second.
"""

from __future__ import annotations

import math

from bastion.errors import ConfigError

#: devices in one cluster or one parallel degree
MAX_DEVICES = 2**20
#: sequences per optimizer step (and per micro-batch)
MAX_GLOBAL_BATCH = 2**24
#: tokens per sequence
MAX_SEQ_LEN = 2**24
#: transformer layers
MAX_LAYERS = 2**14
#: widths: hidden, FFN, head dim, vocabulary, head and expert counts
MAX_WIDTH = 2**24
#: tokens of one training job the scheduling simulator replays (the largest published runs train on ~4e13; the
#: simulator draws each failure of a job, so their number, and its run time, grow with the tokens)
MAX_JOB_TOKENS = 1e16
#: seconds from a simulated job's start to its first step (a week: far above any scheduler's; the simulator draws
#: node failures over that time too, so an unbounded one runs without end)
MAX_LAUNCH_LATENCY_S = 7 * 24 * 3600.0
#: hours of one simulated job's run, and of the span its submissions cover (a year and ten: longer than any
#: recorded trace; the simulator draws node failures over them, so their number grows with the span)
MAX_JOB_HOURS = 365 * 24.0
MAX_SUBMIT_HOURS = 10 * 365 * 24.0


def _limit(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _range_text(low: float | None, above: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {_limit(low)} and {_limit(high)}"
    parts = [f">= {_limit(low)}" if low is not None else "", f"> {_limit(above)}" if above is not None else "",
             f"<= {_limit(high)}" if high is not None else ""]
    return " and ".join(p for p in parts if p)


def checked_number(value: object, name: str, *, integer: bool = False, low: float | None = None,
                   above: float | None = None, high: float | None = None, allow_inf: bool = False,
                   fix: str | None = None) -> int | float:
    """`value` (a number, or the text of one) as an int (`integer`) or a float inside [low, high] (and > above),
    or a ConfigError that names `name`. NaN is never a number; infinity only with `allow_inf`."""
    kind = "a whole number" if integer else "a number"
    limits = _range_text(low, above, high)
    advice = fix or f"give {name} {kind}{' ' + limits if limits else ''}."
    shown = value if not isinstance(value, str) else value.strip()
    if isinstance(shown, str) and len(shown) > 40:
        shown = shown[:20] + f"…({len(shown)} characters)"
    number: int | float
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be {kind}, got {value!r}.", fix=advice)
    if isinstance(value, int | float):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except (ValueError, OverflowError):
                raise ConfigError(f"{name} must be {kind}, got {shown!r}.", fix=advice) from None
    if isinstance(number, float) and math.isnan(number):
        raise ConfigError(f"{name} must be {kind}, got nan.", fix=advice)
    if isinstance(number, float) and math.isinf(number) and not allow_inf:
        raise ConfigError(f"{name} must be finite, got {number}.", fix=advice)
    if integer and not isinstance(number, int):
        if not number.is_integer():
            raise ConfigError(f"{name} must be {kind}, got {shown}.", fix=advice)
        number = int(number)
    if low is not None and number < low:
        raise ConfigError(f"{name} must be >= {_limit(low)}, got {short_number(number)}.", fix=advice)
    if above is not None and not number > above:
        raise ConfigError(f"{name} must be > {_limit(above)}, got {short_number(number)}.", fix=advice)
    if high is not None and number > high and not (allow_inf and number == math.inf):
        raise ConfigError(f"{name} must be <= {_limit(high)}, got {short_number(number)}: that is beyond anything "
                          f"bastion plans for.", fix=advice)
    return number


def short_number(number: int | float) -> str:
    """The number as a user reads it: `-5`, `0.5`, `1e+30`, never 5,000 digits."""
    if isinstance(number, int) and abs(number) >= 10**15:
        try:
            return f"{float(number):.3g}"
        except OverflowError:
            return f"a {number.bit_length()}-bit number"
    return f"{number:g}" if isinstance(number, float) else str(number)
