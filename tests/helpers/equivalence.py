"""Helpers of the multi-process equivalence tests: a torchrun launcher for groups of cases, the cases the test
modules declare (run together, one launch per world size, by the session's `equivalence_runs`), and a
single-process fp32 reference written independently of the parallel runtime (plain loop, torch's own
clip_grad_norm_, the whole global batch in one forward)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from helpers.routing import LayerCounts, RoutedReference, RoutingFlip, check_routed_run

WORKER = Path(__file__).parents[1] / "dist" / "equivalence_worker.py"
STEPS = 6


@dataclass
class CaseResult:
    name: str
    summary: dict
    params: dict


def run_cases(tmp_path: Path, data: Path, world: int, cases: dict[str, dict], model: str = "tiny",
              steps: int = STEPS, timeout: int = 900, models: dict[str, str] | None = None,
              worker: Path = WORKER, case_steps: dict[str, int] | None = None) -> dict[str, CaseResult]:
    """Run every plan of `cases` (name -> plan dict) in one torchrun launch of `world` processes.

    `models` (case name -> model preset or file) and `case_steps` (case name -> steps) override `model` and
    `steps` for some cases; `worker` is the script torchrun starts (equivalence_worker.py or one that wraps it)."""
    import torch

    from bastion.specs.plan import ParallelPlan

    entries = []
    for name, plan in cases.items():
        plan_path = ParallelPlan(**plan).save(tmp_path / f"{name}.json")
        entries.append({"name": name, "model": (models or {}).get(name, model), "plan": str(plan_path),
                        "run_dir": str(tmp_path / name), "steps": (case_steps or {}).get(name, steps)})
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps({"data": str(data), "steps": steps, "cases": entries}))
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    from bastion.launch.local import free_port

    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", str(worker), str(cases_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    # the cases run in turn and rank 0 writes each one's summary at its end: the first without one failed
    unfinished = [entry["name"] for entry in entries if not (Path(entry["run_dir"]) / "summary.json").exists()]
    died_in = unfinished[0] if unfinished else "none (after the last one)"
    assert done.returncode == 0, (f"torchrun failed ({done.returncode}) in case {died_in}:\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    results = {}
    for entry in entries:
        run_dir = Path(entry["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        params = torch.load(run_dir / "final_params.pt")
        results[entry["name"]] = CaseResult(entry["name"], summary, params)
    return results


@dataclass(frozen=True)
class DeclaredCase:
    world: int
    plan: dict
    model: str
    steps: int = STEPS


#: every case the collected test modules declared (name -> case): `SharedLaunches` runs them all, one torchrun
#: launch per world size, since start-up (import torch, gloo rendezvous) dominates a 6-step tiny run
DECLARED: dict[str, DeclaredCase] = {}


def declare(world: int, cases: dict[str, dict], model: str = "tiny", models: dict[str, str] | None = None,
            steps: int = STEPS) -> dict[str, dict]:
    """Declare `cases` (name -> plan dict, trained on `world` processes for `steps` steps; `models` overrides
    `model` per case) for the session's shared launches, at a test module's import (collection ends before any
    test runs, so the first launch of a world size holds every collected module's cases). Compare a case of
    fewer steps than STEPS with the reference of as many (`reference_run(steps=...)`: the lr schedule depends on
    the run's length). Returns `cases`."""
    for name, plan in cases.items():
        case = DeclaredCase(world, plan, (models or {}).get(name, model), steps)
        assert DECLARED.get(name, case) == case, f"two equivalence cases named {name!r}"
        DECLARED[name] = case
    return cases


class SharedLaunches:
    """The declared cases' runs: the first request for a world size runs every case declared for it in one torchrun
    launch (under `root`, on `data`); later requests read the kept results. A launch that failed fails every
    request for its cases, with the case that failed it, and is not run again."""

    def __init__(self, root: Path, data: Path) -> None:
        self.root, self.data = root, data
        self._results: dict[int, dict[str, CaseResult]] = {}
        self._failures: dict[int, str] = {}

    def __call__(self, names: Iterable[str]) -> dict[str, CaseResult]:
        names = list(names)
        for world in sorted({DECLARED[name].world for name in names}):
            self._launch(world)
        return {name: self._results[DECLARED[name].world][name] for name in names}

    def _launch(self, world: int) -> None:
        if world in self._failures:
            raise AssertionError(f"the shared {world}-process launch failed earlier: {self._failures[world]}")
        if world in self._results:
            return
        cases = {name: case for name, case in DECLARED.items() if case.world == world}
        try:
            self._results[world] = run_cases(
                self.root / f"world{world}", self.data, world, {name: case.plan for name, case in cases.items()},
                models={name: case.model for name, case in cases.items()}, timeout=300 + 60 * len(cases),
                case_steps={name: case.steps for name, case in cases.items()})
        except AssertionError as failure:
            self._failures[world] = str(failure)
            raise


def reference_run(data: Path, model: str, global_batch: int, steps: int = STEPS, seed: int = 0,
                  gradients: list[dict] | None = None, routing: list[tuple[LayerCounts, float]] | None = None,
                  flip: RoutingFlip | None = None) -> tuple[list[float], dict]:
    """Single-process fp32 training with the same model init, data order and hyper-parameters; `gradients`, when
    given, receives each step's clipped gradients (name -> tensor), `routing` each step's (tokens routed to each
    expert per MoE layer, aux loss summed over layers) of an MoE model; `flip` makes that one near-tie choice
    the other way (`_forced_flip`)."""
    import torch

    from bastion.runtime.data import GlobalSampler, open_dataset
    from bastion.runtime.model import build_model, init_weights
    from bastion.runtime.optim import lr_factor
    from bastion.runtime.train_config import TrainConfig
    from bastion.specs.model import load_model

    defaults = TrainConfig(model=model, plan="", data="", steps=steps, run_dir="")
    spec = load_model(model)
    net = build_model(spec)
    net.to_empty(device="cpu")
    init_weights(net, spec, seed)
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": defaults.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=defaults.lr, betas=defaults.betas, eps=defaults.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, defaults.warmup_steps, defaults.min_lr_ratio))
    sampler = GlobalSampler(open_dataset(data, spec.seq_len, spec.vocab_size), global_batch, seed)
    losses = []
    if flip is not None:
        _forced_flip(net, flip, step_of=lambda: len(losses) + 1)
    for _ in range(steps):
        rows = torch.from_numpy(sampler.tokens_for(sampler.next_global_batch()))
        logits = net(rows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), defaults.max_grad_norm)
        if gradients is not None:
            gradients.append({name: p.grad.detach().clone() for name, p in net.named_parameters()})
        optimizer.step()
        scheduler.step()
        if routing is not None:
            routing.append(_step_routing(net))
        _update_routing_biases(net)
        losses.append(float(loss.detach()))
    return losses, {name: p.detach().clone() for name, p in net.named_parameters()}


def _step_routing(net) -> tuple[LayerCounts, float]:  # noqa: ANN001
    """The step's tokens routed to each expert per MoE layer and aux loss summed over layers, as the runtime logs
    them (`expert_tokens_by_layer`, `moe_aux_loss`): the step's one forward covers the whole global batch."""
    from bastion.runtime.moe import moe_blocks

    calls = [block.calls[-1] for _, block in moe_blocks([net])]
    return [counts.tolist() for counts, _ in calls], sum(float(aux) for _, aux in calls if aux is not None)


def _forced_flip(net, flip: RoutingFlip, step_of: Callable[[], int]) -> None:  # noqa: ANN001
    """At `flip.step` (`step_of()` is the step being trained), make the `flip.layer`-th MoE layer's router give
    one token `flip.to_expert` instead of `flip.from_expert`: the token whose k-th choice is from_expert and
    (k+1)-th to_expert with the two scores nearest (a test-only forward hook on the reference's router; the
    runtime has none). Its weights are gathered again from the unchanged scores, as Router.forward does."""
    import torch

    from bastion.runtime.moe import moe_blocks

    _, block = moe_blocks([net])[flip.layer]
    router = block.router

    def hook(module, inputs, output):  # noqa: ANN001, ANN202
        if step_of() != flip.step:
            return None
        scores, chosen, _ = output
        k = router.top_k
        choice = scores.detach() + router.expert_bias if router.bias_update_rate else scores.detach()
        order = torch.sort(choice, dim=-1, descending=True, stable=True).indices
        ranked = choice.gather(1, order[:, k - 1:k + 1])
        candidates = (order[:, k - 1] == flip.from_expert) & (order[:, k] == flip.to_expert)
        gaps = (ranked[:, 0] - ranked[:, 1]).masked_fill(~candidates, float("inf"))
        token = int(gaps.argmin())
        assert float(gaps[token]) <= NEAR_TIE_GAP, (
            f"{flip}: no reference token is near a tie between those experts (nearest gap {float(gaps[token])})")
        chosen = chosen.clone()
        chosen[token, k - 1] = flip.to_expert  # the k-th choice, as the run's sort would place it
        weights = scores.gather(1, chosen)
        if router.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return scores, chosen, weights

    router.register_forward_hook(hook)


def routed_reference(data: Path, model: str, flip: RoutingFlip | None = None) -> RoutedReference:
    """The single-process reference of the MoE equivalence cases (STEPS steps of 8 samples), with its routing;
    `flip` forced (helpers.routing says when)."""
    routing: list[tuple[LayerCounts, float]] = []
    gradients: list[dict] = []
    losses, params = reference_run(data, model, global_batch=8, gradients=gradients, routing=routing, flip=flip)
    return RoutedReference(losses, [aux for _, aux in routing], [counts for counts, _ in routing], params,
                           well_conditioned(gradients[0]))


def _update_routing_biases(net) -> None:  # noqa: ANN001
    """DeepSeek-V3's aux-loss-free balancing after a step: each expert's bias moves by the rate towards the mean
    load of the step's one forward (whole global batch)."""
    import torch

    from bastion.runtime.moe import MoE

    for block in net.modules():
        if isinstance(block, MoE):
            load = block.calls[-1][0].double()
            if block.router.bias_update_rate:
                with torch.no_grad():
                    block.router.expert_bias += (torch.sign(load.mean() - load)
                                                 * block.router.bias_update_rate).float()
            block.reset_stats()


def max_differences(result: CaseResult, ref_losses: list[float], ref_params: dict, compared: dict | None = None
                    ) -> tuple[float, float]:
    """The largest loss and parameter differences from the reference; `compared` (name -> boolean mask) limits
    the parameter comparison to some elements."""
    losses = result.summary["losses"]
    assert len(losses) == len(ref_losses)
    loss_diff = max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True))
    assert set(result.params) == set(ref_params), "parameter names differ from the plain model's"
    diffs = {n: (result.params[n] - ref_params[n]).abs() for n in ref_params}
    if compared is not None:
        diffs = {n: diff.masked_fill(~compared[n], 0) for n, diff in diffs.items()}
    return loss_diff, max(float(diff.max()) for diff in diffs.values())


