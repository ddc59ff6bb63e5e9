"""``K8sTrainingLauncher.run`` through the real ``kubernetes`` client, against a local stand-in of the API.

No Kubernetes cluster runs on these machines. ``KubeApiStandin`` (``tests/support/k8s_standin.py``) serves the
Kubernetes REST API on 127.0.0.1 from the same ``FakeCluster`` model that ``test_training_launch.py`` hands
to the launcher as API objects. Here the launcher is left as it is: it loads a kubeconfig pointing at the
stand-in and builds ``kubernetes.client`` API objects, so these tests cover what the method-level fake
skips: the REST paths and query parameters, the JSON sent and read back, ``ApiException`` with the
status codes an API server answers (404, 409, 422), the bearer token, and pod logs followed as a chunked
stream (``_preload_content=False``) by dagster-k8s' pod-log reader. The logs are what a stand-in for the
training entrypoint really wrote through ``dagster_pipes`` with the environment of the manifest the
launcher POSTed.
"""

from pathlib import Path

import dagster as dg
import kubernetes
import pytest

from k8s.training_job import TrainingJobSpec, job_manifest, job_name
from resources.launcher import K8sTrainingLauncher
from tests.support.k8s_standin import (
    CONFIG_URI,
    RUN_KEY,
    Attempt,
    FakeCluster,
    KubeApiStandin,
    crashed_session_env,
    entrypoint_logs,
    plain_logs,
    rank0_env,
    serving,
    steps,
    train,
    user_logs,
)

NAME = job_name(RUN_KEY)
JOBS = "/apis/batch/v1/namespaces/phi/jobs"
PYTORCHJOBS = "/apis/kubeflow.org/v1/namespaces/phi/pytorchjobs"
PODS = "/api/v1/namespaces/phi/pods"


@pytest.fixture
def serve(monkeypatch):
    """Starts a stand-in for a ``FakeCluster`` (``k8s_standin.serving``: stopped and checked afterwards)."""
    with serving(monkeypatch) as start:
        yield lambda cluster: start(cluster)


