"""Measured efficiency curves, loaded once from the JSON/TOML files in `data/` and cached.

Everything here is relative to the card the numbers were measured on (one H200, see data/README.md): GEMM and
attention rates as fractions of that card's datasheet peak, memory-bound operations as effective bytes per element.
`device_scale` carries them to other accelerators: by a card's own published rates (data/accelerator_rates.toml)
where there are some, else by its catalog matmul_efficiency.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bastion.specs.hardware import Accelerator

DATA_DIR = Path(__file__).parent / "data"
CALIBRATION_FILE = "h200-torch2.11-2026-11.json"
CALIBRATION_OPS_FILE = "h200-torch2.11-2026-11-ops.json"
#: datasheet dense peaks of the calibration card (H200 = H100 silicon), TFLOP/s
H200_PEAK_BF16_TFLOPS = 989.4
H200_PEAK_FP8_TFLOPS = 1978.9
#: the H200's measured large-GEMM fraction of its bf16 datasheet peak (778.5 / 989.4); the accelerator catalog's
#: `matmul_efficiency` is on the same scale, so their ratio carries the curves to other devices
H200_MATMUL_EFFICIENCY = 0.787
#: datasheet HBM bandwidth of the calibration card, GB/s
H200_HBM_GBS = 4800.0


@dataclass(frozen=True)
class GemmPoint:
    log_m: float
    log_k: float
    log_n: float
    #: fraction of the datasheet peak of the precision it was measured in
    efficiency: float


@dataclass(frozen=True)
class AttentionPoint:
    seq_len: int
    fwd_efficiency: float
    fwdbwd_efficiency: float


@dataclass(frozen=True)
class Calibration:
    gemm_bf16: tuple[GemmPoint, ...]
    gemm_fp8: tuple[GemmPoint, ...]
    #: causal flash attention at head_dim 128, by sequence length (fractions of the bf16 peak)
    attention: tuple[AttentionPoint, ...]
    #: fwd+bwd attention efficiency at head_dim d relative to head_dim 128, keyed by (seq_len, head_dim)
    head_dim_factor: dict[tuple[int, int], float]
    membound: dict[str, object]
    network: dict[str, float]


def _gemm_points(rows: list[dict], peak: float) -> tuple[GemmPoint, ...]:
    return tuple(GemmPoint(math.log2(r["m"]), math.log2(r["k"]), math.log2(r["n"]), r["tflops"] / peak)
                 for r in rows)


@cache
def load_calibration() -> Calibration:
    """Read the calibration files once; every later call returns the same object (no file I/O)."""
    main = json.loads((DATA_DIR / CALIBRATION_FILE).read_text())
    ops = json.loads((DATA_DIR / CALIBRATION_OPS_FILE).read_text())
    attention = tuple(sorted((AttentionPoint(r["seq"], r["fwd_tflops"] / H200_PEAK_BF16_TFLOPS,
                                             r["fwdbwd_tflops"] / H200_PEAK_BF16_TFLOPS) for r in main["sdpa"]),
                             key=lambda p: p.seq_len))
    # sdpa2 measures head_dim 64/128/256 at the same sequence lengths; GQA barely changes the rate
    # (402 vs 420 TFLOP/s), so the ratio to head_dim 128 (MHA-or-GQA, first row found) is the correction.
    by_key: dict[tuple[int, int], float] = {}
    for r in ops["sdpa2"]:
        by_key.setdefault((r["seq"], r["head_dim"]), r["fwdbwd_tflops_causal"])
    head_dim_factor = {(s, d): rate / by_key[(s, 128)] for (s, d), rate in by_key.items() if (s, 128) in by_key}
    membound = tomllib.loads((DATA_DIR / "membound.toml").read_text())
    network = tomllib.loads((DATA_DIR / "network.toml").read_text())
    return Calibration(gemm_bf16=_gemm_points(main["gemm"], H200_PEAK_BF16_TFLOPS),
                       gemm_fp8=_gemm_points(ops["gemm_fp8"], H200_PEAK_FP8_TFLOPS),
                       attention=attention, head_dim_factor=head_dim_factor, membound=membound, network=network)


@cache
def reference_streaming_fraction() -> float:
    """The fraction of its datasheet HBM bandwidth the calibration card streamed in a plain copy (reads + writes):
    the efficiency membound.toml's effective bytes already hold, which a measured bandwidth is divided by to
    stand in for a datasheet one."""
    main = json.loads((DATA_DIR / CALIBRATION_FILE).read_text())
    return float(main["copy_GBps_rw"]) / H200_HBM_GBS


def interpolate_log(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear in log2(x) through (xs, ys), held flat outside the measured range."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    lx = math.log2(x)
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1 = math.log2(xs[i - 1]), math.log2(xs[i])
            t = (lx - x0) / (x1 - x0)
            return ys[i - 1] + t * (ys[i] - ys[i - 1])
    return ys[-1]


@cache
def gemm_efficiency_measured(precision: str, m: int, k: int, n: int) -> float:
    """Fraction of the datasheet peak an (m×k)·(k×n) GEMM reached on the calibration card.

    Inverse-distance weighting in (log m, log k, log n) over the measured transformer shapes, with each dimension
    clamped to the measured range first (the roofline in compute.py handles shapes too small to be compute-bound);
    below the smallest measured m, times small_m_factor (an expert's GEMM with few routed tokens).
    """
    return _gemm_efficiency_in_range(precision, m, k, n) * small_m_factor(m)


@cache
def small_m_factor(m: int) -> float:
    """Efficiency of a GEMM of `m` rows relative to one of the calibration's smallest measured m (1 at and above
    it): the published small-M ratios of data/gemm_small_m.toml, geometric mean over their series, interpolated
    in log2 m and held flat below the smallest published m."""
    table = tomllib.loads((DATA_DIR / SMALL_M_FILE).read_text())
    floor = int(table["calibrated_min_m"])
    if m >= floor:
        return 1.0
    series = table["series"]

    def ratio(rows: float) -> float:
        logs = [math.log(interpolate_log(rows, [float(x) for x in s["m"]], [float(r) for r in s["ratio"]]))
                for s in series]
        return math.exp(sum(logs) / len(logs))

    return ratio(float(max(m, 1))) / ratio(float(floor))


#: published small-M GEMM rates (below the calibration's smallest M)
SMALL_M_FILE = "gemm_small_m.toml"


@cache
def _gemm_efficiency_in_range(precision: str, m: int, k: int, n: int) -> float:
    cal = load_calibration()
    points = cal.gemm_fp8 if precision == "fp8" else cal.gemm_bf16
    lm = min(max(math.log2(max(m, 1)), 11.0), 15.0)
    lk = min(max(math.log2(max(k, 1)), 10.0), 16.0)
    ln = min(max(math.log2(max(n, 1)), 10.0), 16.0)
    weight_sum = 0.0
    value_sum = 0.0
    for p in points:
        d2 = (p.log_m - lm) ** 2 + (p.log_k - lk) ** 2 + (p.log_n - ln) ** 2
        if d2 < 1e-9:
            return p.efficiency
        w = 1.0 / (d2 * d2)
        weight_sum += w
        value_sum += w * p.efficiency
    return value_sum / weight_sum


@cache
def attention_efficiency_measured(seq_len: int, head_dim: int, pass_: str) -> float:
    """Fraction of the bf16 peak causal flash attention reached (pass_ `fwd` or `fwdbwd`)."""
    cal = load_calibration()
    xs = [float(p.seq_len) for p in cal.attention]
    ys = [p.fwd_efficiency if pass_ == "fwd" else p.fwdbwd_efficiency for p in cal.attention]
    base = interpolate_log(float(seq_len), xs, ys)
    if head_dim == 128:
        return base
    # ratio at the nearest measured seq_len, interpolated in log2(head_dim) between 64, 128 and 256
    seqs = sorted({s for s, _ in cal.head_dim_factor})
    nearest = min(seqs, key=lambda s: abs(math.log2(s) - math.log2(max(seq_len, 1))))
    dims = sorted(d for s, d in cal.head_dim_factor if s == nearest)
    factor = interpolate_log(float(head_dim), [float(d) for d in dims],
                             [cal.head_dim_factor[(nearest, d)] for d in dims])
    return base * factor


@cache
def profiled_gemm_efficiency(measured: tuple[tuple[float, ...], ...], m: int, k: int, n: int) -> float:
    """Fraction of the bf16 peak an (m×k)·(k×n) GEMM reaches on a card a machine profile measured (`measured`:
    its (m, k, n, efficiency) rows): the measured efficiency at a measured shape; elsewhere the calibration
    curve's shape times the measured / calibration ratio, inverse-distance weighted in (log m, log k, log n) over
    the measured shapes (the nearest ones dominate)."""
    weight_sum = value_sum = 0.0
    for pm, pk, pn, efficiency in measured:
        d2 = (math.log2(pm / max(m, 1))) ** 2 + (math.log2(pk / max(k, 1))) ** 2 + (math.log2(pn / max(n, 1))) ** 2
        if d2 < 1e-9:
            return efficiency
        w = 1.0 / (d2 * d2)
        weight_sum += w
        value_sum += w * efficiency / gemm_efficiency_measured("bf16", int(pm), int(pk), int(pn))
    return gemm_efficiency_measured("bf16", m, k, n) * value_sum / weight_sum


@cache
def profiled_attention_efficiency(measured: tuple[tuple[float, ...], ...], seq_len: int, head_dim: int,
                                  pass_: str) -> float:
    """Fraction of the bf16 peak causal attention reaches (pass_ `fwd` or `fwdbwd`) on a card a machine profile
    measured (`measured`: its (seq_len, head_dim, fwd, fwdbwd efficiency) rows): the calibration curve times the
    measured / calibration ratio of the nearest measured head size, interpolated in log2 seq_len (held flat
    outside the measured lengths)."""
    column = 2 if pass_ == "fwd" else 3
    nearest = min({row[1] for row in measured}, key=lambda d: abs(math.log2(d / max(head_dim, 1))))
    rows = sorted(row for row in measured if row[1] == nearest)
    ratios = [row[column] / attention_efficiency_measured(int(row[0]), int(row[1]), pass_) for row in rows]
    ratio = interpolate_log(float(seq_len), [row[0] for row in rows], ratios)
    return attention_efficiency_measured(seq_len, head_dim, pass_) * ratio


#: published GEMM/attention rates of other accelerators, relative to the calibration card's in the same benchmark
ACCELERATOR_RATES_FILE = "accelerator_rates.toml"
#: the curves device_scale carries: GEMMs in bf16 (or fp16/fp32), GEMMs in fp8, flash attention
CURVES = ("bf16", "fp8", "attention")


@dataclass(frozen=True)
class OwnRates:
    """An accelerator's published rates as multipliers of the calibration curves (data/accelerator_rates.toml)."""

    accelerator: str
    #: curve (`bf16`, `fp8`, `attention`) -> (its fraction of its datasheet peak) / (the calibration card's), for
    #: the curves it has a published rate of
    scale: dict[str, float]
    source: str


