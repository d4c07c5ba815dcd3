"""ParallelPlan: the contract between the planner and the runtime.

One flat object, stored as JSON or TOML with exactly these field names; the runtime executes the same file the
planner writes. `validate(model, cluster)` raises a PlanError whose `reason` is a short category (the planner
counts them) and whose message says how to fix the plan.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, PlanError, did_you_mean
from bastion.numbers import MAX_DEVICES, MAX_GLOBAL_BATCH, short_number
from bastion.outputs import check_output_file, write_error
from bastion.specs._files import check_keys, coerce, read_mapping
from bastion.specs._hashing import cached_hash
from bastion.specs.hardware import PRECISIONS, Cluster
from bastion.specs.model import ModelSpec
from bastion.specs.schedules import DEFAULT_SCHEDULE, get_schedule

RECOMPUTE_MODES = ("none", "selective", "full")


def chunk_layer_counts(num_layers: int, chunks: int) -> tuple[int, ...] | None:
    """Transformer layers in each of the pp·vpp pipeline chunks (chunk 0 holds the first layers), or None when
    the layers cannot be split.

    Even when `chunks` divides the layers. Otherwise, when it divides layers + 2, the embedding and the LM head
    each take one layer's slot: the first and the last chunk hold one layer fewer (Megatron-LM's
    --account-for-embedding-in-pipeline-split / --account-for-loss-in-pipeline-split; Llama 3 405B ran 126 layers
    on 16 stages this way, BLOOM 70 layers on 12). When there are exactly layers + 2 chunks, the first holds the
    embedding alone and the last the LM head alone (NeMo's Llama 3.1 405B: 126 layers on pp 16 × vpp 8).
    """
    if chunks < 1:
        return None
    if num_layers % chunks == 0:
        return (num_layers // chunks,) * chunks if num_layers >= chunks else None
    per, rest = divmod(num_layers + 2, chunks)
    if chunks < 3 or rest or per < 1:
        return None
    return (per - 1,) + (per,) * (chunks - 2) + (per - 1,)


def uneven_layout(num_layers: int, chunks: int) -> str:
    """A pipeline_layout for layers that do not split evenly over `chunks` (DeepSeek-V3's 61 layers on 16 stages):
    the embedding and the LM head each count as one layer's slot, the layers + 2 slots are spread as evenly as the
    counts allow, the extra slots going to the middle chunks, so the first and the last chunk are the lighter ones.
    "" when the layers split evenly (chunk_layer_counts), or for a single chunk or fewer slots than chunks."""
    if chunk_layer_counts(num_layers, chunks) is not None or chunks < 2:
        return ""
    per, extra = divmod(num_layers + 2, chunks)
    if per < 1:
        return ""
    counts = [per] * chunks
    middle = sorted(range(1, chunks - 1), key=lambda i: (abs(2 * i - (chunks - 1)), i))
    for i in (middle + [0, chunks - 1])[:extra]:
        counts[i] += 1
    counts[0] -= 1
    counts[-1] -= 1
    return ",".join(str(c) for c in counts)


@lru_cache(maxsize=4096)
def parse_layout(text: str) -> tuple[int, ...] | None:
    """The per-chunk layer counts a `pipeline_layout` string names, or None when it is empty (cached: the
    predictor and the planner ask for every candidate plan)."""
    if not text.strip():
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PlanError(f"pipeline_layout '{text}' is not a comma-separated list of layer counts.",
                        fix="write one integer per pipeline chunk, e.g. \"3,4,4,3\".",
                        reason="bad pipeline layout") from None


def expert_grid(shard_degree: int, tp: int, ep: int, etp: int) -> tuple[int, bool]:
    """(expert-data-parallel ranks, folded over tensor-parallel ranks) of a stage whose dp × cp is
    `shard_degree` (ParallelPlan.expert_data_parallel and folds_experts)."""
    folded = ep > 1 and shard_degree % ep != 0
    if folded:
        return max(1, tp * shard_degree // (ep * etp)), True
    return max(1, shard_degree // ep), False


@dataclass(frozen=True)
class ParallelPlan:
    """How one training step is split across devices."""

    __hash__ = cached_hash

    #: data-parallel degree (replicas, or ZeRO/FSDP shards when zero_stage > 0)
    dp: int = 1
    #: tensor-parallel degree (Megatron column/row split inside a layer)
    tp: int = 1
    #: pipeline-parallel degree (stages)
    pp: int = 1
    #: context-parallel degree (sequence split across devices for attention)
    cp: int = 1
    #: expert-parallel degree (MoE; 1 for dense models)
    ep: int = 1
    #: 0 plain data parallel; 1 shard optimizer state; 2 + gradients; 3 + parameters (FSDP full shard)
    zero_stage: int = 0
    #: sequences per micro-batch per model replica
    micro_batch: int = 1
    #: sequences per optimizer step, all replicas together
    global_batch: int = 1
    #: a pipeline schedule of specs/schedules.py: `gpipe`, `1f1b`, `interleaved-1f1b`, `zero-bubble` (ZB-H1),
    #: `zbv`, `dualpipev`, ...
    pp_schedule: str = DEFAULT_SCHEDULE
    #: model chunks per pipeline rank (the schedule's layout: interleaved-1f1b >= 2; zbv/dualpipev 2; others 1)
    vpp: int = 1
    #: activation recomputation: `none`, `selective` (attention core) or `full` (whole layer)
    recompute: str = "none"
    #: Megatron sequence parallelism for norms/dropout inside the TP group
    sequence_parallel: bool = False
    #: matmul precision: `fp32`, `bf16`, `fp16` or `fp8`
    precision: str = "bf16"
    #: expert tensor parallelism: each routed expert's matrices split over etp ranks (Megatron-Core's "parallel
    #: folding" lets it differ from the attention's tp); 1 = experts whole on each rank (bastion's runtime today)
    etp: int = 1
    #: transformer layers per pipeline chunk, comma-separated, pp × vpp entries in chunk order (DeepSeek-V3-style
    #: uneven stages); empty = the even split of chunk_layer_counts
    pipeline_layout: str = ""
    #: with recompute = "full": layers per pipeline chunk whose whole-layer activations are recomputed (Megatron
    #: --recompute-num-layers); 0 = every layer
    recompute_layers: int = 0
    #: layers per pipeline chunk whose saved activations are offloaded to host memory during the forward pass
    #: and fetched back for the backward (Grace-Hopper / Grace-Blackwell); 0 = none
    activation_offload: int = 0

    def __post_init__(self) -> None:
        self._check_self()

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def num_gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def shard_degree(self) -> int:
        """Ranks that hold the same parameters of a stage and TP rank: dp × cp. ZeRO/FSDP shards over them and
        gradients are reduced over them (context-parallel ranks see different tokens of the same sequences)."""
        return self.dp * self.cp

    @property
    def folds_experts(self) -> bool:
        """Expert parallelism wider than the data-parallel ranks can hold: ep does not divide dp × cp, so the
        expert groups span tensor-parallel ranks too (Megatron-Core's "parallel folding": the experts' grid etp ×
        ep × expert-dp is laid over the tp × cp × dp ranks of a pipeline stage). bastion's runtime runs it with
        each tp rank routing its own 1/tp of the tokens, the etp ranks gathering their rows (runtime/mesh.py)."""
        return expert_grid(self.shard_degree, self.tp, self.ep, self.etp)[1]

    @property
    def expert_data_parallel(self) -> int:
        """Ranks of a pipeline stage that hold the same experts (ZeRO shards them, gradients reduce over them):
        dp × cp / ep when the experts split over data-parallel ranks, tp × cp × dp / (ep × etp) when folded."""
        return expert_grid(self.shard_degree, self.tp, self.ep, self.etp)[0]

    @property
    def grad_accumulation(self) -> int:
        """Micro-batches each replica runs per optimizer step."""
        return self.global_batch // (self.micro_batch * self.dp)

    @property
    def num_microbatches(self) -> int:
        return self.grad_accumulation

    def layout(self) -> tuple[int, ...] | None:
        """The explicit per-chunk layer counts of `pipeline_layout`, or None when it is empty."""
        return parse_layout(self.pipeline_layout)

    def chunk_layers(self, model: ModelSpec) -> tuple[int, ...] | None:
        """Transformer layers in each of the pp × vpp chunks: the explicit layout, else the even split (None when
        the layers cannot be split)."""
        return self.layout() or chunk_layer_counts(model.num_layers, self.pp * self.vpp)

    # ---- checks -----------------------------------------------------------------------------------
    def _check_self(self) -> None:
        for name in ("dp", "tp", "pp", "cp", "ep", "etp", "micro_batch", "global_batch", "vpp"):
            if getattr(self, name) < 1:
                raise PlanError(f"Plan field '{name}' must be >= 1, got {getattr(self, name)}.",
                                fix=f"set {name} to a positive integer.", reason="bad field")
            high = MAX_GLOBAL_BATCH if name in ("micro_batch", "global_batch") else MAX_DEVICES
            if getattr(self, name) > high:
                raise PlanError(f"Plan field '{name}' must be <= {high:,}, got {short_number(getattr(self, name))}: that is "
                                f"beyond anything bastion plans for.", fix=f"set {name} to a realistic value.",
                                reason="bad field")
        if self.zero_stage not in (0, 1, 2, 3):
            raise PlanError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}.",
                            fix="0 = replicate, 1 = shard optimizer, 2 = + gradients, 3 = + parameters (FSDP).",
                            reason="bad field")
        schedule = get_schedule(self.pp_schedule)
        if self.recompute not in RECOMPUTE_MODES:
            raise PlanError(f"Unknown recompute '{self.recompute}'.{did_you_mean(self.recompute, RECOMPUTE_MODES)}",
                            fix=f"use one of {', '.join(RECOMPUTE_MODES)}.", reason="bad field")
        if self.precision not in PRECISIONS or self.precision == "tf32":
            known = [p for p in PRECISIONS if p != "tf32"]
            raise PlanError(f"Unknown precision '{self.precision}'.{did_you_mean(self.precision, known)}",
                            fix="use fp32, bf16, fp16 or fp8.", reason="bad field")
        if self.global_batch % (self.micro_batch * self.dp):
            raise PlanError(
                f"global_batch {self.global_batch} is not divisible by micro_batch × dp = "
                f"{self.micro_batch} × {self.dp} = {self.micro_batch * self.dp}.",
                fix="choose a global batch that is a multiple of micro_batch × dp, or change either.",
                reason="batch not divisible")
        schedule.check_vpp(self.pp, self.vpp)
        if self.pp == 1 and self.vpp != 1:
            raise PlanError("vpp > 1 needs pipeline parallelism (pp > 1).", fix="set vpp = 1.",
                            reason="bad vpp")
        for name in ("recompute_layers", "activation_offload"):
            if getattr(self, name) < 0:
                raise PlanError(f"Plan field '{name}' must be >= 0, got {getattr(self, name)}.",
                                fix=f"set {name} to 0 (none) or a number of layers.", reason="bad field")
        if self.recompute_layers and self.recompute != "full":
            raise PlanError(f"recompute_layers = {self.recompute_layers} needs recompute = \"full\" (it says how "
                            f"many layers of each chunk are recomputed whole).",
                            fix="set recompute = \"full\", or recompute_layers = 0.", reason="bad field")
        layout = self.layout()
        if layout is not None:
            if len(layout) != self.pp * self.vpp:
                raise PlanError(f"pipeline_layout has {len(layout)} entries, but pp × vpp = {self.pp} × {self.vpp} "
                                f"= {self.pp * self.vpp} chunks.", fix="give one layer count per pipeline chunk.",
                                reason="bad pipeline layout")
            if min(layout) < 0:
                raise PlanError("pipeline_layout has a negative layer count.",
                                fix="give each chunk 0 or more layers.", reason="bad pipeline layout")

    def validate(self, model: ModelSpec, cluster: Cluster | None = None, seq_len: int | None = None) -> None:
        """Raise PlanError (with guidance) for every inconsistency with the model and the cluster."""
        s = seq_len or model.seq_len
        if cluster is not None and self.num_gpus != cluster.num_gpus:
            raise PlanError(
                f"dp × tp × pp × cp = {self.dp} × {self.tp} × {self.pp} × {self.cp} = {self.num_gpus}, "
                f"but the cluster '{cluster.name}' has {cluster.num_gpus} devices.",
                fix=f"make the product equal {cluster.num_gpus} (e.g. dp = "
                    f"{cluster.num_gpus // max(1, self.tp * self.pp * self.cp)}), or size the cluster to "
                    f"{self.num_gpus}.", reason="degrees != devices")
        if model.num_heads % self.tp:
            raise PlanError(f"tp = {self.tp} does not divide the {model.num_heads} attention heads of "
                            f"{model.name}.", fix="pick tp among the divisors of num_heads.",
                            reason="tp does not divide heads")
        if model.num_kv_heads % self.tp:
            raise PlanError(f"tp = {self.tp} does not divide the {model.num_kv_heads} key/value heads of "
                            f"{model.name}.", fix="pick tp among the divisors of num_kv_heads.",
                            reason="tp does not divide heads")
        if model.ffn_hidden_size % self.tp:
            raise PlanError(f"tp = {self.tp} does not divide ffn_hidden_size {model.ffn_hidden_size}.",
                            fix="pick a tp that divides the MLP width.", reason="tp does not divide heads")
        chunks = self.pp * self.vpp
        layout = self.layout()
        if layout is not None:
            if sum(layout) != model.num_layers:
                raise PlanError(f"pipeline_layout '{self.pipeline_layout}' holds {sum(layout)} layers, but "
                                f"{model.name} has {model.num_layers}.",
                                fix=f"make the per-chunk counts sum to {model.num_layers}.",
                                reason="bad pipeline layout")
        elif chunk_layer_counts(model.num_layers, chunks) is None:
            raise PlanError(
                f"{model.num_layers} layers cannot be split into pp × vpp = {self.pp} × {self.vpp} = {chunks} "
                f"pipeline chunks: {chunks} divides neither the layers nor layers + 2 (the embedding and the LM "
                f"head taking one layer's slot each).",
                fix=f"choose pp × vpp dividing {model.num_layers} or {model.num_layers + 2}.",
                reason="layers not divisible by pp·vpp")
        if self.cp > 1 and s % (2 * self.cp):
            raise PlanError(f"seq_len {s} is not divisible by 2 × cp = {2 * self.cp} (load-balanced causal "
                            f"context parallelism gives each rank two chunks).",
                            fix="choose cp so that 2·cp divides the sequence length.", reason="cp does not divide seq")
        if self.sequence_parallel and self.tp == 1:
            raise PlanError("sequence_parallel needs tp > 1 (it splits the TP group's activations).",
                            fix="set sequence_parallel = false, or tp > 1.", reason="sp without tp")
        if self.sequence_parallel and s % self.tp:
            raise PlanError(f"sequence_parallel splits the sequence by tp = {self.tp}, which does not divide "
                            f"seq_len {s}.", fix="choose tp dividing the sequence length.",
                            reason="sp does not divide seq")
        if self.ep != 1 and not model.num_experts:
            raise PlanError(f"ep = {self.ep} needs a mixture-of-experts model; {model.name} is dense.",
                            fix="set ep = 1.", reason="ep on dense model")
        if self.ep > 1 and model.num_experts % self.ep:
            raise PlanError(f"ep = {self.ep} does not divide the {model.num_experts} experts of {model.name}.",
                            fix="pick ep among the divisors of num_experts.", reason="ep does not divide experts")
        if self.etp != 1 and not model.num_experts:
            raise PlanError(f"etp = {self.etp} needs a mixture-of-experts model; {model.name} is dense.",
                            fix="set etp = 1.", reason="ep on dense model")
        if self.etp > 1 and model.expert_width % self.etp:
            raise PlanError(f"etp = {self.etp} does not divide the expert width {model.expert_width}.",
                            fix="pick etp among the divisors of moe_ffn_hidden_size.",
                            reason="etp does not divide experts")
        if (self.tp * self.dp * self.cp) % (self.ep * self.etp):
            raise PlanError(f"ep × etp = {self.ep} × {self.etp} does not divide tp × dp × cp = "
                            f"{self.tp * self.dp * self.cp}: the experts' grid (etp × ep × expert-dp) is folded onto "
                            f"the ranks of one pipeline stage (Megatron-Core's parallel folding).",
                            fix="pick ep and etp whose product divides tp × dp × cp.",
                            reason="ep does not divide dp")
        schedule = get_schedule(self.pp_schedule)
        if self.pp > 1 and schedule.microbatches_multiple_of_pp and self.num_microbatches % self.pp:
            raise PlanError(
                f"{self.pp_schedule} needs the micro-batch count ({self.num_microbatches}) to be a multiple of "
                f"pp = {self.pp}.", fix="raise the global batch or lower micro_batch.",
                reason="microbatches not multiple of pp")
        if cluster is not None:
            acc = cluster.accelerator
            if not acc.supports(self.precision):
                raise PlanError(f"{acc.name} has no {self.precision} matrix units.",
                                fix="use bf16 (or fp16) on this accelerator.", reason="precision unsupported")
            if self.tp > cluster.network.scale_up_size:
                raise PlanError(
                    f"tp = {self.tp} spans beyond the {cluster.network.scale_up_size}-device scale-up domain "
                    f"(NVLink) of {cluster.name}: every layer would all-reduce over the slower scale-out network.",
                    fix=f"keep tp <= {cluster.network.scale_up_size}; use pp or cp for the rest.",
                    reason="tp beyond scale-up domain")

    # ---- files ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_toml(self) -> str:
        lines = []
        for key, value in self.to_dict().items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            else:
                lines.append(f"{key} = {value}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def check_save_path(path: str | Path, keep: Iterable[str | Path] = ()) -> Path:
        """Where a plan can be written so that `load` reads it back: a .json or .toml file, not a directory, not
        one of the files `keep` (the model or cluster file the plan is searched for)."""
        path = Path(path)
        if path.suffix not in (".json", ".toml"):
            raise ConfigError(f"Cannot save a plan as '{path}': plan files end in .json or .toml.",
                              fix=f"use e.g. {path.with_suffix('.json').name}.")
        if path.is_dir():
            raise ConfigError(f"Cannot save the plan to {path}: it is a directory.",
                              fix=f"give a file name, e.g. {path / 'plan.json'}.")
        return check_output_file(path, "the plan", fix="give --save a path in a directory you can write to.",
                                 keep=keep)

    def save(self, path: str | Path) -> Path:
        """Write the plan (TOML for .toml, else JSON) atomically: a reader sees the old file or the new one."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"Cannot save the plan to {path}: it is a directory.",
                              fix=f"give a file name, e.g. {path / 'plan.json'}.")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(self.to_toml() if path.suffix == ".toml" else self.to_json())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise write_error(exc, path, "the plan", "give a path in a directory you can write to.") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "plan") -> ParallelPlan:
        check_keys(data, cls, what)
        types = {f.name: f.type for f in fields(cls)}
        try:
            return cls(**{k: coerce(v, types[k], k, what) for k, v in data.items()})
        except ConfigError as exc:
            raise PlanError(exc.problem, fix=exc.fix, reason="bad field") from exc

    @classmethod
    def load(cls, path: str | Path) -> ParallelPlan:
        path = Path(path)
        try:
            data = read_mapping(path)
        except ConfigError as exc:
            fix = exc.fix
            if not path.exists():
                fix = "check the path, or write a plan with `bastion plan ... --save PLAN.json`."
            raise PlanError(exc.problem, fix=fix or "write the plan with `bastion plan --save PLAN.json`.",
                            reason="bad plan file") from exc
        return cls.from_dict(data, str(path))
