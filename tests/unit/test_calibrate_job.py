"""`bastion calibrate --on slurm|k8s`: the batch script and the manifests launch's backends render for a calibrate
job (its workers run `bastion _calibrate_worker` on the job's config, which holds what to measure and where the
profile goes), the k8s manifests pass the strict offline validator, bad combinations are refused with guidance,
and a profile measured over several hosts says which collective groups spanned them."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.commands.calibrate_job import CALIBRATE_WORKER, CONFIG_FILE, SCRIPT_FILE
from bastion.launch.kubernetes import CONFIG_MOUNT
from bastion.launch.worker import read_run_config
from bastion.rundir.layout import RUN_CONFIG_FILE
from helpers.cli import run, user_error

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO.parent / "shared" / "k8s" / "validate_manifests.py"


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def test_the_slurm_script_runs_one_torchrun_per_node_of_calibrate_workers(tmp_path: Path, capsys) -> None:
    done = _json(["calibrate", "--on", "slurm", "--nodes", "2", "--nproc", "2", "--quick", "--models", "tiny",
                  "--run-dir", str(tmp_path / "job"), "--out", str(tmp_path / "shared" / "p.toml"),
                  "--partition", "debug", "--time", "00:05:00", "--dry-run"], capsys)
    script, settings = done["script"], done["config"]["calibrate"]
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=debug" in script
    assert "#SBATCH --time=00:05:00" in script and "--nproc-per-node=2" in script
    config = str(tmp_path / "job" / CONFIG_FILE)
    assert f"-m bastion {CALIBRATE_WORKER} {shlex.quote(config)}" in script
    assert "_worker " + shlex.quote(config) not in script.replace(CALIBRATE_WORKER, "")  # never the trainer
    assert "max_requeues=0" in script  # a failed calibration is not requeued
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # the workers measure what was asked, write where asked (absolute: the nodes' shared filesystem)
    assert settings["quick"] and settings["nproc"] == 2 and settings["out"] == str(tmp_path / "shared" / "p.toml")
    assert [m["name"] for m in settings["models"]] == ["tiny"]
    assert not (tmp_path / "job").exists()  # a dry run writes nothing


def test_without_submit_the_script_and_config_are_written(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "job"
    done = _json(["calibrate", "--on", "slurm", "--nodes", "2", "--nproc", "1", "--quick", "--run-dir",
                  str(run_dir), "--out", str(tmp_path / "p.toml")], capsys)
    assert done["submitted"] is False and done["script_path"] == str(run_dir / SCRIPT_FILE)
    config = read_run_config(run_dir / CONFIG_FILE)  # the layout the batch script's node choice reads
    assert config["train"]["run_dir"] == str(run_dir) and config["world_size"] == 2
    assert config["calibrate"]["run_dir"] == str(run_dir)
    assert (run_dir / SCRIPT_FILE).read_text().startswith("#!/bin/bash")
    assert not (tmp_path / "p.toml").exists()


def _manifests(tmp_path: Path, capsys, kind: str, *more: str) -> str:
    done = _json(["calibrate", "--on", "k8s", "--k8s-kind", kind, "--nodes", "2", "--nproc", "2", "--quick",
                  "--image", "reg.example/bastion:1", "--run-dir", "/runs/calibrate", "--out", "profile.toml",
                  *more, "--dry-run"], capsys)
    return done["manifests"]


@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_k8s_manifests_start_calibrate_workers_with_the_profile_on_the_volume(tmp_path: Path, capsys,
                                                                             kind: str) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) reads the manifests back")
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(_manifests(tmp_path, capsys, kind)) if doc}
    job = docs["PyTorchJob" if kind == "pytorchjob" else "JobSet"]
    if kind == "pytorchjob":
        pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
        assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2 and job["spec"]["nprocPerNode"] == "2"
    else:
        pod = job["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
        assert job["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 2
    (container,) = pod["containers"]
    assert container["command"][-2:] == [CALIBRATE_WORKER, f"{CONFIG_MOUNT}/{RUN_CONFIG_FILE}"]
    assert container["resources"]["requests"] == {"cpu": "2"}
    assert {"name": "run", "mountPath": "/runs/calibrate"} in container["volumeMounts"]
    settings = json.loads(docs["ConfigMap"]["data"][RUN_CONFIG_FILE])["calibrate"]
    assert settings["out"] == "/runs/calibrate/profile.toml" and settings["run_dir"] == "/runs/calibrate"


@pytest.mark.skipif(not VALIDATOR.exists(), reason=f"{VALIDATOR} is absent (../shared not laid beside the repo)")
@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_k8s_calibrate_manifests_pass_the_strict_offline_validator(tmp_path: Path, capsys, kind: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) checks built-in kinds")
    pytest.importorskip("jsonschema", reason="jsonschema (dev extra) checks custom resources")
    path = tmp_path / f"{kind}.yaml"
    path.write_text(_manifests(tmp_path, capsys, kind, "--queue", "team-a", "--node-selector", "pool=cpu"))
    done = subprocess.run([sys.executable, str(VALIDATOR), "--strict", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 3   # claim, ConfigMap, job


@pytest.mark.parametrize(("args", "needles"), [
    (["--nodes", "2"], ["--nodes", "--on slurm or --on k8s"]),
    (["--dry-run"], ["--dry-run", "--on local"]),
    (["--partition", "debug", "--submit"], ["--partition, --submit"]),
    (["--on", "slurm", "--image", "img:1", "--dry-run"], ["--image", "--on slurm"]),
    (["--on", "k8s", "--partition", "debug", "--image", "img:1", "--dry-run"], ["--partition", "--on k8s"]),
    (["--on", "slurm", "--dry-run", "--submit"], ["contradict"]),
    (["--on", "slurm", "--nodes", "0", "--dry-run"], ["--nodes must be at least 1"]),
    (["--on", "slurm", "--time", "5 minutes", "--dry-run"], ["not HH:MM:SS"]),
    (["--on", "k8s", "--dry-run"], ["container image"]),
    (["--on", "k8s", "--image", "img:1", "--run-dir", "runs", "--dry-run"], ["inside the pods"]),
    (["--on", "k8s", "--image", "img:1", "--run-dir", "/runs", "--out", "/elsewhere/p.toml", "--dry-run"],
     ["outside --run-dir"]),
    (["--on", "mars"], ["Unknown launch engine"]),
    (["--on", "slurm", "--compare", "a.toml", "b.toml"], ["--compare"]),
    (["--on", "slurm", "--accelerator", "tpu-v5p", "--dry-run"], ["TPU"]),
])
def test_bad_combinations_are_refused_with_guidance(tmp_path: Path, capsys, args: list[str],
                                                    needles: list[str]) -> None:
    user_error(["calibrate", "--run-dir", str(tmp_path), *args], capsys, *needles)
    assert not list(tmp_path.iterdir())


def test_collective_rows_say_how_many_hosts_their_groups_spanned() -> None:
    """combine_ranks + fit_profile over 4 ranks on 2 hosts: the pairs inside a host, the group of 4 across both."""
    from bastion.runtime.calibrate import combine_ranks, fit_profile

    def rank(slow: float) -> dict:
        rows = [[op, size, nbytes, [(1e-4 + nbytes * 1e-9 * size) * slow] * 3, 1 if size == 2 else 2]
                for op in ("all_reduce", "all_gather") for size in (2, 4) for nbytes in (4096, 1 << 20)]
        return {"start_s": 1.0, "core_share": [0.5] * 3, "elementwise": [[1 << 20, 1e-3]], "collectives": rows}

    shared = combine_ranks([rank(1.0), rank(1.0), rank(1.0), rank(2.0)], ranks_per_host=2)
    assert shared["world"] == 2  # the ranks that shared one host's cores
    raw = {"dispatch_s": 1e-6, "gemm": [[64, 64, 64, 1e-4]], "attention": [[64, 16, 2, 1e-4, 3e-4]],
           "elementwise": [[1 << 20, 1e-3]], "host": {"layer_s": 1e-3}, "shared": shared}
    lines = {(c["op"], c["group_size"]): c for c in fit_profile(raw, 1e11, 2)["collective"]}
    assert lines[("all_reduce", 2)]["hosts"] == 1 and lines[("all_reduce", 4)]["hosts"] == 2
    # a collective ends with its slowest member: rank 3's doubled latency is the group's (× the core share 0.5)
    assert lines[("all_gather", 4)]["latency_us"] == pytest.approx(2 * 100 * 0.5)


def test_fsdp_measurements_travel_with_the_host_spanning_collectives() -> None:
    """combine_ranks + fit_profile over 4 ranks on 2 hosts, each rank with `measure_ranks`' FSDP2 results too: the
    collective rows keep the hosts their groups spanned and the FSDP2 units come from the slowest rank's repeats."""
    from bastion.runtime.calibrate import FSDP_STAGES, combine_ranks, fit_profile

    def fsdp(size: int, slow: float) -> dict:
        # per block: 1 ms without FSDP2, +2 ms under it; the root unit +3 ms (wall, the slowest rank's)
        rows = [[zero, size, layers, [(1e-3 * layers + (zero >= 0) * (2e-3 * layers + 3e-3)) * slow] * 3]
                for zero in (-1, *FSDP_STAGES) for layers in (1, 3)]
        # around its barriers a rank had more of a core (0.8) than while all were busy (0.5): not what converts
        # CPU at two widths (blocks of 1 and 9 MB): FSDP2 adds 1 ms a block plus 1 ms per MB, × `slow`
        cpu_rows = [[zero, size, layers, layers * block, [(1e-3 * layers + (zero >= 0) * layers * (1e-3 + block
                                                                                                  * 1e-9)) * slow]]
                    for zero in (-1, *FSDP_STAGES) for layers in (1, 3) for block in (1e6, 9e6)]
        return {"rows": rows, "times": {f"{zero} {size} {layers}": t for zero, size, layers, t in rows},
                "core_share": 0.8, "cpu_rows": cpu_rows}

    def rank(slow: float, stage: int) -> dict:
        rows = [[op, size, nbytes, [1e-4 + nbytes * 1e-9] * 3, 1 if size == 2 else 2]
                for op in ("all_reduce",) for size in (2, 4) for nbytes in (4096, 1 << 20)]
        return {"start_s": 1.0, "core_share": [0.5] * 3, "elementwise": [[1 << 20, 1e-3]], "collectives": rows,
                "fsdp": [fsdp(2, slow), fsdp(4, slow)],
                # 3 rounds of (6-, 2-micro-batch step, stage alone): the schedule adds `slow` ms per micro-batch
                "pipeline": {"stage": stage, "added": 4, "rounds": [[4e-3 + 4 * (2e-3 + 1e-3 * slow), 4e-3, 2e-3]] * 3,
                             "times": {f"pipeline, rank {slow}": [slow]}}}

    repeats: dict = {}
    shared = combine_ranks([rank(1.0, 0), rank(1.0, 1), rank(1.0, 0), rank(2.0, 1)], ranks_per_host=2,
                           repeats=repeats)
    # the pipeline's figure is the slowest stage's (stage 1: its ranks' rounds pooled, 1 and 2 ms); every rank's
    # repeats are kept
    assert shared["pipeline_micro_batch_s"] == pytest.approx(1.5e-3)
    assert repeats["pipeline, rank 1.0"] == [1.0] and repeats["pipeline, rank 2.0"] == [2.0]
    raw = {"dispatch_s": 1e-6, "gemm": [[64, 64, 64, 1e-4]], "attention": [[64, 16, 2, 1e-4, 3e-4]],
           "elementwise": [[1 << 20, 1e-3]], "host": {"layer_s": 1e-3}, "shared": shared}
    fitted = fit_profile(raw, 1e11, 2)
    assert {(c["group_size"], c["hosts"]) for c in fitted["collective"]} == {(2, 1), (4, 2)}
    units = {(u["zero_stage"], u["group_size"]): u for u in fitted["fsdp_unit"]}
    assert set(units) == {(zero, size) for zero in FSDP_STAGES for size in (2, 4)}
    # rank 3's doubled times are each repeat's: 2 × 2 ms a block, 2 × 3 ms the root, × the core share 0.5
    assert units[(3, 4)]["unit_s"] == pytest.approx(2e-3) and units[(3, 4)]["root_s"] == pytest.approx(3e-3)
    # CPU is each rank's own work: the mean of the ranks' (1, 1, 1, 2) ×, no core share
    assert units[(3, 4)]["cpu_s_per_byte"] == pytest.approx(1.25e-9)
    assert units[(3, 4)]["unit_cpu_s"] == pytest.approx(1.25e-3) and units[(3, 4)]["root_cpu_s"] == 0.0
