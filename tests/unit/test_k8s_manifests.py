"""Kubernetes manifests: PyTorchJob and JobSet carry the plan's layout and the resolved run (a ConfigMap), pass the shared offline validator
(`../shared/k8s/validate_manifests.py --strict`), and malformed requests are refused with guidance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import LaunchError
from bastion.launch.kubernetes import CONFIG_MOUNT, RDZV_PORT, KubernetesOptions, render_manifests
from bastion.launch.request import LaunchRequest, WorkerLayout
from bastion.launch.worker import run_config
from bastion.launch.yamltext import dump_all
from bastion.rundir.layout import RUN_CONFIG_FILE
from bastion.specs import ParallelPlan
from bastion.specs.model import load_model
from helpers.cli import run, user_error

yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) reads the manifests back")

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = REPO.parent / "shared" / "k8s" / "validate_manifests.py"
PLAN = ParallelPlan(dp=4, tp=4, pp=2, global_batch=64, pp_schedule="1f1b")


def request(nodes: int = 4, per_node: int = 8, device: str = "gpu", note: tuple[str, ...] = (),
            run_dir: str = "/mnt/runs/llama") -> LaunchRequest:
    train = {"model": "llama3-8b", "data": "/mnt/data/tokens", "run_dir": run_dir, "steps": 1000, "note": list(note)}
    return LaunchRequest(engine="k8s", run_config=run_config(train, load_model("llama3-8b"), PLAN, 64),
                         data_dir="/mnt/data/tokens", run_dir=run_dir, layout=WorkerLayout(nodes, per_node),
                         device=device, name="Llama3 8B run", max_restarts=2)


def config_of(docs: dict[str, dict]) -> dict:
    return json.loads(docs["ConfigMap"]["data"][RUN_CONFIG_FILE])


def documents(text: str) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text) if doc}


def pod_of(job: dict) -> dict:
    if job["kind"] == "PyTorchJob":
        return job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    return job["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


def container_of(job: dict) -> dict:
    (container,) = pod_of(job)["containers"]
    return container


@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_manifests_carry_the_plan_layout(kind: str) -> None:
    text = render_manifests(request(), KubernetesOptions(kind=kind, image="reg.example/bastion:1.0"))
    docs = documents(text)
    assert set(docs) == {"PersistentVolumeClaim", "ConfigMap", "PyTorchJob" if kind == "pytorchjob" else "JobSet"}
    job = docs["PyTorchJob" if kind == "pytorchjob" else "JobSet"]
    name = job["metadata"]["name"]
    assert name == "llama3-8b-run"
    container = container_of(job)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["image"] == "reg.example/bastion:1.0"
    assert container["command"] == ["python", "-m", "torch.distributed.run", "-m", "bastion", "_worker",
                                    f"{CONFIG_MOUNT}/{RUN_CONFIG_FILE}"]
    # the resolved run (train options, plan, model spec) travels in a ConfigMap; the run directory on a claim
    # every pod mounts
    config = config_of(docs)
    assert ParallelPlan.from_dict(config["plan"]) == PLAN and config["model"]["name"] == "llama3-8b"
    assert config["train"]["run_dir"] == "/mnt/runs/llama" and config["train"]["steps"] == 1000
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["run"] == "/mnt/runs/llama" and mounts["config"] == CONFIG_MOUNT
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert pod_of(job)["terminationGracePeriodSeconds"] == 120   # SIGTERM → last checkpoint before SIGKILL
    if kind == "pytorchjob":
        worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
        assert worker["replicas"] == 4 and worker["restartPolicy"] == "OnFailure"
        assert job["spec"]["nprocPerNode"] == "8"
        assert job["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "rdzvPort": RDZV_PORT, "minReplicas": 4,
                                                "maxReplicas": 4, "maxRestarts": 2}
    else:
        indexed = job["spec"]["replicatedJobs"][0]["template"]["spec"]
        assert (indexed["parallelism"], indexed["completions"], indexed["completionMode"]) == (4, 4, "Indexed")
        assert env["PET_NNODES"] == "4" and env["PET_NPROC_PER_NODE"] == "8"
        assert env["PET_RDZV_ENDPOINT"] == f"{name}-node-0-0.{name}:{RDZV_PORT}"
        assert env["PET_MAX_RESTARTS"] == "2"
        assert job["spec"]["failurePolicy"]["maxRestarts"] == 3
        assert job["spec"]["network"]["subdomain"] == name


@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_kueue_queue_label_and_suspend(kind: str) -> None:
    job = [d for d in yaml.safe_load_all(render_manifests(
        request(), KubernetesOptions(kind=kind, image="img:1", queue="team-a"))) if d][-1]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    suspend = job["spec"]["runPolicy"]["suspend"] if kind == "pytorchjob" else job["spec"]["suspend"]
    assert suspend is True
    plain = [d for d in yaml.safe_load_all(render_manifests(request(), KubernetesOptions(kind=kind, image="i")))
             if d][-1]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_cpu_jobs_request_cores_not_gpus() -> None:
    job = documents(render_manifests(request(nodes=2, per_node=2, device="cpu"),
                                     KubernetesOptions(image="img:1")))["PyTorchJob"]
    resources = container_of(job)["resources"]
    assert resources == {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}


@pytest.mark.skipif(not VALIDATOR.exists(), reason=f"{VALIDATOR} is absent (../shared not laid beside the repo)")
@pytest.mark.parametrize(("kind", "queue", "device"), [
    ("pytorchjob", "", "gpu"), ("pytorchjob", "team-a", "gpu"), ("jobset", "", "gpu"), ("jobset", "team-a", "gpu"),
    ("jobset", "", "cpu"),
])
def test_manifests_pass_the_strict_offline_validator(tmp_path: Path, kind: str, queue: str, device: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) checks built-in kinds")
    pytest.importorskip("jsonschema", reason="jsonschema (dev extra) checks custom resources")
    path = tmp_path / f"{kind}.yaml"
    path.write_text(render_manifests(request(note=('x"; rm -rf ~',), device=device),
                                     KubernetesOptions(kind=kind, image="img:1", queue=queue)))
    done = subprocess.run([sys.executable, str(VALIDATOR), "--strict", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 3   # claim, ConfigMap, job


@pytest.mark.skipif(not VALIDATOR.exists(), reason=f"{VALIDATOR} is absent (../shared not laid beside the repo)")
def test_the_validator_catches_a_broken_manifest(tmp_path: Path) -> None:
    """The check above can fail: a field the PyTorchJob schema does not know is rejected in strict mode."""
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) checks built-in kinds")
    docs = [d for d in yaml.safe_load_all(render_manifests(request(), KubernetesOptions(image="img:1"))) if d]
    docs[-1]["spec"]["pytorchReplicaSpecs"]["Worker"]["replicaz"] = 4
    path = tmp_path / "broken.yaml"
    path.write_text(dump_all(docs))
    done = subprocess.run([sys.executable, str(VALIDATOR), "--strict", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1 and "replicaz" in done.stdout


def test_hostile_arguments_survive_the_yaml_round_trip() -> None:
    hostile = ('x"; rm -rf ~', "yes", "1e3", "- item", "a: b", "#c", "", "'", "~", "null", "ünï ✓", "@x", "{a}")
    docs = documents(render_manifests(request(note=hostile), KubernetesOptions(image="i")))
    assert config_of(docs)["train"]["note"] == list(hostile)


def test_yaml_writer_round_trips_nested_values() -> None:
    doc = {"a": [1, 2.5, True, None, "on"], "b": {"c": [], "d": {}, "e": [{"f": "g", "h": [["x", "y"]]}]},
           "0": "007", "k": "multi\nline", "j": "{\n  \"dp\": 4\n}\n", "t": "a\n\nb \n"}
    assert next(yaml.safe_load_all(dump_all([doc]))) == doc


@pytest.mark.parametrize(("opts", "req", "needle"), [
    (KubernetesOptions(image=""), request(), "needs a container image"),
    (KubernetesOptions(image="my image"), request(), "white space"),
    (KubernetesOptions(image="i", kind="mpijob"), request(), "Unknown Kubernetes job kind"),
    (KubernetesOptions(image="i", queue="-bad-"), request(), "not a valid label value"),
    (KubernetesOptions(image="i", storage="lots"), request(), "not a Kubernetes quantity"),
    (KubernetesOptions(image="i"), request(run_dir="runs/rel"), "must be an absolute path inside the pods"),
    (KubernetesOptions(image="i"), request(run_dir="/runs/a\nb"), "control character"),
])
def test_malformed_kubernetes_requests_are_refused(opts, req, needle) -> None:
    with pytest.raises(LaunchError) as err:
        render_manifests(req, opts)
    assert needle in err.value.problem
    assert err.value.fix


def test_cli_writes_yaml_without_submitting(tmp_path: Path) -> None:
    plan = ParallelPlan(dp=2, tp=2, global_batch=4).save(tmp_path / "plan.json")
    out = tmp_path / "job.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "launch", "--on", "k8s", "--k8s-kind", "jobset", "--model", "tiny",
         "--plan", str(plan), "--data", "/mnt/data", "--run-dir", "/mnt/run", "--steps", "10",
         "--gpus-per-node", "2", "--image", "img:1", "--queue", "q1", "--manifest", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kubectl apply -f" in done.stdout
    docs = documents(out.read_text())
    assert docs["JobSet"]["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 2
    assert config_of(docs)["train"]["resilience"]["checkpoint_every"] == -1   # a launched job checkpoints (auto)
    assert not Path("/mnt/run").exists()


def test_a_model_file_travels_in_the_config_map_not_as_a_local_path(tmp_path: Path) -> None:
    from bastion.specs.model import load_model as load

    model = tmp_path / "mine.toml"
    spec = load("tiny").to_dict()
    model.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in spec.items() if v is not None) + "\n")
    plan = ParallelPlan(dp=2, global_batch=2).save(tmp_path / "plan.json")
    out = tmp_path / "job.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "launch", "--on", "k8s", "--model", str(model), "--plan", str(plan),
         "--data", "/mnt/data", "--run-dir", "/mnt/run", "--steps", "10", "--image", "img:1",
         "--manifest", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    docs = documents(out.read_text())
    assert config_of(docs)["model"] == load(str(model)).to_dict()
    assert str(tmp_path) not in json.dumps(container_of(docs["PyTorchJob"]))   # no local path in the pod


@pytest.mark.parametrize(("args", "needle"), [
    (["--", "--seed", "-1"], "--seed must be a whole number"),
    (["--", "--bogus", "1"], "not valid `bastion train` options"),
    (["--", "--steps", "5"], "is an option of `bastion launch` itself"),
    (["--manifest", "/proc/x/job.yaml"], "Cannot write /proc/x/job.yaml"),
])
def test_pass_through_arguments_and_the_manifest_path_are_checked_at_launch(tmp_path: Path, args, needle,
                                                                           capsys) -> None:
    plan = ParallelPlan(dp=2, global_batch=2).save(tmp_path / "plan.json")
    manifest = [] if "--manifest" in args else ["--manifest", str(tmp_path / "job.yaml")]
    # in this process: a refusal needs no interpreter of its own
    user_error(["launch", "--on", "k8s", "--model", "tiny", "--plan", str(plan), "--data", "/mnt/data", "--run-dir",
                "/mnt/run", "--steps", "10", "--image", "img:1", *manifest, *args], capsys, needle)
    assert not (tmp_path / "job.yaml").exists()


def test_submit_applies_the_written_manifest_with_kubectl(tmp_path: Path) -> None:
    """A stub kubectl on PATH records what `--submit` runs."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text('#!/bin/sh\necho "$@" > "$KUBECTL_RECORD"\necho "pytorchjob.kubeflow.org/x created"\n')
    (bin_dir / "kubectl").chmod(0o755)
    plan = ParallelPlan(dp=2, global_batch=2).save(tmp_path / "plan.json")
    out = tmp_path / "job.yaml"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "KUBECTL_RECORD": str(tmp_path / "rec")}
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "launch", "--on", "k8s", "--model", "tiny", "--plan", str(plan),
         "--data", "/mnt/data", "--run-dir", "/mnt/run", "--steps", "10", "--image", "img:1",
         "--manifest", str(out), "--submit"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rec").read_text().split() == ["apply", "-f", str(out)]
    assert "created" in done.stdout and documents(out.read_text())["PyTorchJob"]


