"""Machine profiles (`bastion calibrate` writes them): measured rates that replace an accelerator's datasheet
scaling in the predictor. Torch-free: reading, checking, writing and applying a profile.

A profile is data. `[machine]` says where and when it was measured; `[accelerator]` overrides fields of the
catalog row the predictor already reads (specs/hardware.py Accelerator: efficiencies, memory bandwidth, how well
ranks share the cores; on a GPU, bf16 GEMM efficiency by shape and attention by sequence length and head size in
place of the H200 curves scaled by datasheet ratios); `[host]` holds the costs a datasheet has no field for (eager
PyTorch's per-layer dispatch, the extra of DTensor and of FSDP2's hooks, fixed per micro-batch and per optimizer
step, checkpoint write and read bandwidth to the run directory's filesystem); each `[[collective]]` a
latency/bandwidth line for one collective on one group size (gloo on shared cores, or NCCL among a GPU node's
devices); each `[[tp_collective]]` how many collectives of an op the runtime's tensor parallelism issues per block
and for the model's ends (counted, not timed); each `[[fsdp_unit]]` what the runtime's FSDP2 costs per unit (a
block; the root unit apart) on real groups of one size under one ZeRO layout, at a negligible size (its hooks, its
collectives' latency, the waiting) and, measured at a realistic width too, its CPU seconds per unit as a line in
the unit's parameter bytes; each `[[sync_wait]]` the idle cost of one synchronisation point on
shared cores by the CPU work between syncs (absent in older profiles: none charged). `[raw]` keeps the
measurements the rates were derived from, `[repeats]` every
measurement's repeats (seconds): its noise band, which `bastion calibrate --compare` (specs/profile_compare.py)
judges a change against.

On the command line a profile is a cluster: `--cluster PROFILE.toml` (the accelerator and rank count it was
measured with) or `--cluster ACCEL:N@PROFILE.toml` (N ranks, the profile's rates). PROFILE may also be the NAME a
profile was saved under (`bastion calibrate --save-as NAME`): ./.bastion/profiles/NAME.toml (a project's, committed
with it) is looked for first, then the user's profile directory (`user_profiles_dir`). A bare `--cluster NAME` is
a profile only where no catalog accelerator or cluster preset has that name (specs/hardware.py load_cluster).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, did_you_mean
from bastion.specs._hashing import cached_hash
from bastion.specs.hardware import Accelerator, Cluster, default_network, load_accelerator

PROFILE_FORMAT = 1
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "send_recv")
#: Accelerator fields a profile may replace
ACCELERATOR_FIELDS = ("matmul_efficiency", "hbm_bandwidth_gbs", "background_load", "gemm_efficiency_curve",
                      "attention_efficiency_curve", "gemm_shape_efficiency", "attention_layout_efficiency",
                      "adamw_bytes_per_param", "elementwise_bandwidth_curve", "time_shared_gemm_efficiency_curve")
#: the measured curves a profile may hold, by the number of columns of their rows
_CURVE_WIDTHS = {"gemm_efficiency_curve": 2, "attention_efficiency_curve": 3, "gemm_shape_efficiency": 4,
                 "attention_layout_efficiency": 4, "elementwise_bandwidth_curve": 2,
                 "time_shared_gemm_efficiency_curve": 2}
_FIX = "run `bastion calibrate --out PROFILE.toml` on the machine again, and pass that file."


@dataclass(frozen=True)
class HostOverheads:
    """Seconds of CPU work one rank spends outside the kernels, measured on one free core (a rank that shares
    its core with others takes proportionally longer)."""

    __hash__ = cached_hash

    #: eager dispatch of one transformer block, forward + backward, at shapes too small to compute anything
    layer_s: float = 0.0
    #: extra per block under tensor parallelism: DTensor dispatch and sharding propagation, and (measured on
    #: real tensor-parallel pairs) its redistributions and their collectives' host work at a negligible size
    layer_tp_s: float = 0.0
    #: extra per block under sequence parallelism on top of layer_tp_s (redistributions around the norms)
    layer_sp_s: float = 0.0
    #: extra per block under FSDP2 (its pre/post forward and backward hooks), one process; a profile's
    #: [[fsdp_unit]] rows (real groups, the collectives' latency and waiting included) take its place, but for
    #: the hooks each further micro-batch runs where its reduction is deferred (predict/estimate.py
    #: _runtime_fsdp_comm)
    layer_fsdp_s: float = 0.0
    #: per micro-batch outside the blocks: embedding, final norm, LM head, loss, backward start
    micro_batch_s: float = 0.0
    #: extra per micro-batch at the model's ends under tensor parallelism (loss parallelism, the embedding's and
    #: LM head's redistributions), and under sequence parallelism on top of it
    micro_batch_tp_s: float = 0.0
    micro_batch_sp_s: float = 0.0
    #: extra per micro-batch and pipeline stage of the runtime's pipeline schedule on the rank's own thread
    #: (torch.distributed.pipelining's bookkeeping, its send/recv calls at a negligible size; runtime/calibrate.py
    #: measure_pipeline says why not gloo's threads)
    pipeline_micro_batch_s: float = 0.0
    #: per optimizer step and parameter tensor: AdamW and gradient clipping on plain tensors
    optimizer_per_tensor_s: float = 0.0
    #: the same on DTensor parameters (tensor parallelism or FSDP2)
    optimizer_dtensor_per_tensor_s: float = 0.0
    #: per optimizer step: the training loop's own bookkeeping (data batch, metrics, learning rate)
    step_s: float = 0.0
    #: one process's start-up to its first collective (not part of a step; reported)
    process_start_s: float = 0.0
    #: torch.save of a state to the run directory's filesystem, fsynced, GB/s (0 = not measured)
    checkpoint_write_gbs: float = 0.0
    #: torch.load of it back, GB/s (0 = not measured)
    checkpoint_read_gbs: float = 0.0


@dataclass(frozen=True)
class TpCollectiveCount:
    """How many `op` collectives the runtime's tensor parallelism issues in one micro-batch's forward + backward:
    per transformer block, and once for the model's ends (embedding, final norm, LM head, loss parallelism),
    each moving one activation (tokens × hidden) at most."""

    sequence_parallel: bool
    op: str
    per_layer: float
    ends: float


#: the ZeRO layouts an [[fsdp_unit]] row may measure (runtime/calibrate.py FSDP_STAGES): 0 replicated (HSDP,
#: gradients all-reduced), 2 sharded without resharding after forward (stages 1 and 2), 3 resharded after forward
FSDP_LAYOUTS = (0, 2, 3)


@dataclass(frozen=True)
class FsdpUnitCost:
    """Seconds of forward + backward that the runtime's FSDP2 adds per unit on real groups of `group_size` (all
    groups of the measured world at once) under ZeRO layout `zero_stage`, at shapes whose collectives move almost
    no bytes: its hooks' host work, its collectives' latency and the waiting for the group's other ranks. On whole
    cores (measured wall time × the ranks' core share), as a CollectiveLine is: the predictor divides it by the
    share a plan's ranks get and adds only the collectives' bytes at the measured bandwidth.

    A profile measured at a second, realistic width too (runtime/calibrate.py FSDP_WIDE_WIDTHS) also holds the
    process CPU seconds (all threads) a rank spends per unit as a line in the unit's parameter bytes (`cpu_line`;
    None in older profiles, which the predictor costs as above)."""

    zero_stage: int
    group_size: int
    #: per block's unit
    unit_s: float
    #: the root unit (embedding, final norm, LM head), per micro-batch
    root_s: float
    #: CPU seconds per block's unit at no bytes
    unit_cpu_s: float | None = None
    #: CPU seconds per root unit at no bytes
    root_cpu_s: float | None = None
    #: CPU seconds per parameter byte of a unit
    cpu_s_per_byte: float | None = None

    @property
    def cpu_line(self) -> bool:
        """Whether the row holds the CPU cost per unit (`unit_cpu_s` + bytes × `cpu_s_per_byte`)."""
        return self.cpu_s_per_byte is not None


def _fsdp_layout(zero_stage: int) -> int:
    """The measured layout a plan's ZeRO stage runs (stages 1 and 2 shard without resharding, as 2 does)."""
    return 0 if zero_stage == 0 else 3 if zero_stage == 3 else 2


