"""The settings a request leaves unstated, taken from its framework's own recipe for that model.

A run described by what its owner knows rarely states its micro-batch, interleaving, recompute or ZeRO stage. Filling
them with the fastest plan that fits biases a prediction fast; a run most likely used its framework's recipe. The
settings come, in this order: the request; the framework's recipe for the nearest model size (data/recipes.toml:
micro-batch, vpp for the recipe's pp, recompute, ZeRO stage); a framework-wide entry of data/recipes.toml; the
release's recipe (data/frameworks.toml `recipe`: sequence_parallel, recompute, zero_stage). What none of them
fixes is the practitioner's choice, which the caller applies and names (PRACTITIONER)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from bastion.errors import ConfigError
from bastion.predict.calibration import DATA_DIR
from bastion.predict.frameworks import FRAMEWORKS, SoftwareFacts, default_recipe
from bastion.specs.model import ModelSpec
from bastion.specs.plan import RECOMPUTE_MODES, chunk_layer_counts

RECIPES_FILE = DATA_DIR / "recipes.toml"
#: the settings an entry of data/recipes.toml may give (pp only qualifies vpp)
MODEL_SETTINGS = ("micro_batch", "vpp", "recompute", "zero_stage")

#: the practitioner's choice for a setting no recipe fixes, as the assumptions name it
PRACTITIONER = {
    "micro_batch": "1, the practitioner's choice where no recipe says (the smallest micro-batch, which the "
                   "Megatron-based recipes of predict/data/recipes.toml use for every model but GPT-3 175B)",
    "fastest": "the practitioner's choice where no recipe says: the fastest combination that fits in memory",
}


@dataclass(frozen=True)
class ModelRecipe:
    """One entry of data/recipes.toml."""

    framework: str
    since: str
    recipe: str
    source: str
    params_b: float | None = None
    micro_batch: int | None = None
    pp: int | None = None
    vpp: int | None = None
    recompute: str | None = None
    zero_stage: int | None = None

    def __post_init__(self) -> None:
        where = f"recipes.toml [[{self.framework}]] {self.recipe!r}"
        fix = f"correct that entry of bastion's packaged {RECIPES_FILE} (or reinstall bastion if you did not edit it)."
        if self.vpp is not None and self.vpp > 1 and self.pp is None:
            raise ConfigError(f"{where}: vpp = {self.vpp} without the pp it was chosen for.", fix=fix)
        if self.recompute is not None and self.recompute not in RECOMPUTE_MODES:
            raise ConfigError(f"{where}: unknown recompute {self.recompute!r}.", fix=fix)
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{where}: zero_stage {self.zero_stage} is not 0-3.", fix=fix)
        if self.params_b is not None and self.params_b <= 0:
            raise ConfigError(f"{where}: params_b {self.params_b} is not a positive size.", fix=fix)


@dataclass(frozen=True)
class RecipeValue:
    """A setting's value and where it comes from, as the assumptions say it."""

    value: Any
    why: str


@dataclass
class RecipeValues:
    """The settings the framework's recipes fix for one request (`values`), and why a recipe's setting was not
    taken (`skipped`: an interleaving chosen for another pp, or one the layers cannot split into)."""

    values: dict[str, RecipeValue] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


@cache
def model_recipes() -> dict[str, tuple[ModelRecipe, ...]]:
    """data/recipes.toml: per framework, its entries."""
    table = tomllib.loads(RECIPES_FILE.read_text())
    out = {}
    for name, entries in table.items():
        if name not in FRAMEWORKS:  # a typo must not silently drop a framework's recipes
            raise ConfigError(f"recipes.toml names an unknown framework '{name}'.",
                              fix=f"use one of {', '.join(sorted(FRAMEWORKS))} in {RECIPES_FILE}.")
        out[name] = tuple(ModelRecipe(framework=name, **entry) for entry in entries)
    return out


def _entries_for(facts: SoftwareFacts) -> tuple[ModelRecipe, ...]:
    """The entries of the newest `since` not after the request's release (no version: the newest)."""
    entries = model_recipes().get(facts.framework, ())
    months = sorted({e.since for e in entries if not facts.version or e.since <= facts.version})
    return tuple(e for e in entries if months and e.since == months[-1])


def _nearest(entries: tuple[ModelRecipe, ...], model: ModelSpec) -> ModelRecipe | None:
    sized = [e for e in entries if e.params_b is not None]
    if not sized or model.num_experts:
        return None
    size = math.log(model.total_params() / 1e9)
    return min(sized, key=lambda e: abs(math.log(e.params_b) - size))


def recipe_values(facts: SoftwareFacts, model: ModelSpec, pp: int) -> RecipeValues:
    """Each setting the request's framework recipes fix for `model` at pipeline degree `pp`, with why; a setting
    absent is for the caller's practitioner's choice (PRACTITIONER)."""
    out = RecipeValues()
    release, where = default_recipe(facts)
    for name, value in release.items():
        out.values[name] = RecipeValue(value, f"the framework's default recipe ({where})")
    entries = _entries_for(facts)
    nearest = _nearest(entries, model)
    for entry in [*(e for e in entries if e.params_b is None), *([nearest] if nearest else [])]:
        size = (f", the nearest recipe size ({entry.params_b:g}B) to this model's "
                f"{model.total_params() / 1e9:.1f}B" if entry.params_b is not None else "")
        why = f"{facts.framework}'s recipe {entry.recipe}{size} ({entry.source}; predict/data/recipes.toml)"
        for name in MODEL_SETTINGS:
            value = getattr(entry, name)
            if value is None:
                continue
            if name == "vpp" and entry.pp is not None and entry.pp != pp:
                out.skipped.append(f"{facts.framework}'s recipe {entry.recipe} interleaves vpp {value} at pp "
                                   f"{entry.pp}, not at this pp {pp}")
            elif name == "vpp" and value > 1 and chunk_layer_counts(model.num_layers, pp * value) is None:
                out.skipped.append(f"{facts.framework}'s recipe {entry.recipe} has vpp {value}, but "
                                   f"{model.num_layers} layers do not split over pp·vpp = {pp * value} chunks")
            else:
                out.values[name] = RecipeValue(value, why)
    return out