def _fraction(row: dict, key: str) -> float | None:
    if f"{key}_tflops" not in row:
        return None
    theory_key = "attention_theory" if key == "attention_fwd" else f"{key}_theory"
    return float(row[f"{key}_tflops"]) / float(row[theory_key])


@cache
def own_rates(accelerator: str) -> OwnRates | None:
    """The published rates of catalog accelerator `accelerator`, or None when data/accelerator_rates.toml has none."""
    table = tomllib.loads((DATA_DIR / ACCELERATOR_RATES_FILE).read_text())
    row = table.get(accelerator)
    if row is None:
        return None
    ref = table["reference"]
    scale = {curve: own / base for curve, key in (("bf16", "gemm_bf16"), ("fp8", "gemm_fp8"),
                                                   ("attention", "attention_fwd"))
             if (own := _fraction(row, key)) is not None and (base := _fraction(ref, key))}
    return OwnRates(accelerator=accelerator, scale=scale, source=str(row["source"]))


def device_scale(acc: Accelerator, curve: str = "bf16") -> float:
    """How much better (>1) or worse this device turns its datasheet peak into throughput than the calibration card
    on `curve` (CURVES): its own published rate where data/accelerator_rates.toml has one; else its bf16 GEMM rate
    (an fp8 or attention rate not published); else the catalog's matmul_efficiency (times a power-capped part's
    sustained_clock_fraction) / the H200's 0.787."""
    own = own_rates(acc.name)
    if own is not None and own.scale:
        return own.scale.get(curve, own.scale.get("bf16", acc.sustained_matmul_efficiency / H200_MATMUL_EFFICIENCY))
    return acc.sustained_matmul_efficiency / H200_MATMUL_EFFICIENCY


