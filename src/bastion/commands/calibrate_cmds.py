"""`bastion calibrate`: measure this machine's host CPUs or GPUs (runtime/calibrate.py) and write a machine profile
(specs/profile.py) that `--cluster PROFILE.toml` makes the predictor use, or save it under a name (`--save-as NAME`:
then `--cluster NAME`); `--list` lists the saved profiles; `--compare A B` lists the measurements of two profiles
that differ beyond their noise (specs/profile_compare.py)."""

from __future__ import annotations

import datetime
import platform
import socket
from pathlib import Path
from typing import Any

import typer

from bastion.cli import app
from bastion.commands import options

#: where the profile goes without --out or --save-as
DEFAULT_OUT = Path("bastion-profile.toml")
#: per-measurement time budgets, seconds (quick: the whole run under a minute on 2 cores)
QUICK_BUDGET_S, FULL_BUDGET_S = 0.04, 0.3
QUICK_MESSAGES = [4096, 65536, 1 << 20, 8 << 20]
FULL_MESSAGES = [1024, 4096, 16384, 65536, 1 << 18, 1 << 20, 4 << 20, 16 << 20]
#: the state written and read back to measure checkpoint bandwidth, MiB
QUICK_CHECKPOINT_MIB, FULL_CHECKPOINT_MIB = 16, 64


