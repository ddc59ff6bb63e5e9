"""The ``k8s`` training launcher: its manifests, its names, and how it follows a run that the cluster restarts.

No Kubernetes cluster runs on these machines. The manifests are validated offline against the Kubernetes
schemas (``kubernetes-validate``); the PyTorchJob is a custom resource the schemas do not know, so its
structure is asserted and its pod templates are validated as core ``PodTemplate`` objects. The tests of
``K8sTrainingLauncher.run`` replace the Kubernetes API objects with ``FakeCluster`` (a fake, said so in each
docstring; ``tests/support/k8s_standin.py``, which also serves it over HTTP to the real client in
``test_k8s_launch_api.py``); the pod logs it serves are what a stand-in for the training entrypoint really
wrote through ``dagster_pipes`` when started with the environment of the manifest the launcher created,
and they go through dagster-k8s' real pod-log message reader.
"""

import copy
import re
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest

from k8s.security import WRITABLE_ENV
from k8s.training_job import (
    MAX_NAME_LEN,
    TrainingJobSpec,
    job_manifest,
    job_name,
    manifest_command,
    pytorchjob_manifest,
)
from k8s.training_workload import KubeApis
from resources.launcher import K8sTrainingLauncher
from tests.support.k8s_standin import (
    CONFIG_URI,
    RUN_KEY,
    Attempt,
    FakeCluster,
    crashed_session_env,
    entrypoint_logs,
    plain_logs,
    rank0_env,
    steps,
    train,
    user_logs,
)

# --- Manifests ----------------------------------------------------------------------------------------------


def pod_of(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_job_manifest_is_a_valid_restartable_eight_gpu_job(version):
    spec = TrainingJobSpec()
    env = {"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msgs"}
    manifest = job_manifest(spec, "phi-train-run-1", ["--config", CONFIG_URI], env)
    kubernetes_validate.validate(manifest, version, strict=True)
    broken = copy.deepcopy(manifest)
    broken["spec"]["backofLimit"] = broken["spec"].pop("backoffLimit")  # a typo the strict schema catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)

    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["metadata"]["namespace"] == "phi"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/part-of"] == "phi-factory"
    assert manifest["spec"]["backoffLimit"] == 3
    assert manifest["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    pod = pod_of(manifest)
    assert pod["restartPolicy"] == "Never"  # the Job's backoffLimit replaces a lost pod with a new one
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["command"] == [
        "torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=8",
        "-m", "phi_assets.training.entrypoint", "--config", CONFIG_URI,
    ]  # fmt: skip
    assert {e["name"]: e["value"] for e in container["env"]} == {"PYTHONUNBUFFERED": "1", **WRITABLE_ENV, **env}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert (
        volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"} and mounts["shm"] == "/dev/shm"
    )
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "phi-checkpoints"}
    assert mounts["checkpoints"] == "/checkpoints"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_job_manifest_carries_the_optional_settings():
    spec = TrainingJobSpec(
        gpus_per_node=4, backoff_limit=5, active_deadline_seconds=86400, ttl_seconds_after_finished=600,
        service_account_name="trainer", env_from_secrets=("s3-credentials",), memory_limit="900Gi",
        shm_size="32Gi", checkpoint_pvc="ckpt-rwx", checkpoint_mount="/ckpt", ignore_disruptions=False,
    )  # fmt: skip
    manifest = job_manifest(spec, "phi-train-run-2", ["--config", "x.json"], {})
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    job, pod = manifest["spec"], pod_of(manifest)
    assert (job["backoffLimit"], job["activeDeadlineSeconds"], job["ttlSecondsAfterFinished"]) == (
        5,
        86400,
        600,
    )
    assert "podFailurePolicy" not in job
    container = pod["containers"][0]
    assert pod["serviceAccountName"] == "trainer"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4, "memory": "900Gi"}
    assert "--nproc_per_node=4" in container["command"]
    assert {"name": "checkpoints", "mountPath": "/ckpt"} in container["volumeMounts"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]


