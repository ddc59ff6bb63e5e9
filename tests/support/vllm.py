"""vLLM's real OpenAI-compatible server, as the ``vllm_server`` fixture (tests/conftest.py) runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from resources.llm.vllm_backend import resolve_dtype
from tests.support.processes import free_port

VLLM_API_KEY = "sk-test-not-a-real-key-1234"
VLLM_SERVED = "smol"  # the name the ``vllm_server`` fixture serves the model under


@contextmanager
def openai_server(model_dir: Path, timeout_s: float = 300) -> Iterator[str]:
    """vLLM's server on loopback with ``model_dir`` served as ``VLLM_SERVED`` (API key ``VLLM_API_KEY``,
    max_model_len 512, the dtype the offline engine's ``auto`` resolves to here); yields its ``/v1`` base
    URL once healthy, and stops its process group after."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", VLLM_SERVED, "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--enforce-eager", "--api-key", VLLM_API_KEY,
         "--dtype", resolve_dtype("auto", on_cpu=True)],
        env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"vLLM server exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"vLLM server did not become healthy in {timeout_s:.0f} s"
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
