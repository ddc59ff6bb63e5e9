"""CPU and memory of each data step's pod on Kubernetes, as ``dagster-k8s/config`` op tags.

On the ``k8s`` profile every step runs in its own pod (``k8s_job_executor``); dagster-k8s reads the
``dagster-k8s/config`` tag of the step's op and merges it over the executor's ``step_k8s_config``. Each
asset names its size class here (``op_tags=steps.tags("shard")``), so a step asks for what it needs:

* ``light``: orchestration and small tables (catalogs, weights, launching a GPU job and waiting on it);
* ``llm-client``: steps whose work is requests to the vLLM server;
* ``shard``: one shard partition of filtering, tokenizing or reading;
* ``heavy``: whole-corpus work in memory (deduplication, the classifier, the tokenizer, proxy models);
* ``eval``: steps that send generated code to the sandbox service (``phi-factory/network: restricted``:
  egress only to DNS, the namespace's services and the object store, see ``k8s/deploy.py``).

One run can override any step with the executor's ``per_step_k8s_config``.
"""

from __future__ import annotations

import json
from typing import Any

VERSION_EXEMPT = "pod sizes decide where a step runs, not what it writes"

# The run tag of the jobs that hold the A100 pool: the queued run coordinator limits how many run at once.
GPU_POOL_TAG = {"phi-factory/gpu-pool": "a100"}
GPU_POOL = "gpu-a100"  # the Dagster concurrency pool of the assets that hold the A100 pool (training)
NETWORK_LABEL = "phi-factory/network"  # selects the NetworkPolicy a pod gets (k8s/deploy.py)
SIZE_LABEL = "phi-factory/step-size"
USER_DEFINED_K8S_CONFIG_KEY = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY

# size: (cpu request, memory request, memory limit, network class)
SIZES: dict[str, tuple[str, str, str, str]] = {
    "light": ("500m", "2Gi", "4Gi", "default"),
    "llm-client": ("1", "4Gi", "8Gi", "default"),
    "shard": ("2", "8Gi", "16Gi", "default"),
    "heavy": ("8", "48Gi", "64Gi", "default"),
    "eval": ("2", "8Gi", "16Gi", "restricted"),
}


def k8s_config(size: str) -> dict[str, Any]:
    """The user-defined dagster-k8s config of a size class (container resources and pod labels)."""
    if size not in SIZES:
        raise ValueError(f"unknown step size {size!r}; choose one of {sorted(SIZES)}")
    cpu, memory, memory_limit, network = SIZES[size]
    return {
        "container_config": {
            "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory_limit}}
        },
        "pod_template_spec_metadata": {"labels": {SIZE_LABEL: size, NETWORK_LABEL: network}},
    }


def tags(size: str) -> dict[str, str]:
    """Op tags for an asset of this size class."""
    return {USER_DEFINED_K8S_CONFIG_KEY: json.dumps(k8s_config(size), sort_keys=True)}
