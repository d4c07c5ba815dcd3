"""`bastion calibrate`: measure this machine (runtime/calibrate.py) and write a machine profile
(specs/profile.py) that `--cluster PROFILE.toml` makes the predictor use; `--compare A B` lists the measurements of
two profiles that differ beyond their noise (specs/profile_compare.py)."""

from __future__ import annotations

import datetime
import platform
import socket
from pathlib import Path

import typer

from bastion.cli import app
from bastion.commands import options

#: per-measurement time budgets, seconds (quick: the whole run under a minute on 2 cores)
QUICK_BUDGET_S, FULL_BUDGET_S = 0.04, 0.3
QUICK_MESSAGES = [4096, 65536, 1 << 20, 8 << 20]
FULL_MESSAGES = [1024, 4096, 16384, 65536, 1 << 18, 1 << 20, 4 << 20, 16 << 20]
#: the state written and read back to measure checkpoint bandwidth, MiB
QUICK_CHECKPOINT_MIB, FULL_CHECKPOINT_MIB = 16, 64


@app.command("calibrate")
def calibrate_command(
    out: Path = typer.Option(Path("bastion-profile.toml"), "--out", "-o", help="Where to write the profile."),
    quick: bool = typer.Option(False, "--quick", help="Fewer shapes and repeats: under a minute."),
    nproc: int = typer.Option(4, "--nproc", help="Ranks that will share this host (the collectives' world)."),
    models: str = typer.Option("tiny,small", "--models", help="Comma-separated models whose GEMM and attention "
                               "shapes to measure."),
    accelerator: str = typer.Option("cpu", "--accelerator", help="Catalog row the profile's rates replace."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    run_dir: Path = typer.Option(Path("."), "--run-dir", help="A directory on the filesystem checkpoints will be "
                                 "written to (its write/read bandwidth is measured there)."),
    compare: tuple[Path, Path] | None = typer.Option(None, "--compare", help="Measure nothing: list the "
                                                     "measurements of profile A that changed in profile B beyond "
                                                     "their noise."),
    min_change: float = typer.Option(0.05, "--min-change", help="With --compare: the smallest relative change "
                                     "reported."),
    as_json: options.AsJson = False,
) -> None:
    """Measure this machine's GEMM, attention, memory, dispatch, checkpoint I/O and gloo collective rates; write a
    profile (or, with --compare A B, say which measurements changed between two profiles)."""
    from bastion.errors import ConfigError
    from bastion.specs.hardware import load_accelerator
    from bastion.specs.model import load_model
    from bastion.specs.profile import PROFILE_FORMAT, profile_toml

    if compare is not None:
        _compare(*compare, min_change, as_json)
        return

    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}.", fix="e.g. --nproc 4.")
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out} is a directory.", fix="give a file name, e.g. --out profile.toml.")
    acc = load_accelerator(accelerator)
    if acc.arch != "cpu":
        raise ConfigError(f"`bastion calibrate` measures host CPUs here; '{accelerator}' is a {acc.arch} device.",
                          fix="use --accelerator cpu (GPU calibration is not implemented yet).")
    specs = [load_model(name.strip()) for name in models.split(",") if name.strip()]
    budget = QUICK_BUDGET_S if quick else FULL_BUDGET_S
    messages = QUICK_MESSAGES if quick else FULL_MESSAGES

    from rich.progress import Progress

    from bastion.runtime import calibrate as cal

    cal.one_thread()  # a training rank runs one thread
    shapes = cal.gemm_shapes(specs, (1, 2) if quick else (1, 2, 4), (1, 2) if quick else (1, 2, 4))
    factors = (1,) if quick else (1, 2, 4)
    layouts = sorted({(s.seq_len * f, s.head_dim, s.num_heads) for s in specs for f in factors})
    steps = ["dispatch", "GEMMs", "attention", "elementwise", "runtime blocks", "checkpoint I/O",
             f"{nproc} processes"]
    raw: dict = {}
    repeats: dict[str, list[float]] = {}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("calibrating", total=len(steps))
        for name in steps:
            bar.update(task, description=f"calibrate: {name}")
            if name == "dispatch":
                raw["dispatch_s"] = cal.measure_dispatch(budget, repeats)
            elif name == "GEMMs":
                raw["gemm"] = cal.measure_gemms(shapes, budget, repeats)
            elif name == "attention":
                raw["attention"] = cal.measure_attention(layouts, budget, repeats)
            elif name == "elementwise":
                raw["elementwise"] = cal.measure_elementwise((4, 16) if quick else (4, 16, 32), budget, repeats)
            elif name == "runtime blocks":
                raw["host"] = cal.measure_host_overheads(specs[0], budget, repeats)
            elif name == "checkpoint I/O":
                raw["host"].update(cal.measure_checkpoint_io(
                    run_dir, QUICK_CHECKPOINT_MIB if quick else FULL_CHECKPOINT_MIB, budget, repeats))
            else:
                shared_shape = shapes[len(shapes) // 2]
                raw["shared_gemm_shape"] = list(shared_shape)
                raw["shared"] = cal.measure_shared(nproc, shared_shape, messages, budget, specs[0],
                                                   repeats=repeats)
            bar.advance(task)
    fitted = cal.fit_profile(raw, acc.peak_tflops("fp32") * 1e12, acc.host_cores)
    machine = {"format": PROFILE_FORMAT, "accelerator": accelerator, "nproc": nproc,
               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "host": socket.gethostname(), "platform": platform.platform(), "processor": platform.processor(),
               "torch": cal.torch_version(), "cores": acc.host_cores, "os_cpus": _cpus(), "quick": quick,
               "models": [s.name for s in specs], "load_average_1m": _load_average()}
    shared = raw.pop("shared")
    raw_table = {"dispatch_s": raw["dispatch_s"], "gemm_m_k_n_s": raw["gemm"],
                 "attention_seq_headdim_heads_fwd_s_fwdbwd_s": raw["attention"],
                 "elementwise_bytes_s": raw["elementwise"], "shared_gemm_shape": raw["shared_gemm_shape"],
                 "shared_core_share_per_rank": shared["core_share"], "shared_elementwise_bytes_s": shared["elementwise"],
                 "collective_op_size_bytes_s": shared["collectives"],
                 # zero_stage -1: the same models without FSDP2
                 "fsdp_zero_size_layers_s": shared["fsdp"],
                 "fsdp_core_share_size_share": [[g, s] for g, s in shared["fsdp_core_share"].items()]}
    data = {"machine": machine, **fitted, "raw": raw_table, "repeats": repeats}
    header = ("bastion machine profile, written by `bastion calibrate`. Use it with --cluster PROFILE.toml or\n"
              "--cluster cpu:N@PROFILE.toml. [accelerator] replaces catalog fields; [host], [[collective]] and\n"
              "[[fsdp_unit]] are measured terms the catalog has no field for; [raw] holds the measurements\n"
              "(seconds), [repeats] each measurement's repeats (its noise band, for `bastion calibrate --compare A B`).")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profile_toml(data, header))
    a, h = fitted["accelerator"], fitted["host"]
    typer.echo(f"wrote {out}: GEMM {a['matmul_efficiency']:.2f} of a core's peak at the largest shape, "
               f"memory {a['hbm_bandwidth_gbs']:.2g} GB/s, background load {a['background_load']:.1f}, "
               f"block dispatch {1e3 * h['layer_s']:.2f} ms (+{1e3 * h['layer_tp_s']:.2f} DTensor, "
               f"+{1e3 * h['layer_fsdp_s']:.2f} FSDP), process start {h['process_start_s']:.1f} s, "
               f"checkpoint write {h['checkpoint_write_gbs']:.2g} GB/s / read {h['checkpoint_read_gbs']:.2g} GB/s "
               f"in {run_dir}" + _fsdp_summary(fitted["fsdp_unit"]))


def _fsdp_summary(units: list[dict]) -> str:
    """FSDP2's measured cost per block on the largest group, by ZeRO layout (none measured with one process)."""
    if not units:
        return ""
    size = max(u["group_size"] for u in units)
    costs = ", ".join(f"ZeRO-{u['zero_stage']} {1e3 * u['unit_s']:.2f} ms" for u in units if u["group_size"] == size)
    return f"; FSDP2 per block on {size} ranks (whole cores): {costs}"


def _load_average() -> float:
    """The host's 1-minute load average while calibrating (recorded: a loaded host measures a background load)."""
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _compare(before: Path, after: Path, min_change: float, as_json: bool) -> None:
    from bastion.specs.profile import read_profile
    from bastion.specs.profile_compare import compare_profiles

    comparison = compare_profiles(read_profile(before), read_profile(after), min_change)
    if as_json:
        from bastion.outputs import dumps_json

        typer.echo(dumps_json(comparison.to_dict(), indent=2))
    else:
        typer.echo(comparison.text())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
