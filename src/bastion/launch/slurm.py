"""Slurm: the sbatch script for a launch, and submit/status/logs/cancel through sbatch, squeue, scontrol, sacct
and scancel.

The batch script runs one torchrun agent per node (`srun --ntasks-per-node=1`), all meeting at a c10d rendezvous
on the job's first node. Recovery is Slurm's requeue: the job always passes the same run directory, so each start
resumes from its newest valid checkpoint.
- Time limit: `--signal=B:USR1@LEAD` warns the batch shell LEAD seconds before the limit; it sends SIGTERM to the
  job step (`scancel --signal=TERM`: torchrun and every worker), the workers checkpoint and stop, and the script
  exits with the cluster's RequeueExit code so Slurm queues the job again. (Not `kill $srun_pid`: srun turns
  SIGTERM into SIGKILL.) torchrun gives its workers 30 s after SIGTERM before it kills them: the save must fit.
- Worker failure: a failed step is mapped to RequeueExit too (up to `max_requeues` times), so a crash costs the
  steps since the last checkpoint, not the job.
- A node lost mid-run (`--no-kill`: the allocation survives it): before every srun the script asks
  `bastion _slurm_nodes` (launch/slurm_nodes.py) which nodes are still usable; the job continues on the nodes it
  has (`--exclude` of the lost one) when the run is elastic (--on-failure shrink|auto: every worker takes the plan
  for its world, launch/elastic.py), else it is requeued. A straggler's node is excluded the same way from the
  next srun. When too few nodes are left and the job must start again, a requeue could land on a node it
  excluded that is still in service (a straggler's, or one whose device failed the health check; Slurm refuses
  `ExcNodeList` while a job runs, and keeps only down or drained nodes out of a requeue by itself): so the
  script then submits its own batch script again as a new job with `--exclude` of those nodes, after this one
  (`--dependency=afterany`), recorded in the run directory's launch record (`bastion status` follows it) and as a
  `resubmitted` event; only when sbatch refuses that (too few nodes without them) does it requeue.
- The worker's Python is found when the job runs: `$BASTION_PYTHON`, else the `python3` first on the job's PATH
  (sbatch passes the submitting environment, so an activated virtual environment is the job's too).
Every value that comes from the user reaches the shell through `shlex.quote`; the few that must sit on `#SBATCH`
lines (job name, output path, partition, time) are checked or reduced to characters sbatch cannot misread.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import LaunchError
from bastion.launch.request import (
    LaunchRequest,
    check_partition,
    check_plain_text,
    default_python,
    format_time_limit,
    slurm_job_name,
)
from bastion.launch.worker import worker_command, worker_env
from bastion.rundir.checkpoints import with_manifest
from bastion.rundir.layout import RunDirError, checkpoints_dir
from bastion.rundir.metrics import read_records
from bastion.rundir.records import is_event, is_step
from bastion.rundir.summary import read_summary, summary_is_final

#: the job's output file inside the run directory (`%j` = job id; appended across requeues)
OUTPUT_PATTERN = "slurm-%j.out"
#: first port of the range the rendezvous port is picked from (by job id, so jobs sharing a host do not collide)
RDZV_PORT_BASE = 20000


@dataclass(frozen=True)
class SlurmOptions:
    """Slurm-specific choices for a launch."""

    #: wall-clock limit in seconds (None: the partition's default)
    time_limit_s: int | None = None
    #: partition, or comma-separated candidates (None: the cluster's default)
    partition: str | None = None
    #: seconds before the time limit at which the job checkpoints and requeues itself (None: chosen from the limit)
    signal_lead_s: int | None = None
    #: exit code the cluster requeues automatically (slurm.conf `RequeueExit`)
    requeue_exit: int = 42
    #: how many times a failed worker step is requeued before the job is reported failed
    max_requeues: int = 3
    #: CPU cores reserved per worker process (also its OMP_NUM_THREADS)
    cpus_per_worker: int = 1
    #: Python with bastion installed, fixed in the script ("" = found when the job runs: $BASTION_PYTHON, else
    #: the `python3` on the job's PATH)
    python: str = ""
    #: account charged (sbatch --account)
    account: str | None = None
    #: quality of service (sbatch --qos)
    qos: str | None = None
    #: generic resources per node, e.g. `gpu:a100:8` (sbatch --gres; --gpus-per-node is not written then)
    gres: str | None = None
    #: node features required, e.g. `a100&ib` (sbatch --constraint)
    constraint: str | None = None
    #: whole nodes, shared with no other job (sbatch --exclusive)
    exclusive: bool = False
    #: nodes never to allocate, a Slurm node list (sbatch --exclude)
    exclude: str | None = None
    #: container image for the workers (pyxis/enroot: srun --container-image)
    container_image: str | None = None
    #: directories mounted into the container at the same paths (the run directory always is)
    container_mounts: tuple[str, ...] = ()
    #: further sbatch options, passed as they are (each one `#SBATCH` line; bastion's own options refused)
    sbatch_args: tuple[str, ...] = ()
    #: leaf switches the allocation may span, COUNT[@WAIT] (sbatch --switches; "auto" = 1@10:00: the nodes under one
    #: leaf switch, so the data-parallel rings between them stay there, waiting up to 10 minutes for such a set)
    switches: str | None = None
    #: hot spare nodes allocated beside the plan's (--spare-nodes; --on-failure spares): every job step runs on
    #: the plan's count of the usable nodes (launch/slurm_nodes.py)
    spare_nodes: int = 0

    def lead_seconds(self) -> int:
        """The checkpoint warning: explicit, or 10% of the limit within [30 s, 600 s] and at most half of it."""
        if self.signal_lead_s is not None:
            return self.signal_lead_s
        if self.time_limit_s is None:
            return 120
        return int(min(max(self.time_limit_s * 0.1, 30), 600, self.time_limit_s // 2))


def check_options(opts: SlurmOptions) -> SlurmOptions:
    if opts.partition is not None:
        check_partition(opts.partition)
    lead = opts.lead_seconds()
    if lead < 1:
        raise LaunchError(f"The checkpoint warning must come at least 1 s before the time limit, got {lead}.",
                          fix="give --signal-lead a positive number of seconds.")
    if opts.time_limit_s is not None and lead >= opts.time_limit_s:
        raise LaunchError(
            f"The checkpoint warning ({lead} s before the limit) would come before the job starts "
            f"(time limit {opts.time_limit_s} s).",
            fix="lower --signal-lead or raise --time.")
    if not 1 <= opts.requeue_exit <= 255:
        raise LaunchError(f"Requeue exit code {opts.requeue_exit} is not an exit status.",
                          fix="use the cluster's RequeueExit value (1-255; scontrol show config | grep Requeue).")
    if opts.cpus_per_worker < 1 or opts.max_requeues < 0:
        raise LaunchError("--cpus-per-worker must be >= 1 and --max-requeues >= 0.", fix="give such values.")
    for flag, value in (("--account", opts.account), ("--qos", opts.qos), ("--gres", opts.gres),
                        ("--constraint", opts.constraint), ("--exclude", opts.exclude),
                        ("--container-image", opts.container_image)):
        if value is not None:
            _check_directive_value(flag, value)
    for arg in opts.sbatch_args:
        _check_sbatch_arg(arg)
    return opts


#: sbatch options the script sets itself (a second value from --sbatch-arg would silently win or conflict)
OWN_SBATCH_OPTIONS = ("--job-name", "--nodes", "--ntasks-per-node", "--cpus-per-task", "--requeue", "--no-requeue",
                      "--signal", "--open-mode", "--output", "--error", "--no-kill", "--time", "--partition",
                      "--account", "--qos", "--gres", "--constraint", "--exclusive", "--exclude",
                      "--gpus-per-node")


def _check_directive_value(flag: str, value: str) -> None:
    """A value for an `#SBATCH` line or srun: no control characters, white space or backslashes (sbatch reads
    those lines with its own quoting rules)."""
    if not value or re.search(r"[\\\s\x00-\x1f\x7f]", value):
        raise LaunchError(f"{flag} {value!r} is empty or contains white space, a backslash or a control character.",
                          fix=f"give {flag} as Slurm writes it, e.g. {_EXAMPLES.get(flag, 'a name')}.")


_EXAMPLES = {"--gres": "gpu:a100:8", "--constraint": "'a100&ib'", "--exclude": "node[01-03]",
             "--container-image": "nvcr.io#nvidia/pytorch:25.01-py3"}


def _check_sbatch_arg(arg: str) -> None:
    check_plain_text(arg, "--sbatch-arg")
    option = arg.split("=", 1)[0]
    if not arg.startswith("-") or "\\" in arg:
        raise LaunchError(f"--sbatch-arg {arg!r} is not one sbatch option (it must start with '-' and hold no "
                          f"backslash).", fix="give one option with its value, e.g. --sbatch-arg=--mail-type=END.")
    if option in OWN_SBATCH_OPTIONS:
        raise LaunchError(f"--sbatch-arg {option} is an option bastion sets itself.",
                          fix=f"use `bastion launch {option}` (or the option that decides it) instead.")


def _sbatch_output(directory: str) -> str:
    """The `--output` value for an `#SBATCH` line. sbatch reads those lines with its own quote and backslash
    rules and expands `%` patterns in file names, so a directory holding those characters (or control
    characters) is refused; the rest is quoted the way both sbatch and the shell read back unchanged."""
    check_plain_text(directory, "run directory")
    bad = sorted({c for c in directory if c in "\\%"})
    if bad:
        raise LaunchError(f"The run directory {directory!r} contains {' and '.join(repr(c) for c in bad)}, which "
                          f"sbatch reads as escape or file-name pattern characters.",
                          fix="choose a run directory without backslashes or percent signs.")
    return shlex.quote(str(Path(directory) / OUTPUT_PATTERN))


def _option_lines(words: list[str]) -> str:
    """Shell words for a bash array, one option and its value per line (formatting only: bash reads the same)."""
    lines: list[list[str]] = []
    for word in words:
        if not lines or word.startswith(("-", '"-')):
            lines.append([word])
        else:
            lines[-1].append(word)
    return "\n    ".join(" ".join(line) for line in lines)


def _directives(req: LaunchRequest, opts: SlurmOptions) -> list[str]:
    """The `#SBATCH` options (without the prefix), each value quoted the way sbatch reads it back unchanged."""
    q = shlex.quote
    layout = req.layout
    directives = [
        f"--job-name={slurm_job_name(req.name)}",
        f"--nodes={layout.nodes + opts.spare_nodes}",
        "--ntasks-per-node=1",  # one torchrun agent per node; it starts the node's workers
        f"--cpus-per-task={layout.procs_per_node * opts.cpus_per_worker}",
    ]
    if opts.gres:
        directives.append(f"--gres={q(opts.gres)}")
    elif req.device == "gpu":
        directives.append(f"--gpus-per-node={layout.procs_per_node}")
    if opts.time_limit_s is not None:
        directives.append(f"--time={format_time_limit(opts.time_limit_s)}")
    for flag, value in (("--partition", opts.partition), ("--account", opts.account), ("--qos", opts.qos),
                        ("--constraint", opts.constraint), ("--exclude", opts.exclude)):
        if value:
            directives.append(f"{flag}={q(value)}")
    if opts.exclusive:
        directives.append("--exclusive")
    if opts.switches:
        directives.append(f"--switches={switches_value(opts.switches)}")
    directives += [
        "--requeue",
        # a lost node does not end the allocation: the script continues on the nodes left, or requeues
        "--no-kill",
        f"--signal=B:USR1@{opts.lead_seconds()}",
        "--open-mode=append",  # one output file across requeues
        f"--output={_sbatch_output(req.run_dir)}",
    ]
    return directives + [q(arg) for arg in opts.sbatch_args]


#: --switches auto: one leaf switch, waited for up to this long before Slurm takes what it has
AUTO_SWITCHES = "1@10:00"
_SWITCHES = re.compile(r"^[1-9][0-9]{0,4}(@([0-9]+-)?[0-9]{1,2}(:[0-9]{1,2}){0,2})?$")


def switches_value(text: str) -> str:
    """`--switches` as sbatch reads it: COUNT[@MAX-WAIT], or `auto`; a LaunchError otherwise."""
    value = AUTO_SWITCHES if text == "auto" else text
    if not _SWITCHES.match(value):
        raise LaunchError(f"--switches {text!r} is not COUNT[@MAX-WAIT] (sbatch's form, e.g. 1@10:00) or auto.",
                          fix="give the most leaf switches the nodes may span, optionally with how long to wait "
                              "for such a set, e.g. --switches 1@30:00, or --switches auto.")
    return value


def _container_words(req: LaunchRequest, opts: SlurmOptions) -> list[str]:
    """srun's pyxis options: the image, and the run directory and `container_mounts` mounted at the same paths."""
    if not opts.container_image:
        return []
    mounts = [req.run_dir, *opts.container_mounts]
    for path in mounts:
        if "," in path or ":" in path:
            raise LaunchError(f"The directory {path!r} holds ',' or ':', which pyxis's --container-mounts reads as "
                              f"separators.", fix="choose run and data directories without them.")
    return [f"--container-image={opts.container_image}",
            "--container-mounts=" + ",".join(f"{p}:{p}" for p in dict.fromkeys(mounts))]


