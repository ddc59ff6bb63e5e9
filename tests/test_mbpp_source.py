"""Where MBPP comes from (``phi_assets/common/mbpp_source.py``): configuration, the cache, the Hub.

The Hub is real code talking to a fake Hub: an HTTP server on loopback that serves, at the pinned
revision, the full config's four parquet files built here from the published ``mbpp.jsonl`` (split by
task id as the dataset is). ``huggingface_hub`` reads ``HF_ENDPOINT`` when it is imported, so every
download runs in a child process (``python -m phi_assets.common.mbpp_source``) whose environment
points it there; nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_assets.common import mbpp_source
from phi_assets.common.mbpp_source import (
    HF_FILES,
    HF_REPO,
    HF_REVISION,
    PUBLISHED_SHA256,
    MBPPUnavailable,
    cache_path,
    resolve_mbpp,
)
from resources.curation import DecontaminationResource

ROOT = Path(__file__).resolve().parents[1]
# The dataset's splits by task id (shared/data/mbpp/README.md), in HF_FILES' order.
SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
          "train": range(601, 975)}
# The Hub's schema of the full config: task_id first, int32, as its dataset card says.
HUB_SCHEMA = pa.schema([("task_id", pa.int32()), ("text", pa.string()), ("code", pa.string()),
                        ("test_list", pa.list_(pa.string())), ("test_setup_code", pa.string()),
                        ("challenge_test_list", pa.list_(pa.string()))])
# What a child must not inherit: MBPP configuration, offline mode, a Hub token, proxies, another profile.
CLEARED = ("PHI_MBPP_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_TOKEN",
           "HUGGING_FACE_HUB_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
           "all_proxy", "DAGSTER_HOME", "PHI_PROFILE", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG")


def published_rows(mbpp_path: Path) -> list[dict]:
    return [json.loads(line) for line in mbpp_path.read_text().splitlines()]


def build_hub_files(rows: list[dict], out: Path) -> dict[str, bytes]:
    """The full config's parquet files, path in the repository -> bytes."""
    files = {}
    for name, (split, ids) in zip(HF_FILES, SPLITS.items(), strict=True):
        assert f"/{split}-" in name
        table = pa.Table.from_pylist([r for r in rows if r["task_id"] in ids], schema=HUB_SCHEMA)
        pq.write_table(table, out / f"{split}.parquet")
        files[name] = (out / f"{split}.parquet").read_bytes()
    return files


