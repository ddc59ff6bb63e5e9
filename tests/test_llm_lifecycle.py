"""The engine's vLLM child process never outlives its user: normal close, a failed Dagster run,
a caller killed with SIGKILL, and an engine that dies mid-batch (a transient, uncached error)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from resources import ArtifactStore
from resources.llm import Engine, LLMEngine, ModelRef, Request, TransientGenerationError
from resources.llm.cache import RequestCache
from tests.support.processes import group_members, vllm_worker_pids

pytestmark = pytest.mark.slow  # every test starts vLLM
ROOT = Path(__file__).resolve().parents[1]


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_an_engine_that_dies_mid_batch_is_a_transient_error_and_nothing_is_cached(smol_backend, smol_dir,
                                                                                 tmp_path, monkeypatch):
    """The engine killed here is the session's shared one (conftest.py ``smol_backend``): killing it
    is its last use in a full run (this file runs after the others that use it, and this test first
    in it, so the tests below run with no other engine alive); a later user would start it again.

    The kill comes right after the batch was sent, before its reply is read, so the batch is always
    in flight (a timed kill could come after a fast engine had already answered)."""
    model = ModelRef("smol", "test-smol", path=str(smol_dir))
    cache = RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))
    backend = smol_backend
    backend.start(model)  # a no-op when an earlier test already started it
    pgid = backend._proc.pid
    real_wait = backend._wait

    def killed_while_generating(timeout_s, what):
        if what == "generating":
            os.killpg(pgid, signal.SIGKILL)
        return real_wait(timeout_s, what)

    monkeypatch.setattr(backend, "_wait", killed_while_generating)
    requests = [Request.chat(f"Write a long story about dragon number {i}.", max_tokens=400) for i in range(8)]
    with Engine(backend, cache) as engine:
        with pytest.raises(TransientGenerationError,
                           match=r"8 of 8 .*engine_error: 8.*vLLM process (exited|closed its pipe)"):
            engine.generate(model, requests)
    assert cache.count(model) == 0
    assert wait_until(lambda: not group_members(pgid), 10), [
        (pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:200]) for pid in group_members(pgid)]


def test_a_failed_run_stops_the_engine(smol_dir, tmp_path):
    before = set(vllm_worker_pids())
    seen: list[int] = []

    @dg.asset
    def generates_then_fails(llm: LLMEngine) -> None:
        model = ModelRef("smol", "test-smol", path=str(smol_dir))
        llm.generate(model, [Request.chat("hi", max_tokens=2)])
        seen.extend(set(vllm_worker_pids()) - before)
        raise RuntimeError("the asset failed after generating")

    engine = LLMEngine(store=ArtifactStore(root=str(tmp_path / "artifacts")), max_model_len=512,
                       cpu_kvcache_gib=1)
    result = dg.materialize([generates_then_fails], resources={"llm": engine}, raise_on_error=False)
    assert not result.success and len(seen) == 1  # the engine ran while the asset did
    assert wait_until(lambda: not group_members(seen[0]), 10)  # and its whole group is gone


def test_a_caller_killed_with_sigkill_takes_the_engine_with_it(smol_dir):
    script = (
        "import sys, time\n"
        "from resources.llm import ModelRef\n"
        "from resources.llm.vllm_backend import VLLMBackend, VLLMSettings\n"
        "b = VLLMBackend(VLLMSettings(max_model_len=512, cpu_kvcache_gib=1))\n"
        f"b.start(ModelRef('smol', 'v', path={str(smol_dir)!r}))\n"
        "print('ENGINE', b._proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(caller.stdout.readline().split()[1])  # vLLM logs go to stderr
        assert group_members(child)  # vLLM's engine processes share the child's group
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        assert wait_until(lambda: not group_members(child), 15), "vLLM outlived its caller"
    finally:
        if caller.poll() is None:
            caller.kill()


def test_the_engine_process_loads_its_module_without_the_orchestrators_packages():
    """The child's command (``CHILD``) loads vllm_backend and types.py under their package names without
    running ``resources/__init__.py``, which imports Dagster and the orchestrator's resources (about 2 s of a
    core at every engine start, for nothing the engine uses); a plain import of the module pulls them in."""
    from resources.llm.vllm_backend import CHILD, CHILD_PACKAGES

    probe = "import resources.llm.vllm_backend as b, sys; print(hasattr(b, 'CHILD'), 'dagster' in sys.modules)"
    stubbed = subprocess.run([sys.executable, "-c", CHILD_PACKAGES + probe], capture_output=True, text=True,
                             cwd="/", check=True)
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", check=True)
    assert stubbed.stdout.split() == ["True", "False"] and plain.stdout.split() == ["True", "True"]
    assert CHILD.startswith(CHILD_PACKAGES) and "resources.llm.vllm_backend" in CHILD  # vllm_worker_pids
