"""Kubernetes manifests for a launch: a Kubeflow `PyTorchJob` (kubeflow.org/v1) or a `JobSet`
(jobset.x-k8s.io/v1alpha2), each with a PersistentVolumeClaim for the run directory (metrics and checkpoints)
and a ConfigMap holding the run config (train options, plan, model spec), optionally queued through Kueue.

One pod per node runs `torchrun … -m bastion _worker /etc/bastion/run_config.json`; torchrun reads its rendezvous settings from `PET_*`
environment variables (the training operator sets them for a PyTorchJob; the JobSet sets them itself, pointing at
the first pod's stable DNS name). Whatever restarts a pod or the whole set, the new workers see the same run
directory on the claim and resume from its newest valid checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import LaunchError
from bastion.launch.elastic import ELASTIC_KEY
from bastion.launch.request import LaunchRequest, check_plain_text, k8s_name
from bastion.launch.worker import worker_command, worker_env
from bastion.launch.yamltext import dump_all
from bastion.rundir.layout import RUN_CONFIG_FILE

KINDS = ("pytorchjob", "jobset")
#: the rendezvous port torchrun's c10d store listens on in the first pod
RDZV_PORT = 29400
#: where the run config's ConfigMap is mounted in every pod
CONFIG_MOUNT = "/etc/bastion"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")


@dataclass(frozen=True)
class KubernetesOptions:
    """Kubernetes-specific choices for a launch."""

    #: `pytorchjob` (Kubeflow training operator) or `jobset` (JobSet controller)
    kind: str = "pytorchjob"
    #: container image with bastion (and PyTorch) installed
    image: str = ""
    #: Kueue LocalQueue to submit through (adds the queue label and starts the job suspended); "" for none
    queue: str = ""
    #: size of the run directory's PersistentVolumeClaim
    storage: str = "100Gi"
    #: storage class of the claim ("" = the cluster's default); it must offer ReadWriteMany across nodes
    storage_class: str = ""
    #: restarts of the whole job (all pods) after a failure before it is marked failed
    max_job_restarts: int = 3
    #: Python inside the image
    python: str = "python"
    #: seconds between SIGTERM (pod deletion, eviction, preemption) and SIGKILL: time to write the last checkpoint
    grace_period_s: int = 120
    #: node labels the pods need (`nodeSelector`)
    node_selector: dict[str, str] = field(default_factory=dict)
    #: taints the pods tolerate, as `kubectl taint` writes them: KEY[=VALUE]:EFFECT (or KEY, or KEY:EFFECT)
    tolerations: tuple[str, ...] = ()
    #: the pods' service account ("" = the namespace's default)
    service_account: str = ""
    #: the pods' PriorityClass ("" = none)
    priority_class: str = ""
    #: container resource requests and limits beyond the workers' GPUs or cores (memory, ephemeral storage, ...)
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    #: the extended resource one GPU is requested as
    gpu_resource: str = "nvidia.com/gpu"
    #: node label of the network block (rack, leaf switch) Kueue's topology-aware scheduling should keep the pods
    #: in, so that the data-parallel rings between them stay inside it ("" = no preference)
    topology_label: str = ""


def check_options(opts: KubernetesOptions) -> KubernetesOptions:
    if opts.kind not in KINDS:
        raise LaunchError(f"Unknown Kubernetes job kind '{opts.kind}'.",
                          fix=f"use --k8s-kind with one of: {', '.join(KINDS)}.")
    if not opts.image:
        raise LaunchError("A Kubernetes launch needs a container image with bastion installed.",
                          fix="pass --image REGISTRY/IMAGE:TAG (an image with bastion and PyTorch).")
    if re.search(r"[\s\x00-\x1f\x7f]", opts.image):
        raise LaunchError(f"Image {opts.image!r} contains white space or control characters.",
                          fix="pass --image REGISTRY/IMAGE:TAG.")
    if opts.queue and (len(opts.queue) > 63 or not _LABEL_VALUE.match(opts.queue)):
        raise LaunchError(f"Kueue queue '{opts.queue}' is not a valid label value.",
                          fix="use letters, digits, '-', '_' and '.', at most 63 characters, starting and "
                              "ending with a letter or digit (the LocalQueue's name).")
    if not _QUANTITY.match(opts.storage):
        raise LaunchError(f"Storage size '{opts.storage}' is not a Kubernetes quantity.", fix="write e.g. 500Gi.")
    if opts.max_job_restarts < 0 or opts.grace_period_s < 0:
        raise LaunchError("Job restarts and the grace period must be >= 0.", fix="give 0 or more.")
    for key, value in opts.node_selector.items():
        _check_label(key, value, "--node-selector", "KEY=VALUE, e.g. --node-selector cloud.google.com/gke-nodepool=a3")
    for flag, what in (("--service-account", opts.service_account), ("--priority-class", opts.priority_class)):
        if what and not _NAME.match(what):
            raise LaunchError(f"{flag} {what!r} is not a Kubernetes object name.",
                              fix="use lowercase letters, digits, '-' and '.', starting and ending with a letter or "
                                  "digit.")
    for flag, table in (("--request", opts.requests), ("--limit", opts.limits)):
        for name, quantity in table.items():
            _check_resource(flag, name, quantity)
    _check_resource("--gpu-resource", opts.gpu_resource, "1")
    for text in opts.tolerations:
        toleration(text)
    if opts.topology_label:
        if not opts.queue:
            raise LaunchError("--topology-label asks Kueue's topology-aware scheduling to place the pods, but the job "
                              "is not submitted through a Kueue queue.",
                              fix="add --queue LOCALQUEUE (whose ClusterQueue's flavor has a Topology), or drop "
                                  "--topology-label.")
        if not _QUALIFIED.match(opts.topology_label):
            raise LaunchError(f"--topology-label {opts.topology_label!r} is not a node label key.",
                              fix="give the label of your Topology's level, e.g. cloud.google.com/gce-topology-block.")
    return opts


#: a qualified name: an optional DNS-subdomain prefix and '/', then a name of up to 63 characters
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _check_label(key: str, value: str, flag: str, example: str) -> None:
    if not _QUALIFIED.match(key) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise LaunchError(f"{flag} {key}={value} is not a Kubernetes label (a qualified key, a value of letters, "
                          f"digits, '-', '_', '.').", fix=f"give {example}.")


def _check_resource(flag: str, name: str, quantity: str) -> None:
    if not _QUALIFIED.match(name) or not _QUANTITY.match(quantity):
        raise LaunchError(f"{flag} {name}={quantity} is not a resource name with a Kubernetes quantity.",
                          fix=f"write e.g. {flag} memory=200Gi (names like cpu, memory, nvidia.com/gpu).")


def toleration(text: str) -> dict[str, str]:
    """`KEY[=VALUE][:EFFECT]` (kubectl taint's form) as a pod toleration: Equal with a value, else Exists."""
    rest, _, effect = text.rpartition(":") if ":" in text else (text, "", "")
    key, eq, value = rest.partition("=")
    if (effect and effect not in _EFFECTS) or not _QUALIFIED.match(key) or (eq and not _LABEL_VALUE.match(value)):
        raise LaunchError(f"--toleration {text!r} is not KEY[=VALUE][:EFFECT].",
                          fix=f"write it as `kubectl taint` does, e.g. nvidia.com/gpu=present:NoSchedule (effects: "
                              f"{', '.join(_EFFECTS)}).")
    found = {"key": key, "operator": "Equal" if eq else "Exists"}
    if eq:
        found["value"] = value
    if effect:
        found["effect"] = effect
    return found


def key_values(items: list[str], flag: str) -> dict[str, str]:
    """`--flag K=V` given several times as a dict; a guidance error for an item without '='."""
    table = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise LaunchError(f"{flag} {item!r} is not KEY=VALUE.", fix=f"give {flag} KEY=VALUE (repeatable).")
        table[key] = value
    return table


def _check_pod_path(path: str, what: str) -> None:
    check_plain_text(path, what)
    if not path.startswith("/"):
        raise LaunchError(f"The {what} '{path}' must be an absolute path inside the pods.",
                          fix=f"give --{'run-dir' if what == 'run directory' else 'data'} as an absolute path "
                              f"(the claim is mounted at the run directory).")


def _container(req: LaunchRequest, opts: KubernetesOptions, env: list[dict[str, Any]]) -> dict[str, Any]:
    per_node = req.layout.procs_per_node
    if req.device == "gpu":
        resources: dict[str, dict[str, Any]] = {"limits": {opts.gpu_resource: per_node}}
    else:
        resources = {"requests": {"cpu": str(per_node)}, "limits": {"cpu": str(per_node)}}
    for part, table in (("requests", opts.requests), ("limits", opts.limits)):
        if table:
            resources[part] = {**resources.get(part, {}), **table}
    config_file = f"{CONFIG_MOUNT}/{RUN_CONFIG_FILE}"
    command = [opts.python, "-m", "torch.distributed.run", *worker_command(config_file, req.worker_entry)]
    common_env = [{"name": key, "value": value} for key, value in worker_env().items()]
    return {
        "name": "trainer",
        "image": opts.image,
        "command": command,
        "env": common_env + env,
        "ports": [{"name": "rendezvous", "containerPort": RDZV_PORT}],
        "resources": resources,
        "volumeMounts": [
            {"name": "run", "mountPath": req.run_dir},
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
    }


def _volumes(name: str) -> list[dict[str, Any]]:
    return [
        {"name": "run", "persistentVolumeClaim": {"claimName": f"{name}-run"}},
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        # PyTorch's shared-memory tensors outgrow the container runtime's 64 MiB default
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]


def _pod_template(req: LaunchRequest, opts: KubernetesOptions, name: str, env: list[dict[str, Any]],
                  restart: str) -> dict[str, Any]:
    """The pod template: its spec, and with --topology-label Kueue's topology request (one pod per node holds a
    node's workers, so tensor-parallel groups — inside a node, launch/request.py checks — share its NVLink; the
    pods, which the data-parallel rings join, are preferred inside one block of the label)."""
    template: dict[str, Any] = {"spec": _pod_spec(req, opts, name, env, restart)}
    if opts.topology_label:
        template["metadata"] = {"annotations": {"kueue.x-k8s.io/podset-preferred-topology": opts.topology_label}}
    return template


def _pod_spec(req: LaunchRequest, opts: KubernetesOptions, name: str, env: list[dict[str, Any]],
              restart: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"restartPolicy": restart} if restart else {}
    # SIGTERM makes every worker checkpoint after its current step (runtime/preemption.py); this is its time
    spec["terminationGracePeriodSeconds"] = opts.grace_period_s
    spec["containers"] = [_container(req, opts, env)]
    spec["volumes"] = _volumes(name)
    if opts.node_selector:
        spec["nodeSelector"] = dict(opts.node_selector)
    if opts.tolerations:
        spec["tolerations"] = [toleration(t) for t in opts.tolerations]
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    if opts.priority_class:
        spec["priorityClassName"] = opts.priority_class
    return spec


def node_range(req: LaunchRequest) -> tuple[int, int]:
    """(fewest, most) pods the job runs on: its run config's elastic range (launch/elastic.py), else its nodes."""
    elastic = req.run_config.get(ELASTIC_KEY)
    if elastic is None:
        return req.layout.nodes, req.layout.nodes
    return elastic["min_nodes"], elastic["max_nodes"]


def _metadata(name: str, opts: KubernetesOptions) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "bastion", "app.kubernetes.io/instance": name}
    if opts.queue:
        labels["kueue.x-k8s.io/queue-name"] = opts.queue
    return {"name": name, "labels": labels}


def _support_objects(req: LaunchRequest, opts: KubernetesOptions, name: str) -> list[dict[str, Any]]:
    claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"],
                                  "resources": {"requests": {"storage": opts.storage}}}
    if opts.storage_class:
        claim_spec["storageClassName"] = opts.storage_class
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": f"{name}-run", "labels": {"app.kubernetes.io/instance": name}},
         "spec": claim_spec},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{name}-config", "labels": {"app.kubernetes.io/instance": name}},
         # the whole resolved run, the model spec included: a model file on the launching machine reaches the pods
         "data": {RUN_CONFIG_FILE: json.dumps(req.run_config, indent=2) + "\n"}},
    ]


