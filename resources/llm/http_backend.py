"""OpenAI-compatible HTTP backend: a ``vllm serve`` server or any compatible endpoint.

Bounded concurrency (a thread pool of ``max_concurrency``), a per-request timeout, and retries
with exponential backoff and jitter on connection errors, timeouts, 429 and 5xx (``Retry-After``
is honoured). A 4xx other than 429 is the request's own fault and is returned as a deterministic
failure; 401/403 stop the batch with a clear error. The API key is sent as a bearer token and
appears in no message, log or metadata.

Log-probabilities (``Sampling.logprobs = k``) are asked for as the API spells it: ``logprobs: true,
top_logprobs: k`` on chat completions, ``logprobs: k`` on completions; each position's candidates are
read from ``logprobs.content[i].top_logprobs`` (chat) or ``logprobs.top_logprobs[i]`` (completions) and
kept as ``types.top_logprobs`` does for every backend. An answer without them, when they were asked for,
is a server error (an endpoint that does not support them).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from resources.llm.types import Completion, ModelRef, Request, Result, TopLogprobs, top_logprobs

RETRY_STATUS = {429, 500, 502, 503, 504}
CONTEXT_HINTS = ("maximum context length", "longer than the maximum model length", "context length",
                 "too long")


@dataclass(frozen=True)
class HTTPSettings:
    base_url: str
    api_key: str | None = None
    max_concurrency: int = 8
    request_timeout_s: float = 120.0
    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"got {self.base_url!r}")
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be >= 1")

    def __repr__(self) -> str:  # never show the key
        return f"HTTPSettings(base_url={self.base_url!r}, max_concurrency={self.max_concurrency})"


class EndpointAuthError(RuntimeError):
    pass


class EndpointUnavailableError(RuntimeError):
    pass


class _Sample:
    """The outcome of one HTTP call (one sample of one request)."""

    def __init__(self, completion: Completion | None = None, prompt_tokens: int = 0,
                 kind: str | None = None, error: str | None = None):
        self.completion, self.prompt_tokens, self.kind, self.error = completion, prompt_tokens, kind, error


class HTTPBackend:
    def __init__(self, settings: HTTPSettings, log: Any = None):
        self.settings = settings
        self.log = log
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        limits = httpx.Limits(max_connections=settings.max_concurrency)
        self._client = httpx.Client(base_url=settings.base_url.rstrip("/") + "/", headers=headers,
                                    timeout=settings.request_timeout_s, limits=limits)
        self.info = {"endpoint": settings.base_url}

    def close(self) -> None:
        self._client.close()

    def start(self, model: ModelRef) -> None:
        """Wait until the endpoint answers (a server may still be loading its model)."""
        if self.info.get("ready"):
            return
        error = ""
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                response = self._client.get("models")
                if response.status_code in (401, 403):
                    raise EndpointAuthError(f"{self.settings.base_url} refused the request with "
                                            f"{response.status_code}: check the API key setting")
                if response.status_code < 500:
                    self.info["ready"] = True
                    return
                error = f"HTTP {response.status_code}"
            except httpx.TransportError as e:  # refused, reset, DNS, timeout
                error = f"{type(e).__name__}: {e}"
            if attempt < self.settings.max_attempts:
                time.sleep(self._backoff(attempt))
        raise EndpointUnavailableError(
            f"the LLM endpoint {self.settings.base_url} did not answer after {self.settings.max_attempts} "
            f"attempts ({error}); start the server or fix LLMEngine.base_url")

    def generate(self, model: ModelRef, batch: list[tuple[str, Request]]) -> list[Result]:
        calls = [(i, j) for i, (_, r) in enumerate(batch) for j in range(r.sampling.n)]
        with ThreadPoolExecutor(self.settings.max_concurrency, thread_name_prefix="llm-http") as pool:
            samples = list(pool.map(lambda c: self._call(model, batch[c[0]][1], c[1]), calls))
        per_request: list[list[_Sample]] = [[] for _ in batch]
        for (i, _), sample in zip(calls, samples, strict=True):
            per_request[i].append(sample)
        return [_combine(key, got) for (key, _), got in zip(batch, per_request, strict=True)]

    def _call(self, model: ModelRef, request: Request, sample: int) -> _Sample:
        path, body = _body(model, request, sample)
        last = _Sample(kind="unreachable", error="no attempt made")
        for attempt in range(1, self.settings.max_attempts + 1):
            delay: float | None = None
            try:
                response = self._client.post(path, json=body)
            except httpx.TimeoutException:
                last = _Sample(kind="timeout", error=f"no answer within {self.settings.request_timeout_s} s")
            except httpx.TransportError as e:
                last = _Sample(kind="unreachable", error=f"{type(e).__name__}: {e}")
            else:
                if response.status_code in (401, 403):
                    raise EndpointAuthError(f"{self.settings.base_url} refused the request with "
                                            f"{response.status_code}: check the API key setting")
                if response.status_code < 400:
                    return _parse(response.json(), request)
                detail = _detail(response)
                if response.status_code not in RETRY_STATUS:
                    kind = "prompt_too_long" if any(h in detail.lower() for h in CONTEXT_HINTS) \
                        else "invalid_request"
                    return _Sample(kind=kind, error=f"HTTP {response.status_code}: {detail}")
                kind = "rate_limited" if response.status_code == 429 else "server_error"
                last = _Sample(kind=kind, error=f"HTTP {response.status_code}: {detail}")
                delay = _retry_after(response)
            if attempt < self.settings.max_attempts:
                time.sleep(delay if delay is not None else self._backoff(attempt))
        tries = self.settings.max_attempts
        last.error = f"{last.error} (gave up after {tries} attempts at {self.settings.base_url})"
        return last

    def _backoff(self, attempt: int) -> float:
        base = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)  # jitter spreads out retries of many threads


def _body(model: ModelRef, request: Request, sample: int) -> tuple[str, dict[str, Any]]:
    s = request.sampling
    body: dict[str, Any] = {
        "model": model.served_name or model.name, "n": 1, "temperature": s.temperature,
        "top_p": s.top_p, "max_tokens": s.max_tokens, "seed": s.seed + sample,
    }
    if s.stop:
        body["stop"] = list(s.stop)
    if s.logprobs and request.messages is not None:
        body.update(logprobs=True, top_logprobs=s.logprobs)
    elif s.logprobs:
        body["logprobs"] = s.logprobs
    if request.messages is not None:
        if request.prefilled:  # vLLM's server continues a final assistant message when asked to
            body.update(continue_final_message=True, add_generation_prompt=False)
        return "chat/completions", {**body, "messages": request.message_dicts()}
    return "completions", {**body, "prompt": request.prompt}


def _parse(payload: dict[str, Any], request: Request) -> _Sample:
    try:
        choice = payload["choices"][0]
        text = choice["message"]["content"] if request.messages is not None else choice["text"]
        usage = payload.get("usage") or {}
        logprobs = _logprobs(choice, request) if request.sampling.logprobs else None
        completion = Completion(text or "", int(usage.get("completion_tokens", 0)),
                                choice.get("finish_reason") or "unknown", logprobs)
        return _Sample(completion, int(usage.get("prompt_tokens", 0)))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        return _Sample(kind="server_error", error=f"malformed response ({type(e).__name__}: {e})")


def _logprobs(choice: dict[str, Any], request: Request) -> list[TopLogprobs]:
    """Per generated position, its top-k tokens, from a chat or a completions choice."""
    k, got = request.sampling.logprobs, choice.get("logprobs")
    if not got:
        raise ValueError(f"top-{k} logprobs were asked for and the answer has none (does the endpoint "
                         f"support logprobs?)")
    if request.messages is not None:  # [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]
        positions = [[(t["token"], t["logprob"]) for t in p["top_logprobs"]] for p in got["content"] or []]
    else:  # legacy completions: [{token: logprob}] per position
        positions = [list(p.items()) for p in got["top_logprobs"] or []]
    return [top_logprobs(((str(t), float(lp)) for t, lp in p), k) for p in positions]


def _detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
        error = payload.get("error", payload)
        message = error.get("message") if isinstance(error, dict) else str(error)
        return str(message or payload)[:500]
    except ValueError:
        return response.text[:500]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(60.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _combine(key: str, samples: list[_Sample]) -> Result:
    failed = [s for s in samples if s.kind is not None]
    prompt_tokens = max((s.prompt_tokens for s in samples), default=0)
    if failed:
        # A transient failure of any sample makes the request transient (retry it all later).
        worst = next((s for s in failed if s.kind not in ("prompt_too_long", "invalid_request")), failed[0])
        return Result.failed(key, worst.kind, worst.error, prompt_tokens)
    return Result(key=key, completions=[s.completion for s in samples], num_prompt_tokens=prompt_tokens)