_NO_BASTION = """\
  echo "[bastion] no Python with bastion found (BASTION_PYTHON=${BASTION_PYTHON:-unset}, PATH=$PATH):" \\
       "set BASTION_PYTHON to one, or submit from an environment that has bastion installed" >&2
  exit 1"""
# a containerised job without bastion on the batch host still runs: on its whole allocation every time
_NO_BASTION_CONTAINER = """\
  echo "[bastion] no Python with bastion on the batch host: every job step uses the whole allocation"
  choose_nodes() { echo "$step_nodes $(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n "$step_nodes" | paste -sd, -) -"; }"""


def render_sbatch(req: LaunchRequest, opts: SlurmOptions, config_path: str) -> str:
    """The batch script: `sbatch` it as is; it is also what `bastion launch --on slurm --dry-run` prints.
    `config_path` is the run config (`launch/worker.py`) on the file system every node sees."""
    check_options(opts)
    q = shlex.quote
    layout = req.layout
    run_dir = req.run_dir
    # the only words left to the shell to expand: the Python found at job time and values Slurm gives the job
    # in a container the workers run the image's python3; bastion's node choice still runs on the batch host
    torchrun_words = ["python3" if opts.container_image else '"$python"', "-m", "torch.distributed.run"]
    torchrun_words += ['"--nnodes=$nnodes"', f"--nproc-per-node={layout.procs_per_node}", "--rdzv-backend=c10d",
                       '"--rdzv-endpoint=$head_node:$rdzv_port"', '"--rdzv-id=$SLURM_JOB_ID-$step_count"']
    torchrun_words += [q(a) for a in (f"--max-restarts={req.max_restarts}", *worker_command(config_path, req.worker_entry))]
    worker_cmd = _option_lines(torchrun_words)
    container = "".join(f"{q(w)} \\\n    " for w in _container_words(req, opts))
    header = "\n".join(f"#SBATCH {d}" for d in _directives(req, opts))
    exports = "\n".join(f"export {key}={q(value)}" for key, value in worker_env(opts.cpus_per_worker).items())
    find_python = (f"python={q(opts.python)}" if opts.python else
                   'python=$(command -v "${BASTION_PYTHON:-python3}" || true)')
    no_bastion = _NO_BASTION_CONTAINER if opts.container_image else _NO_BASTION
    return f"""#!/bin/bash
# Generated by bastion (workers: `bastion {req.worker_entry}`): {slurm_job_name(req.name)}, {layout.nodes} node(s) x \
{layout.procs_per_node} {req.device} worker(s).
# Requeue = recovery: every start passes the same run directory and resumes from its newest valid checkpoint.
# A lost (or straggling) node: the next job step runs on the nodes left when the run is elastic, else the job
# requeues without it.
{header}
set -uo pipefail

run_dir={q(run_dir)}
config={q(config_path)}
requeue_exit={opts.requeue_exit}   # slurm.conf RequeueExit: Slurm queues the job again on this exit code
max_requeues={opts.max_requeues}
# starts so far: Slurm's requeues of this job plus those of the jobs it was resubmitted from
restart_count=$(( ${{BASTION_SLURM_STARTS:-0}} + ${{SLURM_RESTART_COUNT:-0}} ))

# without bastion on the batch host every job step runs on the allocation less its hot spares
step_nodes=$(( SLURM_JOB_NUM_NODES - {opts.spare_nodes} ))
# the workers' Python, found now in the job's environment (not fixed when the script was written)
{find_python}
if [ -n "$python" ] && "$python" -c "import bastion" 2>/dev/null; then
  # the nodes still usable (launch/slurm_nodes.py): how many and which the next step uses, every node excluded
  choose_nodes() {{ "$python" -m bastion _slurm_nodes "$config" --since "$script_start"; }}
elif [ -n "$python" ]; then
  # bastion is where the workers run (a node image, a path mounted only there) but not on the batch host: the
  # steps run on the whole allocation, without leaving lost or slow nodes out
  echo "[bastion] $python cannot import bastion on the batch host: every job step uses the whole allocation"
  choose_nodes() {{ echo "$step_nodes $(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n "$step_nodes" | paste -sd, -) -"; }}
else
{no_bastion}
fi

# the workers' environment (bastion/launch/worker.py says why each is set)
{exports}

rdzv_port=$(( {RDZV_PORT_BASE} + SLURM_JOB_ID % 20000 ))
script_start=$(date +%s)
echo "[bastion] job $SLURM_JOB_ID start $restart_count on $SLURM_JOB_NODELIST"

preempted=0
on_time_limit() {{
  preempted=1
  echo "[bastion] time limit near: workers checkpoint and stop; the job requeues itself"
  # SIGTERM to every process of the job's steps (torchrun and its workers; not this script): each worker saves
  # a checkpoint after its current step and exits. Not `kill $srun_pid`: srun turns SIGTERM into SIGKILL.
  scancel --signal=TERM "$SLURM_JOB_ID"
}}
trap on_time_limit USR1

requeue_or_fail() {{  # $1: the failed step's exit status
  if [ "$restart_count" -lt "$max_requeues" ]; then
    # a requeue could land on the nodes this job excluded (Slurm refuses ExcNodeList for a running job): start
    # again as a new job that excludes them; requeue only when sbatch refuses that
    if [ "${{excluded:--}}" != "-" ] && [ -n "$python" ] && \
       "$python" -m bastion _slurm_resubmit "$config" --exclude "$excluded" --starts "$((restart_count + 1))"; then
      echo "[bastion] workers failed (exit $1); continuing in the new job, without $excluded"
      exit 0
    fi
    echo "[bastion] workers failed (exit $1); requeue $((restart_count + 1)) of $max_requeues (exit $requeue_exit)"
    exit "$requeue_exit"
  fi
  echo "[bastion] workers failed (exit $1) after $restart_count requeues; giving up"
  exit "$1"
}}

step_count=0
last_choice=""
excluded="-"
rc=0
while :; do
  choice=$(choose_nodes)
  choice_rc=$?
  read -r nnodes nodes excluded <<<"$choice"
  if [ "$choice_rc" != 0 ] || [ "${{nnodes:-0}}" = 0 ]; then
    echo "[bastion] too few usable nodes left (excluded: ${{excluded:-?}})"
    if [ "$rc" = 0 ]; then rc=1; fi
    requeue_or_fail "$rc"
  fi
  if [ -n "$last_choice" ] && [ "$choice" = "$last_choice" ]; then
    requeue_or_fail "$rc"  # the same nodes failed again: not a node loss
  fi
  last_choice=$choice
  step_count=$((step_count + 1))
  exclude_opt=()
  if [ "$excluded" != "-" ]; then exclude_opt=("--exclude=$excluded"); fi
  head_node=${{nodes%%,*}}
  echo "[bastion] job step $step_count on $nodes (excluded: $excluded), rendezvous $head_node:$rdzv_port"
  worker_cmd=(
    {worker_cmd}
  )
  srun --nodes="$nnodes" --ntasks="$nnodes" --nodelist="$nodes" "${{exclude_opt[@]}}" --ntasks-per-node=1 \\
    --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 {container}"${{worker_cmd[@]}}" &
  srun_pid=$!
  # a trapped signal ends `wait` early: keep waiting until the step has really finished
  wait "$srun_pid"; rc=$?
  while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid"; rc=$?; done

  if [ "$preempted" = 1 ]; then
    echo "[bastion] checkpointed before the time limit; requeueing (exit $requeue_exit)"
    exit "$requeue_exit"
  fi
  if [ "$rc" = 0 ]; then
    echo "[bastion] training finished"
    exit 0
  fi
  echo "[bastion] workers failed (exit $rc); checking the allocation's nodes"
done
"""


