"""Accelerators, networks and clusters. The numbers live in data files (data/accelerators.toml,
data/clusters/*.toml), each with its source; this module only gives them types and checks them. An accelerator is
one table in accelerators.toml: its node size, usual network, purchase price and device names included — no code
names an accelerator."""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bastion.errors import ConfigError, UnknownPresetError, did_you_mean
from bastion.numbers import MAX_DEVICES, short_number
from bastion.specs._files import DATA_DIR, check_keys, coerce, read_mapping
from bastion.specs._hashing import cached_hash

if TYPE_CHECKING:
    from bastion.specs.profile import MachineProfile

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
TOPOLOGIES = ("fat-tree", "rail-optimized", "torus")


@dataclass(frozen=True)
class Accelerator:
    """One device's datasheet figures (dense peaks, no sparsity)."""

    __hash__ = cached_hash

    name: str
    vendor: str
    peak_tflops_bf16: float
    peak_tflops_fp16: float
    peak_tflops_fp8: float
    peak_tflops_fp32: float
    peak_tflops_tf32: float
    #: device memory usable by one process, GiB
    hbm_gib: float
    #: device memory bandwidth, GB/s
    hbm_bandwidth_gbs: float
    #: scale-up (NVLink-class) bandwidth per device per direction, GB/s
    scale_up_bw_gbs: float
    #: devices in the usual scale-up domain
    scale_up_domain: int
    #: usual scale-out NIC bandwidth per device, Gbit/s
    nic_gbit: float
    #: board power, W
    tdp_w: float
    #: fraction of the bf16 peak a large transformer GEMM reaches on this device
    matmul_efficiency: float
    source: str = ""
    #: tensor-core generation (`ampere`, `hopper`, `blackwell`, `cdna3`, `tpu`, `cpu`): a kernel written for an
    #: older one cannot use this card's newest instructions (predict/data/attention_kernels.toml)
    arch: str = ""
    #: a host CPU standing in for accelerators: the cores one node has, which its devices (single-threaded ranks)
    #: share; its peaks are one core's and its memory bandwidth the node's. 0 = dedicated devices.
    host_cores: int = 0
    #: devices per node of an `ACCEL:N` cluster (a host CPU runs all N ranks on one node; this many without N)
    gpus_per_node: int = 8
    #: scale-out topology of the network the accelerator usually ships with (`fat-tree`, `rail-optimized`, `torus`)
    network_topology: str = "rail-optimized"
    #: all-in purchase price per device incl. its server share and the cluster network, USD; 0 = not published
    capex_per_gpu_usd: float = 0.0
    #: where capex_per_gpu_usd comes from
    capex_source: str = ""
    #: lower-case parts of torch.cuda.get_device_name() that identify this accelerator (the longest match wins)
    device_names: tuple[str, ...] = ()
    #: the device's link to its host CPU's memory, GB/s per direction (what activation offloading moves over);
    #: 0 = not in the catalog, and the planner does not offload activations on this device
    host_link_gbs: float = 0.0
    #: where host_link_gbs comes from
    host_link_source: str = ""
    #: measured by `bastion calibrate` (specs/profile.py), never in the catalog: on a host CPU, the runnable
    #: processes besides the ranks that the OS shares the cores with (other jobs; context switches count too),
    #: so that each rank gets host_cores / (ranks + background_load) of a core, at most one
    background_load: float = 0.0
    #: (GEMM FLOPs, fraction of the peak) points, interpolated in log FLOPs; empty = matmul_efficiency everywhere
    gemm_efficiency_curve: tuple[tuple[float, ...], ...] = ()
    #: measured by `bastion calibrate` on a host CPU with more ranks than cores: gemm_efficiency_curve's points
    #: while every rank multiplied at once (per CPU second: time-slicing refills the caches a GEMM's operands had,
    #: so large operands run slower); used for plans with more ranks than cores (`shared_by`); empty = the curve
    time_shared_gemm_efficiency_curve: tuple[tuple[float, ...], ...] = ()
    #: (sequence length × head dim, forward, forward + backward fraction of the peak) of causal SDPA; empty =
    #: matmul_efficiency
    attention_efficiency_curve: tuple[tuple[float, ...], ...] = ()
    #: measured by `bastion calibrate` on a host CPU: (bytes one eager elementwise op moves, its bandwidth / the
    #: bandwidth streaming from DRAM, ≥ 1) from cache-resident to DRAM-sized operands, interpolated in log bytes;
    #: empty = hbm_bandwidth_gbs at every size (predict/compute.py membound_time)
    elementwise_bandwidth_curve: tuple[tuple[float, ...], ...] = ()
    #: measured by `bastion calibrate` on a GPU, never in the catalog: (m, k, n, fraction of the bf16 datasheet
    #: peak) of GEMMs at the predictor's shapes; replaces the H200 curve's level scaled by datasheet ratios
    gemm_shape_efficiency: tuple[tuple[float, ...], ...] = ()
    #: the same for causal SDPA: (sequence length, head size, forward, forward + backward fraction of the bf16 peak)
    attention_layout_efficiency: tuple[tuple[float, ...], ...] = ()
    #: measured by `bastion calibrate` on a GPU: a fused fp32 AdamW step's seconds per parameter × hbm_bandwidth_gbs,
    #: the effective bytes per parameter predict/data/membound.toml's adamw_bytes holds for the H200; 0 = that
    adamw_bytes_per_param: float = 0.0
    #: a part sold at a lower board power than its sibling on the same die and datasheet peaks (PCIe cards): the
    #: fraction of the sibling's sustained tensor-core clock it holds under a dense GEMM load at that power, which
    #: scales the sibling's matmul_efficiency it shares (1 = the same part, or one whose power cap is already in
    #: its own published rates, predict/data/accelerator_rates.toml)
    sustained_clock_fraction: float = 1.0
    #: where sustained_clock_fraction comes from
    sustained_clock_source: str = ""

    def __post_init__(self) -> None:
        if not 0.0 < self.sustained_clock_fraction <= 1.0:
            raise ConfigError(f"{self.name}: sustained_clock_fraction must be in (0, 1], got "
                              f"{self.sustained_clock_fraction:g}.",
                              fix="give the fraction of its full-power sibling's sustained clock, e.g. 0.93.")

    @property
    def sustained_matmul_efficiency(self) -> float:
        """The fraction of the bf16 datasheet peak a large GEMM reaches on this part at its own board power."""
        return self.matmul_efficiency * self.sustained_clock_fraction

    def shared_by(self, ranks: int) -> Accelerator:
        """What one of `ranks` devices on a node gets: itself, unless it is a host CPU whose cores and memory
        bandwidth the ranks share (each rank runs one thread: at most one core) — and, more ranks than cores, its
        GEMMs at the efficiency measured while ranks time-shared the cores."""
        if self.host_cores <= 0 or ranks <= 0:
            return self
        share = self.core_share(ranks)
        time_sliced = ranks > self.host_cores and self.time_shared_gemm_efficiency_curve
        return replace(self, **{f"peak_tflops_{p}": getattr(self, f"peak_tflops_{p}") * share for p in PRECISIONS},
                       hbm_bandwidth_gbs=self.hbm_bandwidth_gbs * share / self.host_cores,
                       **({"gemm_efficiency_curve": self.time_shared_gemm_efficiency_curve} if time_sliced else {}))

    def core_share(self, ranks: int) -> float:
        """The share of a core each of `ranks` single-threaded ranks on a host CPU gets (the OS time-slices the
        cores evenly among the runnable processes); 1 on dedicated devices."""
        if self.host_cores <= 0:
            return 1.0
        return min(1.0, self.host_cores / (max(ranks, 1) + self.background_load))

    def peak_tflops(self, precision: str) -> float:
        """Dense matmul peak for a precision; fp32 training on tensor cores uses tf32 where present."""
        if precision not in PRECISIONS:
            raise ConfigError(f"Unknown precision '{precision}'.", fix=f"use one of {', '.join(PRECISIONS)}.")
        return float(getattr(self, f"peak_tflops_{precision}"))

    def supports(self, precision: str) -> bool:
        return self.peak_tflops(precision) > 0

    @property
    def hbm_bytes(self) -> float:
        return self.hbm_gib * 2**30