#: AdamW's first step moves each element by lr · g / (|g| + eps), g its clipped gradient: where |g| is within a
#: few eps of zero the step moves by up to lr / eps times the gradient's fp32 reduction noise (measured
#: 2026-12-07: one element of layer 2's wv, g = -1.2e-9, 2.4e-5 off under tiny-moe ep2 × cp2 × tp2 while every
#: element with |g| >= 10 eps was within 8e-8), and later steps carry the move along. The MoE comparisons
#: (check_routed_group) check the elements with |g| at least this many eps (97% of tiny-moe's; after one step, a
#: doubled aux-loss coefficient moved 1334 of them by more than 1e-5)
CONDITIONED_EPS = 10


def well_conditioned(gradients: dict) -> dict:
    """The elements (name -> boolean mask) whose first AdamW step is insensitive to fp32 noise in `gradients`
    (reference_run's clipped gradients of step 1): |g| >= CONDITIONED_EPS · eps."""
    from bastion.runtime.train_config import TrainConfig

    return {name: grad.abs() >= CONDITIONED_EPS * TrainConfig.eps for name, grad in gradients.items()}


#: the plans of the equivalence tests train in fp32, as the reference does
FP32 = {"precision": "fp32"}
#: every plan matches the single-process reference to within this (loss per step, each parameter)
TOLERANCE = 1e-5
#: a reference choice is forced the other way only where its two scores (the choice's: with the routing bias) are
#: this close: two runs that agree within TOLERANCE can order two scores differently only where they are within
#: about that much of each other; a wider gap means the run computed other scores, which must fail
NEAR_TIE_GAP = TOLERANCE
#: benchmarks/bench_equivalence.py sets this to benchmarks/results; a plain test run records nothing, so the
#: suite never rewrites a tracked file
RESULTS_DIR_VARIABLE = "BASTION_RESULTS_DIR"


