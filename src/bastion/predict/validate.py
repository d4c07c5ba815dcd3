"""Judge the predictor against published training runs (a case file in the format of data/CASES_SCHEMA.md).

Every row becomes a ModelSpec, a Cluster (accelerator × num_gpus, gpus_per_node per node) and a ParallelPlan;
`estimate()` predicts its iteration time. One physical model serves every row, with no per-source, per-model or
per-row factor. What differs between publications is their software — which attention kernel, dropout, which
ZeRO implementation — and that is an input, like the plan: a row's optional `software` column (a stack name),
else its software facts (`framework`, `framework_version` and explicit behaviours, predict/frameworks.py), else
the documented default for an unknown framework (row_stack). `source_group`, `source` and `notes` never enter a
prediction. Cells the
publication left empty take the row's framework recipe for that model where one is catalogued (predict/recipes.py),
else the practitioner's choice (recipes.PRACTITIONER: micro-batch 1; the fastest combination of the remaining
unknown settings that fits in memory), and each assumption says which.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, ConfigError
from bastion.predict.calibration import DATA_DIR
from bastion.predict.estimate import Estimate, estimate
from bastion.predict.frameworks import facts_from_row, resolve
from bastion.predict.intervals import step_interval
from bastion.predict.options import PredictOptions
from bastion.predict.recipes import PRACTITIONER, RecipeValues, recipe_values
from bastion.predict.software import SoftwareStack, software_stack
from bastion.specs.hardware import Cluster, default_network, load_accelerator
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan, chunk_layer_counts, uneven_layout
from bastion.specs.schedules import schedule_for_vpp
from bastion.stats import percentile

#: the project's copy of the published runs
PUBLIC_CASES = DATA_DIR / "public_cases.csv"

COLUMNS = ("case_id", "source_group", "source", "model", "num_layers", "hidden_size", "num_heads", "num_kv_heads",
           "ffn_hidden_size", "ffn_type", "vocab_size", "seq_len", "global_batch_size", "micro_batch_size", "tp",
           "pp", "dp", "cp", "vpp", "zero_stage", "recompute", "sequence_parallel", "precision", "accelerator",
           "num_gpus", "gpus_per_node", "metric", "value", "iteration_time_s", "flop_convention", "peak_tflops",
           "inferred", "notes")
#: columns a row cannot be predicted without (ffn_hidden_size only where a layer is dense: _moe_without_dense)
REQUIRED = ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "vocab_size", "seq_len",
            "global_batch_size", "tp", "pp", "accelerator", "num_gpus")
#: optional mixture-of-experts columns (CASES_SCHEMA.md), empty on dense rows: those that map onto ModelSpec
#: fields, and those specs cannot express yet (a row using them is refused by case_moe_fields / case_moe_plan)
MOE_MODEL_COLUMNS = ("num_experts", "top_k", "moe_ffn_hidden_size", "num_shared_experts", "dense_layers", "head_dim",
                     "max_routed_nodes")
MLA_COLUMNS = ("q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
#: all of them, in the schema's order
MOE_COLUMNS = ("num_experts", "top_k", "moe_ffn_hidden_size", "num_shared_experts", "ep", "etp", "head_dim", "attention",
               "dense_layers", *MLA_COLUMNS, "pipeline_layout", "max_routed_nodes")
#: optional cluster columns (CASES_SCHEMA.md), after all the others: what a row says of its network where the
#: accelerator's catalog default (one NIC per device at the catalog's nic_gbit) is not what the run had
NETWORK_COLUMNS = ("node_scale_out_gbit",)


class RowSkipped(Exception):
    """A row that cannot be predicted; the message is the reason reported for it."""


@dataclass
class CaseResult:
    case_id: str
    published_s: float
    predicted_s: float
    assumptions: list[str] = field(default_factory=list)
    #: the software stack the row was predicted with ("" when options were given directly)
    software: str = ""
    #: the row names its software (a framework with documented releases, or a stack); False = the default stack
    software_known: bool = True
    #: the p10-p90 interval of the step time (predict/intervals.py), once attached
    p10_s: float | None = None
    p90_s: float | None = None

    @property
    def rel_error(self) -> float:
        return (self.predicted_s - self.published_s) / self.published_s

    def to_dict(self) -> dict[str, Any]:
        interval = {} if self.p10_s is None else {"predicted_p10_s": self.p10_s, "predicted_p90_s": self.p90_s}
        return {"case_id": self.case_id, "published_s": self.published_s, "predicted_s": self.predicted_s,
                **interval, "rel_error": self.rel_error, "assumptions": self.assumptions}


@dataclass
class ValidationReport:
    cases: list[CaseResult]
    skipped: list[dict[str, str]]

    def abs_errors(self) -> list[float]:
        return sorted(abs(c.rel_error) for c in self.cases)

    def summary(self) -> dict[str, Any]:
        errors = self.abs_errors()
        return {"n": len(self.cases) + len(self.skipped), "predicted": len(self.cases),
                "skipped": len(self.skipped),
                "median_abs_rel_error": percentile(errors, 50) if errors else None,
                "p90_abs_rel_error": percentile(errors, 90) if errors else None,
                "max_abs_rel_error": errors[-1] if errors else None}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "cases": [c.to_dict() for c in self.cases], "skipped": self.skipped}


def read_cases(path: Path) -> list[dict[str, str]]:
    """Rows of a case file; a file that is missing, empty or lacks columns raises ConfigError."""
    fix = "give a CSV with the columns of the case-file schema (see bastion/predict/data/CASES_SCHEMA.md)."
    if not path.exists():
        raise ConfigError(f"Case file not found: {path}", fix="check the path.",
                          hint=f"bastion validate {PUBLIC_CASES}   # the published runs shipped with bastion")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a case file.", fix="give the path of the CSV file itself.",
                          hint=f"bastion validate {PUBLIC_CASES}   # the published runs shipped with bastion")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"Cannot read {path} as CSV: {exc}", fix=fix) from exc
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror or exc}.",
                          fix="check the file's permissions, or give another path.") from exc
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"{path} is not a case file: missing column(s) {', '.join(missing)}.", fix=fix)
    if not rows:
        raise ConfigError(f"{path} has a header but no cases.", fix="add at least one row.")
    return rows


def _int(row: dict[str, str], key: str, default: int | None = None) -> int | None:
    text = (row.get(key) or "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise RowSkipped(f"{key} = {text!r} is not a number") from None
    if not value.is_integer():
        raise RowSkipped(f"{key} = {text!r} is not a whole number")
    return int(value)


def _float(row: dict[str, str], key: str) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RowSkipped(f"{key} = {text!r} is not a number") from None
    if not math.isfinite(value):
        raise RowSkipped(f"{key} = {text!r} is not a finite number")
    return value


def _moe_without_dense(row: dict[str, str]) -> bool:
    """A mixture-of-experts row whose every layer has experts: its ffn_hidden_size is not needed."""
    return (row.get("num_experts") or "").strip() not in ("", "0") and (row.get("dense_layers") or "").strip() in ("", "0")


def case_moe_fields(row: dict[str, str], assumptions: list[str]) -> dict[str, Any]:
    """The ModelSpec fields a row's mixture-of-experts and MLA columns give ({} for a dense GQA row). An MLA row
    (`attention` = mla, or an MLA rank given) needs kv_lora_rank and the three head widths; its head_dim is theirs."""
    attention = (row.get("attention") or "").strip()
    mla = {c: value for c in MLA_COLUMNS if (value := _int(row, c)) is not None}
    if attention not in ("", "mha", "gqa", "mla"):
        raise RowSkipped(f"attention = {attention!r} is not one of mha, gqa, mla")
    fields = {name: value for name in MOE_MODEL_COLUMNS if (value := _int(row, name)) is not None}
    if attention == "mla" or mla:
        missing = [c for c in MLA_COLUMNS if c != "q_lora_rank" and not mla.get(c)]
        if missing:
            raise RowSkipped(f"multi-head latent attention without {', '.join(missing)}")
        fields.update(mla)
        fields.pop("head_dim", None)  # MLA's query/key head is nope + rope (ModelSpec derives it)
    if fields.get("num_experts") and _moe_without_dense(row) and not (row.get("ffn_hidden_size") or "").strip():
        # no layer is dense, so the dense MLP width is never used; ModelSpec still wants a positive one
        fields["ffn_hidden_size"] = fields.get("moe_ffn_hidden_size", 0)
        assumptions.append("ffn_hidden_size: not given (every layer has experts); set to the expert width, unused")
    return fields


def case_moe_plan(row: dict[str, str], model: ModelSpec, pp: int, vpp: int | None,
                  assumptions: list[str]) -> tuple[int, int, int | None, str]:
    """The row's expert-parallel and expert-tensor-parallel degrees, the vpp its pipeline_layout implies (None:
    not given) and that layout as ParallelPlan writes it ("" when bastion's own split is the same)."""
    ep = _int(row, "ep", 1)
    etp = _int(row, "etp")
    if etp is None:
        etp = 1
        if model.num_experts and _int(row, "tp") > 1:
            assumptions.append("etp: not given, assumed 1 (experts replicated over tp, as bastion runs them)")
    text = (row.get("pipeline_layout") or "").strip()
    if not text:
        return ep, etp, vpp, ""
    try:
        layout = tuple(int(part) for part in text.split(";"))
    except ValueError:
        raise RowSkipped(f"pipeline_layout = {text!r} is not ';'-separated layer counts") from None
    if len(layout) % pp or (vpp is not None and len(layout) != pp * vpp):
        raise RowSkipped(f"pipeline_layout has {len(layout)} stages, not a multiple of pp = {pp}"
                         + ("" if vpp is None else f" × vpp = {vpp}"))
    if sum(layout) != model.num_layers:
        raise RowSkipped(f"pipeline_layout places {sum(layout)} layers, the model has {model.num_layers}")
    split = chunk_layer_counts(model.num_layers, len(layout))
    return ep, etp, len(layout) // pp, "" if layout == split else ",".join(map(str, layout))


def case_model(row: dict[str, str], assumptions: list[str]) -> ModelSpec:
    heads = _int(row, "num_heads")
    kv = _int(row, "num_kv_heads")
    if kv is None:
        kv = heads
        assumptions.append("num_kv_heads: not given, taken equal to num_heads (no GQA)")
    ffn_type = (row.get("ffn_type") or "").strip()
    if not ffn_type:
        ffn_type = "gelu"
        assumptions.append("ffn_type: not given, assumed gelu (two matrices)")
    moe = case_moe_fields(row, assumptions)
    try:
        # position embeddings and biases are not in the schema; both are negligible for time
        return ModelSpec(name=(row.get("model") or row["case_id"]).strip(), num_layers=_int(row, "num_layers"),
                         hidden_size=_int(row, "hidden_size"), num_heads=heads, num_kv_heads=kv,
                         ffn_hidden_size=moe.pop("ffn_hidden_size", None) or _int(row, "ffn_hidden_size"),
                         ffn_type=ffn_type, vocab_size=_int(row, "vocab_size"), seq_len=_int(row, "seq_len"),
                         position_embedding="alibi", **moe)
    except BastionError as exc:
        raise RowSkipped(exc.problem) from None


def case_cluster(row: dict[str, str], assumptions: list[str]) -> Cluster:
    name = (row.get("accelerator") or "").strip()
    try:
        acc = load_accelerator(name)
    except BastionError as exc:
        if name.lower().startswith("tpu"):
            raise RowSkipped(f"accelerator {name!r} is not in the catalogue: the predictor's GEMM and attention rates "
                             f"are GPU kernel measurements (predict/data/accelerator_rates.toml) and no published "
                             f"rate of XLA on this TPU generation is catalogued to scale them by") from None
        raise RowSkipped(exc.problem) from None
    num_gpus = _int(row, "num_gpus")
    per_node = _int(row, "gpus_per_node")
    for key, value in (("num_gpus", num_gpus), ("gpus_per_node", per_node)):
        if value is not None and value < 1:
            raise RowSkipped(f"{key} = {value} is not a positive device count")
    if per_node is None:
        per_node = min(acc.scale_up_domain, 8)
        assumptions.append(f"gpus_per_node: not given, assumed {per_node}")
    per_node = min(per_node, num_gpus)
    if num_gpus % per_node and per_node > 8:
        # a rack-scale domain (NVL72) the job fills only in part: 128 GPUs run as two domains of 64
        domains = math.ceil(num_gpus / per_node)
        if num_gpus % domains == 0:
            assumptions.append(f"gpus_per_node: {num_gpus} GPUs do not fill domains of {per_node}; assumed "
                               f"{domains} domains of {num_gpus // domains}")
            per_node = num_gpus // domains
    network = default_network(acc)
    node_gbit = _float(row, "node_scale_out_gbit")
    if node_gbit is not None:
        if node_gbit <= 0:
            raise RowSkipped(f"node_scale_out_gbit = {node_gbit:g} is not a positive bandwidth")
        # a node's NICs together, as clusters are described (DGX H100: 8 x 400 Gb/s = 3.2 Tb/s); the collectives
        # spread a node's inter-node traffic over its devices' share of them (predict/comm.py)
        network = replace(network, scale_out_bw_gbs=node_gbit / 8.0 / per_node)
        assumptions.append(f"scale-out network: {node_gbit:g} Gb/s per node (given), "
                           f"{node_gbit / per_node:g} Gb/s per device")
    # NVLink spans one node, except on rack-scale systems whose domain is larger than a tray (NVL72, TPU): a row
    # giving more than 8 there names the part of the domain the job uses
    if acc.scale_up_domain <= 8 or per_node > 8:
        network = replace(network, scale_up_size=min(per_node, acc.scale_up_domain))
    try:
        return Cluster(name=f"{acc.name}:{num_gpus}", accelerator=acc, num_nodes=math.ceil(num_gpus / per_node),
                       gpus_per_node=per_node, network=network)
    except BastionError as exc:
        raise RowSkipped(exc.problem) from None


def _vpp_choices(row: dict[str, str], model: ModelSpec, pp: int, recipe: RecipeValues,
                 assumptions: list[str]) -> list[int]:
    vpp = _int(row, "vpp")
    if vpp is not None:
        return [vpp]
    if pp == 1:
        return [1]
    if "vpp" in recipe.values:
        taken = recipe.values["vpp"]
        assumptions.append(f"vpp: not given; {taken.value}, {taken.why}")
        return [taken.value]
    assumptions.extend(f"vpp: not given; {note}: the recipe's interleaving not taken" for note in recipe.skipped)
    # the layers split over pp·v chunks either evenly or with the embedding and the head taking a slot each
    options = [v for v in range(2, 9) if model.num_layers % (pp * v) == 0 or (model.num_layers + 2) % (pp * v) == 0]
    if not options:
        assumptions.append("vpp: not given and pp·v divides neither the layers nor layers + 2 for any v >= 2; "
                           "assumed 1")
        return [1]
    return options


def _recipe_values(row: dict[str, str], model: ModelSpec, pp: int) -> RecipeValues:
    """What the row's framework recipes fix for its model (recipes.recipe_values); nothing for a row whose
    software facts are not valid (row_stack reports those)."""
    try:
        return recipe_values(facts_from_row(row), model, pp)
    except BastionError:
        return RecipeValues()


def _from_recipe(name: str, column: str, recipe: RecipeValues, assumptions: list[str]) -> Any:
    """The recipe's value of an unstated setting (None when no recipe fixes it), said in the assumptions."""
    taken = recipe.values.get(name)
    if taken is None:
        return None
    assumptions.append(f"{column}: not given; {taken.value}, {taken.why}")
    return taken.value


def _memory_facts(row: dict[str, str]) -> tuple[int, int]:
    """The row's recompute_layers and activation_offload (plan fields a row states as software facts); 0 when
    not stated or when the facts are not valid (row_stack reports those)."""
    try:
        facts = facts_from_row(row)
    except BastionError:
        return 0, 0
    return facts.recompute_layers or 0, facts.activation_offload or 0


def case_plan_choices(row: dict[str, str], model: ModelSpec, cluster: Cluster, assumptions: list[str],
                      recipe_recompute: bool = True) -> tuple[list[ParallelPlan], list[str]]:
    """Every plan consistent with the row; the names of the settings the row left open. Unstated settings the
    row's framework recipes fix for its model (recipes.recipe_values) take the recipe's value (recompute only
    when `recipe_recompute`), the micro-batch otherwise the practitioner's 1, the others every value a
    practitioner might choose."""
    tp, pp = _int(row, "tp"), _int(row, "pp")
    cp = _int(row, "cp", 1)
    dp = _int(row, "dp")
    if dp is None:
        dp = cluster.num_gpus // (tp * pp * cp)
        assumptions.append(f"dp: not given, {dp} = num_gpus / (tp·pp·cp)")
    recipe = _recipe_values(row, model, pp)
    micro = _int(row, "micro_batch_size")
    if micro is None:
        micro = _from_recipe("micro_batch", "micro_batch_size", recipe, assumptions)
        global_batch = _int(row, "global_batch_size")
        if micro is not None and global_batch % (micro * dp):
            assumptions[-1] += (f"; but global_batch_size {global_batch} is not a multiple of it × dp = "
                                f"{micro * dp}, so not taken")
            micro = None
        if micro is None:
            micro = 1
            assumptions.append(f"micro_batch_size: not given; {PRACTITIONER['micro_batch']}")
    open_settings = []
    ep, etp, layout_vpp, layout = case_moe_plan(row, model, pp, _int(row, "vpp"), assumptions)
    vpps = [layout_vpp] if layout_vpp is not None else _vpp_choices(row, model, pp, recipe, assumptions)
    if len(vpps) > 1:
        open_settings.append("vpp")
    if not layout and len(vpps) == 1 and (spread := uneven_layout(model.num_layers, pp * vpps[0])):
        # the row publishes no layout and the layers split over the chunks neither evenly nor with the
        # embedding and head taking a slot each: the practitioner's split, as the planner makes it
        layout = spread
        assumptions.append(f"pipeline_layout: not given; {model.num_layers} layers over {pp * vpps[0]} chunks "
                           f"as {layout} (the embedding and the head counted as a layer each, the rest spread "
                           f"evenly: specs/plan.uneven_layout)")
    zero = _int(row, "zero_stage")
    if zero is None:
        zero = _from_recipe("zero_stage", "zero_stage", recipe, assumptions)
    zeros = [zero] if zero is not None else [0, 1, 2, 3]
    if zero is None:
        open_settings.append("zero_stage")
    recompute_layers, offload = _memory_facts(row)
    recompute = (row.get("recompute") or "").strip()
    if not recompute and recompute_layers:
        recompute = "full"
        assumptions.append("recompute: not given; full, as recompute_layers says")
    if not recompute and recipe_recompute:
        recompute = _from_recipe("recompute", "recompute", recipe, assumptions) or ""
    recomputes = [recompute] if recompute else ["none", "selective", "full"]
    if not recompute:
        open_settings.append("recompute")
    sp = _int(row, "sequence_parallel")
    if sp is None and tp > 1 and "sequence_parallel" in recipe.values:
        sp = int(recipe.values["sequence_parallel"].value)
        assumptions.append(f"sequence_parallel: not given; {'on' if sp else 'off'}, "
                           f"{recipe.values['sequence_parallel'].why}")
    sps = [bool(sp)] if sp is not None else ([False, True] if tp > 1 else [False])
    if sp is None and tp > 1:
        open_settings.append("sequence_parallel")
    elif sp is None:
        assumptions.append("sequence_parallel: not given, off (tp = 1)")
    precision = (row.get("precision") or "").strip()
    if not precision:
        precision = "bf16" if cluster.accelerator.supports("bf16") else "fp16"
        assumptions.append(f"precision: not given, assumed {precision}")
    plans = []
    for v, z, rc, s in itertools.product(vpps, zeros, recomputes, sps):
        schedule = schedule_for_vpp(v)
        try:
            plans.append(ParallelPlan(dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, pipeline_layout=layout,
                                      zero_stage=z, micro_batch=micro,
                                      global_batch=_int(row, "global_batch_size"), pp_schedule=schedule, vpp=v,
                                      recompute=rc, sequence_parallel=s, precision=precision,
                                      recompute_layers=recompute_layers if rc == "full" else 0,
                                      activation_offload=offload))
        except BastionError as exc:
            raise RowSkipped(exc.problem) from None
    return plans, open_settings


def predict_case(row: dict[str, str], options: PredictOptions | None = None,
                 software: str | None = None) -> CaseResult:
    """Predict one row's iteration time, or raise RowSkipped with the reason."""
    return case_estimate(row, options, software)[0]


def row_software(row: dict[str, str], software: str | None = None) -> tuple[PredictOptions, str]:
    """The options a row is predicted with and the assumptions that say where they come from (row_stack)."""
    _, options, notes = row_stack(row, software)
    return options, "; ".join(notes)


def row_stack(row: dict[str, str], software: str | None = None) -> tuple[SoftwareStack, PredictOptions, list[str]]:
    """The stack a row is predicted with, its options and the assumptions that say why: `software` when given
    (every row), else the row's `software` column (a stack name), else the row's software facts (framework,
    framework_version and explicit behaviours, predict/frameworks.py; no framework = the documented default).
    Never the row's source_group, source or notes."""
    if software:
        stack = software_stack(software)
        return stack, stack.options, [f"software: {stack.name} (given for every row)"]
    try:
        named = (row.get("software") or "").strip()
        if named:
            stack = software_stack(named)
            return stack, stack.options, [f"software: {stack.name} (the row's software column)"]
        return resolve(facts_from_row(row))
    except BastionError as exc:
        raise RowSkipped(f"software: {exc.problem} ({exc.fix})") from None


def case_estimate(row: dict[str, str], options: PredictOptions | None = None,
                  software: str | None = None) -> tuple[CaseResult, Estimate, ModelSpec, Cluster]:
    """The row's result together with the estimate it came from (and the model and cluster the row describes),
    for analyses that need the breakdown; raises RowSkipped like predict_case. `options` (the same for every
    row) replaces the software lookup of row_software."""
    case_id = (row.get("case_id") or "").strip() or "(no case_id)"
    for key in REQUIRED:
        if not (row.get(key) or "").strip() and not (key == "ffn_hidden_size" and _moe_without_dense(row)):
            raise RowSkipped(f"{key} is empty")
    published = _float(row, "iteration_time_s")
    if published is None:
        raise RowSkipped("no published iteration_time_s to compare with")
    if published <= 0:
        raise RowSkipped(f"iteration_time_s = {published:g} is not a positive time")
    if options is None:
        found, options, software_notes = row_stack(row, software)
        stack = found.name
        known = bool(software or (row.get("software") or "").strip()) or facts_from_row(row).known
    else:
        software_notes, stack, known = ["software: options given for every row"], "", True
    cap = options.attention_efficiency_cap
    assumptions: list[str] = [*software_notes,
        "kernels: " + (f"flash attention ({options.attention_kernel})" if options.flash_attention
                       else "unfused attention" + (" with dropout" if options.dropout else ""))
        + (f" (at most {cap:g} of the bf16 peak)" if options.flash_attention and cap is not None else "")
        + (", a fused cross-entropy" if options.fused_cross_entropy else ", a plain fp32 cross-entropy")
        + (", a fused SwiGLU" if options.fused_swiglu and row.get("ffn_type") == "swiglu" else "")
        + (", fp8 matmul inputs kept in fp8" if options.fp8_saved_inputs and row.get("precision") == "fp8" else "")
        + (", ZeRO-1/2 parameter gathers under the next forward" if options.overlap_param_gather
           and (row.get("zero_stage") or "").strip() in ("1", "2") else "")]
    model = case_model(row, assumptions)
    cluster = case_cluster(row, assumptions)
    plans, open_settings = case_plan_choices(row, model, cluster, assumptions)
    results, errors = _estimates(model, cluster, plans, options)
    if not results:
        raise RowSkipped(f"plan is inconsistent: {errors[0]}")
    if not any(e.fits for e in results) and any(p.zero_stage == 3 for p in plans) and options.fsdp_unit == "layer":
        # the case file does not say what ZeRO-3 gathers at once; when whole layers do not fit, the run must have
        # gathered less (DeepSpeed's per-sub-module fetching), as it did run
        by_module, _ = _estimates(model, cluster, plans, replace(options, fsdp_unit="module"))
        if any(e.fits for e in by_module):
            results = by_module
            assumptions.append("ZeRO-3 gathers one sub-module at a time (whole-layer gathers would not fit; "
                               "the case file does not say)")
    recipe_recompute = _recipe_recompute_overflows(results, row, model, open_settings)
    if recipe_recompute is not None:
        # the recipe's plan would need far more memory than the device has: the run must have recomputed
        # (a recipe for another model, or partial recompute the case file does not state)
        assumptions[:] = [a for a in assumptions if not a.startswith("recompute: not given;")]
        assumptions.append(f"recompute: not given; the default recipe's {recipe_recompute} would need "
                           f"{min(e.memory.total for e in results) / 2**30:.0f} GiB of "
                           f"{results[0].hbm_bytes / 2**30:.0f} GiB (beyond the memory model's "
                           f"{MEMORY_MARGIN:.0%} margin), so recompute is chosen as a practitioner would")
        plans, open_settings = case_plan_choices(row, model, cluster, [], recipe_recompute=False)
        results, _ = _estimates(model, cluster, plans, options)
    fitting = [e for e in results if e.fits]
    if open_settings:
        chosen = min(fitting, key=lambda e: e.step_time_s) if fitting else min(results, key=lambda e: e.memory.total)
        picked = ", ".join(f"{name} = {getattr(chosen.plan, name)}" for name in open_settings)
        how = PRACTITIONER["fastest"] if fitting else "none fits; the smallest in memory"
        assumptions.append(f"{', '.join(open_settings)}: not given; {picked} ({how})")
    else:
        chosen = results[0]
    if not chosen.fits:
        assumptions.append(f"predicted memory {chosen.memory.total / 2**30:.1f} GiB exceeds "
                           f"{chosen.hbm_bytes / 2**30:.0f} GiB per device (a memory shortfall of the prediction: "
                           f"the time is predicted for the plan as run)")
    result = CaseResult(case_id=case_id, published_s=published, predicted_s=chosen.step_time_s,
                        assumptions=assumptions, software=stack, software_known=known)
    return result, chosen, model, cluster


#: how far over the device's memory a framework recipe's plan may be predicted and still be taken to have fit
#: (the shortfall is then reported, the plan kept): the memory model's own margin — its fragmentation allowance
#: is 10% of transient memory and allocator behaviour varies by that much. Chosen from the mechanism, not from
#: published times (the rows' predicted memories were seen: 189 GiB of 186 vs 300+ GiB of 186).
MEMORY_MARGIN = 0.10


def _recipe_recompute_overflows(results: list[Estimate], row: dict[str, str], model: ModelSpec,
                                open_settings: list[str]) -> str | None:
    """The recipe's recompute when the row's recompute came from its framework's default recipe and even the
    smallest of its plans needs more than MEMORY_MARGIN over the device; else None."""
    if (row.get("recompute") or "").strip() or "recompute" in open_settings:
        return None
    recipe = _recipe_values(row, model, _int(row, "pp")).values
    if "recompute" not in recipe or not results:
        return None
    smallest = min(results, key=lambda e: e.memory.total)
    return recipe["recompute"].value if smallest.memory.total > (1 + MEMORY_MARGIN) * smallest.hbm_bytes else None


def _estimates(model: ModelSpec, cluster: Cluster, plans: list[ParallelPlan],
               options: PredictOptions) -> tuple[list[Estimate], list[str]]:
    """Estimates of the plans that are consistent, and the problems of those that are not."""
    results: list[Estimate] = []
    errors: list[str] = []
    for plan in plans:
        try:
            results.append(estimate(model, cluster, plan, options=options))
        except BastionError as exc:
            errors.append(exc.problem)
    return results, errors


def validate_cases(path: Path | str = PUBLIC_CASES, options: PredictOptions | None = None,
                   software: str | None = None) -> ValidationReport:
    """Predict every row of a case file, each with its software (row_software) unless `software` or `options`
    says otherwise, and its stored p10-p90 interval (predict/intervals.py; its q calibrated on the out-of-sample
    rows of the files compiled blind, its width factor on the development files, so in-sample for the rows of
    both); rows that cannot be predicted are listed with their reason."""
    if software:
        software_stack(software)  # an unknown name is the caller's mistake, not every row's
    rows = read_cases(Path(path))
    cases: list[CaseResult] = []
    skipped: list[dict[str, str]] = []
    for i, row in enumerate(rows):
        try:
            case, est, model, _ = case_estimate(row, options, software)
        except RowSkipped as exc:
            skipped.append({"case_id": (row.get("case_id") or "").strip() or f"row {i + 2}", "reason": str(exc)})
            continue
        case.p10_s, case.p90_s = step_interval(est, model, case.software_known)
        cases.append(case)
    return ValidationReport(cases=cases, skipped=skipped)