@pytest.fixture(scope="module")
def hub_files(mbpp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return build_hub_files(published_rows(mbpp_path), tmp_path_factory.mktemp("hub"))


class FakeHub:
    """The Hub's ``resolve`` endpoint for one dataset at one revision, on 127.0.0.1: HEAD gives the
    headers ``hf_hub_download`` needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``), GET the bytes.
    A GET of a file in ``stall`` waits until ``release`` is set (``stalled`` tells when it started)."""

    def __init__(self, files: dict[str, bytes], stall: tuple[str, ...] = ()) -> None:
        self.files, self.stall = files, stall
        self.requests: list[tuple[str, str]] = []
        self.stalled, self.release = threading.Event(), threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

            def do_GET(self) -> None:
                hub.answer(self, body=True)

            def log_message(self, *args) -> None:  # the requests are recorded, not printed
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        prefix = f"/datasets/{HF_REPO}/resolve/{HF_REVISION}/"
        name = handler.path.removeprefix(prefix) if handler.path.startswith(prefix) else None
        data = self.files.get(name) if name else None
        try:
            if data is None:
                handler.send_response(404)
                handler.send_header("X-Error-Code", "EntryNotFound")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            if body and name in self.stall:
                self.stalled.set()
                self.release.wait(60)
            handler.send_response(200)
            handler.send_header("X-Repo-Commit", HF_REVISION)
            handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Content-Type", "application/octet-stream")
            handler.end_headers()
            if body:
                handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-answer
            pass

    def downloads(self) -> list[str]:
        return sorted(path.rsplit("/", 1)[-1] for method, path in self.requests if method == "GET")

    @contextmanager
    def serving(self) -> Iterator[FakeHub]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            thread.join(10)


def child_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """A child's environment: online, pointed at ``endpoint``, no MBPP configured, its own HF_HOME (no
    token, nothing written to the user's Hugging Face directory), no proxy between it and loopback."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(PHI_HOME=str(home), HF_ENDPOINT=endpoint, HF_HOME=str(home.parent / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def resolve_in_child(env: dict[str, str], *code: str) -> subprocess.CompletedProcess:
    """``python -m phi_assets.common.mbpp_source``, or ``code`` run before its ``main``."""
    args = ["-m", "phi_assets.common.mbpp_source"]
    if code:
        args = ["-c", "\n".join([*code, "from phi_assets.common import mbpp_source as m",
                                 "raise SystemExit(m.main([]))"])]
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in cache_path(home).parent.iterdir()) if cache_path(home).parent.exists() else []


# ---- configuration and the offline error (in this process) -------------------------------------------

@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, no PHI_MBPP_PATH, an empty home (the ``ci`` profile's PHI_HOME); a download fails the test."""
    import huggingface_hub

    monkeypatch.delenv("PHI_MBPP_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PHI_PROFILE", "ci")
    monkeypatch.setenv("PHI_HOME", str(tmp_path / "phi"))
    for var in ("DAGSTER_HOME", "PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT", "PHI_CATALOG"):
        monkeypatch.delenv(var, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError(f"offline, yet hf_hub_download{args} was called")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    return tmp_path / "phi"


def test_the_configured_path_wins(offline: Path, mbpp_path: Path, tmp_path: Path, monkeypatch) -> None:
    cached = cache_path(offline)
    cached.parent.mkdir(parents=True)
    cached.write_text("a cached copy that must not be used\n")
    monkeypatch.setenv("PHI_MBPP_PATH", str(mbpp_path))
    assert resolve_mbpp() == mbpp_path.resolve()
    assert DecontaminationResource().resolved_mbpp_path() == str(mbpp_path.resolve())
    # the resource's setting wins over PHI_MBPP_PATH
    other = tmp_path / "other.jsonl"
    other.write_text("{}\n")
    assert DecontaminationResource(mbpp_path=str(other)).resolved_mbpp_path() == str(other.resolve())


def test_a_configured_path_that_is_missing_is_an_error_naming_it(offline: Path, mbpp_path: Path,
                                                                 tmp_path: Path, monkeypatch) -> None:
    cached = cache_path(offline)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(mbpp_path.read_bytes())  # even with a cached copy: a wrong setting is not papered over
    missing = tmp_path / "nowhere" / "mbpp.jsonl"
    monkeypatch.setenv("PHI_MBPP_PATH", str(missing))
    with pytest.raises(ValueError, match="MBPP file not found") as error:
        resolve_mbpp()
    assert not isinstance(error.value, MBPPUnavailable)
    assert str(missing) in str(error.value) and "PHI_MBPP_PATH" in str(error.value)
    monkeypatch.delenv("PHI_MBPP_PATH")
    with pytest.raises(ValueError, match="mbpp_path") as error:
        DecontaminationResource(mbpp_path=str(missing)).resolved_mbpp_path()
    assert str(missing) in str(error.value)


def test_offline_without_mbpp_is_one_error_that_names_both_ways(offline: Path) -> None:
    with pytest.raises(MBPPUnavailable) as error:
        DecontaminationResource().resolved_mbpp_path()  # what every asset calls; the home is the profile's
    message = str(error.value)
    assert "set PHI_MBPP_PATH (or the decontamination resource's mbpp_path) to mbpp.jsonl" in message
    assert "allow network access to the Hugging Face Hub (unset HF_HUB_OFFLINE" in message
    assert f"cached at {cache_path(offline)}" in message and "HF_HUB_OFFLINE=1 is set" in message
    assert not offline.exists()  # nothing written


def test_a_cached_copy_is_used_offline(offline: Path, mbpp_path: Path) -> None:
    cached = cache_path(offline)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(mbpp_path.read_bytes())
    assert resolve_mbpp() == cached
    assert DecontaminationResource().resolved_mbpp_path() == str(cached)


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "mbpp.jsonl"

    def lines():
        yield '{"task_id": 1}\n'
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        mbpp_source.write_jsonl_atomically(lines(), dest)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


# ---- the Hub, really exercised against a fake one on loopback ------------------------------------------

@pytest.mark.slow  # downloads through a local hub, in child processes
def test_download_from_the_hub_gives_the_published_file_then_the_cache(hub_files, mbpp_path: Path,
                                                                      tmp_path: Path) -> None:
    home = tmp_path / "phi"
    hub = FakeHub(hub_files)
    with hub.serving():
        done = resolve_in_child(child_env(home, hub.url))
    assert done.returncode == 0, done.stderr
    cached = cache_path(home)
    assert done.stdout.strip() == str(cached)
    # every file of the full config, at the pinned revision, once
    assert hub.downloads() == sorted(name.rsplit("/", 1)[-1] for name in HF_FILES)
    assert all(f"/resolve/{HF_REVISION}/full/" in path for method, path in hub.requests if method == "GET")
    # the same 974 records, fields and values as the published file, and its very bytes
    assert [json.loads(line) for line in cached.read_text().splitlines()] == published_rows(mbpp_path)
    assert cached.read_bytes() == mbpp_path.read_bytes()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == PUBLISHED_SHA256
    assert "differs from the published" not in done.stderr
    assert leftovers(home) == ["mbpp.jsonl"]  # the parquet files went with their temporary directory
    assert not (home.parent / "hf-home" / "hub").exists()  # the user's Hugging Face cache is not used

    # The server is gone: online or offline, the cache answers without a request.
    for extra in ({}, {"HF_HUB_OFFLINE": "1"}):
        again = resolve_in_child(child_env(home, hub.url, **extra))
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == str(cached) and "downloading" not in again.stderr


@pytest.mark.slow  # kills downloads in child processes
def test_a_killed_download_or_write_leaves_no_file_at_the_cache_path(hub_files, mbpp_path: Path,
                                                                    tmp_path: Path) -> None:
    home, cached = tmp_path / "phi", cache_path(tmp_path / "phi")
    # Killed while the last file downloads.
    hub = FakeHub(hub_files, stall=(HF_FILES[-1],))
    with hub.serving():
        child = subprocess.Popen([sys.executable, "-m", "phi_assets.common.mbpp_source"], cwd=ROOT,
                                 env=child_env(home, hub.url), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert hub.stalled.wait(60), "the child never asked for the last file"
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=30)
        assert not cached.exists()
        hub.stall = ()
        hub.release.set()
        # Killed half-way through writing the JSONL: the lines are written, the rename never happens.
        done = resolve_in_child(child_env(home, hub.url), "import os",
                                "from phi_assets.common import mbpp_source",
                                "real = mbpp_source.jsonl_lines",
                                "def dying(rows):",
                                "    for i, line in enumerate(real(rows)):",
                                "        if i == 500:",
                                "            os._exit(9)",
                                "        yield line",
                                "mbpp_source.jsonl_lines = dying")
        assert done.returncode == 9, done.stderr
        assert not cached.exists()
        # What the killed processes left behind does not stop the next one.
        done = resolve_in_child(child_env(home, hub.url))
    assert done.returncode == 0, done.stderr
    assert cached.read_bytes() == mbpp_path.read_bytes()


def test_hub_data_that_is_not_all_of_mbpp_is_refused(hub_files, mbpp_path: Path, tmp_path: Path) -> None:
    rows = [r for r in published_rows(mbpp_path) if r["task_id"] != 974]
    (tmp_path / "short").mkdir()
    home = tmp_path / "phi"
    hub = FakeHub(build_hub_files(rows, tmp_path / "short"))
    with hub.serving():
        done = resolve_in_child(child_env(home, hub.url))
    assert done.returncode == 2
    assert "973 tasks, expected task ids 1..974 (missing e.g. [974]" in done.stderr
    assert not cache_path(home).exists()


def test_an_unreachable_hub_is_the_one_error_with_its_cause(tmp_path: Path) -> None:
    home = tmp_path / "phi"
    hub = FakeHub({})  # answers 404 to everything, like a Hub without the dataset
    with hub.serving():
        done = resolve_in_child(child_env(home, hub.url))
    assert done.returncode == 2 and done.stderr.count("error: ") == 1
    assert f"downloading {HF_FILES[0]} from {hub.url} failed" in done.stderr
    assert "set PHI_MBPP_PATH" in done.stderr and "unset HF_HUB_OFFLINE" in done.stderr
    assert not cache_path(home).exists()


# ---- every consumer resolves the same way --------------------------------------------------------------

@pytest.mark.slow  # three commands in child processes
def test_the_command_lines_use_the_cache(mbpp_path: Path, tmp_path: Path) -> None:
    home = tmp_path / "phi"
    cache_path(home).parent.mkdir(parents=True)
    cache_path(home).write_bytes(mbpp_path.read_bytes())
    env = {**child_env(home, "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1"}
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "nothing to see here"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "phi_assets.common.decontaminate", "--input", str(docs),
                           "--out", str(tmp_path / "flagged.jsonl"), "--no-embeddings"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{164 + 974} tasks" in done.stdout and "MBPP NOT CHECKED" not in done.stdout

    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "mbpp/11", "completion": ""}) + "\n")
    done = subprocess.run([sys.executable, "-m", "phi_assets.evaluation.execute", "--benchmark", "mbpp",
                           "--samples", str(samples), "--out", str(tmp_path / "results.jsonl"), "--k", "1",
                           "--workers", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"problems": 1' in done.stdout  # mbpp/11 was found: MBPP came from the cache

    (home / "benchmarks").rename(tmp_path / "elsewhere")  # now there is none
    done = subprocess.run([sys.executable, "-m", "phi_assets.evaluation.execute", "--benchmark", "mbpp",
                           "--samples", str(samples), "--out", str(tmp_path / "results.jsonl"), "--k", "1",
                           "--workers", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("error: ") == 1
    assert "set PHI_MBPP_PATH" in done.stderr and "unset HF_HUB_OFFLINE" in done.stderr


@pytest.mark.slow  # starts the demo
def test_demo_offline_without_mbpp_stops_before_its_first_step(tmp_path: Path) -> None:
    """``make demo`` on a newcomer's machine, offline and without the file: one error, before any work."""
    from phi_assets.definitions import defs
    from phi_assets.demo import mbpp_needed

    home = tmp_path / "phi"
    env = {**child_env(home, "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1", "PHI_PROFILE": "ci"}
    # it takes seconds; a demo that went on to run its steps would take minutes and time out here
    done = subprocess.run([sys.executable, "-m", "phi_assets.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    # the demo's first asset that needs MBPP (it runs the curation corpora before anything else that does)
    assert mbpp_needed(defs)[0] == "filtered_code_corpus"
    assert "error: no step was run: filtered_code_corpus (the first of" in done.stderr
    assert output.count("is not available") == 1 and "Traceback" not in output
    assert "set PHI_MBPP_PATH (or the decontamination resource's mbpp_path) to mbpp.jsonl" in done.stderr
    assert "allow network access to the Hugging Face Hub (unset HF_HUB_OFFLINE" in done.stderr
    assert f"so that it is downloaded once from {HF_REPO} and cached at {cache_path(home)}" in done.stderr
    # nothing ran: no shard registered, no artifact, no catalog, no run in the instance
    assert sorted(p.name for p in home.iterdir()) == ["dagster"]
    assert list((home / "dagster").iterdir()) == []
    assert "ingest" not in output and "Steps:" not in output


@pytest.mark.slow  # starts `make demo`
def test_make_demo_offline_without_mbpp_stops_with_the_one_error(tmp_path: Path) -> None:
    """The README's command itself: ``make demo`` (its ``mbpp`` step, with this interpreter's environment
    standing in for .venv, which is not rebuilt) stops before the demo starts, with the one error."""
    home = tmp_path / "phi"
    env = {**child_env(home, "http://127.0.0.1:9"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH")
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed-stamp", "demo",
                           f"BIN={Path(sys.executable).parent}", "PHI_MBPP_PATH=", f"PHI_HOME={home}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout[-2000:]
    assert done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "set PHI_MBPP_PATH (or the decontamination resource's mbpp_path) to mbpp.jsonl" in done.stderr
    assert "allow network access to the Hugging Face Hub (unset HF_HUB_OFFLINE" in done.stderr
    assert "phi_assets.demo" not in done.stdout  # make never started the demo
    assert not (home / "artifacts").exists()