@dataclass(frozen=True)
class CollectiveLine:
    """t = latency + bytes / bandwidth for one collective on `group_size` ranks, while the other groups of the
    measured world run theirs at the same time (as a plan's groups do). On a host CPU the line is for ranks on
    whole cores (measured wall time × the core share the ranks had): a collective progresses only while its ranks
    run, so the predictor divides it by the share a plan's ranks get (Accelerator.core_share)."""

    op: str
    group_size: int
    latency_us: float
    bandwidth_gbs: float

    def seconds(self, nbytes: float) -> float:
        return self.latency_us * 1e-6 + nbytes / (self.bandwidth_gbs * 1e9)


#: the synchronisations a [[sync_wait]] row measures (runtime/calibrate.py measure_sync_wait): a small blocking
#: all-reduce over the whole world, a send/recv pair (an even world)
SYNC_OPS = ("all_reduce", "send_recv")


#: runnable processes per core a [[sync_wait]] row must have been measured at to say how the idle time grows
#: with them (on nearly whole cores the idle time is noise over a near-zero oversubscription)
MIN_SYNC_OVERSUBSCRIPTION = 1.5


@dataclass(frozen=True)
class SyncWait:
    """Idle wall seconds one synchronisation point (`op`: a small blocking collective, or a send/recv pair)
    costs ranks that time-share cores, when each does `work_s` of CPU work between syncs: measured on `ranks`
    ranks at `ranks_per_core` runnable processes per core (the ranks and the background load), beyond the work
    at their core share and the sync's own latency; and the CPU gloo's threads spend per sync. The OS deschedules a rank mid-work for a time slice while
    its peers reach the sync and wait with their cores idle."""

    op: str
    ranks: int
    ranks_per_core: float
    work_s: float
    idle_s: float
    #: CPU seconds gloo's transport threads spent per sync (0 in rows measured before it was): on shared cores
    #: it takes core time from the ranks' work
    transport_cpu_s: float = 0.0


