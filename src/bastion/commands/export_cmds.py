"""`bastion export RUN_DIR --format hf --out DIR`: a run's committed checkpoint as a Hugging Face model directory.

Everything a user can get wrong (format, output place, checkpoint, model, tokenizer) is checked here before any
tensor is read; the tensor work is runtime/hf_weights.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bastion.cli import app
from bastion.commands.options import number_option
from bastion.errors import CheckpointError, ConfigError, DataError

FORMATS = ("hf",)
DTYPES = ("saved", "float32", "bfloat16", "float16")
#: the largest --max-shard-mb: a petabyte, far above any model, and still a whole number of bytes
MAX_SHARD_MB = 1e9


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="Run directory (or one of its checkpoints/step-NNNNNNNN)."),
    out: Path = typer.Option(..., "--out", help="Directory to write (new, or empty)."),
    export_format: str = typer.Option("hf", "--format", help="Output format: hf (transformers' Llama, Mixtral, "
                                      "DeepSeek-V3, Qwen3 or Qwen3-MoE, as the model is)."),
    step: Annotated[int | None, number_option("--step", help="Export this step's checkpoint (default: the "
                                              "newest).", integer=True, low=0)] = None,
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer to ship (tokenizer.json or a "
                                          "directory of tokenizer files); default: the one the run's dataset "
                                          "was prepared with."),
    no_tokenizer: bool = typer.Option(False, "--no-tokenizer", help="Ship no tokenizer files."),
    dtype: str = typer.Option("saved", "--dtype", help="Weight type: saved (the checkpoint's), float32, bfloat16 "
                                                       "or float16."),
    max_shard_mb: Annotated[float, number_option("--max-shard-mb", help="Split model.safetensors into shards of "
                                                 "at most this many MB (with model.safetensors.index.json).",
                                                 above=0, high=MAX_SHARD_MB, fix="e.g. --max-shard-mb 5000.")
                            ] = 5000.0,
    checkpoint_key_file: Path | None = typer.Option(None, "--checkpoint-key-file", help="Key the checkpoints "
                                                    "were saved with (default: $BASTION_CHECKPOINT_KEY)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a committed checkpoint of RUN_DIR as a model directory other tools load (transformers, vLLM)."""
    from bastion.interop.hf_config import check_exportable
    from bastion.interop.hf_files import require_safetensors
    from bastion.runtime.checkpoint_key import checkpoint_key

    if export_format not in FORMATS:
        raise ConfigError(f"--format {export_format!r} is not known.", fix=f"use one of: {', '.join(FORMATS)}.")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not known.", fix=f"use one of: {', '.join(DTYPES)}.")
    if tokenizer is not None and no_tokenizer:
        raise ConfigError("--tokenizer and --no-tokenizer contradict each other.", fix="give one of them.")
    _check_out(out)
    require_safetensors()
    checkpoint = _checkpoint(run_dir, step, checkpoint_key(checkpoint_key_file))
    spec = _checkpoint_spec(checkpoint)
    check_exportable(spec)
    train = _run_train_config(run_dir, checkpoint)
    tokenizer_files = [] if no_tokenizer else _tokenizer_files(train, tokenizer)

    from bastion.runtime.hf_weights import export_hf, torch_dtype

    written = export_hf(checkpoint, spec, out, tokenizer_files, max_shard_bytes=int(max_shard_mb * 1e6),
                        dtype=None if dtype == "saved" else torch_dtype(dtype), token_ids=_init_token_ids(train))
    written["step"] = int(checkpoint.name.removeprefix("step-"))
    if as_json:
        typer.echo(json.dumps(written))
        return
    shipped = ", ".join(written["tokenizer"]) or "no tokenizer"
    typer.echo(f"wrote {out}: step {written['step']} of '{spec.name}', {written['tensors']} tensors "
               f"({written['bytes'] / 1e6:.1f} MB) in {len(written['files'])} safetensors file(s), config.json, "
               f"generation_config.json, {shipped}")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not an empty directory.",
                          fix="give a new directory (it is created), or remove the old export first.")