@dataclass(frozen=True)
class Network:
    """Two-level network: a scale-up domain (NVLink/NVSwitch) and a scale-out fabric (InfiniBand/RoCE)."""

    __hash__ = cached_hash

    #: devices per scale-up domain (the largest TP group that stays on NVLink)
    scale_up_size: int
    #: per-device, per-direction scale-up bandwidth, GB/s
    scale_up_bw_gbs: float
    scale_up_latency_us: float
    #: per-device, per-direction scale-out bandwidth, GB/s (a 400 Gb/s NIC per GPU = 50)
    scale_out_bw_gbs: float
    scale_out_latency_us: float
    #: `fat-tree`, `rail-optimized` or `torus`
    topology: str = "fat-tree"
    #: fat-tree oversubscription above the leaf (1.0 = full bisection; 2.0 = half)
    oversubscription: float = 1.0

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"Unknown network topology '{self.topology}'.",
                              fix=f"use one of {', '.join(TOPOLOGIES)}.")
        if self.scale_up_size < 1 or self.scale_up_bw_gbs <= 0 or self.scale_out_bw_gbs <= 0:
            raise ConfigError(f"Network sizes and bandwidths must be positive, got scale_up_size "
                              f"{self.scale_up_size}, scale_up_bw_gbs {self.scale_up_bw_gbs:g}, scale_out_bw_gbs "
                              f"{self.scale_out_bw_gbs:g}.",
                              fix="check scale_up_size, scale_up_bw_gbs and scale_out_bw_gbs.")
        if self.scale_up_latency_us < 0 or self.scale_out_latency_us < 0:
            raise ConfigError(f"Network latencies must be >= 0, got scale_up_latency_us {self.scale_up_latency_us:g}"
                              f", scale_out_latency_us {self.scale_out_latency_us:g}.",
                              fix="give latencies in microseconds, e.g. 3.0 (NVLink) and 5.0 (InfiniBand).")
        if self.oversubscription < 1.0:
            raise ConfigError("oversubscription must be >= 1.0 (1.0 = full bisection bandwidth).",
                              fix="set oversubscription in the network table to 1.0 or more.")