@dataclass(frozen=True)
class MachineProfile:
    """The rates of one machine kind, as measured by `bastion calibrate`."""

    __hash__ = cached_hash

    path: str
    accelerator: str
    #: the ranks the shared-core measurements ran with
    nproc: int
    date: str
    host: str
    torch: str
    accelerator_overrides: tuple[tuple[str, Any], ...]
    host_overheads: HostOverheads
    collectives: tuple[CollectiveLine, ...]
    #: counted by `bastion calibrate` (empty in a profile that did not count them)
    tp_collectives: tuple[TpCollectiveCount, ...] = ()
    #: (measurement, its repeats in seconds), as measured
    repeats: tuple[tuple[str, tuple[float, ...]], ...] = ()
    #: measured by `bastion calibrate` on every group size of its world (empty in a profile that did not)
    fsdp_units: tuple[FsdpUnitCost, ...] = ()
    #: measured by `bastion calibrate` on a host CPU (empty in a profile that did not: no sync cost is charged)
    sync_waits: tuple[SyncWait, ...] = ()

    #: the name it was saved under and given by (`--cluster NAME`, `ACCEL:N@NAME`); "" when given by its path
    name: str = ""
    #: measured with `bastion calibrate --quick`
    quick: bool = False

    @property
    def label(self) -> str:
        measured = f"measured {self.date} on {self.host}, torch {self.torch}"
        if self.name:
            return f"profile '{self.name}' ({self.path}; {measured})"
        return f"profile {self.path} ({measured})"

    @property
    def background_load(self) -> float:
        """The host's other load while it was measured (0 where the profile did not measure it)."""
        return float(dict(self.accelerator_overrides).get("background_load", 0.0))

    def collective_time(self, op: str, group_size: int, nbytes: float) -> float | None:
        """Seconds for `op` over `group_size` ranks moving `nbytes` (the collective's buffer), from the measured
        line of that size (else the nearest measured size, latency scaled by the ring steps); None when the
        profile measured no such collective."""
        lines = [c for c in self.collectives if c.op == op]
        if not lines:
            return None
        line = min(lines, key=lambda c: (abs(c.group_size - group_size), -c.group_size))
        steps = max(group_size - 1, 1) / max(line.group_size - 1, 1)
        return line.latency_us * 1e-6 * steps + nbytes / (line.bandwidth_gbs * 1e9)

    def fsdp_unit_cost(self, zero_stage: int, group_size: int) -> FsdpUnitCost | None:
        """The measured FSDP2 cost of the layout ZeRO stage `zero_stage` runs, on `group_size` ranks (else the
        nearest measured size, the larger on a tie); None when the profile measured no such layout."""
        rows = [c for c in self.fsdp_units if c.zero_stage == _fsdp_layout(zero_stage)]
        if not rows:
            return None
        return min(rows, key=lambda c: (abs(c.group_size - group_size), -c.group_size))

    def sync_cost(self, op: str, ranks_per_core: float, work_s: float) -> float:
        """Wall seconds one `op` synchronisation point costs a rank beyond its work and the sync's latency, at
        `ranks_per_core` runnable processes per core with `work_s` CPU seconds of work between syncs; 0 on whole
        cores (ranks_per_core ≤ 1) and without rows. From the measured rows of that op (else of any op),
        linear in the work from none at none to the largest measured work and held there beyond it: the idle
        time as seconds per runnable process beyond one per core (idle_s / (its ranks_per_core − 1); rows
        measured on fewer than MIN_SYNC_OVERSUBSCRIPTION say nothing of it) times the plan's; plus gloo's
        transport CPU at the plan's share of a core (× ranks_per_core)."""
        rows = sorted((r for r in self.sync_waits if r.op == op), key=lambda r: r.work_s) or sorted(
            self.sync_waits, key=lambda r: r.work_s)
        if not rows or ranks_per_core <= 1.0 or work_s <= 0:
            return 0.0
        oversubscribed = [r for r in rows if r.ranks_per_core >= MIN_SYNC_OVERSUBSCRIPTION]
        idle = _linear_from_zero([(r.work_s, r.idle_s / (r.ranks_per_core - 1.0)) for r in oversubscribed], work_s)
        transport = _linear_from_zero([(r.work_s, r.transport_cpu_s) for r in rows], work_s)
        return idle * (ranks_per_core - 1.0) + transport * ranks_per_core

    def collective_wall_time(self, op: str, group_size: int, nbytes: float, core_share: float) -> float | None:
        """`collective_time` on ranks that get `core_share` of a core each."""
        seconds = self.collective_time(op, group_size, nbytes)
        return None if seconds is None else seconds / core_share


