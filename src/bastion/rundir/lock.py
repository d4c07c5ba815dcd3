"""One run per run directory: an exclusive `flock` on RUN_DIR/run.lock.

The process that owns the run takes it: on one host the `bastion train` / `bastion launch --on local` process, which
waits for torchrun, so the lock covers every elastic restart of the worker group; in a Slurm or Kubernetes job,
which no bastion process waits for, the rank-0 worker (each restarted group's new rank 0 takes it again). The kernel drops a
flock when its holder dies, so a run killed with SIGKILL leaves no lock behind, only its owner record (pid, host,
start time, command), which the next run reports and takes over. Where the file system offers no flock (some
network file systems), the record is the lock: a record whose process is gone is a stale lock, refused with the
command that clears it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from bastion.errors import ConfigError
from bastion.rundir.layout import LOCK_FILE

#: the lock file inside the run directory


@dataclass
class RunDirLock:
    """A held lock; `release()` (or leaving the `with` block) frees it."""

    path: Path
    fd: int
    flocked: bool

    def release(self) -> None:
        if self.fd < 0:
            return
        os.ftruncate(self.fd, 0)  # no owner any more: the next run starts without a note
        if self.flocked:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv[:1] + sys.argv[1:2])}


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_text(record: dict[str, Any] | None) -> str:
    if not record:
        return "an unknown process"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')} "
            f"(`{record.get('command')}`)")


def _same_host(record: dict[str, Any]) -> bool:
    return record.get("host") == socket.gethostname()


def acquire(run_dir: Path, wait_s: float = 0.0) -> RunDirLock:
    """Take the run directory (creating it); a directory in use by another run is a guidance error (exit 2).
    `wait_s`: keep trying that long first (a requeued job's predecessor may still be exiting)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _acquire(Path(run_dir))
        except ConfigError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _acquire(run_dir: Path) -> RunDirLock:
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"Cannot use --run-dir {run_dir}: {exc.strerror or exc}.",
                          fix="give a run directory in a place you can write (it is created if missing).") from None
    record = _read_record(fd)
    flocked = True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            _refuse_held(run_dir, path, record)
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise ConfigError(f"Cannot lock {path}: {exc.strerror or exc}.",
                              fix="check the run directory's file system and permissions.") from None
        flocked = False  # no flock here: the owner record is the lock
        if record:
            os.close(fd)
            if _same_host(record) and not _alive(record.get("pid")):
                raise ConfigError(f"{path} is a stale lock: {_owner_text(record)} is gone, and this file system "
                                  f"offers no flock to tell whether its run still holds the directory.",
                                  fix=f"make sure no run uses {run_dir} any more, then delete the lock: rm {path}") from None
            _refuse_held(run_dir, path, record)
    if record and flocked:
        # the kernel says nobody holds it: the recorded run ended without releasing it (killed)
        print(f"note: {run_dir} was last used by {_owner_text(record)}, which ended without releasing "
              f"{LOCK_FILE} (killed?); this run takes it over.", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(_owner_record()) + "\n").encode(), 0)
    return RunDirLock(path=path, fd=fd, flocked=flocked)


def _refuse_held(run_dir: Path, path: Path, record: dict[str, Any] | None) -> NoReturn:
    if record and _same_host(record) and not _alive(record.get("pid")):
        raise ConfigError(f"{run_dir} is locked ({path}), but its recorded owner, {_owner_text(record)}, is gone: "
                          f"a process it started (an orphaned worker) still holds the lock.",
                          fix=f"stop that process (`fuser -v {path}` shows it); if none is left, delete the "
                              f"lock: rm {path}")
    raise ConfigError(f"{run_dir} is in use by another run: {_owner_text(record)} holds {path}.",
                      fix="wait for that run to finish (or stop it), or give another --run-dir; two runs in one "
                          "directory would overwrite each other's metrics and checkpoints.")


def check_free(run_dir: Path) -> None:
    """Refuse (guidance error) when another process holds RUN_DIR's lock now; takes nothing, writes nothing."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    record = _read_record(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        held = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        os.close(fd)
        if held and not (record and record.get("pid") == os.getpid() and _same_host(record)):
            _refuse_held(Path(run_dir), path, record)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
