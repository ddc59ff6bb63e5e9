"""Values for the official Dagster Helm chart (https://docs.dagster.io/deployment/oss/deployment-options/kubernetes),
rendered from a ``DeploymentProfile`` so that they agree with the manifests and the code on the cluster.

``python -m k8s.render --profile a100x8 --helm-values > values.yaml`` then
``helm upgrade --install dagster dagster/dagster -n phi -f values.yaml`` (``docs/deploy-k8s.md``). The
committed copies under ``k8s/helm/`` are checked against this renderer by the tests.

* the project's user-code deployment (gRPC code server on the project image, ``-m phi_assets.definitions``);
* ``K8sRunLauncher``: each run is a Job in the profile's namespace, restricted, as ``phi-dagster``;
  steps then fan out to pods of their own (``k8s_job_executor``, configured in ``resources``);
* the queued run coordinator, with a tag concurrency limit: at most ``max_gpu_runs`` runs tagged
  ``phi-factory/gpu-pool=a100`` (the training and post-training jobs) hold the GPU pool; and the
  ``gpu-a100`` concurrency pool (run granularity) limits the GPU assets however they are launched;
* run monitoring (a run pod that dies or never starts fails its run, which the run-failure sensor records)
  and one automatic retry;
* Postgres for the instance: an external database; its password comes from the ``phi-postgresql`` Secret.
"""

from __future__ import annotations

from typing import Any

from k8s.deploy import GPU_POOL_TAG, SA_DAGSTER, DeploymentProfile
from k8s.security import container_security, pod_security

DAGSTER_VERSION = "1.13.27"  # the chart's version = the dagster pin in pyproject.toml
CODE_SERVER_PORT = 3030


def _image(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}


def _secrets(*names: str) -> list[dict[str, str]]:
    return [{"name": n} for n in names if n]


def _user_code(p: DeploymentProfile, secrets: list[dict[str, str]], common: dict[str, Any]) -> dict[str, Any]:
    """The project's user-code deployment: the gRPC code server on the project image."""
    env = [{"name": k, "value": v} for k, v in p.env().items()]
    return {
        "enabled": True,
        "enableSubchart": True,
        "deployments": [
            {
                "name": "phi-factory",
                "image": _image(p.image),
                "codeServerArgs": ["-m", "phi_assets.definitions"],
                "port": CODE_SERVER_PORT,
                "env": env,
                "envSecrets": secrets,
                "includeConfigInLaunchedRuns": {"enabled": True},  # runs get the same env and secrets
                "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
                **common,
            }
        ],
    }


def _run_launcher(
    p: DeploymentProfile, secrets: list[dict[str, str]], pod_sc: dict[str, Any], container_sc: dict[str, Any]
) -> dict[str, Any]:
    """``K8sRunLauncher``: each run is a Job in the profile's namespace, restricted, as ``phi-dagster``."""
    return {
        "type": "K8sRunLauncher",
        "config": {
            "k8sRunLauncher": {
                "jobNamespace": p.namespace,
                "loadInclusterConfig": True,
                "imagePullPolicy": "IfNotPresent",
                "envConfigMaps": [],
                "envSecrets": secrets,
                "envVars": [],
                "volumeMounts": [],
                "volumes": [],
                "labels": {
                    "app.kubernetes.io/part-of": "phi-factory",
                    "app.kubernetes.io/component": "dagster-run",
                },
                "runK8sConfig": {
                    "containerConfig": {
                        "securityContext": container_sc,
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "2Gi"},
                            "limits": {"memory": "4Gi"},
                        },
                    },
                    "podSpecConfig": {"securityContext": pod_sc, "serviceAccountName": SA_DAGSTER},
                },
            }
        },
    }


def _daemon(p: DeploymentProfile, common: dict[str, Any]) -> dict[str, Any]:
    """The daemon: the queued run coordinator (GPU runs limited by tag), run monitoring, one retry."""
    return {
        "enabled": True,
        "image": _image(f"docker.io/dagster/dagster-k8s:{DAGSTER_VERSION}"),
        "runCoordinator": {
            "enabled": True,
            "type": "QueuedRunCoordinator",
            "config": {
                "queuedRunCoordinator": {
                    "maxConcurrentRuns": p.max_concurrent_runs,
                    "tagConcurrencyLimits": [
                        {"key": key, "value": value, "limit": p.max_gpu_runs}
                        for key, value in GPU_POOL_TAG.items()
                    ],
                }
            },
        },
        "runMonitoring": {
            "enabled": True,
            "startTimeoutSeconds": 900,  # pulling the images onto a fresh node takes minutes
            "pollIntervalSeconds": 60,
            "maxResumeRunAttempts": 0,
            "freeSlotsAfterRunEndSeconds": 300,
        },
        "runRetries": {"enabled": True, "maxRetries": 1},
        **common,
    }


def helm_values(p: DeploymentProfile) -> dict[str, Any]:
    secrets = _secrets(p.object_store_secret, p.llm_api_key_secret and "phi-llm-api-key")
    # Dagster's pods write under DAGSTER_HOME (compute logs) and the image: the root filesystem stays
    # writable; everything else of the restricted profile applies.
    pod_sc, container_sc = pod_security(), container_security(read_only_root=False)
    common = {"podSecurityContext": pod_sc, "securityContext": container_sc}
    return {
        "global": {"postgresqlSecretName": p.postgres_secret, "serviceAccountName": SA_DAGSTER},
        "serviceAccount": {"create": False, "name": SA_DAGSTER},
        "rbacEnabled": False,  # the phi-launcher Role (k8s.render) grants what runs need
        "dagsterWebserver": {
            "image": _image(f"docker.io/dagster/dagster-k8s:{DAGSTER_VERSION}"),
            "envSecrets": [],
            **common,
        },
        "dagster-user-deployments": _user_code(p, secrets, common),
        "runLauncher": _run_launcher(p, secrets, pod_sc, container_sc),
        "postgresql": {
            "enabled": False,  # an external Postgres (managed, or another namespace): see docs/deploy-k8s.md
            "postgresqlHost": p.postgres_host,
            "postgresqlUsername": "dagster",
            "postgresqlDatabase": "dagster",
            "service": {"port": 5432},
        },
        "generatePostgresqlPasswordSecret": False,
        "dagsterDaemon": _daemon(p, common),
        "concurrency": {"enabled": True, "pools": {"defaultLimit": p.max_gpu_runs, "granularity": "run"}},
        "telemetry": {"enabled": False},
    }