def record(results: dict) -> None:
    """Keep the measured differences (quoted in the README) with the benchmark results, when asked to."""
    results_dir = os.environ.get(RESULTS_DIR_VARIABLE)
    if not results_dir:
        return
    results_file = Path(results_dir) / "equivalence.json"
    results_file.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(results_file.read_text()) if results_file.exists() else {}
    table.update(results)
    results_file.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


def check_group(results: dict, reference: tuple[list[float], dict], model: str = "tiny",
                param_tolerance: float = TOLERANCE, state_bytes: bool = True, compared: dict | None = None
                ) -> None:
    """Every run of `results` matches the single-process `reference` within TOLERANCE (the parameters'
    `compared` elements, max_differences), and (`state_bytes`) each rank's parameter / gradient / optimizer bytes
    equal the predictor's `model_state_bytes`; the differences are recorded."""
    ref_losses, ref_params = reference
    found = {}
    for name, result in results.items():
        loss_diff, param_diff = max_differences(result, ref_losses, ref_params, compared)
        found[name] = {"max_loss_diff": loss_diff, "max_param_diff": param_diff,
                       "losses": result.summary["losses"]}
        print(f"{name:32s} max |loss - ref| {loss_diff:.2e}   max |param - ref| {param_diff:.2e}")
        assert loss_diff < TOLERANCE, f"{name}: loss differs by {loss_diff}"
        assert param_diff < param_tolerance, f"{name}: parameters differ by {param_diff}"
    _finish_group(found, results, model, state_bytes)