def pytorchjob(req: LaunchRequest, opts: KubernetesOptions, name: str) -> dict[str, Any]:
    """Kubeflow PyTorchJob with an elastic policy: the operator sets torchrun's PET_* rendezvous variables."""
    nodes = req.layout.nodes
    fewest, most = node_range(req)
    spec: dict[str, Any] = {
        # minReplicas < maxReplicas (an elastic run): torchrun's rendezvous continues on the pods left, and each
        # worker takes the plan for that world (launch/elastic.py)
        "elasticPolicy": {"rdzvBackend": "c10d", "rdzvPort": RDZV_PORT, "minReplicas": fewest,
                          "maxReplicas": most, "maxRestarts": req.max_restarts},
        "nprocPerNode": str(req.layout.procs_per_node),
        "runPolicy": {"backoffLimit": opts.max_job_restarts, "cleanPodPolicy": "None"},
        "pytorchReplicaSpecs": {
            "Worker": {
                "replicas": nodes,
                # a failed pod restarts in place and resumes from the run directory's newest checkpoint
                "restartPolicy": "OnFailure",
                "template": _pod_template(req, opts, name, [], restart=""),
            }
        },
    }
    if opts.queue:
        spec["runPolicy"]["suspend"] = True  # Kueue resumes it once the queue admits it
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": _metadata(name, opts),
            "spec": spec}