#: the host's other load while calibrating (`[accelerator] background_load`: runnable processes besides the
#: ranks) at and above which a profile describes a busy host: half a core of other work. At it the core share
#: the predictor gives each of 4 ranks on 2 cores (Accelerator.core_share: cores / (ranks + load)) is already about
#: a tenth below a quiet host's, the size of the prediction error bastion aims at. The 2-core development box's
#: profiles (benchmarks/results/calibration_profile*.toml) measured 0 to 0.32 when quiet, 19 and 21 when loaded
#: (1-minute load averages of 10 and 122).
BUSY_HOST_LOAD = 0.5


def busy_host_warning(background_load: float) -> str | None:
    """What to tell the user about a profile measured at `background_load`: None on a quiet host."""
    if background_load < BUSY_HOST_LOAD:
        return None
    return (f"the host was busy while measuring (background load {background_load:.1f}: other work of about "
            f"{background_load:.1f} cores), so the measurements describe a loaded host and predictions from this "
            "profile assume that load persists; re-run `bastion calibrate` when the host is quiet for a "
            "reproducible profile.")


def _linear_from_zero(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise linear through (0, 0) and `points` (sorted by x), held at the last point's value beyond it."""
    if not points:
        return 0.0
    for (x0, y0), (x1, y1) in zip([(0.0, 0.0), *points], points, strict=False):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


# ---- reading ----------------------------------------------------------------------------------------------

def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{path} is not a bastion machine profile: it has no [{key}] table.", fix=_FIX)
    return value


#: measured fields a prediction divides by (a rate or a count of 0 would be a ZeroDivisionError, not an estimate)
_POSITIVE = ("nproc", "matmul_efficiency", "hbm_bandwidth_gbs")


def _number(table: dict[str, Any], key: str, where: str) -> float:
    value = table.get(key)
    positive = key in _POSITIVE
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0
            or (positive and value == 0)):
        raise ConfigError(f"{where}: '{key}' must be a {'positive' if positive else 'non-negative'} number, got "
                          f"{value!r}.", fix=_FIX)
    return float(value)