@app.command("calibrate")
def calibrate_command(
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the profile (default "
                                    f"{DEFAULT_OUT}; a job: on the filesystem its nodes share; k8s: under "
                                    "--run-dir, on the job's volume)."),
    save_as: str | None = typer.Option(None, "--save-as", metavar="NAME", help="Instead of --out: save the "
                                       "profile as NAME in your profile directory ($BASTION_CONFIG_DIR/profiles, "
                                       "else $XDG_CONFIG_HOME/bastion/profiles or ~/.config/bastion/profiles); then "
                                       "--cluster NAME or ACCEL:N@NAME predicts with it. A project's "
                                       "./.bastion/profiles/NAME.toml (commit it with the project) is looked for "
                                       "first."),
    list_saved: bool = typer.Option(False, "--list", help="Measure nothing: list the saved profiles (the "
                                    "project's and yours) with their accelerator, date, host and --quick."),
    quick: bool = typer.Option(False, "--quick", help="Fewer shapes and repeats: under a minute."),
    nproc: int = typer.Option(4, "--nproc", help="Ranks that will share each host (the collectives' world: "
                              "--nodes × --nproc ranks in a job)."),
    models: str = typer.Option("tiny,small", "--models", help="Comma-separated models whose GEMM and attention "
                               "shapes to measure."),
    accelerator: str = typer.Option("cpu", "--accelerator", help="Catalog row the profile's rates replace: cpu "
                                    "(this host's cores) or a GPU kind (this node's CUDA devices; --nproc of them "
                                    "for the NCCL collectives)."),
    any_device: bool = typer.Option(False, "--any-device", help="A GPU kind: measure this node's CUDA device as "
                                    "--accelerator even when its name is not one the catalog row lists."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    run_dir: Path = typer.Option(Path("."), "--run-dir", help="A directory on the filesystem checkpoints will be "
                                 "written to (its write/read bandwidth is measured there). A job also keeps its "
                                 "script, config and output there (k8s: the path the job's volume is mounted at)."),
    compare: tuple[Path, Path] | None = typer.Option(None, "--compare", help="Measure nothing: list the "
                                                     "measurements of profile A that changed in profile B beyond "
                                                     "their noise (each a file or a saved name)."),
    min_change: float = typer.Option(0.05, "--min-change", help="With --compare: the smallest relative change "
                                     "reported."),
    on: str = typer.Option("local", "--on", help="local (this machine), slurm (an sbatch job) or k8s (a "
                                                 "PyTorchJob/JobSet): where to measure."),
    nodes: int = typer.Option(1, "--nodes", help="Slurm / k8s: machines the job measures (collectives across "
                                                 "them too)."),
    name: str = typer.Option("bastion-calibrate", "--name", help="Slurm / k8s: the job's name."),
    time: options.TimeLimit = None,
    partition: options.Partition = None,
    account: options.Account = None,
    qos: options.Qos = None,
    constraint: options.Constraint = None,
    exclusive: options.Exclusive = False,
    exclude: options.Exclude = None,
    container_image: options.ContainerImage = None,
    sbatch_args: options.SbatchArgs = [],  # noqa: B006 - typer reads the default
    image: options.Image = "",
    k8s_kind: options.K8sKind = "pytorchjob",
    queue: options.Queue = "",
    storage: options.Storage = "100Gi",
    node_selector: options.NodeSelector = [],  # noqa: B006
    tolerations: options.Toleration = [],  # noqa: B006
    manifest: Path | None = typer.Option(None, "--manifest", help="k8s: where to write the YAML "
                                                                  "(default ./NAME-KIND.yaml)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Slurm / k8s: print the batch script or manifests; "
                                                          "do nothing else."),
    submit: bool = typer.Option(False, "--submit", help="Slurm / k8s: submit (sbatch / kubectl apply) after "
                                                        "writing."),
    as_json: options.AsJson = False,
) -> None:
    """Measure this machine's GEMM, attention, memory, dispatch, checkpoint I/O and collective rates (host CPUs:
    gloo; a GPU kind: its CUDA devices in bf16, the optimizer step, NCCL); write a profile (or, with --compare A B,
    say which measurements changed between two profiles). With --on slurm|k8s the measurements run as a job on
    the machines a training job would use, the collectives across their ranks."""
    from bastion.errors import ConfigError
    from bastion.launch.request import check_engine

    if list_saved and compare is not None:
        raise ConfigError("--list and --compare are two different things to show.", fix="give one of them.")
    if list_saved or compare is not None:
        flag = "--list" if list_saved else "--compare"
        if on != "local":
            raise ConfigError(f"{flag} reads profiles here; it measures nothing, so it runs no job.",
                              fix=f"drop --on (or give --on local) with {flag}.")
        if list_saved:
            _list_saved(as_json)
        else:
            _compare(*compare, min_change, as_json)
        return

    check_engine(on)
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}.", fix="e.g. --nproc 4.")
    out = _profile_out(out, save_as, on)
    settings = {**_settings(quick, nproc, models, accelerator, run_dir, out), "name": save_as or ""}
    given = {"--time": time, "--partition": partition, "--account": account, "--qos": qos,
             "--constraint": constraint, "--exclusive": exclusive, "--exclude": exclude,
             "--container-image": container_image, "--sbatch-arg": sbatch_args, "--image": image,
             "--k8s-kind": k8s_kind != "pytorchjob", "--queue": queue, "--storage": storage != "100Gi",
             "--node-selector": node_selector, "--toleration": tolerations, "--manifest": manifest,
             "--dry-run": dry_run, "--submit": submit, "--nodes": nodes != 1}
    if on == "local":
        _refuse_job_options("local", [flag for flag, value in given.items() if value],
                            "they are options of a Slurm or Kubernetes job (--on slurm or --on k8s)")
        if settings["device"] == "cuda":
            _check_cuda_here(settings, any_device)
            _write_device_profile(settings, _measure_device(settings, progress), _this_machine(), as_json)
            return
        _write_profile(settings, _measure_here(settings, progress), _this_machine(), as_json)
        return
    from bastion.commands.calibrate_job import CalibrateJob, run_job

    other = ("--time", "--partition", "--account", "--qos", "--constraint", "--exclusive", "--exclude",
             "--container-image", "--sbatch-arg") if on == "k8s" else (
             "--image", "--k8s-kind", "--queue", "--storage", "--node-selector", "--toleration", "--manifest")
    _refuse_job_options(on, [flag for flag in other if given[flag]], "they are options of the other job engine")
    run_job(CalibrateJob(engine=on, settings=settings, nodes=nodes, name=name, time=time, partition=partition,
                         account=account, qos=qos, constraint=constraint, exclusive=exclusive, exclude=exclude,
                         container_image=container_image, sbatch_args=tuple(sbatch_args), image=image,
                         k8s_kind=k8s_kind, queue=queue, storage=storage, node_selector=tuple(node_selector),
                         tolerations=tuple(tolerations), manifest=manifest, dry_run=dry_run, submit=submit,
                         as_json=as_json))


