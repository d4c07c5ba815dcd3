"""Software as facts a user knows about their own run: the framework, its release month and a few explicit
behaviours. The release implies a named stack (data/frameworks.toml, each entry citing release notes, docs or
code); an explicit behaviour overrides what the release implies. Nothing here reads a publication's name."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from bastion.errors import ConfigError, did_you_mean
from bastion.predict.calibration import DATA_DIR
from bastion.predict.options import MOE_DISPATCHERS, PredictOptions
from bastion.predict.software import SoftwareStack, software_stack

FRAMEWORKS = ("megatron-lm", "megatron-deepspeed", "deepspeed", "nemo", "megatron-bridge", "nemo-automodel",
              "torchtitan", "llm-foundry", "maxtext", "bastion", "other")
FP8_RECIPES = ("tensorwise", "rowwise", "blockwise", "mxfp8", "delayed", "current")
#: a published attention kernel -> the kernel of data/attention_kernels.toml whose rate it runs at ("" = unfused
#: attention, None = not modelled yet: the release's kernel stands). cuDNN and FlashAttention-3 use the card's
#: newest instructions like the calibrated SDPA.
ATTENTION_KERNELS: dict[str, str | None] = {"flash-attn-2": "flash-attn-2", "flash-attn-3": "sdpa", "cudnn": "sdpa",
                                            "sdpa": "sdpa", "triton": "flash-attn-triton", "unfused": "",
                                            "flex": None}
#: the release month from which PyTorch's SDPA runs a Hopper-native kernel by default: PyTorch 2.5 (2024-10-17)
#: "features a new CuDNN backend for SDPA, enabling speedups by default for users of SDPA on H100s or newer GPUs"
#: (release blog, pytorch/pytorch.github.io _posts/2024-10-17-pytorch2-5.md). Before it SDPA's fastest backend was
#: its flash backend, FlashAttention-2 since PyTorch 2.2 (attention_kernels.toml `flash-attn-2`), so an `sdpa` fact
#: with an earlier framework_version runs at FlashAttention-2's rate (on Ampere that is the calibrated rate; on
#: Hopper the kernel does not use the card's newest instructions). From 2024-10 on `sdpa` keeps the calibrated rate
#: (torch 2.11's SDPA); which backend each later release prefers by default is not modelled here.
SDPA_HOPPER_KERNEL_SINCE = "2024-10"
#: the software columns a case file may carry (after the schema's fixed columns)
FACT_COLUMNS = ("framework", "framework_version", "compile", "fp8_recipe", "attention_kernel", "tp_overlap",
                "activation_offload", "recompute_layers", "facts_source")
#: the mixture-of-experts software columns a case file may carry (after the MoE columns): the token dispatcher and
#: whether the expert-parallel all-to-all is hidden under another micro-batch's compute
MOE_FACT_COLUMNS = ("moe_dispatcher", "moe_a2a_overlap")
_VERSION = re.compile(r"^(19|20)\d\d-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class FrameworkRelease:
    framework: str
    since: str
    stack: str
    source: str
    #: settings of the framework's default recipe, for a request that leaves them unstated (RECIPE_SETTINGS)
    recipe: dict[str, Any] = field(default_factory=dict)
    #: the MoE token dispatcher the release runs unless told otherwise ("" = the stack's), and where that is
    #: documented
    moe_dispatcher: str = ""
    moe_dispatcher_source: str = ""
    #: the flash kernel the release's fp8 plans run (PredictOptions.fp8_attention_kernel; "" = the stack's)
    fp8_attention_kernel: str = ""


#: what a framework's default recipe may fill in: sequence_parallel (when tp > 1), recompute and zero_stage
RECIPE_SETTINGS = ("sequence_parallel", "recompute", "zero_stage")


@dataclass(frozen=True)
class SoftwareFacts:
    """What a user states about their software; empty / None = not stated."""

    framework: str = ""
    version: str = ""
    compile: bool | None = None
    fp8_recipe: str = ""
    attention_kernel: str = ""
    tp_overlap: bool | None = None
    activation_offload: int | None = None
    recompute_layers: int | None = None
    #: the MoE token dispatcher (options.MOE_DISPATCHERS) and whether the expert-parallel all-to-all is hidden
    #: under another micro-batch's compute (Megatron-Core --overlap-moe-expert-parallel-comm, DeepSeek's DualPipe)
    moe_dispatcher: str = ""
    moe_a2a_overlap: bool | None = None

    def __post_init__(self) -> None:
        _one_of("framework", self.framework, FRAMEWORKS)
        _one_of("moe_dispatcher", self.moe_dispatcher, MOE_DISPATCHERS)
        if self.version and not _VERSION.match(self.version):
            raise ConfigError(f"framework_version '{self.version}' is not a release month.",
                              fix="give it as YYYY-MM (the container or release month; for a commit, its month).")
        _one_of("fp8_recipe", self.fp8_recipe, FP8_RECIPES)
        _one_of("attention_kernel", self.attention_kernel, tuple(ATTENTION_KERNELS))
        for name in ("activation_offload", "recompute_layers"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} = {value} is negative.", fix=f"give {name} as a number of layers >= 0.")

    @property
    def known(self) -> bool:
        return bool(self.framework) and self.framework in _releases()


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value and value not in allowed:
        raise ConfigError(f"Unknown {name} '{value}'.{did_you_mean(value, allowed)}",
                          fix=f"use one of: {', '.join(allowed)}.")


@cache
def _table() -> dict:
    return tomllib.loads((DATA_DIR / "frameworks.toml").read_text())


@cache
def _releases() -> dict[str, tuple[FrameworkRelease, ...]]:
    out = {}
    for name, entries in _table().items():
        if not isinstance(entries, list):
            continue
        if name not in FRAMEWORKS:  # a typo in the data file must not silently become "unknown framework"
            raise ConfigError(f"frameworks.toml names an unknown framework '{name}'.")
        releases = tuple(FrameworkRelease(framework=name, **entry) for entry in entries)
        for r in releases:
            _one_of("moe_dispatcher", r.moe_dispatcher, MOE_DISPATCHERS)
            if set(r.recipe) - set(RECIPE_SETTINGS):
                raise ConfigError(f"frameworks.toml [[{name}]] since {r.since}: unknown recipe settings "
                                  f"{', '.join(sorted(set(r.recipe) - set(RECIPE_SETTINGS)))}.")
        if [r.since for r in releases] != sorted(r.since for r in releases):
            raise ConfigError(f"frameworks.toml [[{name}]] entries are not in order of `since`.")
        out[name] = releases
    return out


def framework_releases() -> dict[str, tuple[FrameworkRelease, ...]]:
    """The mapping of data/frameworks.toml: per framework, its releases in order."""
    return dict(_releases())


def release_for(framework: str, version: str) -> tuple[FrameworkRelease | None, str]:
    """The entry a framework release falls under and how it was chosen (None: the framework has no entries)."""
    releases = _releases().get(framework)
    if not releases:
        return None, ""
    if not version:
        return releases[-1], f"framework_version not given: its newest entry (since {releases[-1].since})"
    found = [r for r in releases if r.since <= version]
    if not found:
        return releases[0], f"{version} is before the first entry (since {releases[0].since}): that entry"
    return found[-1], f"{version} falls under the entry since {found[-1].since}"


def default_recipe(facts: SoftwareFacts) -> tuple[dict[str, Any], str]:
    """The settings the framework release's default recipe uses (empty when none is documented) and where that
    is documented."""
    release, _ = release_for(facts.framework, facts.version)
    if release is None or not release.recipe:
        return {}, ""
    return dict(release.recipe), f"{facts.framework} from {release.since}, predict/data/frameworks.toml"


def resolve(facts: SoftwareFacts) -> tuple[SoftwareStack, PredictOptions, list[str]]:
    """The stack the facts imply, the options with every explicit behaviour applied, and the assumptions that say
    where each came from (an unknown or unstated framework takes the documented default stack)."""
    release, how = release_for(facts.framework, facts.version)
    notes: list[str] = []
    if release is None:
        table = _table()
        stack = software_stack(table["unknown_framework_stack"])
        said = f"framework '{facts.framework}' has no documented releases" if facts.framework else \
            "framework not given"
        notes.append(f"software: {said}; assumed {stack.name}, {table['unknown_framework_why']} "
                     "(predict/data/frameworks.toml)")
    else:
        stack = software_stack(release.stack)
        notes.append(f"software: {facts.framework} {facts.version or '(version not given)'} -> {stack.name}; "
                     f"{how} ({release.source})")
    options = stack.options
    if release is not None and release.moe_dispatcher:
        options = replace(options, moe_dispatcher=release.moe_dispatcher)
    if release is not None and release.fp8_attention_kernel:
        options = replace(options, fp8_attention_kernel=release.fp8_attention_kernel)
        notes.append(f"fp8 plans: attention as {release.fp8_attention_kernel} (the release's fp8 library brings "
                     f"its own kernel; predict/data/frameworks.toml)")
    if facts.moe_dispatcher:
        options = replace(options, moe_dispatcher=facts.moe_dispatcher)
        notes.append(f"moe_dispatcher: {facts.moe_dispatcher} (given)")
    if facts.moe_a2a_overlap is not None:
        options = replace(options, moe_a2a_overlap=1.0 if facts.moe_a2a_overlap else 0.0)
        notes.append(f"moe_a2a_overlap: {'on' if facts.moe_a2a_overlap else 'off'} (given: the expert-parallel "
                     f"all-to-all {'hidden under' if facts.moe_a2a_overlap else 'not overlapped with'} another "
                     f"micro-batch's compute)")
    if facts.compile is not None and facts.compile != options.compiled:
        options = replace(options, compiled=facts.compile)
        notes.append(f"compile: {'on' if facts.compile else 'off'} (given)")
    if facts.attention_kernel:
        kernel = ATTENTION_KERNELS[facts.attention_kernel]
        if kernel is None:
            notes.append(f"attention_kernel {facts.attention_kernel}: not modelled yet, the release's kernel "
                         f"({options.attention_kernel}) stands")
        elif kernel == "":
            options = replace(options, flash_attention=False, fp8_attention_kernel="")
            notes.append("attention_kernel: unfused (given)")
        else:
            why = ""
            if facts.attention_kernel == "sdpa" and facts.version and facts.version < SDPA_HOPPER_KERNEL_SINCE:
                kernel = "flash-attn-2"
                why = (f" (PyTorch's SDPA of {facts.version} runs FlashAttention-2: its cuDNN backend came with "
                       f"PyTorch 2.5, {SDPA_HOPPER_KERNEL_SINCE})")
            options = replace(options, flash_attention=True, attention_kernel=kernel, fp8_attention_kernel="")
            notes.append(f"attention_kernel: {facts.attention_kernel} (given), at the rate of {kernel}{why}")
    if facts.fp8_recipe:
        options = replace(options, fp8_recipe=facts.fp8_recipe)
        notes.append(f"fp8_recipe: {facts.fp8_recipe} (given; its quantisation traffic and GEMM rate apply to fp8 "
                     f"plans, predict/data/fp8_recipes.toml)")
    # recompute_layers and activation_offload are plan fields (ParallelPlan), which the row's plan carries
    unmodelled = [f"tp_overlap = {facts.tp_overlap}"] if facts.tp_overlap is not None else []
    if unmodelled:
        notes.append(f"{', '.join(unmodelled)}: accepted, not modelled yet (no effect on the prediction)")
    return stack, options, notes


def _flag(text: str, name: str) -> bool | None:
    if not text:
        return None
    if text not in ("0", "1"):
        raise ConfigError(f"{name} = {text!r} is not 0 or 1.", fix=f"give {name} as 0 (off) or 1 (on).")
    return text == "1"


def _count(text: str, name: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(f"{name} = {text!r} is not a whole number of layers.", fix=f"give {name} as 0, 1, 2, ...")
    return int(text)


def facts_from_row(row: dict[str, str]) -> SoftwareFacts:
    """The software facts of a case-file row (its optional columns); a bad value raises ConfigError."""
    cell = {k: (row.get(k) or "").strip() for k in (*FACT_COLUMNS, *MOE_FACT_COLUMNS)}
    return SoftwareFacts(framework=cell["framework"], version=cell["framework_version"],
                         compile=_flag(cell["compile"], "compile"), fp8_recipe=cell["fp8_recipe"],
                         attention_kernel=cell["attention_kernel"], tp_overlap=_flag(cell["tp_overlap"], "tp_overlap"),
                         activation_offload=_count(cell["activation_offload"], "activation_offload"),
                         recompute_layers=_count(cell["recompute_layers"], "recompute_layers"),
                         moe_dispatcher=cell["moe_dispatcher"],
                         moe_a2a_overlap=_flag(cell["moe_a2a_overlap"], "moe_a2a_overlap"))


def command_software(software: str, framework: str | None, version: str | None
                     ) -> tuple[SoftwareStack, PredictOptions, list[str]]:
    """What `estimate` / `plan` / `cost` predict for: the named stack (`--software`), or the stack a framework
    release implies (`--framework`, `--framework-version`), with the assumptions that say which."""
    if framework is None:
        if version:
            raise ConfigError("--framework-version was given without --framework.",
                              fix="add --framework NAME (one of: " + ", ".join(FRAMEWORKS) + ").")
        stack = software_stack(software)
        return stack, stack.options, [f"software: {stack.name} ({stack.description})"]
    if software != "bastion":
        raise ConfigError(f"--software {software} and --framework {framework} were both given.",
                          fix="give either a named stack (--software) or your framework and its release "
                              "(--framework, --framework-version), not both.")
    return resolve(SoftwareFacts(framework=framework, version=version or ""))