def _positive(table: dict[str, Any], key: str, where: str) -> float:
    """A measured rate or size a prediction divides by (or interpolates from): a number above 0."""
    value = _number(table, key, where)
    if value <= 0:
        raise ConfigError(f"{where}: {key} must be positive.", fix=_FIX)
    return value


def _curve(value: Any, width: int, where: str) -> tuple[tuple[float, ...], ...]:
    if not isinstance(value, list) or not value or any(
            not isinstance(row, list) or len(row) != width
            or any(isinstance(x, bool) or not isinstance(x, int | float) or x <= 0 for x in row) for row in value):
        raise ConfigError(f"{where} must be a list of [{width} positive numbers] rows.", fix=_FIX)
    return tuple(sorted(tuple(float(x) for x in row) for row in value))


def read_profile(path: str | Path, name: str = "") -> MachineProfile:
    """A profile file, checked; a missing, unreadable or garbled file is a ConfigError that says what to do.
    `name`: the name it was saved under, when it was given by that name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Machine profile not found: {path}", fix=_FIX,
                          hint="bastion calibrate --quick --out profile.toml   # under a minute")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"Cannot read machine profile {path}: {exc}", fix=_FIX) from exc
    machine = _table(data, "machine", path)
    if machine.get("format") != PROFILE_FORMAT:
        raise ConfigError(f"{path}: profile format {machine.get('format')!r}, this bastion reads {PROFILE_FORMAT}.",
                          fix=_FIX)
    acc_name = str(machine.get("accelerator", ""))
    load_accelerator(acc_name)  # an unknown accelerator is a guidance error
    nproc = int(_number(machine, "nproc", f"{path} [machine]"))
    acc = _table(data, "accelerator", path)
    overrides: dict[str, Any] = {}
    for key, value in acc.items():
        where = f"{path} [accelerator] {key}"
        if key not in ACCELERATOR_FIELDS:
            raise ConfigError(f"{where}: not a field a profile may set.",
                              fix=f"use only {', '.join(ACCELERATOR_FIELDS)}.")
        if key in _CURVE_WIDTHS:
            overrides[key] = _curve(value, _CURVE_WIDTHS[key], where)
        else:
            overrides[key] = _number(acc, key, where)
    host = _table(data, "host", path)
    known = {f.name for f in fields(HostOverheads)}
    unknown = sorted(set(host) - known)
    if unknown:
        raise ConfigError(f"{path} [host]: unknown field(s) {', '.join(unknown)}.", fix=_FIX)
    overheads = HostOverheads(**{k: _number(host, k, f"{path} [host]") for k in host})
    lines = []
    for where, row in _op_rows(data, path, "collective", COLLECTIVES):
        bandwidth = _positive(row, "bandwidth_gbs", where)
        lines.append(CollectiveLine(op=row["op"], group_size=int(_number(row, "group_size", where)),
                                    latency_us=_number(row, "latency_us", where), bandwidth_gbs=bandwidth))
    return MachineProfile(path=str(path), accelerator=acc_name, nproc=max(nproc, 1), date=str(machine.get("date")),
                          host=str(machine.get("host")), torch=str(machine.get("torch")),
                          name=name, quick=machine.get("quick") is True,
                          accelerator_overrides=tuple(sorted(overrides.items())), host_overheads=overheads,
                          collectives=tuple(lines), tp_collectives=_tp_collectives(data, path),
                          repeats=_repeats(data, path), fsdp_units=_fsdp_units(data, path),
                          sync_waits=_sync_waits(data, path))


def _op_rows(data: dict[str, Any], path: Path, table: str, ops: tuple[str, ...]
             ) -> list[tuple[str, dict[str, Any]]]:
    """The rows of array of tables `table`, each with where it is, once its 'op' is checked to be one of `ops`."""
    rows = []
    for i, row in enumerate(data.get(table, [])):
        where = f"{path} [[{table}]] #{i + 1}"
        if not isinstance(row, dict) or row.get("op") not in ops:
            raise ConfigError(f"{where}: 'op' must be one of {', '.join(ops)}.", fix=_FIX)
        rows.append((where, row))
    return rows


def _sync_waits(data: dict[str, Any], path: Path) -> tuple[SyncWait, ...]:
    rows = []
    for where, row in _op_rows(data, path, "sync_wait", SYNC_OPS):
        work = _positive(row, "work_s", where)
        rows.append(SyncWait(op=row["op"], ranks=int(_number(row, "ranks", where)),
                             ranks_per_core=_number(row, "ranks_per_core", where), work_s=work,
                             idle_s=_number(row, "idle_s", where),
                             transport_cpu_s=_number(row, "transport_cpu_s", where) if "transport_cpu_s" in row
                             else 0.0))
    return tuple(rows)


#: an [[fsdp_unit]] row's CPU-line fields (FsdpUnitCost), all or none
_FSDP_CPU_FIELDS = ("unit_cpu_s", "root_cpu_s", "cpu_s_per_byte")


def _fsdp_units(data: dict[str, Any], path: Path) -> tuple[FsdpUnitCost, ...]:
    rows = []
    for i, row in enumerate(data.get("fsdp_unit", [])):
        where = f"{path} [[fsdp_unit]] #{i + 1}"
        if not isinstance(row, dict) or row.get("zero_stage") not in FSDP_LAYOUTS or isinstance(
                row.get("zero_stage"), bool):
            raise ConfigError(f"{where}: 'zero_stage' must be one of {', '.join(map(str, FSDP_LAYOUTS))}.", fix=_FIX)
        size = _number(row, "group_size", where)
        if size < 2 or size != int(size):
            raise ConfigError(f"{where}: 'group_size' must be a whole number of at least 2, got {size:g}.", fix=_FIX)
        cpu = {key: _number(row, key, where) for key in _FSDP_CPU_FIELDS if key in row}
        if cpu and len(cpu) != len(_FSDP_CPU_FIELDS):
            raise ConfigError(f"{where}: {', '.join(_FSDP_CPU_FIELDS)} go together (the CPU cost per unit's line), "
                              f"got only {', '.join(cpu)}.", fix=_FIX)
        rows.append(FsdpUnitCost(zero_stage=row["zero_stage"], group_size=int(size),
                                 unit_s=_number(row, "unit_s", where), root_s=_number(row, "root_s", where), **cpu))
    return tuple(rows)


def _tp_collectives(data: dict[str, Any], path: Path) -> tuple[TpCollectiveCount, ...]:
    rows = []
    for i, row in enumerate(data.get("tp_collective", [])):
        where = f"{path} [[tp_collective]] #{i + 1}"
        if not isinstance(row, dict) or row.get("op") not in COLLECTIVES or not isinstance(
                row.get("sequence_parallel"), bool):
            raise ConfigError(f"{where}: needs 'op' (one of {', '.join(COLLECTIVES)}) and 'sequence_parallel' "
                              "(true/false).", fix=_FIX)
        rows.append(TpCollectiveCount(sequence_parallel=row["sequence_parallel"], op=row["op"],
                                      per_layer=_number(row, "per_layer", where), ends=_number(row, "ends", where)))
    return tuple(rows)


def _repeats(data: dict[str, Any], path: Path) -> tuple[tuple[str, tuple[float, ...]], ...]:
    table = data.get("repeats", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [repeats] must be a table of measurement = [seconds, ...].", fix=_FIX)
    out = []
    for name, times in table.items():
        if not isinstance(times, list) or not times or any(
                isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0 for t in times):
            raise ConfigError(f"{path} [repeats] '{name}': must be a list of non-negative seconds.", fix=_FIX)
        out.append((str(name), tuple(float(t) for t in times)))
    return tuple(out)


# ---- applying ---------------------------------------------------------------------------------------------

def profiled_accelerator(profile: MachineProfile) -> Accelerator:
    """The catalog row with the profile's measured fields in place of its datasheet ones."""
    acc = load_accelerator(profile.accelerator)
    return replace(acc, **dict(profile.accelerator_overrides),
                   source=f"{profile.label}; catalog row '{acc.name}' for the rest")


