"""The restricted Pod Security Standard, in one place, for every pod the project renders or launches.

``RESTRICTED_CONTAINER`` and ``RESTRICTED_POD`` satisfy the ``restricted`` profile of the Kubernetes Pod
Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/): non-root,
no privilege escalation, every capability dropped, the runtime's default seccomp profile. The namespace
the manifests create enforces that profile, so a pod that drifts from it is refused at admission.
``read_only_root`` adds a read-only root filesystem; pods that use it mount an ``emptyDir`` on ``/tmp``
(``TMP_VOLUME``, ``TMP_MOUNT``) and point ``HOME`` and caches there (``WRITABLE_ENV``).
"""

from __future__ import annotations

from typing import Any

UID = 1000  # the images' user (k8s/Dockerfile, k8s/Dockerfile.train)

RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}

RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,  # mounted volumes (checkpoints, caches) are writable by the pod's user
    "seccompProfile": {"type": "RuntimeDefault"},
}

TMP_VOLUME: dict[str, Any] = {"name": "tmp", "emptyDir": {}}
TMP_MOUNT: dict[str, Any] = {"name": "tmp", "mountPath": "/tmp"}
WRITABLE_ENV: dict[str, str] = {
    "HOME": "/tmp/home",
    "XDG_CACHE_HOME": "/tmp/cache",
    "TRITON_CACHE_DIR": "/tmp/triton",
}


def container_security(read_only_root: bool = True) -> dict[str, Any]:
    """A container's securityContext: restricted, with a read-only root filesystem unless told not to."""
    return {
        **RESTRICTED_CONTAINER,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    """A pod's securityContext (a fresh copy)."""
    return {**RESTRICTED_POD, "seccompProfile": {"type": "RuntimeDefault"}}


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret"}


def violations(pod: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the ``restricted`` Pod Security Standard (empty: nothing), checked the
    way the admission controller does: pod-level settings count for containers that do not override them."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"pod sets {key}")
    for volume in pod.get("volumes") or []:
        kind = next((k for k in volume if k != "name"), None)
        if kind not in ALLOWED_VOLUMES:
            found.append(f"volume {volume.get('name')!r} is of type {kind!r}")
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    if not containers:
        found.append("pod has no containers")
    for c in containers:
        sc, name = c.get("securityContext") or {}, c.get("name")
        if sc.get("privileged"):
            found.append(f"container {name!r} is privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"container {name!r} must set allowPrivilegeEscalation=false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"container {name!r} must drop ALL capabilities")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"container {name!r} adds capabilities {caps.get('add')}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"container {name!r} must run as non-root (runAsNonRoot)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"container {name!r} runs as uid 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"container {name!r} must use seccomp RuntimeDefault or Localhost")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            found.append(f"container {name!r} uses a hostPort")
    return found