def _profile_out(out: Path | None, save_as: str | None, on: str) -> Path:
    """The file the profile is written to: --out, or with --save-as NAME the user's saved profile of that name."""
    from bastion.errors import ConfigError
    from bastion.specs.profile import saved_profile_path

    if out is not None and save_as is not None:
        raise ConfigError("--out and --save-as both say where the profile goes.",
                          fix="give --save-as NAME (your profile directory) or --out PATH.toml, not both.")
    if save_as is not None:
        path = saved_profile_path(save_as)  # a bad name is a guidance error here, before anything is measured
        if on == "k8s":
            raise ConfigError(f"--save-as writes to {path.parent}/ on this machine, and a Kubernetes job's pods "
                              "write the profile on the job's volume.",
                              fix=f"give --out under --run-dir, then copy the file to {path} (or into the project's "
                                  "./.bastion/profiles/) to use it as --cluster NAME.")
        return path
    out = out or DEFAULT_OUT
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out} is a directory.", fix="give a file name, e.g. --out profile.toml.")
    return out


def _refuse_job_options(on: str, flags: list[str], why: str) -> None:
    from bastion.errors import ConfigError

    if flags:
        raise ConfigError(f"With --on {on}, {', '.join(flags)} cannot apply: {why}.",
                          fix=f"drop {', '.join(flags)}, or choose the --on {'it' if len(flags) == 1 else 'they'} "
                              f"belong{'s' if len(flags) == 1 else ''} to.")


def _settings(quick: bool, nproc: int, models: str, accelerator: str, run_dir: Path, out: Path) -> dict:
    """What to measure, checked, as JSON a calibrate job's workers read (the models as their specs, so a model
    file need not exist where the job runs)."""
    from bastion.errors import ConfigError
    from bastion.specs.hardware import load_accelerator
    from bastion.specs.model import load_model

    acc = load_accelerator(accelerator)
    if acc.arch == "tpu":
        raise ConfigError(f"`bastion calibrate` measures host CPUs and GPUs through torch.cuda; '{accelerator}' is "
                          "a TPU.", fix="use --accelerator cpu or a GPU kind; a TPU keeps its datasheet rates.")
    specs = [load_model(name.strip()) for name in models.split(",") if name.strip()]
    if not specs:
        raise ConfigError("--models names no model.", fix="e.g. --models tiny,small.")
    return {"quick": quick, "nproc": nproc, "accelerator": accelerator, "run_dir": str(run_dir), "out": str(out),
            "models": [spec.to_dict() for spec in specs], "device": "cpu" if acc.arch == "cpu" else "cuda"}


def _specs(settings: dict) -> list:
    from bastion.specs.model import model_from_mapping

    return [model_from_mapping(data, "calibrate settings") for data in settings["models"]]


def _plan(settings: dict) -> tuple[list, list, float, list[int]]:
    """(model specs, GEMM shapes, per-measurement budget, collective message sizes)."""
    from bastion.runtime import calibrate as cal

    quick, specs = settings["quick"], _specs(settings)
    shapes = cal.gemm_shapes(specs, (1, 2) if quick else (1, 2, 4), (1, 2) if quick else (1, 2, 4))
    return specs, shapes, QUICK_BUDGET_S if quick else FULL_BUDGET_S, QUICK_MESSAGES if quick else FULL_MESSAGES


def _attention_layouts(settings: dict, grouped: bool = False) -> list[tuple[int, ...]]:
    """(sequence length, head size, heads[, kv heads with `grouped`]) of the attention measured: each model's,
    and (not --quick) at 2× and 4× its sequence length."""
    factors = (1,) if settings["quick"] else (1, 2, 4)
    return sorted({(s.seq_len * f, s.head_dim, s.num_heads, *((s.num_kv_heads,) if grouped else ()))
                   for s in _specs(settings) for f in factors})