# ---- saved profiles: a name for a file --------------------------------------------------------------------

#: where a project keeps its profiles (relative to the working directory; looked in before the user's directory,
#: so a profile committed with a project is the one its commands use)
PROJECT_PROFILES_DIR = Path(".bastion") / "profiles"
#: a profile's name: a file name in a profile directory and never a path (no separator, no suffix, no leading
#: dot), short enough to type
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: the command that saves this machine's profile under a name ({name})
SAVE_COMMAND = "bastion calibrate --quick --save-as {name}"


def user_profiles_dir() -> Path:
    """Where `bastion calibrate --save-as NAME` writes: $BASTION_CONFIG_DIR/profiles, else
    $XDG_CONFIG_HOME/bastion/profiles, else ~/.config/bastion/profiles."""
    config = os.environ.get("BASTION_CONFIG_DIR")
    if config:
        return Path(config).expanduser() / "profiles"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # the XDG spec: a relative XDG_CONFIG_HOME is invalid and is ignored
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "bastion" / "profiles"


def profile_dirs() -> tuple[Path, Path]:
    """The directories a profile name is looked up in, first match wins: the project's, then the user's."""
    return PROJECT_PROFILES_DIR, user_profiles_dir()


def is_profile_name(text: str) -> bool:
    """Whether `text` has the form of a saved profile's name (letters, digits, '-', '_'; not a path)."""
    return bool(_PROFILE_NAME.match(text))


