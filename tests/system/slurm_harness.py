"""Helpers of the system tier: a handle on the test Slurm cluster, PID checks, polling with a deadline."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"
#: start_cluster.sh's "cannot run here" status
UNAVAILABLE = 77


@dataclass
class SlurmCluster:
    base: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Restarts, NodeList, ...)."""
        fields = {}
        for token in self.run("scontrol", "show", "job", "-o", job_id).split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields


def free_port_block(count: int) -> int:
    """A first port such that it and the next count-1 ports are free now (slurmctld + one per slurmd)."""
    for start in range(18000, 30000, 97):
        sockets = []
        try:
            for port in range(start, start + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free block of ports for the test cluster")


def saved_pids(base: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (base / "pids").glob("*.pid")
            if not p.name.endswith(".own.pid") and p.read_text().strip().isdigit()}


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def wait_for(what: str, predicate: Callable[[], object], timeout: float, every: float = 0.5) -> object:
    """Poll until `predicate()` is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
