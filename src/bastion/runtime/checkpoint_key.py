"""The optional checkpoint key: where it comes from and what a usable one is. Pure Python (no torch).

With a key, every checkpoint's manifest carries an HMAC-SHA256 made with it, and resuming refuses a checkpoint
whose manifest does not (checkpoint_files.verify). The key comes from `--checkpoint-key-file PATH` (the file's
bytes, surrounding whitespace stripped) or else from the environment variable BASTION_CHECKPOINT_KEY. Only the
file's path travels on worker command lines, never the key; workers inherit the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from bastion.errors import ConfigError

KEY_ENV = "BASTION_CHECKPOINT_KEY"
#: shortest key accepted, in bytes (HMAC-SHA256 is as strong as its key; 32 random bytes is the usual choice)
MIN_KEY_BYTES = 16
_MAKE_ONE = "head -c 32 /dev/urandom | base64 > ckpt.key && chmod 600 ckpt.key"


def checkpoint_key(key_file: str | Path | None = None) -> bytes | None:
    """The key from `key_file` if given, else from $BASTION_CHECKPOINT_KEY, else None (no authentication)."""
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"--checkpoint-key-file {key_file}: cannot read it ({exc.strerror or exc}).",
                              fix="give a readable file holding the checkpoint key.", hint=_MAKE_ONE) from exc
        source = f"--checkpoint-key-file {key_file}"
    elif KEY_ENV in os.environ:
        key = os.environ[KEY_ENV].strip().encode()
        source = f"${KEY_ENV}"
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"The checkpoint key from {source} has {len(key)} byte(s); at least {MIN_KEY_BYTES} "
                          f"are needed for the HMAC to authenticate anything.",
                          fix="use a long random key (the same one for every run that resumes these checkpoints).",
                          hint=_MAKE_ONE)
    return key
