"""Configuring the ``kubernetes`` client, for the training launcher and the checkpoints' vLLM servers."""

from __future__ import annotations

import os


def load_kube_config(
    load_incluster_config: bool | None = None,
    kubeconfig_file: str | None = None,
    kube_context: str | None = None,
) -> None:
    """Configure the kubernetes client as ``PipesK8sClient`` does: in-cluster credentials inside a pod
    (``KUBERNETES_SERVICE_HOST`` set) unless a kubeconfig file or context is given, else the kube config."""
    import kubernetes
    from dagster_k8s.utils import apply_no_proxy_env_workaround

    if load_incluster_config and (kubeconfig_file or kube_context):
        raise ValueError("kubeconfig_file and kube_context must be unset when load_incluster_config is True")
    if load_incluster_config is None and kubeconfig_file is None and kube_context is None:
        if os.getenv("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config()
    elif load_incluster_config:
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config(config_file=kubeconfig_file, context=kube_context)
    apply_no_proxy_env_workaround()