def check_profile_name(name: str, flag: str = "--save-as") -> str:
    """`name`, refused with guidance where it could not be a saved profile's name or where `--cluster NAME`
    would mean a catalog accelerator or cluster preset instead (catalog names win)."""
    from bastion.specs.hardware import catalog_name

    if not is_profile_name(name):
        raise ConfigError(f"{flag} '{name}' is not a profile name: a name is 1-64 letters, digits, '-' or '_', "
                          "starting with a letter or digit (no path separators or dots).",
                          fix=f"e.g. {flag} default, or {flag} {_sanitised(name)}; to write a file elsewhere "
                              "give --out PATH.toml.")
    taken = catalog_name(name)
    if taken:
        raise ConfigError(f"{flag} '{name}': --cluster {name} means the catalog's {taken}, not a profile (catalog "
                          "names win).", fix=f"choose another name, e.g. {flag} {name.lower()}-local.")
    return name


def _sanitised(name: str) -> str:
    """A valid name made from an invalid one (for the error's example)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-_")[:64]
    return cleaned or "default"


def saved_profile_path(name: str) -> Path:
    """The file `bastion calibrate --save-as NAME` writes: NAME.toml in the user's profile directory."""
    return user_profiles_dir() / f"{check_profile_name(name)}.toml"


def find_saved_profile(name: str) -> Path | None:
    """The file a saved profile's name stands for (the project's first, then the user's), or None."""
    if not is_profile_name(name):
        return None
    for directory in profile_dirs():
        path = directory / f"{name}.toml"
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class SavedProfile:
    """One profile file in a profile directory."""

    name: str
    path: Path
    #: "project" (./.bastion/profiles) or "user" (user_profiles_dir())
    scope: str
    #: a user profile that the project's profile of the same name hides
    hidden: bool = False


def saved_profiles() -> list[SavedProfile]:
    """Every profile in the profile directories, by name, the project's before the user's of the same name."""
    found: list[SavedProfile] = []
    for scope, directory in zip(("project", "user"), profile_dirs(), strict=True):
        if not directory.is_dir():
            continue
        taken = {p.name for p in found}
        found.extend(SavedProfile(name=path.stem, path=path, scope=scope, hidden=path.stem in taken)
                     for path in sorted(directory.glob("*.toml")) if is_profile_name(path.stem) and path.is_file())
    return sorted(found, key=lambda p: (p.name, p.hidden))


def where_profiles_are(names: list[str] | None = None) -> str:
    """Where names are looked up and which are saved there (`names`, else listed here; for an unknown name's
    error)."""
    project, user = profile_dirs()
    names = sorted({p.name for p in saved_profiles()}) if names is None else names
    saved = f"saved: {', '.join(names)}" if names else "none saved yet"
    return f"looked for NAME.toml in ./{project}/ and then {user}/ ({saved})"


