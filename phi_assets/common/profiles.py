"""Profiles: the one place that turns ``PHI_PROFILE`` into paths, sizes and resources.

``local`` (default) keeps everything under ``$PHI_HOME`` (default ``./.phi``): Dagster's SQLite
instance (``$DAGSTER_HOME``, default ``$PHI_HOME/dagster``), the artifact store, the landing area
and the DuckDB catalog. ``ci`` is the same with tiny sizes. ``k8s`` keeps artifacts and the landing
area at fsspec URIs (``PHI_ARTIFACT_ROOT``, ``PHI_LANDING_ROOT``) and runs steps as Kubernetes jobs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROFILES = ("local", "ci", "k8s")


@dataclass(frozen=True)
class Sizes:
    """How much of the embedded corpora a profile ingests, and per-document limits."""

    num_code_shards: int = 8
    code_sample_every: int = 1  # keep every file whose path hash falls in 1/N of the space
    num_web_shards: int = 4
    web_sample_every: int = 1
    max_doc_bytes: int = 1_000_000  # The Stack and phi-1 drop files above ~1 MB
    edu_annotations_per_source: int = 200  # documents the LLM annotates per source
    synthetic_batches: int = 2  # partitions of each synthetic set (one step, one engine start each)
    textbooks_per_batch: int = 16  # (topic, audience, format) draws per batch
    exercises_per_batch: int = 24  # exercise draws per batch (each sampled `samples` times)
    rewrites_per_batch: int = 12  # at most this many web documents rewritten per batch
    topic_clusters: int = 12  # topics mined from clusters of each filtered corpus
    synthetic_max_tokens: int = 320  # tokens per generated textbook section or rewrite
    vocab_size: int = 8192  # the trained BPE tokenizer's vocabulary (phi-1's has 50,257)
    token_budget: int = 2_000_000  # tokens the pretraining run reads (mixture epochs are counted for it)
    mixture_proxies: int = 16  # proxy models of the mixture search (RegMix trains 512)
    proxy_steps: int = 100  # training steps per proxy
    proxy_seq_len: int = 128
    train_seq_len: int = 128  # the pretraining run's sequence length (its steps follow the token budget)
    preference_problems: int = 24  # problems the DPO policy is sampled on (MBPP train + verified exercises)
    eval_problems: int = 1000  # HumanEval / MBPP problems evaluated per benchmark (1000: all 164 / 500)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"Sizes.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class Profile:
    name: str
    phi_home: str
    dagster_home: str
    artifact_root: str
    landing_root: str
    catalog_path: str
    sizes: Sizes = field(default_factory=Sizes)

    def landing_uri(self, source: str) -> str:
        return f"{self.landing_root.rstrip('/')}/{source}"


def _sizes_for(name: str) -> Sizes:
    if name == "ci":
        return Sizes(num_code_shards=2, code_sample_every=16, num_web_shards=2, web_sample_every=1,
                     edu_annotations_per_source=64, synthetic_batches=2, textbooks_per_batch=3,
                     exercises_per_batch=4, rewrites_per_batch=3, topic_clusters=4,
                     synthetic_max_tokens=160, vocab_size=1024, token_budget=200_000, mixture_proxies=8,
                     proxy_steps=20, proxy_seq_len=64, train_seq_len=64,
                     preference_problems=8, eval_problems=10)
    return Sizes()


def load_profile(env: Mapping[str, str] | None = None) -> Profile:
    """Read the profile from the environment (``PHI_PROFILE``, ``PHI_HOME``, ...)."""
    env = os.environ if env is None else env
    name = env.get("PHI_PROFILE", "local") or "local"
    if name not in PROFILES:
        raise ValueError(f"PHI_PROFILE={name!r} is not a profile; choose one of {PROFILES}")
    phi_home = str(Path(env.get("PHI_HOME", ".phi")).expanduser().resolve())
    dagster_home = env.get("DAGSTER_HOME") or f"{phi_home}/dagster"
    if name == "k8s":
        missing = [k for k in ("PHI_ARTIFACT_ROOT", "PHI_LANDING_ROOT") if not env.get(k)]
        if missing:
            raise ValueError(
                f"PHI_PROFILE=k8s needs {', '.join(missing)}: an fsspec URI such as "
                "s3://bucket/phi/artifacts (and s3://bucket/phi/landing)"
            )
    return Profile(
        name=name,
        phi_home=phi_home,
        dagster_home=dagster_home,
        artifact_root=env.get("PHI_ARTIFACT_ROOT") or f"{phi_home}/artifacts",
        landing_root=env.get("PHI_LANDING_ROOT") or f"{phi_home}/landing",
        catalog_path=env.get("PHI_CATALOG") or f"{phi_home}/catalog.duckdb",
        sizes=_sizes_for(name),
    )
