"""Training runs on Kubernetes (``k8s`` profile): a Job that the cluster restarts, followed through Pipes.

On ``local``/``ci`` the training assets launch ``python -m phi_assets.training.entrypoint --config CONFIG``
with ``dagster.PipesSubprocessClient``. On ``k8s`` the same entrypoint runs under ``torchrun`` on the A100
pool, launched by ``K8sTrainingLauncher`` (a resource):

* one node (``nodes == 1``): a ``batch/v1`` Job whose pod the Job controller replaces when it is lost
  (``backoffLimit``); the entrypoint resumes from the last checkpoint on the checkpoint volume;
* several nodes (``nodes > 1``): a Kubeflow PyTorchJob (one ``Master``, ``nodes - 1`` ``Worker`` replicas,
  static torchrun rendezvous).

``k8s/training_job.py`` renders both from a ``TrainingJobSpec`` (and says why they look as they do);
``k8s/training_workload.py`` creates, polls and deletes them and lists their rank-0 pods.

Every pod gets the same environment, including the Pipes bootstrap variables (``DAGSTER_PIPES_CONTEXT``,
``DAGSTER_PIPES_MESSAGES``: messages on stderr); the entrypoint opens Pipes only on rank 0. The launcher
reads Pipes messages from the logs of the rank-0 pod (the Job's pod; the PyTorchJob's Master pod, found
by ``training.kubeflow.org/job-name=<name>,training.kubeflow.org/replica-type=master``) with dagster-k8s'
``PipesK8sPodLogsMessageReader``. Because the rank-0 process may run several times, the launcher follows
each *attempt* once, in creation order: a new pod, or a new container instance of the same pod (an
in-place ``OnFailure`` restart), keyed by (pod uid, restart count). Only pods owned by the object it
launched count (owner references), so the pods of an older object with the same name are ignored. A
``closed`` message from an earlier attempt is held back (its exception, if any, is logged as a warning)
so that the replacement's messages are not reported as arriving "after closed"; the last one is handed
to Dagster when the run ends. Messages are therefore the concatenation of all attempts': a resumed
attempt reports again the steps after its checkpoint, as the entrypoint's ``metrics.jsonl`` does, so
readers keep the last message per step. If a log stream breaks while its attempt is still running, the
attempt is followed again from its start, which can repeat messages too.

The object's name is derived from the run key only (``job_name``: DNS-1035, at most 52 characters so
that the operator's ``<name>-worker-<index>`` Services stay within 63), so the same asset step run
again after an orchestrator crash finds the object it launched (409 Conflict) and follows it instead of
training twice. An existing object with another command is refused; one that already failed is deleted
and launched again (the checkpoint volume keeps the progress). When the Dagster run is interrupted
(terminated by a user), the launcher deletes the object so that it stops holding GPUs; an orchestrator
that dies leaves it running for the next attempt to re-attach to.

``run`` returns the custom messages (``report_custom_message`` payloads) of all attempts in order, the
same list ``PipesClientCompletedInvocation.get_custom_messages()`` gives on the subprocess path; a run
that fails raises ``dagster.Failure`` naming the object, its namespace, the number of failed pods and how
the last pod ended.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader
from pydantic import Field

from k8s.client import load_kube_config
from k8s.training_job import (
    A100_SELECTOR,
    GPU_TOLERATIONS,
    TrainingJobSpec,
    job_manifest,
    job_name,
    manifest_command,
    pytorchjob_manifest,
)
from k8s.training_workload import (
    BatchJob,
    KubeApis,
    PyTorchJob,
    Status,
    Workload,
    attempt_of,
    describe_pod,
    http_status,
    is_running,
    termination,
)


class _HoldClosed:
    """Passes an attempt's messages on to the session's handler but holds back its ``closed`` message,
    so that a restarted attempt's messages are not reported as arriving after the session closed."""

    def __init__(self, handler: Any, context: Any) -> None:
        self._handler, self._context, self._closed = handler, context, None

    def handle_message(self, message: Mapping[str, Any]) -> None:
        method = message.get("method")
        if method == "closed":
            self._closed = message
            return
        if method == "opened" and self._closed is not None:
            exc = (self._closed.get("params") or {}).get("exception")
            if exc:
                self._context.log.warning(
                    f"[pipes] an earlier attempt of the training process ended with {exc.get('name')}: "
                    f"{str(exc.get('message', '')).strip()}; its replacement has started"
                )
            self._closed = None
        self._handler.handle_message(message)

    def flush(self) -> None:
        if self._closed is not None:
            closed, self._closed = self._closed, None
            self._handler.handle_message(closed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


class _AttemptsLogReader(PipesK8sPodLogsMessageReader):
    """``PipesK8sPodLogsMessageReader`` for a run whose rank-0 process may start several times."""

    def __init__(self, context: Any) -> None:
        super().__init__()
        self._context = context

    @contextmanager
    def read_messages(self, handler: Any) -> Iterator[Any]:
        held = _HoldClosed(handler, self._context)
        with super().read_messages(held) as params:  # type: ignore[arg-type]
            try:
                yield params
            finally:
                held.flush()

    def no_messages_debug_text(self) -> str:
        return "Read the rank-0 pod logs of the training Job (or the PyTorchJob's Master) of every attempt."


class K8sTrainingLauncher(dg.ConfigurableResource):
    """Launches the training entrypoint on the cluster (``k8s`` profile) and follows it through Pipes.

    ``run(context, config_uri, run_key)`` creates (or re-attaches to) the Job / PyTorchJob named after
    ``run_key``, waits for it, and returns the custom messages its rank-0 process reported;
    ``work_dir(asset, key)`` is the run's directory on the checkpoint volume."""

    name_prefix: str = "phi-train"
    namespace: str = "phi"
    image: str = "phi-factory:latest"
    nodes: int = 1
    gpus_per_node: int = 8
    cpu: str = "64"
    memory: str = "512Gi"
    memory_limit: str = ""
    shm_size: str = "64Gi"
    checkpoint_pvc: str = "phi-checkpoints"
    checkpoint_mount: str = "/checkpoints"
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    service_account_name: str = ""
    env_from_secrets: list[str] = []
    env: dict[str, str] = {}  # extra environment for every training pod
    node_selector: dict[str, str] = Field(default_factory=lambda: dict(A100_SELECTOR))
    tolerations: list[dict[str, str]] = Field(default_factory=lambda: [dict(t) for t in GPU_TOLERATIONS])
    ignore_disruptions: bool = True
    master_port: int = 23456
    load_incluster_config: bool | None = None  # None: in-cluster when KUBERNETES_SERVICE_HOST is set
    kubeconfig_file: str | None = None
    kube_context: str | None = None
    poll_interval: float = 10.0
    delete_on_success: bool = True

    @classmethod
    def from_spec(cls, spec: TrainingJobSpec, **settings: Any) -> K8sTrainingLauncher:
        """A launcher that renders ``spec`` (plus launcher-only ``settings`` such as ``poll_interval``)."""
        fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__}
        fields["env_from_secrets"] = list(spec.env_from_secrets)
        return cls(**fields, **settings)

    def spec(self) -> TrainingJobSpec:
        """The validated ``TrainingJobSpec`` of this resource's settings."""
        return TrainingJobSpec(
            name_prefix=self.name_prefix,
            namespace=self.namespace,
            image=self.image,
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            cpu=self.cpu,
            memory=self.memory,
            memory_limit=self.memory_limit,
            shm_size=self.shm_size,
            checkpoint_pvc=self.checkpoint_pvc,
            checkpoint_mount=self.checkpoint_mount,
            backoff_limit=self.backoff_limit,
            active_deadline_seconds=self.active_deadline_seconds,
            ttl_seconds_after_finished=self.ttl_seconds_after_finished,
            service_account_name=self.service_account_name,
            env_from_secrets=tuple(self.env_from_secrets),
            node_selector=dict(self.node_selector),
            tolerations=[dict(t) for t in self.tolerations],
            ignore_disruptions=self.ignore_disruptions,
            master_port=self.master_port,
        )

    def work_dir(self, asset: str, key: str) -> str:
        """Where a run keeps its checkpoints on the training pods: on the checkpoint volume, so that a
        replacement pod (or a relaunch of the same run) resumes from them."""
        return f"{self.checkpoint_mount.rstrip('/')}/{asset}/{key}"

    def name_for(self, run_key: str) -> str:
        """The Job / PyTorchJob name that ``run`` uses for ``run_key``."""
        return job_name(run_key, self.name_prefix)

    def _apis(self) -> KubeApis:
        """Loads the kube config the way ``PipesK8sClient`` does and builds the API objects."""
        import kubernetes

        load_kube_config(self.load_incluster_config, self.kubeconfig_file, self.kube_context)
        client = kubernetes.client
        return KubeApis(core=client.CoreV1Api(), batch=client.BatchV1Api(), custom=client.CustomObjectsApi())

    def _sleep(self) -> None:
        time.sleep(self.poll_interval)

    def run(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, config_uri: str, run_key: str
    ) -> list[Any]:
        """Train with ``--config config_uri`` on the cluster; return the rank-0 process's custom messages
        (every attempt's, in order). Raises ``dagster.Failure`` when the Job / PyTorchJob fails."""
        if not isinstance(config_uri, str) or not config_uri.strip():
            raise ValueError("config_uri must name the run's config file (a path on the pods or an fsspec URI)")
        spec = self.spec()
        name = job_name(run_key, spec.name_prefix)
        apis = self._apis()
        workload = (BatchJob if spec.nodes == 1 else PyTorchJob)(apis, name, spec.namespace)
        reader = _AttemptsLogReader(context)
        with dg.open_pipes_session(
            context=context, context_injector=dg.PipesEnvContextInjector(), message_reader=reader
        ) as session:
            env = {**self.env, **session.get_bootstrap_env_vars()}
            render = job_manifest if spec.nodes == 1 else pytorchjob_manifest
            manifest = render(spec, name, ["--config", config_uri], env)
            command = manifest_command(manifest)
            try:
                uid = self._create_or_attach(context, workload, manifest, command)
                status = self._follow(context, workload, uid, reader)
            except dg.DagsterExecutionInterruptedError:  # a user stopped the run: free the GPUs
                context.log.warning(f"Run interrupted: deleting {workload.kind} {spec.namespace}/{name}")
                workload.delete()
                raise
            last_pod = (workload.rank0_pods(uid) or [None])[-1] if status.phase == "failed" else None
        if status.phase == "failed":
            raise dg.Failure(
                description=(
                    f"Training {workload.kind} {name} in namespace {spec.namespace} failed "
                    f"({status.reason or 'no reason given'}) with {status.failed_pods} failed pod(s); "
                    f"{termination(last_pod)}. The checkpoints on PersistentVolumeClaim {spec.checkpoint_pvc} "
                    "are kept: running the step again resumes from the last one."
                ),
                metadata={
                    "k8s_kind": workload.kind,
                    "k8s_name": name,
                    "namespace": spec.namespace,
                    "failed_pods": status.failed_pods,
                },
            )
        context.log.info(f"Training {workload.kind} {spec.namespace}/{name} succeeded")
        if self.delete_on_success:
            workload.delete()
        return list(session.get_custom_messages())

    def _create_or_attach(
        self, context: Any, workload: Workload, manifest: dict[str, Any], command: list[str]
    ) -> str:
        """Create the object; when it exists already (409), follow it, or replace it if it has failed."""
        where = f"{workload.kind} {workload.namespace}/{workload.name}"
        replacing = False
        for _ in range(60):
            try:
                uid = workload.create(manifest)
                context.log.info(f"Created {where}")
                return uid
            except Exception as exc:
                if http_status(exc) != 409:
                    raise
            if replacing:  # the failed one is still being deleted
                self._sleep()
                continue
            existing = workload.read()
            if existing is None:  # deleted in between
                continue
            uid, existing_command = existing
            if existing_command != command:
                raise dg.Failure(
                    description=(
                        f"{where} already exists with another command ({' '.join(existing_command)}); "
                        f"this run wants {' '.join(command)}. Delete it or use another run key."
                    )
                )
            status = workload.status()
            if status.phase != "failed":
                context.log.info(f"{where} already exists ({status.phase}): following it instead of launching")
                return uid
            context.log.warning(f"{where} already exists and has failed ({status.reason}): replacing it")
            workload.delete()
            replacing = True
        raise dg.Failure(description=f"{where} failed earlier and is still being deleted; run the step again")

    def _follow(self, context: Any, workload: Workload, uid: str, reader: _AttemptsLogReader) -> Status:
        """Read every rank-0 attempt's messages until the object succeeds or fails."""
        done: set[tuple[str, int]] = set()
        errors: Counter[tuple[str, int]] = Counter()
        described = ""
        while True:
            if self._follow_next(context, workload, uid, reader, done, errors):
                continue
            status = workload.status()
            if status.phase != "running":
                while self._follow_next(context, workload, uid, reader, done, errors):
                    pass  # attempts that started and ended between two polls
                return status
            pods = workload.rank0_pods(uid)
            now = f"pod {pods[-1].metadata.name}: {describe_pod(pods[-1])}" if pods else "no pod yet"
            if now != described:
                context.log.info(f"{workload.kind} {workload.name}: {now}")
                described = now
            self._sleep()

    def _follow_next(
        self,
        context: Any,
        workload: Workload,
        uid: str,
        reader: _AttemptsLogReader,
        done: set[tuple[str, int]],
        errors: Counter[tuple[str, int]],
    ) -> bool:
        """Follow the oldest attempt not read yet to its end; False when there is none."""
        for pod in workload.rank0_pods(uid):
            key = attempt_of(pod)
            if key is None or key in done:
                continue
            name = pod.metadata.name
            restart = f", container restart {key[1]}" if key[1] else ""
            context.log.info(f"Reading Pipes messages from pod {name} (attempt {len(done) + 1}{restart})")
            try:
                reader.consume_pod_logs(
                    context=context, core_api=workload.apis.core, pod_name=name, namespace=workload.namespace
                )
                done.add(key)
            except Exception:
                errors[key] += 1
                context.log.warning(f"Lost the log stream of pod {name}", exc_info=True)
                still = any(attempt_of(p) == key and is_running(p) for p in workload.rank0_pods(uid))
                if not still or errors[key] >= 3:
                    done.add(key)
                else:
                    self._sleep()
            return True
        return False


__all__ = ["K8sTrainingLauncher"]