# ---- talking to Slurm -----------------------------------------------------------------------------

def _slurm_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LaunchError(f"'{name}' is not on PATH: this machine is not a Slurm client.",
                          fix="run this on a Slurm login node, or use --dry-run to only write the script.")
    return path


def _run(args: list[str], timeout: float = 30,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_slurm_tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout,
                          env=env)


def submit(script: Path) -> str:
    """`sbatch --parsable SCRIPT` → the job id."""
    # the job finds its Python when it runs ($BASTION_PYTHON, else python3 on its PATH); submitted from here, it
    # is the Python running bastion now unless the environment names another
    env = {**os.environ, "BASTION_PYTHON": os.environ.get("BASTION_PYTHON") or default_python()}
    done = _run(["sbatch", "--parsable", str(script)], env=env)
    if done.returncode:
        raise LaunchError(f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}",
                          fix="check the partition, node count and time limit against `sinfo -s`; the script "
                              f"is at {script}.")
    return done.stdout.strip().split(";")[0]


def _parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` prints Key=Value pairs separated by spaces (values have none, except Command=…)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def job_info(job_id: str) -> dict[str, Any]:
    """What Slurm knows about a job: squeue while queued or running, scontrol until it is purged, then sacct."""
    if not job_id.isdigit():
        raise LaunchError(f"'{job_id}' is not a Slurm job id.", fix="pass the number sbatch printed.")
    info: dict[str, Any] = {"job_id": job_id, "state": "UNKNOWN", "source": None}
    queued = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r|%M|%l|%D|%N"])
    if queued.returncode == 0 and queued.stdout.strip():
        state, reason, elapsed, limit, nodes, nodelist = queued.stdout.strip().splitlines()[0].split("|")
        info.update(state=state, reason=reason, elapsed=elapsed, time_limit=limit, nodes=nodes,
                    nodelist=nodelist, source="squeue")
    shown = _run(["scontrol", "show", "job", "-o", job_id])
    if shown.returncode == 0 and shown.stdout.strip():
        fields = _parse_scontrol(shown.stdout)
        if info["source"] is None:
            info.update(state=fields.get("JobState", "UNKNOWN"), reason=fields.get("Reason"),
                        elapsed=fields.get("RunTime"), time_limit=fields.get("TimeLimit"),
                        nodes=fields.get("NumNodes"), nodelist=fields.get("NodeList"), source="scontrol")
        info.update(restarts=int(fields.get("Restarts", "0") or 0), exit_code=fields.get("ExitCode"),
                    stdout=fields.get("StdOut"), name=fields.get("JobName"))
    if info["source"] is None:
        acct = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Elapsed,NNodes,NodeList"])
        if acct.returncode == 0 and acct.stdout.strip():
            state, exit_code, elapsed, nodes, nodelist = acct.stdout.strip().splitlines()[0].split("|")
            info.update(state=state.split()[0], exit_code=exit_code, elapsed=elapsed, nodes=nodes,
                        nodelist=nodelist, source="sacct")
    return info


def run_dir_progress(run_dir: Path) -> dict[str, Any]:
    """Where the run stands according to its run directory: last step, events, summary, checkpoints."""
    progress: dict[str, Any] = {"run_dir": str(run_dir), "last_step": None, "events": {}, "summary": None,
                                "checkpoints": []}
    for record in read_records(run_dir):
        if is_event(record):
            kind = str(record["event"])
            progress["events"][kind] = progress["events"].get(kind, 0) + 1
        elif is_step(record):
            progress["last_step"] = record["step"]
            progress["last_loss"] = record.get("loss")
    try:
        progress["summary"] = read_summary(run_dir)
    except RunDirError:  # being written: the next look reads it
        progress["summary"] = None
    progress["checkpoints"] = [c.path.name for c in with_manifest(checkpoints_dir(run_dir))]
    return progress


def resubmit_excluding(job_id: str, exclude: list[str], starts: int) -> str:
    """Submit job `job_id`'s batch script again as a new job that never gets the nodes in `exclude` still in
    service (a down or drained node Slurm keeps out of a requeue by itself) nor those the job already excluded,
    and starts once `job_id` has ended; `starts` travels to it as $BASTION_SLURM_STARTS (its requeue budget goes
    on counting). The new job's id, or a LaunchError when there is nothing Slurm would not avoid anyway (requeue
    then) or Slurm refuses (e.g. too few nodes are left without them)."""
    from bastion.launch.slurm_nodes import unusable

    out_of_service = set(unusable(node_states(job_id, exclude))) if exclude else set()
    exclude = [node for node in exclude if node not in out_of_service]
    if not exclude:
        raise LaunchError("every node this job left out is down or drained: Slurm keeps a requeue off them.",
                          fix="nothing to do: the job is requeued.")
    shown = _run(["scontrol", "show", "job", job_id])
    if shown.returncode:
        raise LaunchError(f"scontrol does not know job {job_id}: {shown.stderr.strip()}",
                          fix="run this inside the Slurm job (the batch script calls it).")
    # `Command=` holds the script's path to the end of its line (a path may contain spaces)
    script = next((line.strip().removeprefix("Command=") for line in shown.stdout.splitlines()
                   if line.strip().startswith("Command=")), "")
    already = _parse_scontrol(shown.stdout).get("ExcNodeList", "(null)")
    nodes = list(dict.fromkeys([*(hostnames(already) if already not in ("", "(null)") else []), *exclude]))
    if not script or not Path(script).is_file():
        raise LaunchError(f"the batch script of job {job_id} ({script or 'unknown'}) is not readable here.",
                          fix="keep the script where it was submitted from until the run has finished.")
    # the new job's environment is the submitting one's without this job's own Slurm variables (which sbatch
    # would read as options of the new job), but with where the cluster's configuration is
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) or k == "SLURM_CONF"}
    env["BASTION_SLURM_STARTS"] = str(starts)
    done = _run(["sbatch", "--parsable", f"--dependency=afterany:{job_id}", f"--exclude={','.join(nodes)}",
                 script], env=env)
    if done.returncode:
        raise LaunchError(f"sbatch refused the job without {','.join(nodes)}: "
                          f"{done.stderr.strip() or done.stdout.strip()}",
                          fix="the job is requeued instead (it may get one of those nodes again).")
    return done.stdout.strip().split(";")[0]


def node_states(job_id: str, nodes: list[str]) -> dict[str, str]:
    """Each of the job's nodes' state: `down (…)` when Slurm took it out of the job's allocation (`scontrol show
    job`: with --no-kill a failed node is removed from the job, and may be back in service a moment later) or
    sinfo does not list it, else its state from `sinfo`."""
    done = _run(["sinfo", "-h", "-N", "-n", ",".join(nodes), "-o", "%N %T"])
    states = {node: "down (not listed by sinfo)" for node in nodes}
    if done.returncode == 0:
        for line in done.stdout.splitlines():
            name, _, state = line.strip().partition(" ")
            if name in states:
                states[name] = state
    shown = _run(["scontrol", "show", "job", "-o", job_id])
    current = _parse_scontrol(shown.stdout).get("NodeList") if shown.returncode == 0 else None
    if current:
        still = set(hostnames(current))
        states.update({node: "down (removed from the job)" for node in nodes if node not in still})
    return states


def hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames` of a Slurm node list expression (n[1-3] → n1 n2 n3)."""
    done = _run(["scontrol", "show", "hostnames", nodelist])
    if done.returncode:
        raise LaunchError(f"scontrol cannot expand the node list {nodelist!r}: {done.stderr.strip()}",
                          fix="run this inside a Slurm job (the batch script calls it with $SLURM_JOB_NODELIST).")
    return done.stdout.split()


#: Slurm job states after which the job will not run again by itself (sacct/scontrol/squeue spellings)
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                          "DEADLINE", "PREEMPTED", "REVOKED"})
#: queued again (or not yet started): a partial summary is what the next start resumes from
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED",
                            "RESIZING"})
#: the batch script is on the nodes: a stop just written may still turn into a requeue, or a restart be resuming
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"})


def run_outcome(progress: dict[str, Any], job_state: str, job_known: bool = True) -> dict[str, Any] | None:
    """How the run ended so far, from its summary.json and the job's Slurm state; None when there is no summary.

    `state` is "finished" (the run reached its --steps), "stopped" (a partial summary: `requeue_pending` says
    whether the job will still resume it, None when its Slurm state does not tell) or "running again" (the
    summary is from an earlier start: the metrics have moved past it). `text` is the line `bastion status` prints.
    """
    summary = progress.get("summary")
    if not isinstance(summary, dict) or not summary:
        return None
    step = summary.get("steps")
    asked = (summary.get("config") or {}).get("steps")
    of = f" of {asked}" if asked is not None else ""
    state = job_state.split()[0].rstrip("+").upper() if job_state else "UNKNOWN"
    last_step = progress.get("last_step")
    running = job_known and state in RUNNING_STATES
    if running and isinstance(last_step, int) and isinstance(step, int) and last_step > step:
        return {"state": "running again", "step": step, "requeue_pending": False,
                "text": f"running again: stopped at step {step}{of} earlier, now at step {last_step}"}
    if summary_is_final(summary):
        return {"state": "finished", "step": step, "requeue_pending": False,
                "text": f"finished: {step} steps, final loss {summary.get('final_loss')}, "
                        f"params_sha256 {str(summary.get('params_sha256'))[:16]}…"}
    loss = f", loss {summary.get('final_loss')}" if summary.get("final_loss") is not None else ""
    if not job_known or state in ENDED_STATES:
        why = f"job {state}" if job_known else "the job is gone from Slurm"
        return {"state": "stopped", "step": step, "requeue_pending": False,
                "text": f"stopped at step {step}{of}{loss} ({why}: nothing will resume it; launch again with "
                        f"the same --run-dir to continue from its checkpoint)"}
    if running:
        return {"state": "stopped", "step": step, "requeue_pending": True,
                "text": f"stopped at step {step}{of}{loss} (checkpointed; the job is requeueing or resuming)"}
    if state in WAITING_STATES:
        return {"state": "stopped", "step": step, "requeue_pending": True,
                "text": f"stopped at step {step}{of}{loss} (checkpointed; requeue pending)"}
    return {"state": "stopped", "step": step, "requeue_pending": None,
            "text": f"stopped at step {step}{of}{loss} (job state {state})"}


def output_file(run_dir: Path, job_id: str) -> Path:
    return run_dir / OUTPUT_PATTERN.replace("%j", job_id)


def cancel(job_id: str) -> None:
    """`scancel JOBID`: the job ends as CANCELLED, never requeued. Slurm sends SIGTERM to every process of the
    job, so each worker checkpoints after its current step and stops, and sends SIGKILL after KillWait
    (slurm.conf, 30 s by default): the save must fit in it. (Not `--signal=TERM`: that signals without ending the
    job, and the batch script would requeue the stopped run.)"""
    if not job_id.isdigit():
        raise LaunchError(f"'{job_id}' is not a Slurm job id.", fix="pass the number sbatch printed.")
    done = _run(["scancel", job_id])
    if done.returncode:
        raise LaunchError(f"scancel refused job {job_id}: {done.stderr.strip() or done.stdout.strip()}",
                          fix=f"check the job id and its owner (squeue -j {job_id}).")
