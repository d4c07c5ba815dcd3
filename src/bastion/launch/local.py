"""Local launch: torchrun on this machine, for `bastion train` and `bastion launch --on local`.

Single host and offline: the rendezvous and the agent's own address are given as 127.0.0.1 (not `localhost` or the
host name), gloo binds the loopback interface, and the agent (`runtime/local_agent.py`, torchrun itself) and the
workers answer host-name lookups from /etc/hosts only: nothing is sent to a name server, no packet leaves the host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bastion.errors import LaunchError
from bastion.launch.request import default_python
from bastion.launch.worker import process_environment, worker_command, worker_env
from bastion.rundir.launch_record import write_launch_record
from bastion.rundir.summary import summary_is_final

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


def run(command: list[str], stdout_to_stderr: bool = False, run_dir: Path | None = None) -> int:
    """Run torchrun in the foreground with the workers' environment; its exit status. `stdout_to_stderr`: its
    stdout joins stderr (a command printing JSON on stdout).

    torchrun gets a process group of its own, recorded with its pid in RUN_DIR/launch.json (`run_dir`), so `bastion
    status|cancel RUN_DIR` find exactly this run's processes from another terminal. The first interrupt the
    launcher gets (Ctrl-C, a closed terminal, SIGTERM) stops the run as `bastion cancel` does (`stop`: the workers
    checkpoint and stop); a second one goes to torchrun's group as it is, which ends the run at once."""
    try:
        process = subprocess.Popen(command, env=process_environment(worker_env(single_host=True)),
                                   stdout=sys.stderr if stdout_to_stderr else None, start_new_session=True)
    except OSError as exc:
        raise LaunchError(f"Could not start torchrun: {exc}.",
                          fix="check that the runtime extra (torch) is installed in this environment.",
                          hint="pip install -e '.[runtime]'") from exc
    record = {"engine": "local", "pid": process.pid, "pgid": process.pid, "host": socket.gethostname(),
              "started": time.time(), "command": command}
    if run_dir is not None:
        write_launch_record(run_dir, record)
    # (signal handlers can only be set from the main thread; a launcher in another thread passes nothing on)
    in_main = threading.current_thread() is threading.main_thread()
    interrupts: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        interrupts.append(signum)
        if len(interrupts) == 1:
            stop(process.pid, process.pid)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {sig: signal.signal(sig, pass_on) for sig in (_PASSED_ON if in_main else ())}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if run_dir is not None:
        write_launch_record(run_dir, {**record, "exit_code": code, "ended": time.time()})
    return code


#: signals the launcher passes on (a closed terminal, SIGHUP, counts as SIGTERM)
_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc; empty where there is none)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "PID (COMMAND) STATE PPID ...": the command may hold spaces and parentheses, the last ')' ends it
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def stop(agent_pid: int, pgid: int) -> list[int]:
    """SIGTERM to the run's workers, torchrun's children (each in a session of its own, which torchrun gives them):
    each checkpoints after its current step and exits cleanly, and torchrun, seeing its group done, exits too. Where
    the workers cannot be listed, SIGTERM goes to torchrun's process group (torchrun passes it on to the workers
    and exits with a traceback). The processes signalled."""
    workers = _children(agent_pid)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not workers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    return workers or [pgid]


# ---- a local run seen from another terminal: bastion status / cancel RUN_DIR ---------------------------------

def is_running(record: dict[str, Any]) -> bool | None:
    """Whether the recorded torchrun still runs: None when it ran on another host (this one cannot tell)."""
    if "exit_code" in record:
        return False
    if record.get("host") != socket.gethostname():
        return None
    try:
        return os.getpgid(int(record["pid"])) == int(record["pgid"])
    except (ProcessLookupError, PermissionError, KeyError, TypeError, ValueError):
        return False


def cancel(record: dict[str, Any], run_dir: Path) -> list[int]:
    """Stop the recorded run (`stop`): every worker checkpoints after its current step and stops (as on a Slurm
    time limit), torchrun exits, the launcher records the exit. The processes signalled."""
    running = is_running(record)
    if running is None:
        raise LaunchError(f"The run in {run_dir} was started on host {record.get('host')}, not here.",
                          fix=f"run `bastion cancel {run_dir}` on {record.get('host')}.")
    if not running:
        raise LaunchError(f"The run in {run_dir} is not running (its torchrun, pid {record.get('pid')}, has "
                          f"exited).", fix=f"`bastion status {run_dir}` says how it ended.")
    return stop(int(record["pid"]), int(record["pgid"]))


def outcome(record: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    """Where a local run stands: `state` running / finished / stopped / failed / unknown, and the line `bastion
    status` prints. `progress` is what the run directory says (`slurm.run_dir_progress`)."""
    running = is_running(record)
    summary = progress.get("summary") if isinstance(progress.get("summary"), dict) else None
    asked = ((summary or {}).get("config") or {}).get("steps")
    of = f" of {asked}" if asked is not None else ""
    last = progress.get("last_step")
    code = record.get("exit_code")
    if running is None:
        return {"state": "unknown", "text": f"started on host {record.get('host')} (pid {record.get('pid')}): "
                                            f"this host cannot tell whether it still runs"}
    if running:
        at = "no step yet" if last is None else f"at step {last}"
        return {"state": "running", "text": f"running: {at} (torchrun pid {record.get('pid')})"}
    if summary is not None and summary_is_final(summary):
        return {"state": "finished", "text": f"finished: {summary.get('steps')} steps, final loss "
                                             f"{summary.get('final_loss')}"}
    if summary is not None and (code == 0 or progress["events"].get("preempted")):
        return {"state": "stopped", "text": f"stopped at step {summary.get('steps')}{of}, checkpointed: launch it "
                                            f"again with the same --run-dir to continue"}
    if code is None:
        return {"state": "failed", "text": "ended without recording its exit (its launcher was killed)"
                                           + (f"; last step {last}" if last is not None else "")}
    return {"state": "failed", "text": f"failed: torchrun exited with code {code}"
                                       + (f" after step {last}" if last is not None else "")
                                       + "; `bastion logs` shows the rank logs"}
