"""Checks of flag values that several commands share (torch-free, cheap to import)."""

from __future__ import annotations

import math

from bastion.errors import ConfigError


def check_seq_len(seq_len: int | None) -> None:
    """--seq-len, when given, is a positive token count (0 must not silently mean "the model's")."""
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"--seq-len must be >= 1, got {seq_len}.",
                          fix="give the tokens per sequence (e.g. --seq-len 4096), or leave it out for the model's.")


def check_tokens(tokens: float | None) -> None:
    """--tokens, when given, is a finite positive token budget."""
    if tokens is not None and not (math.isfinite(tokens) and tokens > 0):
        raise ConfigError(f"--tokens must be a positive number of tokens, got {tokens:g}.",
                          fix="give the token budget, e.g. --tokens 15e12.")
