"""`bastion models`, `bastion hardware` and `bastion software`: what the presets are."""

from __future__ import annotations

from bastion.cli import app
from bastion.commands import options
from bastion.outputs import dumps_json


def _human_params(n: int) -> str:
    return f"{n / 1e9:.4g}B" if n >= 1e9 else f"{n / 1e6:.4g}M"


@app.command("models")
def models_command(as_json: options.AsJson = False) -> None:
    """List the model presets with their parameter counts."""
    from rich.console import Console
    from rich.table import Table

    from bastion.specs.model import load_model, model_presets

    rows = [load_model(name) for name in model_presets()]
    if as_json:
        print(dumps_json([{**m.to_dict(), "total_params": m.total_params()} for m in rows], indent=2))
        return
    table = Table(title="model presets")
    for col in ("name", "params", "layers", "hidden", "heads/kv", "ffn", "vocab", "seq"):
        # names are what users type: never cut them ("llama3-4…"); the figures wrap instead
        table.add_column(col, justify="right" if col != "name" else "left", no_wrap=col == "name")
    for m in rows:
        table.add_row(m.name, _human_params(m.total_params()), str(m.num_layers), str(m.hidden_size),
                      f"{m.num_heads}/{m.num_kv_heads}", f"{m.ffn_hidden_size} {m.ffn_type}",
                      str(m.vocab_size), str(m.seq_len))
    Console().print(table)


@app.command("hardware")
def hardware_command(as_json: options.AsJson = False) -> None:
    """List the accelerator catalog and the cluster presets (use them as --cluster NAME or ACCEL:N)."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from bastion.specs.hardware import accelerator_names, cluster_presets, load_accelerator, load_cluster

    accs = [load_accelerator(n) for n in accelerator_names()]
    clusters = [load_cluster(n) for n in cluster_presets()]
    if as_json:
        print(dumps_json({"accelerators": [asdict(a) for a in accs],
                          "clusters": [c.to_dict() for c in clusters]}, indent=2))
        return
    table = Table(title="accelerators (dense peaks)")
    for col in ("name", "bf16 TF", "fp8 TF", "HBM GiB", "HBM GB/s", "scale-up GB/s/dir", "domain", "NIC Gb/s", "TDP W"):
        table.add_column(col, justify="right" if col != "name" else "left", no_wrap=col == "name")
    for a in accs:
        table.add_row(a.name, f"{a.peak_tflops_bf16:g}", f"{a.peak_tflops_fp8:g}" if a.peak_tflops_fp8 else "-",
                      f"{a.hbm_gib:g}", f"{a.hbm_bandwidth_gbs:g}", f"{a.scale_up_bw_gbs:g}",
                      str(a.scale_up_domain), f"{a.nic_gbit:g}", f"{a.tdp_w:g}")
    console = Console()
    console.print(table)
    ctable = Table(title="cluster presets (resize with NAME:N)")
    for col in ("name", "accelerator", "nodes × per node", "topology", "scale-out GB/s/dir"):
        ctable.add_column(col, no_wrap=col in ("name", "accelerator"))
    for c in clusters:
        ctable.add_row(c.name, c.accelerator.name, f"{c.num_nodes} × {c.gpus_per_node}", c.network.topology,
                       f"{c.network.scale_out_bw_gbs:g}")
    console.print(ctable)


@app.command("software")
def software_command(as_json: options.AsJson = False) -> None:
    """List the software stacks (`--software NAME` of estimate, plan, cost and validate) and the attention kernels
    they run."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from bastion.predict.frameworks import framework_releases
    from bastion.predict.kernels import attention_kernels
    from bastion.predict.options import PredictOptions
    from bastion.predict.software import software_stacks

    stacks = software_stacks()
    releases: dict[str, list[str]] = {name: [] for name in stacks}
    for framework, entries in framework_releases().items():
        for r in entries:
            releases[r.stack].append(f"{framework} from {r.since}")
    kernels = attention_kernels()
    defaults = asdict(PredictOptions())
    if as_json:
        print(dumps_json({"stacks": [{"name": s.name, "description": s.description, "source": s.source,
                                      "framework_releases": releases[s.name], "options": asdict(s.options)}
                                     for s in stacks.values()],
                          "attention_kernels": [asdict(k) for k in kernels.values()]}, indent=2))
        return
    table = Table(title="software stacks (what differs from bastion's own runtime)")
    for col in ("name", "settings", "framework releases that run it"):
        table.add_column(col, no_wrap=col == "name", overflow="fold")
    for s in stacks.values():
        changed = {k: v for k, v in asdict(s.options).items() if v != defaults[k]}
        table.add_row(s.name, ", ".join(f"{k}={v}" for k, v in changed.items()) or "(defaults)",
                      ", ".join(releases[s.name]) or "-")
    console = Console()
    console.print(table)
    ktable = Table(title="attention kernels")
    for col in ("name", "what it is", "rate"):
        ktable.add_column(col, no_wrap=col == "name")
    for k in kernels.values():
        rate = "the calibrated curve"
        if k.relative_to:
            rate = f"ceiling of {k.relative_to} / {k.slowdown:g}"
        if k.newer_arch_cap is not None:
            rate += f"; at most {k.newer_arch_cap:g} of the bf16 peak after {k.written_for}"
        ktable.add_row(k.name, k.description, rate)
    console.print(ktable)
