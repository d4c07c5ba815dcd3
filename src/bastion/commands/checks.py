"""Checks of flag values that several commands share (torch-free, cheap to import).

TODO(issue 12): `train` and `launch` take `commands/options.py`'s SeqLen, which checks --seq-len as it is parsed;
then this module goes.
"""

from __future__ import annotations

from bastion.errors import ConfigError


def check_seq_len(seq_len: int | None) -> None:
    """--seq-len, when given, is a positive token count (0 must not silently mean "the model's")."""
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"--seq-len must be >= 1, got {seq_len}.",
                          fix="give the tokens per sequence (e.g. --seq-len 4096), or leave it out for the model's.")
