"""Time of a mixture-of-experts layer's routed part on one rank: the router, token permutation, the experts'
grouped GEMMs, the expert-parallel all-to-all and the expert-tensor-parallel collectives.

Layout (Megatron-Core's "parallel folding", torchtitan's MoE): attention runs on tp ranks with sequence
parallelism, so each rank routes its own 1/tp of the micro-batch's tokens; the experts' grid folds etp (innermost)
× ep × expert-data-parallel onto the same ranks, so an ep group's members are etp ranks apart. Each routed copy of
a token (top_k per token) is sent to the rank holding its expert (dispatch) and its output sent back (combine):
four all-to-alls per layer per micro-batch (two forward, their gradients backward), two more when the layer is
recomputed. With etp > 1 the ranks of an etp group all-gather their received tokens before the expert GEMMs and
reduce-scatter the outputs after them (their gradients in reverse in the backward).

bastion's own runtime lays the experts out differently (PredictOptions.moe_expert_layout = "bastion", the `bastion`
software stacks): ep is carved from the dp × cp ranks (torchtitan's way), so an ep group's members are tp ranks
apart; the tp ranks route their own 1/tp of the tokens only under sequence parallelism with etp = 1, otherwise
every tp rank holds all of the micro-batch's tokens (etp = tp: each computes a slice of every expert's width on
them and the outputs are all-reduced, the same bytes as the megatron layout's all-gather and reduce-scatter).

When ep does not divide dp × cp the expert groups take in tensor-parallel ranks too (ParallelPlan.folds_experts):
costed in the megatron layout, which is how bastion's runtime folds them (each tp rank routing its own 1/tp of
the tokens, with or without sp, the etp ranks all-gathering their received rows; runtime/mesh.py,
`runtime_layout`).
Node-limited routing (ModelSpec.max_routed_nodes, DeepSeek-V3) caps the copies of a token that cross the
scale-out network at one per remote node it reaches; a hierarchical dispatcher (PredictOptions.moe_dispatcher
`deepep` / `hybridep`) sends each token across once per remote node holding one of its experts, whatever the
routing (remote_domains_per_token). Megatron-Core's `allgather` dispatcher gathers every token of the ep group
instead of exchanging the routed copies.

The slowest rank sets the pace: it holds the busiest expert, which gets `imbalance` × the mean rows (the other
experts of the rank the mean). Each expert's GEMM runs at the calibrated efficiency of its own shape (rows =
that expert's tokens): many experts with few tokens each run far below the dense rate (below the calibration's
smallest M, at the published small-M rates of data/gemm_small_m.toml), times the fraction of that rate the
software's grouped-GEMM implementation reaches (grouped_gemm_rate: published kernel benchmarks, data/
grouped_gemm.toml). The experts' gradients reduce, and ZeRO-3 gathers their parameters, over the ranks that hold
the same experts (expert_data_parallel_group), not dp × cp.

Token permutation: every routed copy of a token is copied into expert order before the experts and back after
them (data/moe.toml permute_elements). An all-to-all dispatcher with ep > 1 copies it twice on each side: into
destination-rank order before the exchange, then the received rows into local-expert order (and the reverse for
the combine) — Megatron-Core's `alltoall` dispatcher ("one global and one local permute before and after EP
communication"), torchtitan's default expert parallelism and bastion's runtime alike; DeepEP and Hybrid-EP fuse
the first copy into their communication kernels, and the `allgather` dispatcher only selects its local experts'
rows from the gathered tokens (permute_passes).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from functools import cache, lru_cache
from typing import NamedTuple

from bastion.predict import comm, compute
from bastion.predict.calibration import DATA_DIR, load_calibration
from bastion.predict.kernels import (
    DEFAULT_FP8_RECIPE,
    DENSE_RATE_GROUPED_GEMM,
    grouped_gemm_implementation,
    grouped_gemm_table,
)
from bastion.predict.options import PredictOptions
from bastion.specs.hardware import Accelerator, Cluster, load_accelerator
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan, expert_grid

#: token dispatchers that send a token across the scale-out network once per remote domain (remote_domains_per_token)
HIERARCHICAL_DISPATCHERS = ("deepep", "hybridep")
#: how each token dispatcher (options.MOE_DISPATCHERS) is costed, for the estimate's assumptions
DISPATCHER_NOTES = {
    "alltoall": "every routed copy sent to its expert's rank by one all-to-all per dispatch and combine",
    "allgather": "the ep group's tokens all-gathered for the dispatch, the outputs reduce-scattered for the combine",
    "deepep": "a token crosses the scale-out network once per remote scale-up domain holding one of its experts, "
              "then NVLink",
    "hybridep": "as deepep: a token crosses the scale-out network once per remote scale-up domain, then NVLink",
}


@cache
def moe_facts() -> dict[str, float]:
    return tomllib.loads((DATA_DIR / "moe.toml").read_text())


def _benchmark_predicted_s(acc: Accelerator, precision: str, passes: str, m: int, n: int, k: int,
                           groups: int) -> float:
    """The dense-rate seconds of one published grouped-GEMM benchmark: `groups` GEMMs of m / groups rows
    (m × k by k × n), forward only or forward + backward (the input gradient m × n by n × k, the weight gradient
    k × m by m × n)."""
    rows = m // groups
    shapes = [(rows, k, n)] + ([(rows, n, k), (k, rows, n)] if passes == "fwd_bwd" else [])
    return groups * sum(compute.gemm_time(acc, precision, *shape) for shape in shapes)


@lru_cache(maxsize=64)
def grouped_gemm_rate(implementation: str, arch: str, precision: str) -> tuple[float, str]:
    """The fraction of the dense GEMM rate (compute.gemm_time of each expert's shape) `implementation` reaches on
    cards of tensor-core generation `arch` in `precision`, and where that comes from: the geometric mean of
    predicted / published seconds over its benchmarks in data/grouped_gemm.toml measured on a card of that
    generation, at most 1; 1 (the dense rate) where none was published."""
    grouped_gemm_implementation(implementation)  # a ConfigError with the known names if it is not one
    logs: list[float] = []
    cards: set[str] = set()
    benchmarks = [b for b in grouped_gemm_table().get("benchmark", []) if b["implementation"] == implementation]
    for bench in benchmarks:
        acc = load_accelerator(bench["accelerator"])
        if acc.arch != arch or bench["precision"] != precision:
            continue
        cards.add(acc.name)
        for m, n, k, groups, us in zip(bench["m"], bench["n"], bench["k"], bench["groups"], bench["us"],
                                       strict=True):
            predicted = _benchmark_predicted_s(acc, precision, bench["passes"], m, n, k, groups)
            logs.append(math.log(predicted / (us * 1e-6)))
    if not logs:
        return 1.0, (f"{implementation}: the dense rate of each expert's shape"
                     + (f" (no published {precision} benchmark on {arch})" if benchmarks else ""))
    # a grouped kernel is not taken faster than one GEMM of each group's shape: the one Hopper figure above 1 is a
    # shape past the calibration's largest m (32,768, where the dense curve is clamped)
    rate = min(1.0, math.exp(sum(logs) / len(logs)))
    return rate, (f"{implementation}: {rate:.2f} × the dense rate on {arch} in {precision} (the geometric mean of "
                  f"{len(logs)} published kernel benchmarks on {', '.join(sorted(cards))}, data/grouped_gemm.toml)")


def permute_passes(ep: int, dispatcher: str) -> int:
    """How many times each routed copy of a token is permuted on each side of the experts (module docstring): two
    under an all-to-all dispatcher that exchanges tokens (ep > 1), once otherwise."""
    return 2 if ep > 1 and dispatcher == "alltoall" else 1


def imbalance(model: ModelSpec, options: PredictOptions) -> tuple[float, str]:
    """The busiest expert's tokens / the mean, and where that figure comes from."""
    if options.moe_imbalance is not None:
        return options.moe_imbalance, "given"
    facts = moe_facts()
    if model.capacity_factor:
        return model.capacity_factor, f"capacity factor {model.capacity_factor:g} caps the busiest expert"
    if model.router_bias_update_rate:
        return facts["imbalance_bias_balanced"], "assumed for auxiliary-loss-free bias balancing"
    if model.aux_loss_coeff:
        return facts["imbalance_aux_loss"], "assumed for an auxiliary balancing loss"
    return facts["imbalance_unbalanced"], "assumed: the model states no balancing mechanism"


@lru_cache(maxsize=256)
def dense_layer_model(model: ModelSpec) -> ModelSpec:
    """The model as its layers without experts see it (DeepSeek's leading dense layers, Llama 4's interleaved
    ones): a dense MLP of ffn_hidden_size."""
    return replace(model, num_experts=0, top_k=0, moe_ffn_hidden_size=0, num_shared_experts=0, dense_layers=0,
                   aux_loss_coeff=0.0, router_bias_update_rate=0.0, capacity_factor=0.0, moe_layer_freq=1)


def mlp_activation_bytes_per_token(model: ModelSpec, width: float) -> float:
    """Effective bytes per token of the MLP's elementwise activation (forward + backward) over `width` units."""
    cal = load_calibration().membound
    return (cal["swiglu_bytes"] if model.ffn_type == "swiglu" else cal["gelu_bytes"]) * width


class RoutedCost(NamedTuple):
    """Per micro-batch seconds of one MoE layer's routed part on the slowest rank."""

    #: forward GEMMs: the router and every local expert (the backward is twice these)
    gemm_fwd: float
    #: memory-bound work, forward + backward: router scores, permutation, un-permutation, expert activations
    membound: float
    #: the four dispatch/combine all-to-alls (forward + backward), before any overlap
    a2a: float
    #: the expert-tensor-parallel all-gathers / reduce-scatters, forward + backward (a full recompute runs the
    #: forward half of both again)
    etp_comm: float


class RoutingLayout(NamedTuple):
    """How the ranks of a tp group share an MoE layer's routing (the module docstring's two layouts)."""

    #: the share of the tp group's micro-batch tokens one rank routes and dispatches
    token_share: float
    #: how many ranks' received rows each rank's expert GEMMs take (the megatron layout's etp all-gather)
    gathered: int
    #: how many ranks apart an ep group's members are
    ep_stride: int


def runtime_layout(plan: ParallelPlan) -> str:
    """The layout bastion's runtime runs a plan's MoE layers in: its own, or Megatron-Core's where it folds ep
    over tp ranks (each tp rank then routes its own 1/tp of the tokens, as Megatron's ranks do)."""
    return "megatron" if plan.folds_experts else "bastion"


def routing_layout(tp: int, etp: int, sequence_parallel: bool, layout: str) -> RoutingLayout:
    """The routing of a tp group under the software's `layout` (PredictOptions.moe_expert_layout)."""
    if layout == "megatron":  # Megatron-Core: MoE with tp needs sp, each rank routes its own slice
        return RoutingLayout(1.0 / tp, etp, etp)
    if layout != "bastion":
        raise ValueError(f"moe_expert_layout must be 'megatron' or 'bastion', got {layout!r}")
    own_shard = sequence_parallel and etp == 1  # what runtime/moe.py executes (routes_sequence_shard)
    return RoutingLayout(1.0 / tp if own_shard else 1.0, 1, tp)


def expert_gemm_shapes(model: ModelSpec, rows: float, etp: int = 1) -> tuple[tuple[int, int, int], ...]:
    """(m, k, n) of one expert's forward GEMMs on `rows` tokens (its up and gate projections as one GEMM, then
    its down projection), each expert's width split over `etp` ranks."""
    m, width = max(1, round(rows)), model.expert_width // etp
    return (m, model.hidden_size, (model.ffn_matrices - 1) * width), (m, width, model.hidden_size)


def expert_forward_time(model: ModelSpec, cluster: Cluster, rows: float, etp: int, precision: str,
                        fp8_recipe: str = DEFAULT_FP8_RECIPE, grouped_gemm: str = DENSE_RATE_GROUPED_GEMM) -> float:
    """Seconds of one expert's forward GEMMs on `rows` tokens: each at the calibrated efficiency of its own
    shape (the grouped GEMM's rate at that many tokens per expert), times the fraction of that rate the
    `grouped_gemm` implementation reaches on the card (grouped_gemm_rate)."""
    acc = cluster.accelerator
    rate, _ = grouped_gemm_rate(grouped_gemm, acc.arch, "fp8" if precision == "fp8" else "bf16")
    return sum(compute.gemm_time(acc, precision, *shape, fp8_recipe)
               for shape in expert_gemm_shapes(model, rows, etp)) / rate


@lru_cache(maxsize=16384)
def routed_cost(model: ModelSpec, cluster: Cluster, tokens: int, tp: int, ep: int, etp: int, precision: str,
                imbalance_factor: float, fp8_recipe: str = DEFAULT_FP8_RECIPE,
                layout: RoutingLayout | None = None, dispatcher: str = "alltoall",
                grouped_gemm: str = DENSE_RATE_GROUPED_GEMM) -> RoutedCost:
    """Costs of one MoE layer's routed experts for `tokens` tokens of a micro-batch on this rank's tp group (an
    fp8 plan's expert GEMMs and their operand quantisation under `fp8_recipe`, as the dense GEMMs); `layout`
    None: the megatron one; `dispatcher` the token dispatcher (PredictOptions.moe_dispatcher); `grouped_gemm` the
    implementation of the experts' GEMMs (PredictOptions.grouped_gemm)."""
    acc = cluster.accelerator
    h, ef = model.hidden_size, model.expert_width
    a = 4 if precision == "fp32" else 2  # activations travel in the compute dtype (fp8 recipes keep bf16)
    layout = layout or routing_layout(tp, etp, True, "megatron")
    own_tokens = max(tokens * layout.token_share, 1.0)
    routed = own_tokens * model.top_k
    local_experts = max(model.num_experts // ep, 1)
    # the slowest rank: its busiest expert has `imbalance` × the mean rows, its other experts the mean
    rank_factor = 1.0 + (imbalance_factor - 1.0) / local_experts
    received = routed * rank_factor
    mean_rows = layout.gathered * routed / local_experts
    width = ef // etp

    def expert_shapes(rows: float) -> tuple[tuple[int, int, int], ...]:
        return expert_gemm_shapes(model, rows, etp)

    def expert_fwd(rows: float) -> float:
        return expert_forward_time(model, cluster, rows, etp, precision, fp8_recipe, grouped_gemm)

    gemm_fwd = (compute.gemm_time(acc, precision, max(1, round(own_tokens)), h, model.num_experts)
                + (local_experts - 1) * expert_fwd(mean_rows) + expert_fwd(imbalance_factor * mean_rows))
    facts = moe_facts()
    traffic = (received * h * a * facts["permute_elements"] * permute_passes(ep, dispatcher)
               + own_tokens * model.num_experts * 4 * facts["router_elements"]) / facts["permute_bandwidth_fraction"]
    activation = (layout.gathered * received * mlp_activation_bytes_per_token(model, width)
                  * (2.0 if precision == "fp32" else 1.0))
    casts = 0.0
    if precision == "fp8":  # each expert GEMM's operands cast to fp8, as for the dense GEMMs (estimate.py)
        casts = sum((local_experts - 1) * compute.fp8_cast_bytes(*mean, fp8_recipe)
                    + compute.fp8_cast_bytes(*busiest, fp8_recipe)
                    for mean, busiest in zip(expert_shapes(mean_rows), expert_shapes(imbalance_factor * mean_rows),
                                             strict=True))
    membound = compute.membound_time(acc, traffic + activation + casts)

    a2a_bytes = received * h * a
    group = comm.place_group(cluster, ep, layout.ep_stride)
    one_a2a = 0.0
    if ep > 1 and dispatcher == "allgather":
        # Megatron-Core's MoEAllGatherTokenDispatcher: the ep group's tokens all-gathered (every rank's own
        # tokens, whatever their experts), the outputs reduce-scattered back; the backward the reverse
        one_a2a = comm.all_gather_time(cluster, own_tokens * h * a * ep, group)
    elif ep > 1:
        one_a2a = comm.all_to_all_time(cluster, a2a_bytes, group)
        remote = remote_domains_per_token(model, group, dispatcher in HIERARCHICAL_DISPATCHERS)
        if remote is not None:
            one_a2a = min(one_a2a, hierarchical_a2a_time(cluster, a2a_bytes, model.top_k, remote, group))
    # megatron: all-gather the etp group's received rows; bastion: all-reduce the outputs (two all-gathers' bytes)
    # of the rows every etp rank holds already: the same seconds
    one_etp = (comm.all_gather_time(cluster, layout.gathered * a2a_bytes, comm.place_group(cluster, etp, 1))
               if etp > 1 else 0.0)
    return RoutedCost(gemm_fwd=gemm_fwd, membound=membound, a2a=4 * one_a2a, etp_comm=4 * one_etp)


def remote_domains_per_token(model: ModelSpec, group: comm.GroupPlacement, hierarchical: bool) -> float | None:
    """Remote scale-up domains a token's routed copies reach, on average, when the dispatch sends each token
    across the scale-out network once per remote domain (None: every copy crosses on its own, NCCL's
    all-to-all).

    Two mechanisms send a token once per domain. Node-limited routing (ModelSpec.max_routed_nodes, DeepSeek-V3
    §2.1.2, §3.2.2): a token's experts lie on at most that many domains, each assumed equally likely among a
    token's chosen ones. A hierarchical dispatcher (`hierarchical`: DeepEP's normal kernels — deepseek-ai/DeepEP
    csrc/kernels/internode.cu sends a token over RDMA once per destination node with a bit mask of that node's
    GPUs that need it (SourceMeta: src_rdma_rank, is_token_in_nvl_rank_bits), and that node's GPU of the same
    local index forwards it over NVLink, as DeepSeek-V3 §3.2.2 describes; NVIDIA's Hybrid-EP taken to keep that
    hierarchy): the token reaches every domain holding one of its top_k experts, with the experts spread evenly
    over the group's domains and chosen without repetition, a domain holding none of them with probability
    C(E − E/D, k) / C(E, k)."""
    d = group.domains
    if d <= 1 or not (model.max_routed_nodes or hierarchical):
        return None
    remote = float("inf")
    if model.max_routed_nodes:
        remote = min(model.max_routed_nodes, d) * (d - 1) / d
    if hierarchical:
        experts, k = model.num_experts, model.top_k
        elsewhere = experts - experts // d  # the experts of the other domains
        missed = math.comb(elsewhere, k) / math.comb(experts, k)  # a domain holds none of a token's experts
        remote = min(remote, (d - 1) * (1.0 - missed))
    return remote


def hierarchical_a2a_time(cluster: Cluster, nbytes: float, top_k: int, remote_per_token: float,
                          group: comm.GroupPlacement) -> float:
    """One dispatch or combine whose tokens cross the scale-out network once per remote domain they reach
    (`remote_per_token`, remote_domains_per_token), to the GPU of the same local index there, which forwards
    them over NVLink to the GPUs holding their experts. `nbytes` is this rank's top_k routed copies; every copy
    not kept on this rank crosses NVLink once (directly, or forwarded after the scale-out hop)."""
    remote = min(remote_per_token, top_k * (group.size - group.local) / group.size)
    per_copy = nbytes / top_k
    return comm.exchange_time(cluster, nbytes * (group.size - 1) / group.size, per_copy * remote)


def exposed_a2a(a2a: float, window: float, overlap: float) -> float:
    """Seconds of the all-to-all left on the critical path when `overlap` of it runs under `window` seconds of
    compute; the hidden part still slows that compute (NCCL's kernels hold SMs: network.toml overlap_slowdown)."""
    hidden = min(overlap * a2a, window)
    return a2a - hidden + load_calibration().network["overlap_slowdown"] * hidden


def expert_data_parallel_group(cluster: Cluster, shard_degree: int, tp: int, ep: int,
                               etp: int) -> comm.GroupPlacement:
    """Where the ranks that hold the same experts sit (their gradients reduce over them, ZeRO-3 gathers their
    parameters over them) in a stage whose dp × cp is `shard_degree`: consecutive groups of ep data-parallel
    ranks split the experts (runtime/mesh.py), so they are tp × ep ranks apart; folded over tensor-parallel
    ranks, the experts' grid etp × ep is innermost (memory.py), so etp × ep apart."""
    size, folded = expert_grid(shard_degree, tp, ep, etp)
    return comm.place_group(cluster, size, etp * ep if folded else tp * ep)


def expert_placement(model: ModelSpec, cluster: Cluster, plan: ParallelPlan,
                     layout: RoutingLayout | None = None) -> dict[str, object]:
    """Where a plan puts the experts: the ep group (members `layout.ep_stride` ranks apart; None: the megatron
    layout's etp) inside one scale-up domain or spread over several, and over which ranks of a pipeline stage
    (numbered tp innermost, then cp, then dp: `tp_ranks` of one tensor-parallel group × `data_parallel_ranks`
    of dp × cp); the experts and expert width each rank holds, the ranks that replicate them, and whether the
    expert groups fold over tensor-parallel ranks (ep does not divide dp × cp: Megatron-Core's parallel folding,
    which bastion's runtime executes)."""
    ep, etp, tp = plan.ep, plan.etp, plan.tp
    stride = layout.ep_stride if layout else etp
    group = comm.place_group(cluster, ep, stride)
    domain = cluster.network.scale_up_size
    # members `stride` ranks apart: a group whose stride is below tp takes tp // stride ranks of a tp group (the
    # rest in the next dp × cp coordinates), one with a stride of tp or more one rank of each tp group
    tp_ranks = min(ep, max(1, tp // stride))
    return {"ep": ep, "etp": etp, "experts_per_rank": model.num_experts // ep,
            "expert_width_per_rank": model.expert_width // etp,
            # ZeRO / FSDP shards the local experts over the ranks that hold the same ones (memory.py)
            "expert_data_parallel": plan.expert_data_parallel,
            "folded_over_tp": plan.folds_experts,
            "ep_group": {"ranks_per_scale_up_domain": group.local, "scale_up_domains": group.domains,
                         "spans_domains": group.domains > 1, "scale_up_domain_size": domain,
                         "all_to_all_over": "scale-out network (NICs)" if group.domains > 1 else "NVLink",
                         "rank_stride": stride, "tp_ranks": tp_ranks,
                         "data_parallel_ranks": -(-ep // tp_ranks)},
            "attention_tp": tp, "attention_cp": plan.cp}


def placement_line(placement: dict[str, object]) -> str:
    """One line for reports: the ep group's ranks (folded over tp ranks or not), inside a node or spanning nodes,
    experts per rank, etp."""
    group = placement["ep_group"]
    assert isinstance(group, dict)
    holds = (f"{placement['experts_per_rank']} experts per rank, etp {placement['etp']} (expert width "
             f"{placement['expert_width_per_rank']} per rank), replicated on {placement['expert_data_parallel']} "
             f"expert-data-parallel ranks")
    if placement["ep"] == 1:
        return f"experts: no expert parallelism (ep 1); {holds}"
    dp_ranks = "dp × cp" if placement.get("attention_cp", 1) != 1 else "dp"
    ranks = f"{group['data_parallel_ranks']} {dp_ranks} ranks"
    if group["tp_ranks"] > 1:
        ranks = f"{group['tp_ranks']} of the {placement['attention_tp']} tp ranks × {ranks}"
    if placement.get("folded_over_tp"):
        over = (f"folded over tensor-parallel ranks (Megatron-Core's parallel folding: ep {placement['ep']} does "
                f"not divide {dp_ranks}), each group on {ranks}")
    else:
        over = f"on {ranks}"
    if group["rank_stride"] > 1:
        over += f", members {group['rank_stride']} ranks apart"
    where = (f"spans {group['scale_up_domains']} scale-up domains ({group['ranks_per_scale_up_domain']} ranks in "
             f"each; all-to-all over the scale-out network)" if group["spans_domains"]
             else "inside one scale-up domain (all-to-all over NVLink)")
    return f"experts: ep {placement['ep']} group {over}; {where}; {holds}"
