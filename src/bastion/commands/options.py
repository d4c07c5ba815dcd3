"""Options that several commands share, declared once with their help text (SkyPilot's `_TASK_OPTIONS`), and
the one number type every numeric option parses with.

A command uses an alias as its parameter's type and keeps the default in its signature, where typer reads it:

    def cost_command(model: options.Model, seq_len: options.SeqLen = None, as_json: options.AsJson = False)

A parameter without a default is required. `number_option` declares a numeric option of one command: its value
is a real number in range (numbers.checked_number) or the command stops with a guidance error naming the flag,
before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bastion.numbers import MAX_DEVICES, MAX_GLOBAL_BATCH, MAX_SEQ_LEN, checked_number


def number_option(*names: str, help: str, integer: bool = False, low: float | None = None,  # noqa: A002
                  above: float | None = None, high: float | None = None, allow_inf: bool = False,
                  fix: str | None = None, **option: Any) -> Any:
    """A typer.Option whose value is checked by numbers.checked_number under the first of `names`."""
    flag = names[0]

    def parse(value: Any) -> int | float:
        return checked_number(value, flag, integer=integer, low=low, above=above, high=high, allow_inf=allow_inf,
                              fix=fix)

    return typer.Option(*names, help=help, parser=parse, metavar="<int>" if integer else "<float>", **option)


def _degree(flag: str, help: str) -> Any:  # noqa: A002
    return number_option(flag, help=help, integer=True, low=1, high=MAX_DEVICES,
                         fix=f"give {flag} a positive integer (1 = not split that way).")


# ---- what to plan, predict or run ------------------------------------------------------------------------
Model = Annotated[str, typer.Option("--model", "-m", help="Model preset (see `bastion models`) or a .toml/.json "
                                                          "model file.")]
Cluster = Annotated[str, typer.Option("--cluster", "-c", help="Cluster preset, ACCEL:N (e.g. h100-sxm:1024) or a "
                                                              "cluster file (see `bastion hardware`); or a machine "
                                                              "profile from `bastion calibrate`: PROFILE.toml, a "
                                                              "saved profile's NAME (a catalog name wins over a "
                                                              "profile of the same name), or ACCEL:N@PROFILE.")]
PlanFile = Annotated[Path | None, typer.Option("--plan", help="ParallelPlan file (JSON/TOML), e.g. from "
                                                              "`bastion plan --save`.")]
Software = Annotated[str, typer.Option("--software", help="Software stack the plan runs on (`bastion software` "
                                                          "lists them): bastion's runtime by default, e.g. "
                                                          "production for Megatron-Core + TE.")]
Framework = Annotated[str | None, typer.Option("--framework", help="Training framework instead of a named stack "
                                                                "(megatron-lm, nemo, megatron-bridge, torchtitan, "
                                                                "...): its release implies the stack (`bastion "
                                                                "software`).")]
FrameworkVersion = Annotated[str | None, typer.Option("--framework-version", help="Release month of --framework, "
                                                                              "YYYY-MM (default: its newest "
                                                                              "documented release).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (one object, for scripts).")]

# ---- sizes of the run ------------------------------------------------------------------------------------
SeqLen = Annotated[int | None, number_option("--seq-len", "-s", help="Tokens per sequence (default: the model's).",
                                             integer=True, low=1, high=MAX_SEQ_LEN,
                                             fix="give the tokens per sequence (e.g. --seq-len 4096), or leave "
                                                 "it out for the model's.")]
GlobalBatch = Annotated[int | None, number_option("--global-batch", "-b", help="Sequences per optimizer step.",
                                                  integer=True, low=1, high=MAX_GLOBAL_BATCH)]
Tokens = Annotated[float | None, number_option("--tokens", help="Token budget of the run, e.g. 15e12.", above=0,
                                               fix="give the token budget, e.g. --tokens 15e12.")]
MtbfHours = Annotated[float | None, number_option("--mtbf-hours", help="Job MTBF in hours (default: the published "
                                                                      "failure rate scaled to the devices).",
                                                  above=0, fix="give the job's mean time between failures in "
                                                               "hours, or leave it out for the published rate "
                                                               "scaled to this cluster.")]
Seed = Annotated[int, number_option("--seed", help="Seed of the random draws (data order, init, sampling).",
                                    integer=True, low=0, high=2**32 - 1)]
Steps = Annotated[int, number_option("--steps", help="Optimizer steps to train.", integer=True, low=1,
                                     high=10**9, fix="pass --steps N with N >= 1.")]
Nproc = Annotated[int, number_option("--nproc", help="Worker processes on this machine (the CPU cluster cpu:N).",
                                     integer=True, low=1, high=1024, fix="e.g. --nproc 4.")]

# ---- one parallel plan as flags (estimate) ---------------------------------------------------------------
Dp = Annotated[int | None, _degree("--dp", "Data-parallel degree (default: fills the cluster).")]
Tp = Annotated[int | None, _degree("--tp", "Tensor-parallel degree.")]
Pp = Annotated[int | None, _degree("--pp", "Pipeline-parallel degree.")]
Cp = Annotated[int | None, _degree("--cp", "Context-parallel degree.")]
Vpp = Annotated[int | None, _degree("--vpp", "Model chunks per pipeline rank.")]
Ep = Annotated[int | None, _degree("--ep", "Expert-parallel degree (MoE models).")]
Etp = Annotated[int | None, _degree("--etp", "Expert tensor-parallel degree (MoE models; 1 = experts whole).")]
Zero = Annotated[int | None, number_option("--zero", help="ZeRO stage 0-3 (3 = FSDP full shard).", integer=True,
                                           low=0, high=3)]
MicroBatch = Annotated[int | None, number_option("--micro-batch", help="Sequences per micro-batch per replica.",
                                                 integer=True, low=1, high=MAX_GLOBAL_BATCH)]
Schedule = Annotated[str | None, typer.Option("--schedule", help="Pipeline schedule, e.g. 1f1b, interleaved-1f1b, "
                                                                 "zbv (a wrong name lists them all); default 1f1b, or "
                                                                 "interleaved-1f1b with --vpp > 1.")]
Recompute = Annotated[str | None, typer.Option("--recompute", help="none, selective or full.")]
SequenceParallel = Annotated[bool | None, typer.Option("--sp/--no-sp", help="Megatron sequence parallelism "
                                                                            "(needs tp > 1).")]
Precision = Annotated[str | None, typer.Option("--precision", help="fp32, bf16, fp16 or fp8.")]

# ---- one training run, shared by `train` and `launch` (each may come from --config instead) ----------------
RunModel = Annotated[str | None, typer.Option("--model", help="Model preset (see `bastion models`), model file, or a "
                                                             "Hugging Face config.json (or its directory). Required, "
                                                             "here or as `model` in --config.")]
RunPlan = Annotated[Path | None, typer.Option("--plan", help="ParallelPlan file (JSON/TOML), e.g. from `bastion plan "
                                                             "--save`. Required, here or in --config.")]
RunData = Annotated[str | None, typer.Option("--data", help="Token dataset directory from `bastion data prepare`, or "
                                                           "a mixture by weight: DIR_A=0.7,DIR_B=0.3. Required, here "
                                                           "or in --config.")]
RunSteps = Annotated[int | None, number_option("--steps", help="Optimizer steps to train (the total: a resumed or "
                                                               "requeued run stops there). Required, here or in "
                                                               "--config.", integer=True, low=1, high=10**12,
                                               fix="e.g. --steps 1000.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="run.toml holding any training setting, the "
                                                                  "optimizer's too (lr, betas, weight decay, eps, "
                                                                  "schedule, clipping); flags and --set override it.")]
SetValues = Annotated[list[str], typer.Option("--set", help="Override one --config setting, e.g. --set "
                                                            "optimizer.lr=3e-4 (repeatable; keys as in --config).")]
MaxRestarts = Annotated[int, number_option("--max-restarts", help="Restarts torchrun's elastic agent may make "
                                                                  "within one allocation; a restarted group resumes "
                                                                  "from the newest valid checkpoint.", integer=True,
                                           low=0, high=10**4)]

# ---- where a launched job runs (`launch`; a task file's resources take the same names) -----------------------
MinNodes = Annotated[int | None, number_option("--min-nodes", help="Fewest nodes an elastic job (--on-failure "
                                                                   "shrink|auto after `--`) continues on (default: "
                                                                   "the fewest with a plan that uses them all).",
                                               integer=True, low=1, high=MAX_DEVICES)]
TimeLimit = Annotated[str | None, typer.Option("--time", help="Slurm time limit, HH:MM:SS or D-HH:MM:SS.")]
Partition = Annotated[str | None, typer.Option("--partition", help="Slurm partition(s), comma-separated.")]
SpareNodes = Annotated[int, number_option("--spare-nodes", help="Slurm: hot spare nodes allocated beside the "
                                                                 "plan's (N + K); every job step runs on N usable "
                                                                 "ones, so a lost node is replaced at once "
                                                                 "(--on-failure spares|auto after `--`).",
                                          integer=True, low=0, high=MAX_DEVICES)]
Account = Annotated[str | None, typer.Option("--account", help="Slurm: account charged for the job.")]
Qos = Annotated[str | None, typer.Option("--qos", help="Slurm: quality of service.")]
Gres = Annotated[str | None, typer.Option("--gres", help="Slurm: generic resources per node, e.g. gpu:a100:8 "
                                                         "(instead of --gpus-per-node on the #SBATCH line).")]
Constraint = Annotated[str | None, typer.Option("--constraint", help="Slurm: node features required, e.g. "
                                                                     "'a100&ib'.")]
Exclusive = Annotated[bool, typer.Option("--exclusive", help="Slurm: whole nodes, shared with no other job.")]
Exclude = Annotated[str | None, typer.Option("--exclude", help="Slurm: nodes never to use, e.g. node[01-03].")]
ContainerImage = Annotated[str | None, typer.Option("--container-image", help="Slurm: run the workers in this "
                                                                              "image (pyxis/enroot srun "
                                                                              "--container-image); the run and "
                                                                              "data directories are mounted.")]
SbatchArgs = Annotated[list[str], typer.Option("--sbatch-arg", help="Slurm: one more sbatch option, passed on "
                                                                    "quoted as one #SBATCH line (repeatable), e.g. "
                                                                    "--sbatch-arg=--mail-type=END.")]
Switches = Annotated[str | None, typer.Option("--switches", help="Slurm: the most leaf switches the nodes may span, "
                                                                 "COUNT[@MAX-WAIT] (sbatch --switches); auto = "
                                                                 "1@10:00, data-parallel rings inside one leaf "
                                                                 "switch.")]
Image = Annotated[str, typer.Option("--image", help="k8s: container image with bastion installed.")]
K8sKind = Annotated[str, typer.Option("--k8s-kind", help="k8s: pytorchjob or jobset.")]
Queue = Annotated[str, typer.Option("--queue", help="k8s: Kueue LocalQueue name.")]
Storage = Annotated[str, typer.Option("--storage", help="k8s: size of the run directory's volume claim.")]
TopologyLabel = Annotated[str, typer.Option("--topology-label", help="k8s: node label of the network block (rack, "
                                                                     "leaf switch) Kueue's topology-aware "
                                                                     "scheduling keeps the pods in (needs --queue).")]
NodeSelector = Annotated[list[str], typer.Option("--node-selector", help="k8s: KEY=VALUE node label the pods "
                                                                         "need (repeatable).")]
Toleration = Annotated[list[str], typer.Option("--toleration", help="k8s: a taint the pods tolerate, KEY[=VALUE]"
                                                                    ":EFFECT as `kubectl taint` writes it "
                                                                    "(repeatable).")]
ServiceAccount = Annotated[str, typer.Option("--service-account", help="k8s: the pods' service account.")]
PriorityClass = Annotated[str, typer.Option("--priority-class", help="k8s: the pods' PriorityClass.")]
Requests = Annotated[list[str], typer.Option("--request", help="k8s: a container resource request, NAME=QUANTITY, "
                                                               "e.g. memory=200Gi (repeatable).")]
Limits = Annotated[list[str], typer.Option("--limit", help="k8s: a container resource limit, NAME=QUANTITY "
                                                           "(repeatable).")]
GpuResource = Annotated[str, typer.Option("--gpu-resource", help="k8s: the extended resource a GPU is requested "
                                                                 "as (nvidia.com/gpu, amd.com/gpu, ...).")]
