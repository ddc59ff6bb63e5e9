"""What the suite's parallel workers (``pytest -n``, pytest-xdist) share: a session fixture computed once
per test run, by the first worker that needs it, and read by the others.

``once_per_run(tmp_path_factory, name)`` holds a file lock in the run's shared temporary directory while
the body runs; ``shared.result`` is the stored result (JSON) when another worker already computed it, else
``None``: the body computes it and assigns it, and it is stored when the block ends without an error. A
worker that fails leaves nothing stored, so the next one tries again and fails with its own error. Outside
``pytest -n`` nothing is shared: the body always computes.

Order: the workers take whole files (``--dist loadfile``) in collection order (``--no-loadscope-reorder``;
by default pytest-xdist would put the files with most tests first). ``longest_first`` puts the files of
``LONGEST_FILES`` first, longest first, so that the last file a worker takes is a short one and the two
workers finish together (longest-processing-time-first scheduling).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from filelock import FileLock

#: The files whose tests take longest on 2 cores (``make test``'s durations, a file's setup and calls
#: together), longest first. tests/test_demo_runs.py checks that each exists.
LONGEST_FILES = (
    "test_retraining_loop.py",  # ~140 s: ingestion to evaluation, driven by the sensors
    "test_gpu_check.py",  # ~80 s: the GPU check's smoke run (vLLM, DeepSpeed)
    "test_generator_model.py",  # ~75 s: conversion and sampling through vLLM
    "test_object_store_training.py",  # ~60 s: two nodes on S3, a SIGKILL, a resume
    "test_dedup_assets.py",  # ~55 s
    "test_k8s_model_server.py",  # ~55 s: a vLLM server per engine
    "test_edu_distribution.py",  # ~55 s: vLLM log-probabilities
    "test_llm_engine.py",  # ~55 s
    "test_trainer.py",  # ~50 s: DeepSpeed on two ranks, SIGKILL and resume
    "test_llm_lifecycle.py",  # ~45 s
    "test_phi3_vllm.py",  # ~40 s
    "test_llm_http.py",  # ~40 s: vLLM's OpenAI server
    "test_synthetic_assets.py",
    "test_object_store_graph.py",
    "test_ablations.py",
    "test_demo.py",
    "test_eval_prompts.py",
    "test_home_relocation.py",
    "test_ui_browser.py",
    "test_model_families.py",
    "test_global_batch.py",
    "test_ingest_assets.py",
)


def longest_first(items: list[pytest.Item]) -> None:
    """Sort ``items`` in place: the files of ``LONGEST_FILES`` first, in its order, then the others as
    collected; a file's tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@dataclass
class Shared:
    result: Any = None


@contextmanager
def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Shared]:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set by pytest-xdist in each worker, one per run
    if not run:
        yield Shared()
        return
    # Each worker's base temp is a child of the run's directory, which every worker of this run shares.
    root = tmp_path_factory.getbasetemp().parent / f"shared-{run}"
    root.mkdir(exist_ok=True)
    path = root / f"{name}.json"
    with FileLock(str(path) + ".lock"):
        shared = Shared(json.loads(path.read_text()) if path.is_file() else None)
        yield shared
        if not path.is_file() and shared.result is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(shared.result))
            tmp.replace(path)
