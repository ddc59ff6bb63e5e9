"""Shared fixtures: an isolated PHI_HOME on the ``ci`` profile, its store and a Dagster instance; the
session's converted model, vLLM engine and server, and the demo's home. Helpers live in tests/support/.

Tests that use a fixture of ``tests.support.tiers.SLOW_FIXTURES`` are marked ``slow`` here, at collection
(``pytest -m "not slow"`` is ``make test-fast``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The suite reads and extends the graph of the ``ci`` profile (``demo_run``: what ``make ci-graph`` built),
# and the partition sets that depend on size (synthetic batches, proxies, dedup buckets) follow the scale
# the definitions are imported with. So this process imports them on ``ci`` too, unless told otherwise;
# tests that need another profile set PHI_PROFILE themselves (monkeypatch, or a child's environment).
os.environ.setdefault("PHI_PROFILE", "ci")

import dagster as dg  # noqa: E402
import pytest  # noqa: E402

from phi_assets.common.profiles import Profile  # noqa: E402
from resources import ArtifactStore, build_resources, load_profile  # noqa: E402
from tests.support.demo_home import plant, run_demo  # noqa: E402
from tests.support.homes import use_ci_home  # noqa: E402
from tests.support.tiers import MARKER, SLOW_FIXTURES  # noqa: E402
from tests.support.vllm import openai_server  # noqa: E402
from tests.support.workers import longest_first, once_per_run  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    longest_first(items)
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default generator model (SmolLM2-135M-Instruct GGUF) converted once per session; under
    ``.ci/run`` (``PHI_TEST_DEMO_HOME``) the conversion the ci graph's ``generator_model`` stored, hard-linked
    (the same function on the same file: the same weights; ~20 s of CI saved)."""
    from phi_assets.common import model_files as model

    out = tmp_path_factory.mktemp("smollm2") / "model"
    given = os.environ.get("PHI_TEST_DEMO_HOME")
    if given:
        store = ArtifactStore(root=str(Path(given) / "artifacts"))
        manifest = store.current_manifest("generator_model", None) or {"data_version": "none"}
        stored = Path(store.version_path("generator_model", None, manifest["data_version"])) / "model"
        if stored.joinpath("model.safetensors").is_file():
            shutil.copytree(stored, out, copy_function=os.link)
            return out
    model.convert_gguf(model.default_gguf_path(), out)
    return out


@pytest.fixture(scope="session")
def mbpp_path() -> Path:
    """The MBPP benchmark (974 tasks) beside the repository, or wherever ``PHI_MBPP_PATH`` says.

    The tests read a file and never download it (they run offline); ``python -m
    phi_assets.common.mbpp_source`` fetches it once from the Hugging Face Hub and prints its path."""
    default = Path(__file__).resolve().parents[2] / "shared/data/mbpp/mbpp.jsonl"
    path = Path(os.environ.get("PHI_MBPP_PATH") or default)
    where = "PHI_MBPP_PATH" if os.environ.get("PHI_MBPP_PATH") else "the default beside the checkout"
    assert path.is_file(), (
        f"MBPP file not found at {path} ({where}): the tests need MBPP's mbpp.jsonl (974 tasks). "
        "Set PHI_MBPP_PATH to it; to get it, run "
        "`HF_HUB_OFFLINE=0 python -m phi_assets.common.mbpp_source` with PHI_MBPP_PATH unset: it downloads "
        "it once from the Hugging Face Hub and prints where it is cached")
    return path


@pytest.fixture
def phi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_ci_home(monkeypatch, tmp_path / "phi")


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, mbpp_path: Path) -> dict:
    """``make demo``'s program run twice on a fresh ci home, with planted landing shards (see
    tests/support/demo_home.py). The demo tests and the curation tests read what it produced.

    With ``PHI_TEST_DEMO_HOME`` set (``.ci/run`` sets it after ``make ci-graph``), the first pass is the
    one CI already ran there, every step through ``dagster asset materialize``: its planted task id and
    output are read from that home, and only the second pass (nothing changed) runs here. Under
    ``pytest -n`` the first worker to need it runs it; the others read its result (``once_per_run``)."""
    with once_per_run(tmp_path_factory, "demo_run") as shared:
        if shared.result is None:
            given = os.environ.get("PHI_TEST_DEMO_HOME")
            if given:
                home = Path(given)
                task_id = (home / "planted-task-id").read_text().strip()
                outputs = [(home / "demo-first.log").read_text()]
            else:
                home = tmp_path_factory.mktemp("demo") / "phi"
                task_id = plant(home)
                outputs = []
            while len(outputs) < 2:
                outputs.append(run_demo(home, mbpp_path))
            shared.result = {"home": str(home), "task_id": task_id, "first": outputs[0], "second": outputs[1]}
    return {**shared.result, "home": Path(shared.result["home"])}


@pytest.fixture
def home_copy(demo_run, tmp_path, monkeypatch) -> Path:
    """The demo's artifacts, hard-linked (versions are immutable; pointers are replaced, not edited)."""
    home = tmp_path / "phi"
    shutil.copytree(demo_run["home"] / "artifacts", home / "artifacts", copy_function=os.link)
    return use_ci_home(monkeypatch, home)


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


@pytest.fixture(scope="session")
def vllm_server(smol_dir: Path):
    """vLLM's real OpenAI-compatible server on loopback with ``smol_dir`` served as
    ``tests.support.vllm.VLLM_SERVED`` (API key ``VLLM_API_KEY``, max_model_len 512); its ``/v1`` base
    URL. One per session: starting one costs ~30-40 s on CPU."""
    with openai_server(smol_dir) as url:
        yield url