def jobset(req: LaunchRequest, opts: KubernetesOptions, name: str) -> dict[str, Any]:
    """JobSet of one indexed Job with a pod per node; the first pod hosts the c10d rendezvous."""
    nodes = req.layout.nodes
    replicated = "node"
    first_pod = f"{name}-{replicated}-0-0.{name}"  # JobSet's stable host name: <set>-<job>-<index>-<pod>.<subdomain>
    fewest, most = node_range(req)
    env = [
        # MIN:MAX for an elastic run: the rendezvous continues on the pods left (launch/elastic.py)
        {"name": "PET_NNODES", "value": str(nodes) if fewest == most else f"{fewest}:{most}"},
        {"name": "PET_NPROC_PER_NODE", "value": str(req.layout.procs_per_node)},
        {"name": "PET_RDZV_BACKEND", "value": "c10d"},
        {"name": "PET_RDZV_ENDPOINT", "value": f"{first_pod}:{RDZV_PORT}"},
        {"name": "PET_RDZV_ID", "value": name},
        {"name": "PET_MAX_RESTARTS", "value": str(req.max_restarts)},
    ]
    spec: dict[str, Any] = {
        # any failed pod fails its Job, and the whole set is recreated: every node resumes together
        "failurePolicy": {"maxRestarts": opts.max_job_restarts},
        "network": {"enableDNSHostnames": True, "subdomain": name},
        "replicatedJobs": [{
            "name": replicated,
            "replicas": 1,
            "template": {"spec": {
                # an elastic run lets a failed pod be replaced alone (its index restarts, the others continue);
                # otherwise any failed pod fails the Job and the whole set restarts
                "parallelism": nodes, "completions": nodes, "completionMode": "Indexed",
                "backoffLimit": 0 if fewest == most else opts.max_job_restarts * nodes,
                "template": _pod_template(req, opts, name, env, restart="Never"),
            }},
        }],
    }
    if opts.queue:
        spec["suspend"] = True  # Kueue resumes it once the queue admits it
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": _metadata(name, opts),
            "spec": spec}