# ---- elastic jobs and placement options ----------------------------------------------------------------------
ELASTIC = {"min_nodes": 2, "max_nodes": 4, "procs_per_node": 8}
PLACEMENT = KubernetesOptions(
    image="img:1", node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
    tolerations=("nvidia.com/gpu=present:NoSchedule", "spot:NoExecute", "dedicated"),
    service_account="trainer", priority_class="high-priority", requests={"memory": "200Gi", "cpu": "32"},
    limits={"memory": "250Gi"})


def elastic_request() -> LaunchRequest:
    req = request()
    return LaunchRequest(**{**req.__dict__, "run_config": {**req.run_config, "elastic": ELASTIC}})


@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_an_elastic_run_lets_the_rendezvous_continue_on_fewer_pods(kind: str) -> None:
    docs = documents(render_manifests(elastic_request(), KubernetesOptions(kind=kind, image="img:1")))
    assert config_of(docs)["elastic"] == ELASTIC   # every worker takes the plan for the world it gets
    if kind == "pytorchjob":
        job = docs["PyTorchJob"]
        policy = job["spec"]["elasticPolicy"]
        assert (policy["minReplicas"], policy["maxReplicas"]) == (2, 4)
        assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    else:
        job = docs["JobSet"]
        env = {e["name"]: e["value"] for e in container_of(job)["env"]}
        assert env["PET_NNODES"] == "2:4"
        indexed = job["spec"]["replicatedJobs"][0]["template"]["spec"]
        assert indexed["parallelism"] == 4 and indexed["backoffLimit"] == 3 * 4   # a pod is replaced alone


