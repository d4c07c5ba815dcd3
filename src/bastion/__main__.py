"""`python -m bastion ...` — the same CLI; torchrun (here, under srun, in a pod) starts each worker as `-m bastion
_worker RUN_CONFIG` (runtime/worker_entry.py), which goes straight to the worker: building the whole CLI (typer and every
command module, about 0.4 CPU-s) for each worker of each launch and restart is time every run waits for."""

import os
import sys
from pathlib import Path

from bastion.launch.worker import TRAIN_WORKER
from bastion.runtime.worker_entry import start_worker

if len(sys.argv) == 3 and sys.argv[1] == TRAIN_WORKER:
    from bastion.errors import USER_ERROR_EXIT, BastionError

    try:
        start_worker(Path(sys.argv[2]))
    except BastionError as exc:  # as the CLI reports it (cli.py): the guidance, exit 2, no traceback
        if os.environ.get("BASTION_DEBUG") == "1":
            raise
        print(f"error: {exc.render()}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
else:
    from bastion.cli import main

    main()