def _measure_single(settings: dict, progress: bool) -> tuple[dict, dict]:
    """The one-process measurements (one thread, as a training rank runs): (raw, repeats)."""
    from rich.progress import Progress

    from bastion.runtime import calibrate as cal

    quick = settings["quick"]
    specs, shapes, budget, _ = _plan(settings)
    cal.one_thread()  # a training rank runs one thread
    layouts = _attention_layouts(settings)
    steps = ["dispatch", "GEMMs", "attention", "elementwise", "runtime blocks", "checkpoint I/O"]
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
                raw["elementwise_working_sets"] = cal.measure_elementwise_working_sets(budget, repeats)
            elif name == "runtime blocks":
                raw["host"] = cal.measure_host_overheads(specs[0], budget, repeats)
            else:
                raw["host"].update(cal.measure_checkpoint_io(
                    Path(settings["run_dir"]), QUICK_CHECKPOINT_MIB if quick else FULL_CHECKPOINT_MIB, budget,
                    repeats))
            bar.advance(task)
    raw["shared_gemm_shape"] = list(shapes[len(shapes) // 2])
    return raw, repeats


def ranks_config(settings: dict) -> dict:
    """What every rank measures with (runtime/calibrate.py `ranks_config`)."""
    from bastion.runtime import calibrate as cal

    specs, shapes, budget, messages = _plan(settings)
    return cal.ranks_config(shapes[len(shapes) // 2], messages, budget, specs[0], gemm_shapes=shapes)


def _measure_here(settings: dict, progress: bool) -> tuple[dict, dict]:
    """Everything, on this machine: the one-process measurements, then `nproc` processes at once."""
    from bastion.runtime import calibrate as cal

    raw, repeats = _measure_single(settings, progress)
    config = ranks_config(settings)
    if progress:
        typer.echo(f"calibrate: {settings['nproc']} processes", err=True)
    raw["shared"] = cal.measure_shared(settings["nproc"], config, repeats=repeats)
    return raw, repeats


#: the tokens per attention measurement on a GPU (batch = this // sequence length), as the H200 calibration's
#: SDPA rows: enough (batch × heads) tiles to fill the card, as a training micro-batch does
GPU_ATTENTION_TOKENS = 8192
#: fp32 parameters of the AdamW step measured on a GPU (16 bytes each with gradient and moments: 1 / 4 GiB)
QUICK_OPTIMIZER_PARAMS, FULL_OPTIMIZER_PARAMS = 1 << 26, 1 << 28
#: the elementwise multiply's operands on a GPU, MiB (large enough to stream from HBM, not from L2)
QUICK_GPU_ELEMENTWISE_MIB, FULL_GPU_ELEMENTWISE_MIB = (256,), (256, 1024)
#: repeats of every NCCL collective (each rank the same number; the median of the slowest rank's)
NCCL_REPS = 10


def _check_cuda_here(settings: dict, any_device: bool) -> None:
    """A GPU kind is measured on this machine's CUDA devices: there must be --nproc of them, and (unless
    --any-device) the first must be the card the catalog row names."""
    from bastion.errors import ConfigError
    from bastion.runtime import calibrate as cal
    from bastion.specs.hardware import accelerator_for_device

    accelerator, nproc = settings["accelerator"], settings["nproc"]
    count, name = cal.cuda_devices()
    if not count:
        raise ConfigError(f"--accelerator {accelerator} measures that GPU, and this machine has no CUDA device "
                          f"(torch {cal.torch_version()}).",
                          fix="run `bastion calibrate` on the GPU node, or as a job on one with --on slurm or "
                              "--on k8s (one rank per GPU: --nproc GPUS_PER_NODE).",
                          hint=f"bastion calibrate --accelerator {accelerator} --on slurm --nproc 8 --dry-run")
    found = accelerator_for_device(name)
    if found != accelerator and not any_device:
        raise ConfigError(f"This machine's GPU is '{name}' (catalog row {found or 'none'}), not --accelerator "
                          f"{accelerator}.", fix=(f"use --accelerator {found}" if found else "name its catalog row")
                          + f", or add --any-device to measure it as {accelerator} anyway.")
    if nproc > count:
        raise ConfigError(f"--nproc {nproc} asks for {nproc} GPUs; this machine has {count}.",
                          fix=f"use --nproc {count} (1: one device, no collectives to measure).")


def _measure_device(settings: dict, progress: bool, device: Any = None) -> tuple[dict, dict]:
    """Everything, on this node's GPUs: the one-device measurements on the first (runtime/calibrate.py's
    device-generic functions, bf16, timed between synchronisations, its memory capped at GPU_MEMORY_SHARE),
    then NCCL collectives among --nproc of them (none with one). (raw, repeats). `device`: another
    runtime/calibrate.py Device to measure instead of the CUDA one (the tests' CPU stand-in)."""
    from bastion.runtime import calibrate as cal

    raw, repeats = _measure_one_device(settings, progress, device)
    _, _, _, messages = _plan(settings)
    raw["collectives"] = cal.measure_device_collectives(settings["nproc"], messages, NCCL_REPS, repeats)
    return raw, repeats


def _measure_one_device(settings: dict, progress: bool, device: Any = None) -> tuple[dict, dict]:
    """The one-device measurements on the current CUDA device (or `device`): (raw, repeats)."""
    from rich.progress import Progress

    from bastion.runtime import calibrate as cal

    quick = settings["quick"]
    _, shapes, budget, _ = _plan(settings)
    device = device or cal.prepare_cuda()
    backends: dict[str, str] = {}
    raw: dict = {"attention_batch_tokens": GPU_ATTENTION_TOKENS, "facts": cal.device_facts(device)}
    repeats: dict[str, list[float]] = {}
    params = QUICK_OPTIMIZER_PARAMS if quick else FULL_OPTIMIZER_PARAMS
    raw["attention_layouts"] = layouts = _attention_layouts(settings, grouped=True)
    steps = {
        "dispatch": lambda: raw.update(dispatch_s=cal.measure_dispatch(budget, repeats, device)),
        "GEMMs": lambda: raw.update(gemm=cal.measure_gemms(shapes, budget, repeats, device)),
        # grouped-query where the model is, as the runtime calls SDPA
        "attention": lambda: raw.update(attention=cal.measure_attention(
            layouts, budget, repeats, device, GPU_ATTENTION_TOKENS, backends)),
        "elementwise": lambda: raw.update(elementwise=cal.measure_elementwise(
            QUICK_GPU_ELEMENTWISE_MIB if quick else FULL_GPU_ELEMENTWISE_MIB, budget, repeats, device)),
        "optimizer": lambda: raw.update(optimizer_params_s=[
            params, cal.measure_optimizer_step(params, budget, repeats, device)]),
        "checkpoint I/O": lambda: raw.update(host=cal.measure_checkpoint_io(
            Path(settings["run_dir"]), QUICK_CHECKPOINT_MIB if quick else FULL_CHECKPOINT_MIB, budget, repeats,
            device)),
    }
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("calibrating", total=len(steps))
        for name, step in steps.items():
            bar.update(task, description=f"calibrate: {name}")
            step()
            bar.advance(task)
    raw["attention_backends"] = sorted(set(backends.values()))
    return raw, repeats


def _write_device_profile(settings: dict, measured: tuple[dict, dict], machine: dict, as_json: bool = False) -> None:
    """Fit a GPU's rates (runtime/calibrate.py fit_device_profile), write the profile TOML, say so (`as_json`: as
    one JSON object)."""
    from bastion.runtime import calibrate as cal
    from bastion.specs.hardware import load_accelerator

    raw, repeats = measured
    acc = load_accelerator(settings["accelerator"])
    fitted = cal.fit_device_profile(raw, acc.peak_tflops("bf16") * 1e12)
    streamed_gbs = max(b / t for b, t in raw["elementwise"]) / 1e9
    facts = raw["facts"]
    machine = {**_machine_table(settings, machine), **facts, "sdpa_backend": raw["attention_backends"],
               "collectives": f"nccl among {settings['nproc']} GPUs" if raw["collectives"] else "single device"}
    raw_table = {"dispatch_s": raw["dispatch_s"], "gemm_m_k_n_s": raw["gemm"],
                 "attention_seq_headdim_heads_fwd_s_fwdbwd_s": raw["attention"],
                 "attention_seq_headdim_heads_kvheads": [list(layout) for layout in raw["attention_layouts"]],
                 "attention_batch_tokens": raw["attention_batch_tokens"], "elementwise_bytes_s": raw["elementwise"],
                 "elementwise_streamed_gbs": streamed_gbs, "optimizer_params_s": raw["optimizer_params_s"],
                 "collective_op_size_bytes_s": [row[:4] for row in raw["collectives"]]}
    out = Path(settings["out"])
    _save_profile(out, {"machine": machine, **fitted, "raw": raw_table, "repeats": repeats})
    a, h = fitted["accelerator"], fitted["host"]
    largest = max(a["gemm_shape_efficiency"], key=lambda row: row[0] * row[1] * row[2])
    _announce(settings, fitted, f"{facts['device_name']} bf16 GEMM {largest[3]:.2f} of the datasheet peak "
              f"at the largest shape, attention {', '.join(raw['attention_backends'])}, elementwise "
              f"{streamed_gbs:.4g} GB/s ({streamed_gbs / acc.hbm_bandwidth_gbs:.0%} of the datasheet), "
              f"{len(fitted['collective'])} NCCL collective lines"
              f"{'' if raw['collectives'] else ' (single device)'}, checkpoint write "
              f"{h['checkpoint_write_gbs']:.2g} GB/s / read {h['checkpoint_read_gbs']:.2g} GB/s in "
              f"{settings['run_dir']}", as_json)


def _this_machine() -> dict:
    return {"host": socket.gethostname(), "platform": platform.platform(), "processor": platform.processor(),
            "os_cpus": _cpus(), "load_average_1m": _load_average()}


def _write_profile(settings: dict, measured: tuple[dict, dict], machine: dict, as_json: bool = False) -> None:
    """Fit the rates (runtime/calibrate.py fit_profile), write the profile TOML to the settings' `out`, say so
    (`as_json`: as one JSON object). `machine`: where it was measured (host, platform, ...; a job: every host)."""
    from bastion.runtime import calibrate as cal
    from bastion.specs.hardware import load_accelerator

    raw, repeats = measured
    acc = load_accelerator(settings["accelerator"])
    out, run_dir = Path(settings["out"]), settings["run_dir"]
    fitted = cal.fit_profile(raw, acc.peak_tflops("fp32") * 1e12, acc.host_cores)
    machine = {**_machine_table(settings, machine), "cores": acc.host_cores}
    shared = raw.pop("shared")
    raw_table = {"dispatch_s": raw["dispatch_s"], "gemm_m_k_n_s": raw["gemm"],
                 "attention_seq_headdim_heads_fwd_s_fwdbwd_s": raw["attention"],
                 "elementwise_bytes_s": raw["elementwise"],
                 "elementwise_working_sets_bytes_s": raw["elementwise_working_sets"],
                 "shared_gemm_shape": raw["shared_gemm_shape"], "shared_core_share_per_rank": shared["core_share"],
                 "shared_elementwise_bytes_s": shared["elementwise"],
                 # the GEMM sweep with every rank multiplying at once (each rank's CPU seconds, the median rank's)
                 "shared_gemm_m_k_n_s": shared.get("gemm", []),
                 "collective_op_size_bytes_s": [row[:4] for row in shared["collectives"]],
                 # zero_stage -1: the same models without FSDP2
                 "fsdp_zero_size_layers_s": shared["fsdp"],
                 # the same models' process CPU seconds (all threads) per rank at two widths, by parameter bytes
                 "fsdp_cpu_zero_size_layers_bytes_s": shared.get("fsdp_cpu", []),
                 "fsdp_core_share_size_share": [[g, s] for g, s in shared["fsdp_core_share"].items()],
                 # every rank looping over work_s of CPU work, with one small blocking sync after each and without
                 # (the slowest rank's wall seconds per iteration)
                 "sync_wait_op_work_round_synced_s_alone_s": shared.get("sync_wait", [])}
    _save_profile(out, {"machine": machine, **fitted, "raw": raw_table, "repeats": repeats})
    a, h = fitted["accelerator"], fitted["host"]
    _announce(settings, fitted, f"GEMM {a['matmul_efficiency']:.2f} of a core's peak at the largest shape, "
              f"memory {a['hbm_bandwidth_gbs']:.2g} GB/s (cache-resident elementwise up to "
              f"{max(r for _, r in a['elementwise_bandwidth_curve']):.1f}x), background load "
              f"{a['background_load']:.1f}, block dispatch {1e3 * h['layer_s']:.2f} ms (+{1e3 * h['layer_tp_s']:.2f} "
              f"DTensor, +{1e3 * h['layer_fsdp_s']:.2f} FSDP), process start {h['process_start_s']:.1f} s, "
              f"checkpoint write {h['checkpoint_write_gbs']:.2g} GB/s / read {h['checkpoint_read_gbs']:.2g} GB/s "
              f"in {run_dir}" + _fsdp_summary(fitted["fsdp_unit"]), as_json)


def _announce(settings: dict, fitted: dict, summary: str, as_json: bool) -> None:
    """The closing summary of a written profile: where it went, its headline rates (`summary`), how to use a saved
    one, and warnings (a busy host: specs/profile.py busy_host_warning); with `as_json` one JSON object."""
    from bastion.specs.profile import PROJECT_PROFILES_DIR, busy_host_warning

    out, name, accelerator = settings["out"], settings.get("name") or "", settings["accelerator"]
    background = fitted["accelerator"].get("background_load")
    busy = None if background is None else busy_host_warning(background)
    warnings = [busy] if busy else []
    notes = []
    if name:
        notes.append(f"saved as '{name}': --cluster {name} ({settings['nproc']} ranks) or --cluster "
                     f"{accelerator}:N@{name} predicts with it")
        project = PROJECT_PROFILES_DIR / f"{name}.toml"
        if project.is_file():
            notes.append(f"./{project} (the project's) has the same name and is used before it in this directory")
    if as_json:
        from bastion.outputs import dumps_json

        typer.echo(dumps_json({"profile": str(out), "name": name or None, "accelerator": accelerator,
                               "quick": settings["quick"], "summary": summary, "background_load": background,
                               "measured": {"accelerator": fitted["accelerator"], "host": fitted["host"]},
                               "notes": notes, "warnings": warnings}, indent=2))
        return
    typer.echo(f"wrote {out}: {summary}")
    for line in notes:
        typer.echo(line)
    for line in warnings:
        typer.echo(f"warning: {line}")


def _list_saved(as_json: bool) -> None:
    """`--list`: every saved profile (specs/profile.py saved_profiles) with what and when it measured; one that
    cannot be read is listed with why."""
    from bastion.errors import ConfigError
    from bastion.specs.profile import SAVE_COMMAND, profile_dirs, read_profile, saved_profiles

    rows = []
    for saved in saved_profiles():
        row: dict[str, Any] = {"name": saved.name, "scope": saved.scope, "hidden": saved.hidden,
                               "path": str(saved.path)}
        try:
            profile = read_profile(saved.path, saved.name)
        except ConfigError as exc:
            row["error"] = exc.problem
        else:
            row.update(accelerator=profile.accelerator, nproc=profile.nproc, date=profile.date, host=profile.host,
                       quick=profile.quick, torch=profile.torch, background_load=profile.background_load)
        rows.append(row)
    project, user = profile_dirs()
    if as_json:
        from bastion.outputs import dumps_json

        typer.echo(dumps_json({"directories": [f"./{project}", str(user)], "profiles": rows}, indent=2))
        return
    if not rows:
        typer.echo(f"No saved profiles in ./{project}/ or {user}/.\nsave this machine's: "
                   f"{SAVE_COMMAND.format(name='default')}   # under a minute")
        return
    # a line each, not a table: the paths are long, and a narrow terminal would cut a table's cells
    typer.echo(f"saved machine profiles (a name is looked for in ./{project}/ first, then in {user}/):")
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        where = row["scope"] + (", hidden by the project's" if row["hidden"] else "")
        if "error" in row:
            what = f"unreadable: {row['error']}"
        else:
            what = (f"{row['accelerator']}, {row['nproc']} ranks{', --quick' if row['quick'] else ''}, measured "
                    f"{row['date']} on {row['host']}, background load {row['background_load']:.2f}")
        typer.echo(f"  {row['name']:<{width}}  ({where}) {what}: {row['path']}")


def _machine_table(settings: dict, machine: dict) -> dict:
    """The profile's [machine] table: what was measured, when, where (`machine`), with which torch."""
    from bastion.runtime import calibrate as cal
    from bastion.specs.profile import PROFILE_FORMAT

    return {"format": PROFILE_FORMAT, "accelerator": settings["accelerator"], "nproc": settings["nproc"],
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), **machine,
            "torch": cal.torch_version(), "quick": settings["quick"],
            "models": [s["name"] for s in settings["models"]]}


def _save_profile(out: Path, data: dict) -> None:
    from bastion.specs.profile import profile_toml

    header = ("bastion machine profile, written by `bastion calibrate`. Use it with --cluster PROFILE.toml or\n"
              "--cluster ACCEL:N@PROFILE.toml (saved with --save-as NAME: --cluster NAME or ACCEL:N@NAME).\n"
              "[accelerator] replaces catalog fields; [host], [[collective]] and [[fsdp_unit]] are measured terms\n"
              "the catalog has no field for; [raw] holds the measurements (seconds), [repeats] each measurement's\n"
              "repeats (its noise band, for `bastion calibrate --compare A B`).")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profile_toml(data, header))


def _fsdp_summary(units: list[dict]) -> str:
    """FSDP2's measured cost per block on the largest group, by ZeRO layout (none measured with one process)."""
    if not units:
        return ""
    size = max(u["group_size"] for u in units)
    largest = [u for u in units if u["group_size"] == size]
    costs = ", ".join(f"ZeRO-{u['zero_stage']} {1e3 * u['unit_s']:.2f} ms" for u in largest)
    cpu = ", ".join(f"ZeRO-{u['zero_stage']} {1e3 * u['unit_cpu_s']:.2f} ms + {1e9 * u['cpu_s_per_byte']:.2f} ms/MB"
                    for u in largest if "cpu_s_per_byte" in u)
    return f"; FSDP2 per block on {size} ranks (whole cores): {costs}" + (f" (CPU: {cpu})" if cpu else "")


@app.command("_calibrate_worker", hidden=True)
def calibrate_worker_command(
    config_path: Path = typer.Argument(..., help="The job's config (commands/calibrate_job.py)."),
) -> None:
    """One rank of a `bastion calibrate --on slurm|k8s` job, started by torchrun: rank 0 measures on its node,
    then every rank measures the shared rates and collectives over the whole job; rank 0 writes the profile,
    with the hosts the ranks ran on."""
    from bastion.errors import ConfigError
    from bastion.launch.worker import read_run_config
    from bastion.runtime import calibrate as cal

    settings = read_run_config(config_path).get("calibrate")
    if not isinstance(settings, dict):
        raise ConfigError(f"{config_path} is not a calibrate job's config (it has no `calibrate` table).",
                          fix="start calibrate jobs with `bastion calibrate --on slurm|k8s`.")
    if settings.get("device") == "cuda":
        _device_worker(settings)
        return
    done = cal.job_rank(ranks_config(settings), lambda: _measure_single(settings, progress=False))
    if done is None:
        return
    hosts, (raw, repeats), ranks = done
    raw["shared"] = cal.combine_ranks(ranks, settings["nproc"], repeats)
    # `host`: where the one-process measurements ran (rank 0's); `hosts`: every host of the job's ranks
    machine = {**_this_machine(), "host": hosts[0], "hosts": sorted(set(hosts)), "nodes": len(set(hosts)),
               "rank_hosts": hosts}
    _write_profile(settings, (raw, repeats), machine)


def _device_worker(settings: dict) -> None:
    """One rank of a GPU calibrate job (one per GPU): rank 0 measures its node's first GPU, then every rank the
    NCCL collectives over the whole job; rank 0 writes the profile."""
    from bastion.runtime import calibrate as cal

    _, _, _, messages = _plan(settings)
    done = cal.device_job_rank(messages, NCCL_REPS, lambda: _measure_one_device(settings, progress=False))
    if done is None:
        return
    hosts, (raw, repeats), ranks = done
    raw["collectives"] = cal.combine_device_ranks(ranks, hosts, repeats)
    machine = {**_this_machine(), "host": hosts[0], "hosts": sorted(set(hosts)), "nodes": len(set(hosts)),
               "rank_hosts": hosts}
    _write_device_profile(settings, (raw, repeats), machine)


def _load_average() -> float:
    """The host's 1-minute load average while calibrating (recorded: a loaded host measures a background load)."""
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _compare(before: Path, after: Path, min_change: float, as_json: bool) -> None:
    from bastion.specs.profile import read_named_or_path
    from bastion.specs.profile_compare import compare_profiles

    comparison = compare_profiles(read_named_or_path(str(before)), read_named_or_path(str(after)), min_change)
    if as_json:
        from bastion.outputs import dumps_json

        typer.echo(dumps_json(comparison.to_dict(), indent=2))
    else:
        typer.echo(comparison.text())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