@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_placement_options_reach_every_pod(kind: str) -> None:
    job = [d for d in yaml.safe_load_all(render_manifests(
        request(), KubernetesOptions(**{**PLACEMENT.__dict__, "kind": kind}))) if d][-1]
    pod = pod_of(job)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"}, {"key": "dedicated", "operator": "Exists"}]
    assert pod["serviceAccountName"] == "trainer" and pod["priorityClassName"] == "high-priority"
    assert container_of(job)["resources"] == {"limits": {"nvidia.com/gpu": 8, "memory": "250Gi"},
                                              "requests": {"memory": "200Gi", "cpu": "32"}}
    amd = [d for d in yaml.safe_load_all(render_manifests(
        request(), KubernetesOptions(image="i", kind=kind, gpu_resource="amd.com/gpu"))) if d][-1]
    assert container_of(amd)["resources"] == {"limits": {"amd.com/gpu": 8}}


@pytest.mark.skipif(not VALIDATOR.exists(), reason=f"{VALIDATOR} is absent (../shared not laid beside the repo)")
@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_elastic_and_placed_manifests_pass_the_strict_validator(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) checks built-in kinds")
    pytest.importorskip("jsonschema", reason="jsonschema (dev extra) checks custom resources")
    path = tmp_path / f"{kind}.yaml"
    path.write_text(render_manifests(elastic_request(), KubernetesOptions(**{
        **PLACEMENT.__dict__, "kind": kind, "queue": "team-a", "topology_label": "cloud.google.com/gce-topology-block"})))
    done = subprocess.run([sys.executable, str(VALIDATOR), "--strict", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok ") == 3


@pytest.mark.parametrize(("opts", "needle"), [
    (KubernetesOptions(image="i", tolerations=("key:Sometimes",)), "is not KEY[=VALUE][:EFFECT]"),
    (KubernetesOptions(image="i", node_selector={"bad key": "x"}), "is not a Kubernetes label"),
    (KubernetesOptions(image="i", service_account="Trainer_1"), "is not a Kubernetes object name"),
    (KubernetesOptions(image="i", requests={"memory": "lots"}), "is not a resource name with a Kubernetes quantity"),
])
def test_malformed_placement_options_are_refused(opts, needle) -> None:
    with pytest.raises(LaunchError) as err:
        render_manifests(request(), opts)
    assert needle in err.value.problem and err.value.fix


@pytest.mark.parametrize("kind", ["pytorchjob", "jobset"])
def test_kueue_topology_keeps_the_pods_in_one_block(kind: str) -> None:
    label = "cloud.google.com/gce-topology-block"
    job = documents(render_manifests(request(), KubernetesOptions(image="i", kind=kind, queue="team-a",
                                                                  topology_label=label)))
    job = job["PyTorchJob" if kind == "pytorchjob" else "JobSet"]
    template = (job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"] if kind == "pytorchjob"
                else job["spec"]["replicatedJobs"][0]["template"]["spec"]["template"])
    assert template["metadata"]["annotations"] == {"kueue.x-k8s.io/podset-preferred-topology": label}
    with pytest.raises(LaunchError, match="not submitted through a Kueue queue"):
        render_manifests(request(), KubernetesOptions(image="i", kind=kind, topology_label=label))
    with pytest.raises(LaunchError, match="is not a node label key"):
        render_manifests(request(), KubernetesOptions(image="i", kind=kind, queue="q", topology_label="a b"))


def test_a_tensor_parallel_group_across_pods_is_refused(tmp_path: Path, capsys) -> None:
    plan = ParallelPlan(dp=2, tp=4, global_batch=4).save(tmp_path / "plan.json")
    base = ["launch", "--on", "k8s", "--model", "small", "--plan", str(plan), "--data", "/mnt/data", "--run-dir",
            "/mnt/run", "--steps", "10", "--image", "i:1", "--dry-run"]
    user_error([*base, "--gpus-per-node", "2"], capsys, "tensor-parallel groups would span machines")
    code, _, err = run([*base, "--gpus-per-node", "4"], capsys)
    assert code == 0, err


def test_cli_places_an_elastic_job(tmp_path: Path, capsys) -> None:
    # dp 4, 3, 2 and 1 all divide the global batch of 12: the job may continue on 1 to 4 pods
    plan = ParallelPlan(dp=4, global_batch=12).save(tmp_path / "plan.json")
    out = tmp_path / "job.yaml"
    code, _, err = run(
        ["launch", "--on", "k8s", "--model", "tiny", "--plan", str(plan), "--data", "/mnt/data", "--run-dir",
         "/mnt/run", "--steps", "10", "--gpus-per-node", "1", "--image", "i:1", "--manifest", str(out),
         "--node-selector", "pool=a3", "--toleration", "gpu=yes:NoSchedule", "--service-account", "trainer",
         "--priority-class", "high", "--request", "memory=64Gi", "--limit", "memory=80Gi", "--", "--on-failure",
         "shrink"], capsys)
    assert code == 0, err
    job = documents(out.read_text())["PyTorchJob"]
    assert (job["spec"]["elasticPolicy"]["minReplicas"], job["spec"]["elasticPolicy"]["maxReplicas"]) == (1, 4)
    pod = pod_of(job)
    assert pod["nodeSelector"] == {"pool": "a3"} and pod["serviceAccountName"] == "trainer"
    assert container_of(job)["resources"]["requests"] == {"memory": "64Gi"}
    user_error(["launch", "--on", "k8s", "--model", "tiny", "--plan", str(plan), "--data", "/mnt/data", "--run-dir",
                "/mnt/run", "--steps", "10", "--image", "i:1", "--manifest", str(tmp_path / "x.yaml"),
                "--node-selector", "pool"], capsys, "is not KEY=VALUE")
