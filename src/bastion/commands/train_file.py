"""`bastion train --config run.toml` (and `bastion launch --config`): every training setting in one file, any of
them overridden on the command line by its flag or by `--set KEY=VALUE`.

    model = "tiny"                 plan = "plan.json"         data = "data"   # or { "web" = 0.7, "code" = 0.3 }
    # plan: a ParallelPlan file, or the plan itself: plan = { dp = 2, micro_batch = 1, global_batch = 8 }
    steps = 200                    run_dir = "runs/first"     seed = 0        seq_len = 128
    [optimizer]  lr = 3e-4   betas = [0.9, 0.95]   weight_decay = 0.1   eps = 1e-8
    [schedule]   warmup_steps = 10   decay = "cosine"   min_lr_ratio = 0.1      # decay: cosine, linear, constant
    [clipping]   max_grad_norm = 1.0
    [checkpoint] every = 50   keep_last = 3   keep_every = 0   async = true     # every: N, "auto" or "never"
    [eval]       every = 50   batches = 4
    [logging]    progress = true   tensorboard = false   profile = "5:7"

Precedence: a flag given on the command line, then `--set`, then the file, then the flag's default. Relative paths
in the file are relative to the file's directory. An unknown key is an error naming the known ones. The resolved
settings land in RUN_DIR/run_config.json like any `bastion train` run (that file, not this one, is what a
restarted or requeued job reads). No torch here.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, did_you_mean
from bastion.runtime.train_config import TrainConfig

#: file key -> the `bastion train` parameter it sets (a flag's name, or a TrainConfig field without a flag)
KEYS: dict[str, str] = {
    "model": "model", "plan": "plan", "data": "data", "steps": "steps", "run_dir": "run_dir", "nproc": "nproc",
    "seed": "seed", "seq_len": "seq_len", "compile": "compile_model", "fp8_recipe": "fp8_recipe",
    "cluster": "cluster",
    "max_restarts": "max_restarts",
    "optimizer.lr": "lr", "optimizer.betas": "betas", "optimizer.weight_decay": "weight_decay",
    "optimizer.eps": "eps",
    "schedule.warmup_steps": "warmup_steps", "schedule.decay": "lr_decay", "schedule.min_lr_ratio": "min_lr_ratio",
    "clipping.max_grad_norm": "max_grad_norm",
    "checkpoint.every": "checkpoint_every", "checkpoint.keep_last": "keep_last",
    "checkpoint.keep_every": "keep_every", "checkpoint.async": "async_checkpoint",
    "checkpoint.mtbf_hours": "mtbf_hours", "checkpoint.resume": "resume", "checkpoint.resume_from": "resume_from",
    "checkpoint.key_file": "checkpoint_key_file", "checkpoint.hang_timeout_s": "hang_timeout_s",
    "eval.every": "eval_every", "eval.batches": "eval_batches",
    "logging.progress": "progress", "logging.tensorboard": "tensorboard", "logging.profile": "profile",
}
#: keys whose values are paths (relative to the file's directory)
PATH_KEYS = ("plan", "data", "run_dir", "checkpoint.resume_from", "checkpoint.key_file")
#: settings with no flag of their own (set by the file or --set only): TrainConfig fields, with its defaults
FILE_ONLY = {name: TrainConfig.__dataclass_fields__[name].default
             for name in ("betas", "weight_decay", "eps", "warmup_steps", "lr_decay", "min_lr_ratio", "max_grad_norm")}
LR_DECAYS = ("cosine", "linear", "constant")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in ("data", "plan"):  # tables that are one setting
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _check_key(key: str, where: str) -> None:
    if key not in KEYS:
        raise ConfigError(f"{where}: unknown setting '{key}'.{did_you_mean(key, KEYS)}",
                          fix=f"use one of: {', '.join(KEYS)}.")


def _mixture_text(value: Any, where: str) -> str:
    """`data` as `bastion train --data` takes it: a directory, or DIR=WEIGHT,... from a table."""
    if isinstance(value, dict):
        return ",".join(f"{name}={weight}" for name, weight in value.items())
    if not isinstance(value, str):
        raise ConfigError(f"{where}: data must be a directory or a table of directory = weight.",
                          fix='e.g. data = "data" or data = { "web" = 0.7, "code" = 0.3 }.')
    return value


def _relative_to(value: Any, base: Path, key: str) -> Any:
    if key == "data":
        parts = []
        for item in value.split(","):
            name, sep, weight = item.rpartition("=") if "=" in item else (item, "", "")
            parts.append(f"{base / name}{sep}{weight}")
        return ",".join(parts)
    return str(base / value) if isinstance(value, str) else value


def read_toml(path: Path, what: str, example: str) -> dict[str, Any]:
    """A TOML file as a table; a missing, unreadable or malformed file is a guidance error naming it as `what`
    (e.g. "--config run.toml")."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist.", fix=f"give the path of a {example}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read {what}: {exc}.", fix="give a readable TOML file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} is not valid TOML: {exc}.", fix="fix the file's syntax.") from None