@dataclass(frozen=True)
class Cluster:
    """nodes × accelerator on a network."""

    __hash__ = cached_hash

    name: str
    accelerator: Accelerator
    num_nodes: int
    gpus_per_node: int
    network: Network
    #: measured rates (`bastion calibrate`) the predictor uses in place of datasheet scaling; None = datasheet
    profile: MachineProfile | None = None

    def __post_init__(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ConfigError(f"Cluster '{self.name}' needs at least one node and one device per node, got "
                              f"num_nodes {self.num_nodes}, gpus_per_node {self.gpus_per_node}.",
                              fix="set num_nodes and gpus_per_node to positive integers.")
        if self.num_nodes * self.gpus_per_node > MAX_DEVICES:
            raise ConfigError(f"Cluster '{self.name}' has {short_number(self.num_nodes * self.gpus_per_node)} "
                              f"devices, more than the {MAX_DEVICES:,} bastion plans for.",
                              fix="give the cluster's real size (e.g. h100-sxm:1024).")

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    def with_gpus(self, num_gpus: int) -> Cluster:
        """The same kind of cluster resized to `num_gpus` devices (whole nodes, or part of one)."""
        if num_gpus <= self.gpus_per_node:
            return replace(self, num_nodes=1, gpus_per_node=num_gpus)
        if num_gpus % self.gpus_per_node:
            raise ConfigError(f"{num_gpus} devices is not a whole number of {self.gpus_per_node}-device nodes.",
                              fix=f"use a multiple of {self.gpus_per_node}.")
        return replace(self, num_nodes=num_gpus // self.gpus_per_node)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "accelerator": self.accelerator.name, "num_nodes": self.num_nodes,
                "gpus_per_node": self.gpus_per_node, "num_gpus": self.num_gpus, "network": asdict(self.network),
                "rates": self.rates_source}

    @property
    def rates_source(self) -> str:
        """Where this cluster's rates come from: a machine profile, or the catalog's datasheet figures."""
        return self.profile.label if self.profile else f"datasheet: catalog row '{self.accelerator.name}'"


# ---- catalog -------------------------------------------------------------------------------------

@cache
def _accelerator_table() -> dict[str, dict[str, Any]]:
    return tomllib.loads((DATA_DIR / "accelerators.toml").read_text())


def accelerator_names() -> list[str]:
    return sorted(_accelerator_table())


def accelerator_aliases() -> dict[str, str]:
    """Every name an accelerator answers to (lower case: its catalog name and its `aliases`) -> catalog name."""
    table = _accelerator_table()
    out = {alias.lower(): name for name, row in table.items() for alias in row.get("aliases", ())}
    return {**out, **{name: name for name in table}}


def canonical_accelerator(name: str) -> str | None:
    """The catalog name of an accelerator as people type it (`H100`, `h100-sxm5`, SkyPilot's `A100-80GB`), or None."""
    return accelerator_aliases().get(name.strip().lower().replace("_", "-").replace(" ", "-"))


def load_accelerator(name: str) -> Accelerator:
    table = _accelerator_table()
    canonical = canonical_accelerator(name)
    if canonical is None:
        raise UnknownPresetError(f"Unknown accelerator '{name}'.{did_you_mean(name.lower(), accelerator_aliases())}",
                                 fix=f"use one of: {', '.join(sorted(table))}.",
                                 hint="bastion hardware   # lists accelerators and cluster presets")
    name = canonical
    row = dict(table[name])
    row.pop("aliases", None)  # names people type, not a figure of the device
    row["device_names"] = tuple(row.get("device_names", ()))  # a frozen spec holds tuples, not lists
    return Accelerator(name=name, **row)


def accelerator_for_device(device_name: str) -> str | None:
    """The catalog accelerator a device is (from torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3"), or
    None when no catalog row names it."""
    lowered = device_name.lower()
    matches = [(len(part), name) for name in accelerator_names()
               for part in load_accelerator(name).device_names if part in lowered]
    return max(matches)[1] if matches else None


def default_network(acc: Accelerator) -> Network:
    """The network an accelerator usually ships with: its NVLink-class domain plus one NIC per device."""
    return Network(scale_up_size=acc.scale_up_domain, scale_up_bw_gbs=acc.scale_up_bw_gbs,
                   scale_up_latency_us=3.0, scale_out_bw_gbs=max(acc.nic_gbit / 8.0, 1e-3),
                   scale_out_latency_us=5.0,
                   topology=acc.network_topology)


def cluster_presets() -> list[str]:
    return sorted(p.stem for p in (DATA_DIR / "clusters").glob("*.toml"))


def catalog_name(name: str) -> str | None:
    """What `--cluster NAME` means in the catalog ("accelerator 'cpu'", "cluster preset 'dgx-h100'"), or None:
    a catalog name wins over a saved machine profile of the same name (load_cluster)."""
    if (DATA_DIR / "clusters" / f"{name.lower()}.toml").exists():
        return f"cluster preset '{name.lower()}'"
    accelerator = canonical_accelerator(name)
    return f"accelerator '{accelerator}'" if accelerator else None


_SHORTHAND = re.compile(r"^(?P<acc>[a-z0-9][a-z0-9.\-_]*):(?P<n>\d+)$", re.IGNORECASE)
#: NAME:COUNT where COUNT is not a device count (negative, a word, a fraction)
_BAD_COUNT = re.compile(r"^(?P<acc>[a-z0-9][a-z0-9.\-_]*):(?P<n>.*)$", re.IGNORECASE)


def cluster_from_mapping(data: dict[str, Any], what: str) -> Cluster:
    check_keys(data, Cluster, what, extra_ok=("source",))
    for key in ("accelerator", "num_nodes", "gpus_per_node"):
        if key not in data:
            raise ConfigError(f"{what} is missing '{key}'.",
                              fix="a cluster file needs accelerator, num_nodes, gpus_per_node and "
                                  "optionally a network table.")
    acc = load_accelerator(str(data["accelerator"]))
    net_data = data.get("network")
    if net_data is None:
        network = default_network(acc)
    else:
        if not isinstance(net_data, dict):
            raise ConfigError(f"'network' in {what} must be a table.",
                              fix="write it as a [network] table of fields (see `bastion hardware`).")
        check_keys(net_data, Network, f"{what} [network]")
        types = {f.name: f.type for f in fields(Network)}
        defaults = asdict(default_network(acc))
        values = {k: coerce(net_data.get(k, defaults[k]), types[k], k, what) for k in types}
        network = Network(**values)
    return Cluster(name=str(data.get("name", what)), accelerator=acc,
                   num_nodes=coerce(data["num_nodes"], "int", "num_nodes", what),
                   gpus_per_node=coerce(data["gpus_per_node"], "int", "gpus_per_node", what), network=network)


def load_cluster(spec: str) -> Cluster:
    """A preset (`dgx-h100`), a preset resized (`dgx-h100:1024`), `ACCEL:N` (`h100-sxm:1024` = 128 nodes of 8
    on the accelerator's usual network), a path to a TOML/JSON cluster file, or a machine profile
    (`PROFILE.toml`, `ACCEL:N@PROFILE`, or a saved profile's NAME where no catalog name or file has that name:
    specs/profile.py)."""
    from bastion.specs.profile import (
        SAVE_COMMAND,
        cluster_from_profile,
        find_saved_profile,
        is_profile_name,
        is_profile_spec,
        saved_profiles,
        where_profiles_are,
    )

    if is_profile_spec(spec):
        return cluster_from_profile(spec)
    path = Path(spec)
    if path.suffix in (".toml", ".json") or path.exists():
        data = read_mapping(path)
        data.setdefault("name", path.stem)
        return cluster_from_mapping(data, str(path))
    match = _SHORTHAND.match(spec)
    base, count = (match["acc"], int(match["n"])) if match else (spec, None)
    bad = None if match else _BAD_COUNT.match(spec)
    if bad and (canonical_accelerator(bad["acc"]) or (DATA_DIR / "clusters" / f"{bad['acc'].lower()}.toml").exists()):
        raise ConfigError(f"Cluster '{spec}': '{bad['n']}' is not a device count.",
                          fix=f"write {bad['acc']}:N with N a positive whole number, e.g. {bad['acc']}:64.")
    if count == 0:
        raise ConfigError(f"Cluster '{spec}' has zero devices.", fix="use ACCEL:N with N >= 1.")
    preset = DATA_DIR / "clusters" / f"{base.lower()}.toml"
    accelerator = canonical_accelerator(base)
    if preset.exists():
        data = tomllib.loads(preset.read_text())
        data["name"] = spec.lower()
        cluster = cluster_from_mapping(data, f"cluster preset '{base.lower()}'")
    elif accelerator is not None:
        acc = load_accelerator(accelerator)
        per_node = (count or acc.gpus_per_node) if acc.host_cores > 0 else acc.gpus_per_node
        # the catalog's name, however it was typed (`H100:8` is h100-sxm:8 in every output)
        name = f"{accelerator}:{count}" if count else accelerator
        cluster = Cluster(name=name, accelerator=acc, num_nodes=1, gpus_per_node=per_node,
                          network=default_network(acc))
        if count is None:
            raise ConfigError(f"Cluster '{spec}' names an accelerator but not how many.",
                              fix=f"write '{accelerator}:N', e.g. '{accelerator}:{per_node * 16}'.")
    elif match is None and find_saved_profile(spec):
        return cluster_from_profile(spec)  # no catalog name: a saved profile's
    elif match is None and is_profile_name(spec):
        known = cluster_presets() + accelerator_names() + [p.name for p in saved_profiles()]
        raise UnknownPresetError(
            f"Unknown cluster or machine profile '{spec}'.{did_you_mean(spec.lower(), known)} No cluster preset or "
            f"accelerator has that name, and no saved profile: {where_profiles_are()}.",
            fix="use a cluster preset or ACCEL:N (`bastion hardware` lists them; e.g. h100-sxm:1024, H100:8), a "
                "path to a .toml cluster file, or a saved profile's name (`bastion calibrate --list` lists them).",
            hint=f"{SAVE_COMMAND.format(name=spec)}   # saves this machine's profile as '{spec}' (under a minute)")
    else:
        # NAME:N names an accelerator: suggest one of those (and the names people type for them)
        known = list(accelerator_aliases()) if match else cluster_presets() + accelerator_names()
        raise UnknownPresetError(
            f"Unknown {'accelerator' if match else 'cluster'} '{base if match else spec}'."
            f"{did_you_mean(base.lower(), known)}",
            fix="use a cluster preset, ACCEL:N (e.g. h100-sxm:1024, H100:8, A100-80GB:8), or a path to a .toml "
                "cluster file.",
            hint="bastion hardware   # lists accelerators and cluster presets")
    return cluster.with_gpus(count) if count else cluster
