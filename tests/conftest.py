"""Shared fixtures: an isolated PHI_HOME on the ``ci`` profile, its store and a Dagster instance."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from resources import ArtifactStore, build_resources, load_profile
from resources.profiles import Profile


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default generator model (SmolLM2-135M-Instruct GGUF) converted once per session."""
    from phi_assets.synthetic import model

    out = tmp_path_factory.mktemp("smollm2") / "model"
    model.convert_gguf(model.default_gguf_path(), out)
    return out


@pytest.fixture(scope="session")
def mbpp_path() -> Path:
    """The MBPP benchmark (974 tasks) beside the repository, or wherever ``PHI_MBPP_PATH`` says.

    The tests read a file and never download it (they run offline); ``python -m
    phi_assets.curation.mbpp_source`` fetches it once from the Hugging Face Hub and prints its path."""
    import os

    default = Path(__file__).resolve().parents[2] / "shared/data/mbpp/mbpp.jsonl"
    path = Path(os.environ.get("PHI_MBPP_PATH") or default)
    where = "PHI_MBPP_PATH" if os.environ.get("PHI_MBPP_PATH") else "the default beside the checkout"
    assert path.is_file(), (
        f"MBPP file not found at {path} ({where}): the tests need MBPP's mbpp.jsonl (974 tasks). "
        "Set PHI_MBPP_PATH to it; to get it, run "
        "`HF_HUB_OFFLINE=0 python -m phi_assets.curation.mbpp_source` with PHI_MBPP_PATH unset: it downloads "
        "it once from the Hugging Face Hub and prints where it is cached")
    return path


@pytest.fixture
def phi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "phi"
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def profile(phi_home: Path) -> Profile:
    return load_profile()


@pytest.fixture
def store(profile: Profile) -> ArtifactStore:
    return ArtifactStore(root=profile.artifact_root)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def resources(profile: Profile) -> dict:
    return build_resources(profile)


def landing(profile: Profile, source: str) -> Path:
    path = Path(profile.landing_uri(source))
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def materialize_shard(asset, key: str, instance, resources, run_config=None):
    instance.add_dynamic_partitions(asset.partitions_def.name, [key])
    return dg.materialize([asset], partition_key=key, instance=instance, resources=resources,
                          run_config=run_config, raise_on_error=False)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, mbpp_path: Path) -> dict:
    """``make demo``'s program run twice on a fresh ci home, with planted landing shards (see
    tests/test_curation_assets.py). The demo tests and the curation tests read what it produced.

    With ``PHI_TEST_DEMO_HOME`` set (``.ci/run`` sets it after ``make ci-graph``), the first pass is the
    one CI already ran there, every step through ``dagster asset materialize``: its planted task id and
    output are read from that home, and only the second pass (nothing changed) runs here."""
    import os
    import subprocess
    import sys

    from tests.test_curation_assets import plant

    given = os.environ.get("PHI_TEST_DEMO_HOME")
    if given:
        home = Path(given)
        task_id = (home / "planted-task-id").read_text().strip()
        outputs = [(home / "demo-first.log").read_text()]
    else:
        home = tmp_path_factory.mktemp("demo") / "phi"
        task_id = plant(home)
        outputs = []
    env = {**os.environ, "PHI_PROFILE": "ci", "PHI_HOME": str(home), "PHI_MBPP_PATH": str(mbpp_path)}
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        env.pop(var, None)
    root = Path(__file__).resolve().parents[1]
    while len(outputs) < 2:
        done = subprocess.run([sys.executable, "-m", "phi_assets.demo"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
        outputs.append(done.stdout + done.stderr)
    return {"home": home, "task_id": task_id, "first": outputs[0], "second": outputs[1]}


@pytest.fixture
def home_copy(demo_run, tmp_path, monkeypatch) -> Path:
    """The demo's artifacts, hard-linked (versions are immutable; pointers are replaced, not edited)."""
    home = tmp_path / "phi"
    shutil.copytree(demo_run["home"] / "artifacts", home / "artifacts", copy_function=os.link)
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(home))
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def smol_backend(smol_dir: Path):
    """One vLLM offline engine (a child process) on ``smol_dir``, shared by every test that only
    needs a started engine with these settings (max_model_len 512, 1 GiB KV cache): starting one
    costs ~30 s on CPU. It starts on first use; a test that kills it (tests/test_llm_lifecycle.py)
    leaves it closed, and the next user starts it again."""
    from resources.llm.vllm_backend import VLLMBackend, VLLMSettings

    backend = VLLMBackend(VLLMSettings(max_model_len=512, cpu_kvcache_gib=1, show_progress=False))
    yield backend
    backend.close()


VLLM_API_KEY = "sk-test-not-a-real-key-1234"
VLLM_SERVED = "smol"  # the name the ``vllm_server`` fixture serves the model under


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(smol_dir: Path):
    """vLLM's real OpenAI-compatible server on loopback with ``smol_dir`` served as ``VLLM_SERVED``
    (API key ``VLLM_API_KEY``, max_model_len 512); its ``/v1`` base URL. One per session: starting one
    costs ~30-40 s on CPU."""
    import signal
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smol_dir),
         "--served-model-name", VLLM_SERVED, "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "512", "--enforce-eager", "--api-key", VLLM_API_KEY, "--dtype", "bfloat16"],
        env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"vLLM server exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "vLLM server did not become healthy in 300 s"
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