def load_config_file(path: Path) -> dict[str, Any]:
    """The file's settings as {parameter name: value}; unknown keys and unreadable files are guidance errors."""
    table = read_toml(path, f"--config {path}", "run.toml")
    if isinstance(table.get("train"), dict):  # a task file (`bastion launch TASK`): its [train] table is the config
        table = table["train"]
    values: dict[str, Any] = {}
    for key, value in _flatten(table).items():
        _check_key(key, str(path))
        if key == "data":
            value = _mixture_text(value, str(path))
        elif key in PATH_KEYS and not isinstance(value, str) and not (key == "plan" and isinstance(value, dict)):
            raise ConfigError(f"{path}: {key} must be a path (a string), got {value!r}.",
                              fix=f'write it in quotes, e.g. {key} = "{value}".')
        if key in PATH_KEYS:
            value = _relative_to(value, Path(path).parent, key)
        values[KEYS[key]] = value
    return values


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` overrides as {parameter name: value}; VALUE is read as TOML (3e-4, [0.9, 0.99], true),
    else as a string."""
    values: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not KEY=VALUE.", fix="e.g. --set optimizer.lr=3e-4.")
        _check_key(key, f"--set {item}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        if key in PATH_KEYS and not isinstance(value, str):  # a directory named 0 is a path, not a number
            value = raw.strip()
        values[KEYS[key]] = _mixture_text(value, f"--set {item}") if key == "data" else value
    return values


def check_optimizer_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The settings without flags, defaults filled in and checked: {TrainConfig field: value}."""
    import math

    out = {name: values.get(name, default) for name, default in FILE_ONLY.items()}

    def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> float:
        value = out[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < low or value > high or (low_open and value == low):
            bound = f"above {low:g}" if low_open else f"from {low:g}" + (f" to {high:g}" if high < math.inf else "")
            raise ConfigError(f"{_key_of(name)} must be a number {bound}, got {value!r}.",
                              fix=f"set it in the config file or with --set {_key_of(name)}=VALUE.")
        return float(value)

    out["weight_decay"] = number("weight_decay", 0.0)
    out["eps"] = number("eps", 0.0, low_open=True)
    out["min_lr_ratio"] = number("min_lr_ratio", 0.0, 1.0)
    out["max_grad_norm"] = number("max_grad_norm", 0.0, low_open=True)
    warmup = out["warmup_steps"]
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"schedule.warmup_steps must be a whole number >= 0, got {warmup!r}.",
                          fix="e.g. --set schedule.warmup_steps=10.")
    betas = out["betas"]
    if (not isinstance(betas, list | tuple) or len(betas) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"optimizer.betas must be two numbers from 0 to below 1, got {betas!r}.",
                          fix="e.g. --set 'optimizer.betas=[0.9, 0.95]'.")
    out["betas"] = (float(betas[0]), float(betas[1]))
    if out["lr_decay"] not in LR_DECAYS:
        raise ConfigError(f"schedule.decay must be one of {', '.join(LR_DECAYS)}, got {out['lr_decay']!r}."
                          f"{did_you_mean(str(out['lr_decay']), LR_DECAYS)}", fix="e.g. --set schedule.decay=cosine.")
    return out


def _key_of(name: str) -> str:
    return next(key for key, param in KEYS.items() if param == name)
