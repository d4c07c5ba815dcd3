"""Fault injection: `--inject kill:rank=1,step=7`, `hang:rank=0,step=5`, `nan:step=9`,
`kill-during-save:step=8`, `corrupt-latest`, `slow:rank=1,factor=3`, `flaky-link:rank=1`, `lose-node:rank=3,step=5`,
`bad-gpu:rank=2` (repeatable).

Every fault fires exactly once per run, even across restarts: the rank that fires it first creates
`RUN_DIR/faults/<fault id>.fired` (O_EXCL) and only then acts, so a restarted worker that replays the same step
does not fire it again. Each firing is recorded in metrics.jsonl as {"event": "fault", ...}.

  kill              SIGKILL this rank at the start of `step` (a crashed process; the agent restarts the group)
  hang              sleep forever at the start of `step` (the watchdog must notice, dump stacks and abort)
  nan               poison this rank's gradients with NaN after the backward pass of `step` (the NaN guard
                    must roll back and skip the batch)
  lose-node         like kill, but the rank's node is gone (until step `back_at`, if given): under --on-failure
                    shrink the launcher re-plans for the ranks left and continues, and grows back at the first
                    checkpoint boundary at or after `back_at` (launch/shrink.py); under requeue it is a kill whose
                    restart gets a replacement node; under --fault-tolerance torchft the restarted replica group
                    stays out of the quorum until the other groups have finished step `back_at` - 1
  kill-during-save  SIGKILL the committing rank after the checkpoint of the first save at or after `step` is
                    written but before it is committed (no manifest, no rename)
  corrupt-latest    after `step` (default: as soon as two checkpoints exist) flip bytes in the newest committed
                    checkpoint, then SIGKILL, so the restart has to detect the corruption and fall back
  slow              from `from_step` (default 1) on, every step: this rank sleeps (factor - 1) × its own compute
                    time of the step once its local work is done, before the step's closing collective (a slow
                    host: the straggler detector, runtime/stragglers.py, must name it)
  flaky-link        every step and in the health check: this rank waits `delay_ms` (default 50) before each
                    collective bastion itself issues (a slow or lossy link: its peers wait for it)
  bad-gpu           this rank's device fails its next pre-flight health check (an uncorrected ECC error, as NVML
                    would report it): under Slurm the job step ends before training and the node is left out
                    (runtime/health.py, launch/slurm_nodes.py)

kill/hang/nan/kill-during-save/corrupt-latest act once; slow and flaky-link act on every step and are recorded
once (the marker file) when they first act.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import ConfigError, did_you_mean
from bastion.rundir import checkpoints as checkpoint_files
from bastion.rundir.metrics import log_event

KINDS = ("kill", "hang", "nan", "kill-during-save", "corrupt-latest", "slow", "flaky-link", "lose-node", "bad-gpu")
_NEEDS_STEP = ("kill", "hang", "nan", "kill-during-save", "lose-node")
#: faults that end the worker group (a restart, a relaunch or a re-plan must follow)
FATAL = ("kill", "hang", "kill-during-save", "corrupt-latest", "lose-node")
#: faults that act on every step from their first one on (the others fire once)
CONTINUOUS = ("slow", "flaky-link")
#: the keys each kind takes besides `rank` (whole numbers unless listed in _FLOAT_KEYS)
_KEYS = {"slow": ("factor", "from_step"), "flaky-link": ("delay_ms",), "lose-node": ("step", "back_at"),
         "bad-gpu": ()}
_FLOAT_KEYS = ("factor", "delay_ms")
_EXAMPLES = ("kill:rank=1,step=7 | hang:rank=0,step=5 | nan:step=9 | kill-during-save:step=8 | corrupt-latest | "
             "slow:rank=1,factor=3[,from_step=5] | flaky-link:rank=1[,delay_ms=50] | lose-node:rank=3,step=5 | "
             "bad-gpu:rank=2")
#: flaky-link's wait before each collective when `delay_ms` is not given
DEFAULT_LINK_DELAY_MS = 50.0


@dataclass(frozen=True)
class FaultSpec:
    """One fault to inject."""

    #: one of KINDS
    kind: str
    #: optimizer step (1-based) at which it fires; None for corrupt-latest = as soon as two checkpoints exist
    step: int | None = None
    #: the rank that fires it (default 0)
    rank: int = 0
    #: slow: how many times its compute time a step of this rank takes
    factor: float = 1.0
    #: slow: the first step it is slow at
    from_step: int = 1
    #: flaky-link: milliseconds this rank waits before each collective bastion issues
    delay_ms: float = DEFAULT_LINK_DELAY_MS
    #: lose-node: the step from which the node is available again (None: never)
    back_at: int | None = None

    @property
    def fault_id(self) -> str:
        if self.kind in CONTINUOUS:
            return f"{self.kind}-rank{self.rank}"
        step = "auto" if self.step is None else str(self.step)
        return f"{self.kind}-rank{self.rank}-step{step}"

    def describe(self) -> str:
        if self.kind == "slow":
            return f"slow:rank={self.rank},factor={self.factor:g},from_step={self.from_step}"
        if self.kind == "flaky-link":
            return f"flaky-link:rank={self.rank},delay_ms={self.delay_ms:g}"
        if self.kind == "bad-gpu":
            return f"bad-gpu:rank={self.rank}"
        if self.kind == "lose-node" and self.back_at is not None:
            return f"lose-node:rank={self.rank},step={self.step},back_at={self.back_at}"
        return f"{self.kind}:rank={self.rank},step={'auto' if self.step is None else self.step}"


def parse_fault(text: str) -> FaultSpec:
    """Parse one --inject value, with guidance for every mistake."""
    kind, _, args = text.strip().partition(":")
    if kind not in KINDS:
        raise ConfigError(f"Unknown fault '{kind}' in --inject {text!r}.{did_you_mean(kind, KINDS)}",
                          fix=f"use one of: {_EXAMPLES}.")
    allowed = ("rank", *_KEYS.get(kind, ("step",)))
    values: dict[str, float] = {}
    for item in filter(None, args.split(",")):
        key, sep, raw = item.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"Cannot read '{item}' in --inject {text!r}.",
                              fix=f"write KEY=N with KEY one of {', '.join(allowed)}, e.g. {_EXAMPLES}.")
        try:
            values[key] = float(raw) if key in _FLOAT_KEYS else int(raw)
        except ValueError:
            kind_of = "number" if key in _FLOAT_KEYS else "whole number"
            raise ConfigError(f"'{raw}' in --inject {text!r} is not a {kind_of}.",
                              fix=f"write e.g. {key}=3.") from None
    if kind in _NEEDS_STEP and "step" not in values:
        raise ConfigError(f"--inject {text!r} needs a step.", fix=f"write e.g. {kind}:step=5.")
    if kind == "slow" and "factor" not in values:
        raise ConfigError(f"--inject {text!r} needs a factor.", fix="write e.g. slow:rank=1,factor=3.")
    if min(values.get("step", 1), values.get("from_step", 1)) < 1 or values.get("rank", 0) < 0:
        raise ConfigError(f"--inject {text!r}: every step must be >= 1 and rank >= 0.",
                          fix=f"steps count from 1 and ranks from 0, e.g. {_EXAMPLES}.")
    if "back_at" in values and values["back_at"] <= values.get("step", 0):
        raise ConfigError(f"--inject {text!r}: back_at must come after the step the node is lost.",
                          fix="e.g. lose-node:rank=3,step=5,back_at=9.")
    if not values.get("factor", 1.0) >= 1.0 or not values.get("delay_ms", 0.0) >= 0.0:
        raise ConfigError(f"--inject {text!r}: factor must be >= 1 and delay_ms >= 0.",
                          fix="e.g. slow:rank=1,factor=3 (three times slower) or flaky-link:rank=1,delay_ms=50.")
    return FaultSpec(kind, values.get("step"), int(values.get("rank", 0)), factor=float(values.get("factor", 1.0)),
                     from_step=int(values.get("from_step", 1)),
                     delay_ms=float(values.get("delay_ms", DEFAULT_LINK_DELAY_MS)),
                     back_at=int(values["back_at"]) if "back_at" in values else None)


def check_faults(faults: list[FaultSpec], world_size: int, total_steps: int) -> None:
    """Reject faults that could never fire (before any process starts)."""
    for fault in faults:
        if fault.rank >= world_size:
            raise ConfigError(f"--inject {fault.describe()} targets rank {fault.rank}, but the run has "
                              f"{world_size} ranks.", fix=f"use a rank below {world_size}.")
        first = fault.from_step if fault.kind == "slow" else fault.step
        if first is not None and first > total_steps:
            raise ConfigError(f"--inject {fault.describe()} fires at step {first}, after the last step "
                              f"({total_steps}).", fix="choose a step within --steps.")


#: a worker failing this soon after an injected fault fired is taken for its consequence (a peer of a killed rank
#: fails in its next collective): its traceback goes to its log file, the console keeps the fault's one line
CONSEQUENCE_WINDOW_S = 120.0


def fault_fired_recently(run_dir: Path, within_s: float = CONSEQUENCE_WINDOW_S) -> bool:
    """Whether an injected fault of RUN_DIR fired (its marker's time) within the last `within_s` seconds."""
    now = time.time()
    for marker in (Path(run_dir) / "faults").glob("*.fired"):
        try:
            fired = float(marker.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if now - fired <= within_s:
            return True
    return False


def node_back_at(faults: list[FaultSpec], run_dir: Path, ranks: range) -> int | None:
    """The latest `back_at` of the `lose-node` faults of `ranks` that have fired (None: no node of theirs is
    waited for)."""
    waits = [f.back_at for f in faults if f.kind == "lose-node" and f.rank in ranks and f.back_at is not None
             and (Path(run_dir) / "faults" / f"{f.fault_id}.fired").exists()]
    return max(waits, default=None)


class FaultInjector:
    """Fires the configured faults at the right moments on this rank; a no-op when none are configured."""

    def __init__(self, faults: list[FaultSpec], run_dir: Path, rank: int) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.mine = [f for f in faults if f.rank == rank]
        self.marker_dir = self.run_dir / "faults"
        #: continuous faults this process has already recorded or found recorded
        self._recorded: set[str] = set()

    def _claim(self, fault: FaultSpec, step: int, **details) -> bool:
        """True exactly once per run for `fault` (persisted), recording the event before acting."""
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.marker_dir / f"{fault.fault_id}.fired", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return False
        os.write(fd, f"{time.time()}\n".encode())
        os.fsync(fd)
        os.close(fd)
        log_event(self.run_dir, "fault", fault=fault.kind, spec=fault.describe(), rank=self.rank, step=step,
                  **details)
        # one line on the console (the other ranks' errors go to their log files: runtime/worker.py)
        print(f"[rank {self.rank}] injected fault fired: {fault.describe()} at step {step}", file=sys.stderr,
              flush=True)
        return True

    def _pending(self, kind: str) -> list[FaultSpec]:
        return [f for f in self.mine if f.kind == kind
                and not (self.marker_dir / f"{f.fault_id}.fired").exists()]

    @staticmethod
    def _die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def at_step_start(self, step: int) -> None:
        for fault in self._pending("kill"):
            if fault.step == step and self._claim(fault, step):
                self._die()
        for fault in self._pending("lose-node"):  # the launcher reads when the node is back from the event
            if fault.step == step and self._claim(fault, step, back_at=fault.back_at):
                self._die()
        for fault in self._pending("hang"):
            if fault.step == step and self._claim(fault, step):
                while True:  # a rank stuck forever, e.g. in a driver call; only the watchdog gets us out
                    time.sleep(3600)

    def slow_down(self, step: int, compute_s: float) -> float:
        """`slow`: sleep (factor - 1) × this step's compute time so far; the seconds slept."""
        slept = 0.0
        for fault in self.mine:
            if fault.kind == "slow" and step >= fault.from_step:
                self._first_time(fault, step)
                slept += (fault.factor - 1.0) * compute_s
        if slept > 0:
            time.sleep(slept)
        return slept

    def link_delay(self, step: int) -> None:
        """`flaky-link`: wait before a collective this rank issues."""
        for fault in self.mine:
            if fault.kind == "flaky-link":
                self._first_time(fault, step)
                time.sleep(fault.delay_ms / 1000.0)

    def _first_time(self, fault: FaultSpec, step: int) -> None:
        """Record a continuous fault once (its marker file), the first time it acts."""
        if fault.fault_id not in self._recorded:
            self._recorded.add(fault.fault_id)
            if not (self.marker_dir / f"{fault.fault_id}.fired").exists():
                self._claim(fault, step)

    def gpu_problem(self, step: int) -> str | None:
        """`bad-gpu`: the problem this rank's device check reports, once per run (None: nothing injected)."""
        for fault in self._pending("bad-gpu"):
            if self._claim(fault, step):
                return "1 uncorrected ECC error(s) (injected)"
        return None

    def poison_gradients(self, step: int, parameters) -> bool:
        """Fill this rank's gradients with NaN at the `nan` step; True if it did."""
        for fault in self._pending("nan"):
            if fault.step == step and self._claim(fault, step):
                for param in parameters:
                    if param.grad is not None:
                        param.grad.fill_(float("nan"))
                return True
        return False

    def before_commit(self, step: int) -> None:
        """Checkpointer hook: runs after this rank's checkpoint files are written, before the commit."""
        for fault in self._pending("kill-during-save"):
            if step >= fault.step and self._claim(fault, step, checkpoint_step=step):
                self._die()

    def after_step(self, step: int, checkpoint_root: Path, wait_for_saves) -> None:
        """corrupt-latest: damage the newest committed checkpoint, then crash."""
        for fault in self._pending("corrupt-latest"):
            if fault.step is not None and step != fault.step:
                continue
            wait_for_saves()
            found = checkpoint_files.committed(checkpoint_root)
            if fault.step is None and len(found) < 2:
                continue
            if not found:
                continue
            victim = found[-1]
            if self._claim(fault, step, checkpoint_step=victim.step):
                corrupt_checkpoint(victim.path)
                self._die()


def corrupt_checkpoint(path: Path) -> Path:
    """Flip bytes in the middle of the largest data file of a checkpoint (as a bad disk or copy would)."""
    data_files = [p for p in path.iterdir() if p.is_file() and p.name != checkpoint_files.MANIFEST]
    victim = max(data_files, key=lambda p: p.stat().st_size)
    with victim.open("r+b") as f:
        middle = victim.stat().st_size // 2
        f.seek(middle)
        chunk = f.read(16)
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in chunk))
        f.flush()
        os.fsync(f.fileno())
    return victim