def rates_note(acc: Accelerator) -> str:
    """The assumption line that says where a GPU's GEMM and attention rates come from."""
    curves = f"H200 efficiency curves (measured) for shape; HBM {acc.hbm_bandwidth_gbs:g} GB/s for memory-bound work"
    own = own_rates(acc.name)
    if own is None or not own.scale:
        capped = (f" x sustained clock {acc.sustained_clock_fraction:g} at {acc.tdp_w:g} W"
                  if acc.sustained_clock_fraction < 1.0 else "")
        return (f"{curves}; level scaled from the H200 calibration by {acc.name} matmul_efficiency "
                f"{acc.matmul_efficiency:g}{capped} / 0.787")
    levels = ", ".join(f"{curve} x{device_scale(acc, curve):.3f}" for curve in CURVES)
    return (f"{curves}; level from {acc.name}'s own published measurements ({levels} of the H200's; "
            f"predict/data/{ACCELERATOR_RATES_FILE}: {own.source})")


def profiled_rates_note(acc: Accelerator, measured_collectives: bool) -> str:
    """The assumption line for a GPU whose rates a machine profile measured (its label is in the `rates:` line)."""
    gemm = ("bf16 GEMM efficiency by shape" + ("" if acc.gemm_shape_efficiency else " (not measured: datasheet)"))
    attention = ("causal attention by sequence length and head size"
                 + ("" if acc.attention_layout_efficiency else " (not measured: datasheet)"))
    return (f"{gemm} and {attention} from the profile (between measured points, the H200 curves' shape); "
            f"memory-bound work at {acc.hbm_bandwidth_gbs:.4g} GB/s (the profile's streaming rate / the H200's "
            f"{reference_streaming_fraction():.3f} of its datasheet, as the effective bytes assume)"
            + (f", AdamW {acc.adamw_bytes_per_param:.3g} effective bytes per parameter (measured)"
               if acc.adamw_bytes_per_param else "") + "; collectives "
            + ("inside a node from the profile's NCCL lines, across nodes on the datasheet network"
               if measured_collectives else "on the datasheet network (the profile measured one device)")
            + "; fp8 GEMMs on the H200 curve scaled by datasheet ratios")