def test_pytorchjob_manifest_for_four_nodes():
    spec = TrainingJobSpec(nodes=4, backoff_limit=6)
    env = {"DAGSTER_PIPES_CONTEXT": "ctx"}
    manifest = pytorchjob_manifest(spec, "phi-train-big", ["--config", CONFIG_URI], env)
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert manifest["spec"]["nprocPerNode"] == "8"
    assert manifest["spec"]["runPolicy"]["backoffLimit"] == 6
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        template = replica["template"]
        assert "restartPolicy" not in template["spec"]  # the operator sets it from the replica spec
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template},
            "1.30",
            strict=True,
        )
        (container,) = template["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator requires this name
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert {"name": "DAGSTER_PIPES_CONTEXT", "value": "ctx"} in container["env"]  # every pod, same env
        assert container["command"] == [
            "torchrun", "--nnodes=4", "--nproc_per_node=8", "--node_rank=$(RANK)",
            "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
            "-m", "phi_assets.training.entrypoint", "--config", CONFIG_URI,
        ]  # fmt: skip
        assert template["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert manifest_command(manifest) == replicas["Master"]["template"]["spec"]["containers"][0]["command"]
    with pytest.raises(ValueError, match="nodes >= 2"):
        pytorchjob_manifest(TrainingJobSpec(), "phi-train-big", ["--config", CONFIG_URI], env)


def test_names_are_dns_labels_deterministic_per_run_key():
    keys = [
        RUN_KEY,
        "pretrained_checkpoint/" + "a" * 200,
        "pretrained_checkpoint/" + "a" * 199 + "b",  # same long prefix, different key
        "Pretrained Checkpoint ✓ 2026",
        "////",
        "x",
    ]
    names = [job_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for key, name in zip(keys, names, strict=True):
        assert name == job_name(key)
        assert len(name) <= MAX_NAME_LEN <= 63 - len("-worker-99")
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and name.startswith("phi-train-")
    assert job_name(RUN_KEY).startswith("phi-train-pretrained-checkpoint-0f3a9c-")
    assert job_name(RUN_KEY, "sft") != job_name(RUN_KEY)
    assert K8sTrainingLauncher().name_for(RUN_KEY) == job_name(RUN_KEY)
    with pytest.raises(ValueError, match="run_key"):
        job_name("  ")
    with pytest.raises(ValueError, match="run_name"):
        job_manifest(TrainingJobSpec(), "Not_A_Name", ["--config", CONFIG_URI], {})


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("nodes", 0),
        ("gpus_per_node", 0),
        ("gpus_per_node", True),
        ("backoff_limit", -1),
        ("active_deadline_seconds", 0),
        ("ttl_seconds_after_finished", -5),
        ("namespace", "Phi_NS"),
        ("name_prefix", "9-train"),
        ("image", ""),
        ("cpu", "lots"),
        ("memory", "0Gi"),
        ("memory_limit", "-1Gi"),
        ("shm_size", "64 GiB"),
        ("checkpoint_pvc", ""),
        ("checkpoint_mount", "checkpoints"),
        ("checkpoint_mount", "/dev/shm"),
        ("service_account_name", "Bad Account"),
        ("env_from_secrets", ("ok", "Not OK")),
        ("node_selector", {"nvidia.com/gpu.product": 80}),
        ("tolerations", [{"key": "nvidia.com/gpu", "operator": "Maybe"}]),
        ("tolerations", [{"key": "nvidia.com/gpu", "effect": "NoWay"}]),
        ("tolerations", [{"kee": "nvidia.com/gpu"}]),
        ("master_port", 70000),
    ],
)
def test_invalid_spec_values_name_the_field(field_name, value):
    with pytest.raises(ValueError, match=rf"TrainingJobSpec\.{field_name}\b"):
        TrainingJobSpec(**{field_name: value})


def test_the_resource_renders_the_same_spec():
    assert K8sTrainingLauncher().spec() == TrainingJobSpec()
    launcher = K8sTrainingLauncher(nodes=2, backoff_limit=1, env_from_secrets=["s3"], checkpoint_pvc="rwx")
    spec = launcher.spec()
    assert (spec.nodes, spec.kind, spec.backoff_limit, spec.env_from_secrets, spec.checkpoint_pvc) == (
        2, "PyTorchJob", 1, ("s3",), "rwx",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"TrainingJobSpec\.nodes"):
        K8sTrainingLauncher(nodes=0).spec()


def test_work_dirs_lie_on_the_checkpoint_volume():
    launcher = K8sTrainingLauncher(checkpoint_mount="/ckpt/")
    work = launcher.work_dir("pretrained_checkpoint", "0f3a9c")
    assert work == "/ckpt/pretrained_checkpoint/0f3a9c"
    mounts = pod_of(job_manifest(launcher.spec(), "phi-train-x", [], {}))["containers"][0]["volumeMounts"]
    assert any(m["name"] == "checkpoints" and work.startswith(m["mountPath"]) for m in mounts)


# --- A fake cluster -----------------------------------------------------------------------------------------


def launcher_on(cluster: FakeCluster, **settings: Any) -> K8sTrainingLauncher:
    class FakeApiLauncher(K8sTrainingLauncher):
        def _apis(self) -> KubeApis:
            return cluster.apis

    return FakeApiLauncher(poll_interval=0.0, **settings)


# --- Following runs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("first_ending", ["lost", "crash"])
def test_a_lost_pod_is_replaced_and_every_attempt_is_read_in_order(first_ending, instance):
    """Fake Kubernetes API (FakeCluster). Pod 1 dies after step 2 (its node is lost, or it crashes);
    the Job starts pod 2, which resumes from the step-1 checkpoint and succeeds. The launcher returns
    both pods' Pipes messages in order, read from real Pipes output in their logs."""
    cluster = FakeCluster(
        "Job",
        [
            Attempt(entrypoint_logs(first_ending, 1, 2), exit_code=137, reason="Error"),
            Attempt(entrypoint_logs("ok", 2, 3)),
        ],
    )
    messages = train(launcher_on(cluster), instance)

    assert messages == steps(1, 2) + steps(2, 3, summary=3)
    name = job_name(RUN_KEY)
    assert cluster.created == [name]
    assert cluster.log_reads == [f"{name}-00000#0", f"{name}-00001#0"]
    assert name not in cluster.objects and cluster.deleted == [name]  # delete_on_success
    logs = user_logs(instance)
    assert not [m for m in logs if "unexpected message" in m or "did not receive" in m]
    restarted = [m for m in logs if "earlier attempt" in m]
    assert len(restarted) == (1 if first_ending == "crash" else 0)
    if restarted:
        assert "RuntimeError" in restarted[0] and "NCCL watchdog timeout" in restarted[0]


def test_the_job_gets_the_pipes_environment_and_the_config(instance):
    """Fake Kubernetes API (FakeCluster): the Job the launcher creates carries the session's Pipes
    bootstrap variables and the resource's env, and runs the entrypoint on the config URI."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 1))])
    train(launcher_on(cluster, env={"PHI_PROFILE": "k8s"}, delete_on_success=False), instance)
    body = cluster.objects[job_name(RUN_KEY)]["body"]
    env = rank0_env(body)
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= env.keys() and env["PHI_PROFILE"] == "k8s"
    assert manifest_command(body)[-2:] == ["--config", CONFIG_URI]
    kubernetes_validate.validate(body, "1.30", strict=True)
    assert cluster.deleted == []


def test_a_job_that_runs_out_of_retries_raises_a_descriptive_failure():
    """Fake Kubernetes API (FakeCluster): with backoffLimit 1, both pods are OOM-killed and the Job gets
    its Failed condition; the launcher raises dagster.Failure naming the Job, its namespace, the number
    of failed pods and how the last pod ended, and keeps the Job for inspection."""
    oom = Attempt(plain_logs("step 1", "CUDA out of memory"), exit_code=137, reason="OOMKilled")
    cluster = FakeCluster("Job", [oom, oom], backoff_limit=1)
    with pytest.raises(dg.Failure) as failure:
        train(launcher_on(cluster, backoff_limit=1))
    name = job_name(RUN_KEY)
    text = failure.value.description
    assert f"Job {name} in namespace phi failed" in text
    assert "BackoffLimitExceeded" in text and "2 failed pod(s)" in text
    assert f"last pod {name}-00001" in text and "exited with code 137 (OOMKilled)" in text
    assert cluster.log_reads == [f"{name}-00000#0", f"{name}-00001#0"]
    assert cluster.deleted == []


def test_a_conflict_attaches_to_the_existing_job(instance):
    """Fake Kubernetes API (FakeCluster). The Job already exists (launched before the orchestrator
    crashed) and its pod is running: creating it again returns 409, and the launcher follows that Job's
    pod instead of training twice, reading what it reports under the earlier session's Pipes context.
    A leftover pod with the same job-name label but another owner (an
    earlier, deleted Job) is not read."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 4, 5))])
    name = job_name(RUN_KEY)
    spec = TrainingJobSpec()
    cluster.create_namespaced_job(
        "phi", job_manifest(spec, name, ["--config", CONFIG_URI], crashed_session_env())
    )
    cluster.add_pod(name, "uid-of-a-deleted-job", Attempt(plain_logs("not this one")), "stale", "terminated")
    cluster.pods[0].state = "running"

    messages = train(launcher_on(cluster, delete_on_success=False), instance)

    assert cluster.created == [name, name]  # the crashed launch, then the 409
    assert messages == steps(4, 5, summary=5)
    assert cluster.log_reads == [f"{name}-00000#0"]
    assert any("already exists (running): following it" in m for m in user_logs(instance))


def test_a_conflict_with_a_failed_job_replaces_it():
    """Fake Kubernetes API (FakeCluster): the existing Job with this name has failed (its retries are
    used up), so the launcher deletes it and launches a new one, ignoring the old Job's pods."""
    cluster = FakeCluster(
        "Job", [Attempt(plain_logs("boom"), 1, "Error"), Attempt(entrypoint_logs("ok", 1, 2))]
    )
    name = job_name(RUN_KEY)
    cluster.backoff_limit = 0
    cluster.create_namespaced_job("phi", job_manifest(TrainingJobSpec(), name, ["--config", CONFIG_URI], {}))
    cluster.pods[0].state = "running"
    cluster.read_namespaced_pod_log(f"{name}-00000", "phi", follow=True, timestamps=True)
    assert cluster.objects[name]["done"] == "failed"
    cluster.log_reads.clear()

    messages = train(launcher_on(cluster))

    assert messages == steps(1, 2, summary=2)
    assert cluster.created == [name, name, name] and cluster.deleted == [
        name,
        name,
    ]  # replaced, then cleaned up
    assert cluster.log_reads == [f"{name}-00001#0"]


def test_a_conflict_with_another_command_is_refused():
    """Fake Kubernetes API (FakeCluster): a Job with this run key's name but another config is not
    followed: the launcher raises dagster.Failure instead of reporting another run's results."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 1))])
    name = job_name(RUN_KEY)
    cluster.create_namespaced_job(
        "phi", job_manifest(TrainingJobSpec(), name, ["--config", "s3://b/other.json"], {})
    )
    with pytest.raises(dg.Failure, match="already exists with another command"):
        train(launcher_on(cluster))
    assert cluster.log_reads == [] and cluster.deleted == []


def test_a_pytorchjob_master_restarted_in_place_is_read_twice(instance):
    """Fake Kubernetes API (FakeCluster) in the role of the training operator: a 2-node PyTorchJob whose
    Master container crashes and is restarted in the same pod (restartPolicy OnFailure). The launcher
    finds the Master by the operator's labels and reads both container instances."""
    cluster = FakeCluster(
        "PyTorchJob",
        [
            Attempt(entrypoint_logs("crash", 1, 1), exit_code=1, reason="Error"),
            Attempt(entrypoint_logs("ok", 1, 2)),
        ],
        in_place=True,
    )
    messages = train(launcher_on(cluster, nodes=2), instance)
    name = job_name(RUN_KEY)
    assert messages == steps(1) + steps(1, 2, summary=2)
    assert cluster.log_reads == [f"{name}-master-0#0", f"{name}-master-0#1"]
    assert cluster.deleted == [name]
    assert not [m for m in user_logs(instance) if "unexpected message" in m]


def test_an_interrupted_run_deletes_its_job():
    """Fake Kubernetes API (FakeCluster): when the Dagster run is terminated while the pod is pending,
    the launcher deletes the Job so that it stops holding the GPUs."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 1))])
    cluster.interrupt_at = 1
    with pytest.raises(dg.DagsterExecutionInterruptedError):
        train(launcher_on(cluster))
    assert cluster.deleted == [job_name(RUN_KEY)] and cluster.log_reads == []


def test_an_attempt_that_ends_between_two_polls_is_still_read(instance):
    """Fake Kubernetes API (FakeCluster): the pod starts and succeeds between two status polls, so the
    launcher first sees the Job complete; it still reads the finished pod's messages before returning."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 2), between_polls=True)])
    assert train(launcher_on(cluster), instance) == steps(1, 2, summary=2)
    assert cluster.log_reads == [f"{job_name(RUN_KEY)}-00000#0"]


def test_a_broken_log_stream_of_a_running_pod_is_followed_again(instance, monkeypatch):
    """Fake Kubernetes API (FakeCluster): the first log request of the running pod fails (and the pod
    log reader is told not to retry by itself); the pod is still running, so the launcher follows it
    again instead of losing its messages."""
    monkeypatch.setenv("DAGSTER_PIPES_K8S_CONSUME_POD_LOGS_RETRIES", "0")
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 2), stream_breaks=1)])
    assert train(launcher_on(cluster), instance) == steps(1, 2, summary=2)
    pod = f"{job_name(RUN_KEY)}-00000"
    assert cluster.log_reads == [f"{pod}#0", f"{pod}#0"]
    assert any(f"Lost the log stream of pod {pod}" in m for m in user_logs(instance))