def _checkpoint(run_dir: Path, step: int | None, key: bytes | None) -> Path:
    """The committed, verified checkpoint to export."""
    from bastion.rundir import checkpoints as cf
    from bastion.rundir.layout import checkpoints_dir
    from bastion.runtime.checkpoint_trust import metadata_problem

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory.", fix="give the --run-dir of a `bastion train` run.")
    if (run_dir / cf.MANIFEST).is_file():
        number = run_dir.name.removeprefix("step-")
        infos = [cf.CheckpointInfo(int(number) if number.isdigit() else -1, run_dir)]
    else:
        infos = cf.with_manifest(checkpoints_dir(run_dir))
    if not infos:
        raise CheckpointError(f"{run_dir} holds no committed checkpoint.",
                              fix="train with --checkpoint-every N (checkpoints are what export reads).",
                              hint=f"ls {checkpoints_dir(run_dir)}")
    if step is not None:
        chosen = [info for info in infos if info.step == step]
        if not chosen:
            raise CheckpointError(f"{run_dir} has no checkpoint of step {step}.",
                                  fix=f"use one of the steps it has: {', '.join(str(i.step) for i in infos)}.")
        info = chosen[0]
    else:
        info = infos[-1]
    problem = cf.verify(info.path, key) or metadata_problem(info.path)
    if problem is not None:
        raise CheckpointError(f"The checkpoint at {info.path} cannot be exported: {problem}.",
                              fix="export another step (--step N) whose checkpoint is intact.")
    return info.path


def _checkpoint_spec(checkpoint: Path):
    from bastion.rundir.checkpoints import CheckpointInfo
    from bastion.runtime.resume_source import checkpoint_model

    return checkpoint_model(CheckpointInfo(-1, checkpoint))


def _init_token_ids(train: dict | None) -> dict:
    """bos/eos/pad ids of the --init-from model's config, when the run started from one."""
    from bastion.interop.hf_config import token_ids
    from bastion.interop.hf_files import CONFIG_FILE

    if not train or not train.get("init_from"):
        return {}
    try:
        return token_ids(json.loads((Path(train["init_from"]) / CONFIG_FILE).read_text()))
    except (OSError, ValueError, AttributeError):
        return {}   # moved or gone since the run: the export carries no token ids, as for a run from scratch


def _tokenizer_files(train: dict | None, given: Path | None) -> list[Path]:
    """The tokenizer files to ship: --tokenizer's, else the run's dataset's copy (data prepare --tokenizer), else
    those of the --init-from directory; none for a byte-level dataset."""
    from bastion.interop.hf_files import TOKENIZER_FILES

    if given is not None:
        if given.is_file():
            return [given]
        found = [given / name for name in TOKENIZER_FILES if (given / name).is_file()]
        if not found:
            raise DataError(f"--tokenizer {given} is neither a tokenizer file nor a directory holding one "
                            f"({', '.join(TOKENIZER_FILES)}).", fix="give the tokenizer.json the data was "
                                                                    "prepared with.")
        return found
    if train is None:
        return []
    from bastion.runtime.data import META_FILE, TOKENIZER_FILE, parse_data_mixture

    # the first dataset of a mixture (DIR_A=0.7,DIR_B=0.3): the datasets of one run share their tokenizer
    data = Path(parse_data_mixture(str(train.get("data") or ""))[0][0])
    try:
        meta = json.loads((data / META_FILE).read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"{META_FILE} is not a JSON object")
    except (OSError, ValueError) as exc:
        raise DataError(f"The run's dataset {data} cannot be read ({exc}), so its tokenizer is unknown.",
                        fix="give --tokenizer PATH (the tokenizer.json the data was prepared with), or "
                            "--no-tokenizer.") from exc
    if meta.get("tokenizer", "byte") == "byte":
        return []
    if (data / TOKENIZER_FILE).is_file():
        return [data / TOKENIZER_FILE]
    init_from = Path(train["init_from"]) if train.get("init_from") else None
    if init_from is not None and (init_from / TOKENIZER_FILE).is_file():
        return [init_from / name for name in TOKENIZER_FILES if (init_from / name).is_file()]
    raise DataError(f"The run's dataset {data} was tokenised with {meta['tokenizer']}, but holds no copy of it "
                    f"({TOKENIZER_FILE}).", fix="give --tokenizer PATH (the tokenizer.json the data was prepared "
                                                "with), or --no-tokenizer to export the weights alone.")


def _run_train_config(run_dir: Path, checkpoint: Path) -> dict | None:
    """The `train` section of the run's run_config.json (next to checkpoints/), or None when there is none."""
    from bastion.rundir.layout import RUN_CONFIG_FILE

    for candidate in (run_dir, checkpoint.parent.parent):
        path = candidate / RUN_CONFIG_FILE
        if path.is_file():
            try:
                train = json.loads(path.read_text())["train"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
            return train if isinstance(train, dict) else None
    return None
