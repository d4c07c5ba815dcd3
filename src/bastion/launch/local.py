"""Local launch: torchrun on this machine, for `bastion train` and `bastion launch --on local`.

Single host and offline: the rendezvous and the agent's own address are given as 127.0.0.1 (not `localhost` or the
host name), gloo binds the loopback interface, and the agent (`runtime/local_agent.py`, torchrun itself) and the
workers answer host-name lookups from /etc/hosts only: nothing is sent to a name server, no packet leaves the host.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from bastion.errors import LaunchError
from bastion.launch.request import default_python
from bastion.launch.worker import process_environment, worker_command, worker_env

#: the address everything of a local run binds to and connects to
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def torchrun_command(nproc: int, max_restarts: int, config_path: str, python: str = "") -> list[str]:
    """`python -m bastion.runtime.local_agent (torchrun's options) -m bastion _worker CONFIG` as an argument list
    (no shell)."""
    port = free_port()
    return [python or default_python(), "-m", "bastion.runtime.local_agent", "--nnodes=1", f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={LOOPBACK}:{port}", f"--rdzv-id=bastion-{port}",
            f"--local-addr={LOOPBACK}", f"--max-restarts={max_restarts}", *worker_command(config_path)]


def run(command: list[str], stdout_to_stderr: bool = False) -> int:
    """Run torchrun in the foreground with the workers' environment; its exit status. `stdout_to_stderr`: its
    stdout joins stderr (a command printing JSON on stdout)."""
    try:
        return subprocess.run(command, env=process_environment(worker_env(single_host=True)),
                              stdout=sys.stderr if stdout_to_stderr else None).returncode
    except OSError as exc:
        raise LaunchError(f"Could not start torchrun: {exc}.",
                          fix="check that the runtime extra (torch) is installed in this environment.",
                          hint="pip install -e '.[runtime]'") from exc
