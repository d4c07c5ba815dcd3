"""The options of one training run, as a plain dataclass (the CLI builds it; every worker receives it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.errors import ConfigError
from bastion.runtime.resilience_config import ResilienceConfig
from bastion.specs.model import ModelSpec, load_model
from bastion.specs.plan import ParallelPlan


def profile_steps(text: str | None) -> tuple[int, int] | None:
    """`--profile START:END` as the first and last (1-based) step traced; None when not asked for."""
    if not text:
        return None
    start, sep, end = str(text).partition(":")
    if not (sep and start.strip().isdigit() and end.strip().isdigit()) or not 1 <= int(start) <= int(end):
        raise ConfigError(f"--profile {text!r} is not START:END with 1 <= START <= END.",
                          fix="give the steps to trace, e.g. --profile 5:7 (steps 5, 6 and 7).")
    return int(start), int(end)


#: torchao Float8LinearRecipeName values bastion accepts (the software facts' fp8_recipe names map here); kept
#: here, torch-free, so that `bastion train` checks --fp8-recipe without importing torch in the front process
FP8_RECIPES = ("tensorwise", "rowwise", "rowwise_with_gw_hp")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (the CLI builds it from `bastion train` options)."""

    #: model preset name or model file, or the resolved ModelSpec (a launched worker gets it from its run config)
    model: str | ModelSpec
    #: ParallelPlan file (JSON/TOML), or the resolved plan
    plan: str | ParallelPlan
    #: token dataset directory (`bastion data prepare`), or a mixture `DIR_A=0.7,DIR_B=0.3`
    data: str
    #: optimizer steps to run
    steps: int
    #: where metrics.jsonl, summary.json, plan.json, model.json and checkpoints/ go
    run_dir: str
    #: seed of the parameter init and the data order
    seed: int = 0
    #: sequence length (default: the model's)
    seq_len: int | None = None
    #: peak learning rate
    lr: float = 1e-3
    #: linear warmup steps (capped at a tenth of the run)
    warmup_steps: int = 10
    #: decay after the warmup: cosine, linear or constant
    lr_decay: str = "cosine"
    #: decay floor as a fraction of lr
    min_lr_ratio: float = 0.1
    #: AdamW decoupled weight decay (matrices only)
    weight_decay: float = 0.1
    #: AdamW betas and eps
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    #: global gradient-norm clip
    max_grad_norm: float = 1.0
    #: torch.compile each block (the whole model on one device)
    compile: bool = False
    #: torchao scaling recipe of an fp8 plan (runtime/float8.py): one of FP8_RECIPES
    fp8_recipe: str = "tensorwise"
    #: cluster spec used for MFU and the prediction (default cpu:<world> on CPU)
    cluster: str | None = None
    #: show a progress bar on rank 0
    progress: bool = True
    #: hash the full parameters into summary.json (gathers them to rank 0)
    hash_params: bool = True
    #: also save the full final parameters to RUN_DIR/final_params.pt (equivalence tests)
    save_final_params: bool = False
    #: Hugging Face Llama directory whose weights replace the random init of a fresh run (not on resume)
    init_from: str | None = None
    #: evaluate on the held-out split every N steps and at the end (0 = never)
    eval_every: int = 0
    #: global batches of held-out samples per evaluation
    eval_batches: int = 1
    #: also write TensorBoard event files to RUN_DIR/tensorboard
    tensorboard: bool = False
    #: "START:END": a torch.profiler Chrome trace of those steps in RUN_DIR/profile
    profile: str | None = None
    #: a rank this many times slower than its peers (or the predicted step time) is a straggler
    #: (runtime/stragglers.py)
    straggler_factor: float = 1.5
    #: this worker's replica group and the run's number of them (--fault-tolerance torchft,
    #: launch/replica_groups.py; `plan` is then one group's plan)
    replica_group: int = 0
    replica_groups: int = 1
    #: checkpoints, resume, fault injection, watchdog, NaN rollback (runtime/resilience.py)
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)

    def resolved_model(self) -> ModelSpec:
        spec = self.model if isinstance(self.model, ModelSpec) else load_model(self.model)
        return spec.with_seq_len(self.seq_len) if self.seq_len else spec

    def resolved_plan(self) -> ParallelPlan:
        return self.plan if isinstance(self.plan, ParallelPlan) else ParallelPlan.load(self.plan)
