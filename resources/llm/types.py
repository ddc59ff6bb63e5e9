"""The engine's one interface: requests in, results out, and the key a request is cached under.

A request is chat messages or a raw prompt plus sampling settings. ``n`` samples are drawn as
``n`` independent generations with seeds ``seed, seed+1, ...``, so every backend (vLLM offline,
an OpenAI-compatible server) gives the same samples for the same request and each sample has its
own token count and finish reason.

``Sampling.logprobs = k`` asks for the top-k log-probabilities at every generated position; each
``Completion`` then carries them as ``{token text: logprob}`` per position (tokens whose texts are
equal are merged, their probabilities summed), the same from every backend and from the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Deterministic failures: the same request fails the same way again, so the failure is cached.
DETERMINISTIC_ERRORS = ("prompt_too_long", "invalid_request")
# Transient failures: worth retrying later; never cached.
TRANSIENT_ERRORS = ("unreachable", "timeout", "rate_limited", "server_error", "engine_error")
ROLES = ("system", "user", "assistant")
MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit and vLLM's default max_logprobs


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: int = 0  # top-k log-probabilities per generated token; 0 = none

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"Sampling.max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"Sampling.logprobs must be within 0..{MAX_LOGPROBS} (top-k per token; 0 = none), "
                             f"got {self.logprobs}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass(frozen=True)
class Request:
    """Chat ``messages`` (``[{"role": ..., "content": ...}]``) or a raw ``prompt``, not both."""

    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs
    prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a Request needs exactly one of messages or prompt")
        if self.messages is not None:
            for role, content in self.messages:
                if role not in ROLES or not isinstance(content, str):
                    raise ValueError(f"bad chat message ({role!r}, {type(content).__name__}); "
                                     f"roles are {ROLES} and content is a string")

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str]] | str, **sampling: Any) -> Request:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        pairs = tuple((m["role"], m["content"]) for m in messages)
        return cls(messages=pairs, sampling=Sampling(**sampling))

    @property
    def prefilled(self) -> bool:
        """A chat whose last message is the assistant's: the model continues that message."""
        return bool(self.messages) and self.messages[-1][0] == "assistant"

    @classmethod
    def completion(cls, prompt: str, **sampling: Any) -> Request:
        return cls(prompt=prompt, sampling=Sampling(**sampling))

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages or ()]

    def to_json(self) -> dict[str, Any]:
        sampling = asdict(self.sampling)
        if not sampling["logprobs"]:  # left out when off: keys of requests made before it existed stay valid
            del sampling["logprobs"]
        body: dict[str, Any] = {"sampling": sampling}
        if self.messages is not None:
            body["messages"] = self.message_dicts()
        else:
            body["prompt"] = self.prompt
        return body


@dataclass(frozen=True)
class ModelRef:
    """Which model generates: a local Hugging Face directory (vLLM offline), or the name an
    endpoint serves it under. ``version`` (the weights' hash, or a pinned name for an endpoint)
    is part of every cache key."""

    name: str
    version: str
    path: str | None = None
    served_name: str | None = None

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError(f"ModelRef {self.name!r} needs a version (e.g. the weights' hash)")


def request_key(model: ModelRef, request: Request) -> str:
    body = json.dumps({"model": model.version, **request.to_json()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


TopLogprobs = dict[str, float]  # token text -> log-probability, at one generated position


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop", "length", ...
    # With Sampling.logprobs = k: per generated position, its k most likely tokens (None: not asked for)
    logprobs: list[TopLogprobs] | None = None


def top_logprobs(candidates: Iterable[tuple[str, float]], k: int) -> TopLogprobs:
    """The ``k`` most likely of (token text, logprob) candidates at one position, keyed by text. Two
    tokens with the same text (different ids that decode alike) become one entry whose probability is
    the sum of theirs; the k most likely ids are kept first, so every backend keeps the same ones."""
    ranked = sorted(candidates, key=lambda c: -c[1])[:k]
    out: TopLogprobs = {}
    for text, logprob in ranked:
        out[text] = _log_add(out[text], float(logprob)) if text in out else float(logprob)
    return out


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without leaving floating point range."""
    high, low = max(a, b), min(a, b)
    return high if low == -math.inf else high + math.log1p(math.exp(low - high))


@dataclass
class Result:
    """One request's outcome: its ``n`` completions, or an error with its kind."""

    key: str
    completions: list[Completion] = field(default_factory=list)
    num_prompt_tokens: int = 0
    error: str | None = None
    error_kind: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def text(self) -> str | None:
        return self.completions[0].text if self.completions else None

    @property
    def num_generated_tokens(self) -> int:
        return sum(c.num_tokens for c in self.completions)

    @property
    def transient(self) -> bool:
        return self.error_kind in TRANSIENT_ERRORS

    @classmethod
    def failed(cls, key: str, kind: str, message: str, num_prompt_tokens: int = 0) -> Result:
        assert kind in DETERMINISTIC_ERRORS + TRANSIENT_ERRORS, kind
        return cls(key=key, error=message, error_kind=kind, num_prompt_tokens=num_prompt_tokens)