def unknown_profile_error(name: str) -> ConfigError:
    """No saved profile has this name: where bastion looked, the names it found, how to save one."""
    names = sorted({p.name for p in saved_profiles()})
    return ConfigError(f"No machine profile named '{name}': {where_profiles_are(names)}.{did_you_mean(name, names)}",
                       fix="save this machine's profile under that name, give a saved name, or give a profile "
                           "file's path.", hint=f"{SAVE_COMMAND.format(name=name)}   # under a minute")


def profile_file(ref: str) -> tuple[Path, str]:
    """(the file, the name it was saved under or "") a profile reference stands for: an existing file as given;
    else a name, looked up in the profile directories. A reference that is neither a path nor a name, and a
    name nothing is saved under, are guidance errors; a path that does not exist is read_profile's."""
    path = Path(ref)
    if path.is_file():
        return path, ""
    if is_profile_name(ref):
        found = find_saved_profile(ref)
        if found is None:
            raise unknown_profile_error(ref)
        return found, ref
    if os.sep not in ref and "/" not in ref and path.suffix != ".toml":
        raise ConfigError(f"'{ref}' is neither a profile file nor a profile name (names are letters, digits, '-' "
                          "and '_').", fix="give a saved profile's name or the path of a profile file.",
                          hint="bastion calibrate --list   # the saved profiles")
    return path, ""


def read_named_or_path(ref: str) -> MachineProfile:
    """The profile a reference (a file's path or a saved name) stands for, checked."""
    path, name = profile_file(ref)
    return read_profile(path, name)


#: ACCEL:N@PROFILE
_AT = re.compile(r"^(?P<acc>[a-z0-9][a-z0-9.\-]*):(?P<n>\d+)@(?P<path>.+)$")


def is_profile_spec(spec: str) -> bool:
    """Whether a --cluster value names a machine profile (ACCEL:N@FILE, or a TOML file with a [machine] table)."""
    if "@" in spec:
        return True
    path = Path(spec)
    if path.suffix != ".toml" or not path.is_file():
        return False
    try:
        return isinstance(tomllib.loads(path.read_text()).get("machine"), dict)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
        return False


def cluster_from_profile(spec: str) -> Cluster:
    """`PROFILE` (the profile's accelerator × its measured rank count) or `ACCEL:N@PROFILE`, PROFILE a file's path
    or a saved profile's name."""
    match = _AT.match(spec)
    if "@" in spec and not match:
        raise ConfigError(f"Cluster '{spec}': expected ACCEL:N@PROFILE (a profile file or a saved name).",
                          fix="e.g. cpu:4@profile.toml or cpu:4@default, or just the profile's path or name.")
    profile = read_named_or_path(match["path"] if match else spec)
    if match and match["acc"] != profile.accelerator:
        raise ConfigError(f"Cluster '{spec}' asks for {match['acc']}, but the profile measured "
                          f"'{profile.accelerator}'.", fix=f"write {profile.accelerator}:{match['n']}@{match['path']}.")
    count = int(match["n"]) if match else profile.nproc
    if count < 1:
        raise ConfigError(f"Cluster '{spec}' has zero devices.", fix="use ACCEL:N@PROFILE with N >= 1.")
    acc = profiled_accelerator(profile)
    per_node = count if acc.host_cores > 0 else acc.gpus_per_node
    cluster = Cluster(name=spec, accelerator=acc, num_nodes=1, gpus_per_node=per_node,
                      network=default_network(acc), profile=profile)
    return cluster.with_gpus(count)


# ---- writing ----------------------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted one (measurement names have spaces)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def profile_toml(data: dict[str, Any], header: str = "") -> str:
    """TOML text of a profile: top-level tables of scalars and lists, and arrays of tables (lists of dicts)."""
    out = [f"# {line}" for line in header.splitlines()]
    for name, table in data.items():
        rows = table if isinstance(table, list) else [table]
        for row in rows:
            out.append(f"\n[[{name}]]" if isinstance(table, list) else f"\n[{name}]")
            out.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in row.items())
    return "\n".join(out).lstrip("\n") + "\n"