def launcher_for(api: KubeApiStandin, tmp_path: Path, **settings) -> K8sTrainingLauncher:
    """The launcher as deployed, with a kubeconfig that points at the stand-in."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    return K8sTrainingLauncher(kubeconfig_file=str(kubeconfig), poll_interval=0.05, **settings)


def no_pipes_trouble(instance: dg.DagsterInstance, *, retried: bool = False) -> None:
    """No Pipes message was out of place or missing, and (unless ``retried``) no log stream was retried."""
    trouble = ["unexpected message", "did not receive", "Lost the log stream"]
    trouble += [] if retried else ["Error consuming pod logs"]
    logs = user_logs(instance)
    assert not [m for m in logs if any(t in m for t in trouble)], logs


def test_a_one_node_job_succeeds(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in. The launcher POSTs a batch/v1 Job
    asking for 8 GPUs with the Pipes bootstrap env, follows its pod's log stream, returns the messages the
    training process reported through Pipes, and deletes the Job (propagation Background)."""
    api = serve(FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 3))]))

    messages = train(launcher_for(api, tmp_path, env={"PHI_PROFILE": "k8s"}), instance)

    assert messages == steps(1, 2, 3, summary=3)
    (post,) = api.requests("POST")
    assert (post.path, post.code) == (JOBS, 201)
    assert (post.body["apiVersion"], post.body["kind"], post.body["metadata"]["name"]) == (
        "batch/v1",
        "Job",
        NAME,
    )
    (container,) = post.body["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert container["command"][-2:] == ["--config", CONFIG_URI]
    env = rank0_env(post.body)
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= env.keys() and env["PHI_PROFILE"] == "k8s"
    listed = api.requests("GET", PODS)
    assert listed and {s.query.get("labelSelector") for s in listed if s.path == PODS} == {f"job-name={NAME}"}
    (log,) = api.requests("GET", "/log")
    assert log.path == f"{PODS}/{NAME}-00000/log"
    assert log.query["follow"].lower() == "true" and log.query["timestamps"].lower() == "true"
    assert api.requests("GET", f"{JOBS}/{NAME}/status")
    (delete,) = api.requests("DELETE")
    assert (delete.path, delete.query.get("propagationPolicy"), delete.code) == (
        f"{JOBS}/{NAME}",
        "Background",
        200,
    )
    assert api.cluster.objects == {} and all(s.code != 401 for s in api.seen)  # the kubeconfig's token was sent
    no_pipes_trouble(instance)


def test_a_lost_pod_is_replaced_and_both_attempts_are_read_in_order(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in. The Job's first pod is lost after
    step 2 (exit 137, no Pipes close); the Job controller creates a second pod that resumes from step 2
    and succeeds. The launcher follows both pods' logs, in order, and returns both attempts' messages."""
    cluster = FakeCluster(
        "Job",
        [
            Attempt(entrypoint_logs("lost", 1, 2), exit_code=137, reason="Error"),
            Attempt(entrypoint_logs("ok", 2, 3)),
        ],
    )
    api = serve(cluster)

    messages = train(launcher_for(api, tmp_path), instance)

    assert messages == steps(1, 2) + steps(2, 3, summary=3)
    assert [s.path for s in api.requests("GET", "/log")] == [
        f"{PODS}/{NAME}-00000/log",
        f"{PODS}/{NAME}-00001/log",
    ]
    assert cluster.log_reads == [f"{NAME}-00000#0", f"{NAME}-00001#0"]
    assert [s.code for s in api.requests("POST")] == [201]  # one Job, two pods
    no_pipes_trouble(instance)


def test_a_conflict_reattaches_to_the_existing_job(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in. An earlier orchestrator created the
    Job (through the same API) and died; its pod is running. The launcher's POST gets 409 AlreadyExists,
    so it reads the Job, finds the same command, and follows that Job's pod instead of training twice,
    getting the messages reported under the earlier session's Pipes context."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 4, 5))])
    api = serve(cluster)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    earlier = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    manifest = job_manifest(TrainingJobSpec(), NAME, ["--config", CONFIG_URI], crashed_session_env())
    first = kubernetes.client.BatchV1Api(earlier).create_namespaced_job("phi", manifest)
    cluster.pods[0].state = "running"

    messages = train(launcher_for(api, tmp_path, delete_on_success=False), instance)

    assert messages == steps(4, 5, summary=5)
    posts = api.requests("POST")
    assert [s.code for s in posts] == [201, 409]
    assert posts[1].answer["reason"] == "AlreadyExists" and posts[1].answer["kind"] == "Status"
    assert api.requests("GET", f"{JOBS}/{NAME}") and cluster.log_reads == [f"{NAME}-00000#0"]
    assert cluster.objects[NAME]["uid"] == first.metadata.uid and api.requests("DELETE") == []
    assert any("already exists (running): following it" in m for m in user_logs(instance))
    no_pipes_trouble(instance)


def test_a_failed_job_raises_a_failure_naming_it(serve, tmp_path):
    """No cluster runs here; the Kubernetes API is a local stand-in. With backoffLimit 1 both pods are
    OOM-killed and the Job gets its Failed condition; the launcher raises dagster.Failure naming the Job,
    its namespace, the failed pods and how the last pod ended, and leaves the Job for inspection."""
    oom = Attempt(plain_logs("step 1", "CUDA out of memory"), exit_code=137, reason="OOMKilled")
    cluster = FakeCluster("Job", [oom, oom], backoff_limit=1)
    api = serve(cluster)

    with pytest.raises(dg.Failure) as failure:
        train(launcher_for(api, tmp_path, backoff_limit=1))

    text = failure.value.description
    assert f"Job {NAME} in namespace phi failed" in text
    assert "BackoffLimitExceeded" in text and "2 failed pod(s)" in text
    assert f"last pod {NAME}-00001" in text and "exited with code 137 (OOMKilled)" in text
    assert failure.value.metadata["k8s_name"].value == NAME
    assert api.requests("POST")[0].body["spec"]["backoffLimit"] == 1
    assert api.requests("DELETE") == [] and NAME in cluster.objects


def test_an_interrupted_run_deletes_its_job(serve, tmp_path):
    """No cluster runs here; the Kubernetes API is a local stand-in. The Dagster run is terminated (SIGINT
    to the step, as on a run termination) while the Job's pod is still pending; the launcher deletes the
    Job through the API so that it stops holding the GPUs, and never reads a log."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 1))])
    cluster.interrupt_at = 1
    api = serve(cluster)

    with pytest.raises(dg.DagsterExecutionInterruptedError):
        train(launcher_for(api, tmp_path))

    (delete,) = api.requests("DELETE")
    assert (delete.path, delete.query.get("propagationPolicy"), delete.code) == (
        f"{JOBS}/{NAME}",
        "Background",
        200,
    )
    assert cluster.deleted == [NAME] and cluster.objects == {}
    assert api.requests("GET", "/log") == [] and cluster.log_reads == []


def test_a_four_node_pytorchjob_succeeds(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in in the role of the training operator.
    The launcher creates a kubeflow.org/v1 PyTorchJob (1 Master, 3 Workers), finds the Master pod by the
    operator's labels among the four pods, follows only its log, and deletes the PyTorchJob."""
    cluster = FakeCluster("PyTorchJob", [Attempt(entrypoint_logs("ok", 1, 2))])
    api = serve(cluster)

    messages = train(launcher_for(api, tmp_path, nodes=4), instance)

    assert messages == steps(1, 2, summary=2)
    (post,) = api.requests("POST")
    assert (post.path, post.code, post.body["kind"]) == (PYTORCHJOBS, 201, "PyTorchJob")
    replicas = post.body["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    assert "--nnodes=4" in replicas["Master"]["template"]["spec"]["containers"][0]["command"]
    assert len(cluster.pods) == 4  # the Master and three Workers
    selectors = {s.query.get("labelSelector") for s in api.requests("GET", PODS) if s.path == PODS}
    assert selectors == {f"training.kubeflow.org/job-name={NAME},training.kubeflow.org/replica-type=master"}
    assert [s.path for s in api.requests("GET", "/log")] == [f"{PODS}/{NAME}-master-0/log"]
    assert api.requests("GET", f"{PYTORCHJOBS}/{NAME}/status")
    (delete,) = api.requests("DELETE")
    assert (delete.path, delete.query.get("propagationPolicy")) == (f"{PYTORCHJOBS}/{NAME}", "Background")
    no_pipes_trouble(instance)


def test_the_standin_answers_errors_as_an_api_server_does(serve, tmp_path):
    """No cluster runs here; this checks the local stand-in of the Kubernetes API itself, through the real
    client: an invalid Job is refused with 422 Invalid naming the field, a missing one is 404 NotFound,
    and a request without the kubeconfig's token is 401."""
    api = serve(FakeCluster("Job", [Attempt(plain_logs("unused"))]))
    client = kubernetes.config.new_client_from_config(config_file=str(api.write_kubeconfig(tmp_path / "kc")))
    batch = kubernetes.client.BatchV1Api(client)
    manifest = job_manifest(TrainingJobSpec(), NAME, ["--config", CONFIG_URI], {})
    manifest["spec"]["backofLimit"] = manifest["spec"].pop("backoffLimit")  # a typo

    with pytest.raises(kubernetes.client.ApiException) as invalid:
        batch.create_namespaced_job("phi", manifest)
    assert (
        invalid.value.status == 422 and "backofLimit" in invalid.value.body and "Invalid" in invalid.value.body
    )
    assert api.cluster.objects == {}
    with pytest.raises(kubernetes.client.ApiException) as missing:
        batch.read_namespaced_job(NAME, "phi")
    assert missing.value.status == 404 and f'jobs.batch \\"{NAME}\\" not found' in missing.value.body
    anonymous = kubernetes.client.Configuration(host=api.url)
    with pytest.raises(kubernetes.client.ApiException) as unauthorized:
        kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(anonymous)).list_namespaced_pod("phi")
    assert unauthorized.value.status == 401


def test_a_conflict_with_a_failed_job_replaces_it(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in. A Job with this name already exists
    and has failed; the launcher's POST gets 409, it reads the Job's status, DELETEs it and POSTs a new
    one, whose pod alone it follows (the old Job's pod has the same job-name label but another owner)."""
    cluster = FakeCluster(
        "Job", [Attempt(plain_logs("boom"), 1, "Error"), Attempt(entrypoint_logs("ok", 1, 2))]
    )
    cluster.backoff_limit = 0
    api = serve(cluster)
    cluster.create_object("phi", job_manifest(TrainingJobSpec(), NAME, ["--config", CONFIG_URI], {}))
    cluster.pods[0].state = "running"
    cluster.pod_log("phi", f"{NAME}-00000")  # the first Job's only pod fails
    assert cluster.objects[NAME]["done"] == "failed"
    cluster.log_reads.clear()

    messages = train(launcher_for(api, tmp_path), instance)

    assert messages == steps(1, 2, summary=2)
    assert [(s.method, s.code) for s in api.seen if s.method in ("POST", "DELETE")] == [
        ("POST", 409),
        ("DELETE", 200),
        ("POST", 201),
        ("DELETE", 200),  # delete_on_success
    ]
    assert cluster.log_reads == [f"{NAME}-00001#0"]
    no_pipes_trouble(instance)


def test_a_pytorchjob_master_restarted_in_place_is_read_twice(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in in the role of the training operator.
    The Master container of a 2-node PyTorchJob crashes and is restarted in the same pod (restartPolicy
    OnFailure, restartCount 1); the launcher follows the same pod's log once per container instance."""
    cluster = FakeCluster(
        "PyTorchJob",
        [
            Attempt(entrypoint_logs("crash", 1, 1), exit_code=1, reason="Error"),
            Attempt(entrypoint_logs("ok", 1, 2)),
        ],
        in_place=True,
    )
    api = serve(cluster)

    messages = train(launcher_for(api, tmp_path, nodes=2), instance)

    assert messages == steps(1) + steps(1, 2, summary=2)
    assert [s.path for s in api.requests("GET", "/log")] == [f"{PODS}/{NAME}-master-0/log"] * 2
    assert cluster.log_reads == [f"{NAME}-master-0#0", f"{NAME}-master-0#1"]
    assert any("earlier attempt" in m and "NCCL watchdog timeout" in m for m in user_logs(instance))
    no_pipes_trouble(instance)


def test_a_log_stream_cut_halfway_is_resumed_without_repeats(serve, tmp_path, instance):
    """No cluster runs here; the Kubernetes API is a local stand-in. The connection of the followed log
    drops halfway through (a chunked stream without its end); dagster-k8s' reader asks for the log again
    and skips the lines it has seen by their timestamps, so every message arrives once."""
    cluster = FakeCluster("Job", [Attempt(entrypoint_logs("ok", 1, 6), stream_cuts=1)])
    api = serve(cluster)

    messages = train(launcher_for(api, tmp_path), instance)

    assert messages == steps(1, 2, 3, 4, 5, 6, summary=6)
    assert [s.code for s in api.requests("GET", "/log")] == [200, 200]
    assert any("Error consuming pod logs" in m for m in user_logs(instance))
    no_pipes_trouble(instance, retried=True)