def check_routed_group(results: dict, reference_of: Callable[[RoutingFlip | None], RoutedReference], model: str,
                       state_bytes: bool = True) -> dict[str, RoutingFlip | None]:
    """check_group for MoE runs: each run is held to the reference whose routing it followed
    (helpers.routing.check_routed_run: the plain one, or one forcing its single near-tie flip), every step's
    loss and logged aux loss within TOLERANCE, and the final parameters within TOLERANCE where the reference's
    step-1 gradient is well conditioned (`well_conditioned`: 96.8% of tiny-moe's elements). The rest are left
    out because AdamW's first step turns fp32 reduction-order noise in a gradient within a few eps of zero into
    a lr-sized move that later steps carry along: after 6 steps one element of layer 2's wv (step-1 gradient
    -3.7e-9) differs by up to 2.1e-5 under cp2 × tp2, by 1.4e-5 under ep4 ZeRO-2, while every well-conditioned
    element is within 3.3e-6 and the loss within 9.5e-7 (measured 2026-12-07, AMD EPYC). Returns each run's flip."""
    found, flips = {}, {}
    for name, result in results.items():
        steps = step_records(result)
        assert len(steps) == result.summary["config"]["steps"], name
        try:
            reference, flips[name], loss_diff = check_routed_run(
                result.summary["losses"], [r["moe_aux_loss"] for r in steps],
                [r["expert_tokens_by_layer"] for r in steps], reference_of, TOLERANCE)
        except AssertionError as failure:
            raise AssertionError(f"{name}: {failure}") from None
        _, param_diff = max_differences(result, reference.losses, reference.params, reference.compared)
        found[name] = {"max_loss_diff": loss_diff, "max_param_diff": param_diff, "losses": result.summary["losses"],
                       "routing_flip": None if flips[name] is None else vars(flips[name])}
        print(f"{name:32s} max |loss - ref| {loss_diff:.2e}   max |param - ref| {param_diff:.2e}"
              f"   flip {flips[name]}")
        assert param_diff < TOLERANCE, f"{name}: parameters differ by {param_diff} (flip {flips[name]})"
    _finish_group(found, results, model, state_bytes)
    return flips