def render_manifests(req: LaunchRequest, opts: KubernetesOptions) -> str:
    """The YAML documents to apply: claim, run-config ConfigMap, then the job."""
    check_options(opts)
    _check_pod_path(req.run_dir, "run directory")
    _check_pod_path(req.data_dir, "data directory")
    name = k8s_name(req.name)
    job = pytorchjob(req, opts, name) if opts.kind == "pytorchjob" else jobset(req, opts, name)
    return dump_all([*_support_objects(req, opts, name), job])


def apply(manifest_path: Path) -> str:
    """`kubectl apply -f`; what kubectl printed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise LaunchError("kubectl is not installed here, so the manifests cannot be submitted.",
                          fix=f"apply {manifest_path} from a machine with cluster access: "
                              f"kubectl apply -f {manifest_path}")
    done = subprocess.run([kubectl, "apply", "-f", str(manifest_path)], capture_output=True, text=True)
    if done.returncode:
        raise LaunchError(f"kubectl apply failed: {done.stderr.strip()}",
                          fix="check the cluster context (kubectl config current-context) and the CRDs "
                              "(PyTorchJob needs the Kubeflow training operator, JobSet the JobSet controller).")
    return done.stdout


# ---- a submitted job: bastion status / logs / cancel NAME ------------------------------------------------------

#: the label each controller puts on the pods of a job it runs (selects the job's pods for `kubectl logs`)
POD_SELECTOR = {"pytorchjob": "training.kubeflow.org/job-name", "jobset": "jobset.sigs.k8s.io/jobset-name"}
#: the resource names kubectl knows the job kinds by
RESOURCE = {"pytorchjob": "pytorchjobs.kubeflow.org", "jobset": "jobsets.jobset.x-k8s.io"}


def _kubectl(action: str) -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise LaunchError(f"kubectl is not on PATH, and {action} a Kubernetes job goes through it.",
                          fix="install kubectl and point it at the cluster (kubectl config current-context), or "
                              "run this where kubectl is set up.",
                          hint="https://kubernetes.io/docs/tasks/tools/")
    return path


def status_command(kind: str, name: str) -> list[str]:
    return [_kubectl("reading the state of"), "get", RESOURCE[kind], name, "-o", "json"]


def pods_command(kind: str, name: str) -> list[str]:
    return [_kubectl("reading the state of"), "get", "pods", "-l", f"{POD_SELECTOR[kind]}={name}", "-o", "json"]


def logs_command(kind: str, name: str, lines: int, follow: bool) -> list[str]:
    """`kubectl logs` of every pod of the job, each line prefixed with its pod."""
    command = [_kubectl("reading the logs of"), "logs", "-l", f"{POD_SELECTOR[kind]}={name}", "--all-containers",
               "--prefix", f"--tail={lines if lines > 0 else -1}", "--max-log-requests=64"]
    return [*command, "--follow"] if follow else command


def cancel_command(kind: str, name: str) -> list[str]:
    """Deleting the job: every pod gets SIGTERM and its grace period to checkpoint; the claim (the run directory)
    and the ConfigMap stay, so applying the manifest again resumes the run."""
    return [_kubectl("cancelling"), "delete", RESOURCE[kind], name, "--wait=false"]


def _get_json(command: list[str]) -> dict[str, Any] | None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if done.returncode:
        if "NotFound" in done.stderr or "not found" in done.stderr:
            return None
        raise LaunchError(f"kubectl failed: {done.stderr.strip()}",
                          fix="check the cluster context (kubectl config current-context) and your access.")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise LaunchError(f"kubectl printed no JSON: {done.stdout[:200]!r}.",
                          fix="check that `kubectl` is the Kubernetes client.") from None


def job_status(kind: str, name: str) -> dict[str, Any]:
    """The job's state (its newest true condition: Created, Running, Restarting, Succeeded, Failed, Suspended, ...)
    and its pods' phases, as kubectl reports them."""
    job = _get_json(status_command(kind, name))
    if job is None:
        return {"name": name, "kind": kind, "state": "not found (deleted, or never applied)", "pods": []}
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    state = conditions[-1].get("type", "Unknown") if conditions else "Pending"
    pods = _get_json(pods_command(kind, name)) or {}
    phases = [{"name": (p.get("metadata") or {}).get("name"), "phase": (p.get("status") or {}).get("phase"),
               "restarts": sum(c.get("restartCount", 0) for c in (p.get("status") or {}).get("containerStatuses")
                               or [])}
              for p in pods.get("items") or []]
    return {"name": name, "kind": kind, "state": state, "message": conditions[-1].get("message") if conditions
            else None, "pods": phases}


def cancel(kind: str, name: str) -> str:
    done = subprocess.run(cancel_command(kind, name), capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise LaunchError(f"kubectl delete failed: {done.stderr.strip()}",
                          fix="check the job's name (kubectl get " + RESOURCE[kind] + ") and the cluster context.")
    return done.stdout.strip()