def step_records(result: CaseResult) -> list[dict]:
    """The run's step records (metrics.jsonl)."""
    from bastion.rundir.metrics import read_records
    from bastion.rundir.records import is_step

    return [r for r in read_records(Path(result.summary["config"]["run_dir"])) if is_step(r)]


def _finish_group(found: dict, results: dict, model: str, state_bytes: bool) -> None:
    record(found)
    if state_bytes:
        check_model_state_bytes(results, model)
    check_offloaded_bytes(results, model)


def check_model_state_bytes(results: dict, model: str) -> None:
    """Each rank's parameter / gradient / optimizer bytes, as the step holds them, equal the predictor's
    `model_state_bytes` for bastion's runtime (runtime_fsdp: a pipeline holds every ZeRO stage's parameters
    gathered and its gradients whole until the step's one reduction)."""
    from bastion.predict.memory import model_state_bytes
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    spec = load_model(model)
    for name, result in results.items():
        plan = ParallelPlan.from_dict(result.summary["plan"])
        for rank in result.summary["measured"]["model_state_bytes_by_rank"]:
            predicted = model_state_bytes(spec, plan, rank["pp_rank"], rank["dp_rank"], rank["tp_rank"],
                                          rank.get("cp_rank", 0), runtime_fsdp=True)
            measured = {k: rank[k] for k in ("params", "grads", "optimizer")}
            if plan.zero_stage == 1 and plan.grad_accumulation == 1 and plan.pp == 1:
                # one micro-batch accumulates nothing: FSDP2 reduce-scatters each unit's gradients during the
                # backward (as under ZeRO-2), fewer bytes than ZeRO-1's whole gradients
                assert measured["grads"] < predicted.pop("grads")
                measured.pop("grads")
            assert measured == predicted, f"{name} rank {rank['rank']}: measured {measured} != {predicted}"


def check_offloaded_bytes(results: dict, model: str) -> None:
    """Each rank of a plan with activation_offload copied to host memory in a step exactly the predictor's
    `offloaded_bytes_per_step` for bastion's runtime (its software stack; the CPU's composite norms), and a rank
    of a plan without it nothing."""
    from bastion.predict.memory import offloaded_bytes_per_step
    from bastion.predict.software import software_stack
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    spec = load_model(model)
    for name, result in results.items():
        plan = ParallelPlan.from_dict(result.summary["plan"])
        measured = result.summary["measured"]
        for rank, moved in zip(measured["model_state_bytes_by_rank"], measured["offloaded_bytes_by_rank"],
                               strict=True):
            if not plan.activation_offload:
                assert moved is None, name
                continue
            predicted = offloaded_bytes_per_step(spec, plan, spec.seq_len, rank["pp_rank"], False,
                                                 software_stack("bastion").options)
            assert moved == predicted > 0, f"{name} rank {rank['rank']}: moved {moved} != predicted {predicted}"
