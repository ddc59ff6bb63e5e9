"""Profiles and scale presets: the one place that turns ``PHI_PROFILE`` and ``PHI_SCALE`` into paths,
sizes and resources.

Two questions, answered separately:

- **Where it runs** (``PHI_PROFILE``): ``local`` (default) keeps everything under ``$PHI_HOME``
  (default ``./.phi``): Dagster's SQLite instance (``$DAGSTER_HOME``, default ``$PHI_HOME/dagster``),
  the artifact store, the landing area and the DuckDB catalog. ``ci`` is the same place. ``k8s``
  keeps artifacts and the landing area at fsspec URIs (``PHI_ARTIFACT_ROOT``, ``PHI_LANDING_ROOT``)
  and runs steps as Kubernetes jobs.
- **How big** (``PHI_SCALE``): a named ``Sizes`` preset. ``ci`` (tiny, for the test suite), ``demo``
  (the embedded corpora on a laptop) and ``phi1`` (the phi-1 paper's numbers; every one is cited in
  ``docs/scale.md``). Each profile has a default (``local`` -> ``demo``, ``ci`` -> ``ci``, ``k8s`` ->
  ``phi1``); ``PHI_SCALE`` overrides it, e.g. ``PHI_PROFILE=k8s PHI_SCALE=demo`` for a first run on a
  small cluster. Partition sets that depend on size (synthetic batches, mixture proxies) are built
  from the preset when the code location loads, so they follow ``PHI_SCALE`` without a code change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

PROFILES = ("local", "ci", "k8s")
MODEL_FAMILIES = ("phi1", "phi3", "phi3_moe", "phi4")  # phi_assets/training/configs.py FAMILIES
DEFAULT_SCALE = {"local": "demo", "ci": "ci", "k8s": "phi1"}


@dataclass(frozen=True)
class Sizes:
    """How big a run is: corpus sampling, annotation, synthetic data, tokenizer, mixture search,
    training budget and recipes, evaluation. The defaults are the ``demo`` preset, sized for a cold
    ``make demo`` within 20 minutes on 2 cores (docs/scale.md)."""

    num_code_shards: int = 8  # embedded corpora only: landing-area shards are one partition per file
    code_sample_every: int = 1  # keep every file whose path hash falls in 1/N of the space
    num_web_shards: int = 4
    web_sample_every: int = 1
    max_doc_bytes: int = 1_000_000  # The Stack and phi-1 drop files above ~1 MB
    edu_annotations_per_source: int = 80  # documents the LLM annotates per source
    synthetic_batches: int = 1  # partitions of each synthetic set (one step, one engine start each)
    textbooks_per_batch: int = 8  # (topic, audience, format) draws per batch
    exercises_per_batch: int = 12  # exercise draws per batch (each sampled `samples` times)
    rewrites_per_batch: int = 6  # at most this many web documents rewritten per batch
    topic_clusters: int = 12  # topics mined from clusters of each filtered corpus
    synthetic_max_tokens: int = 256  # tokens per generated textbook section, exercise function or rewrite
    vocab_size: int = 8192  # the trained BPE tokenizer's vocabulary (phi-1's has 50,257)
    token_budget: int = 800_000  # tokens the pretraining run reads (mixture epochs are counted for it)
    mixture_proxies: int = 8  # proxy models of the mixture search (RegMix trains 512)
    proxy_steps: int = 60  # training steps per proxy
    proxy_seq_len: int = 128
    train_seq_len: int = 128  # the pretraining run's sequence length (its steps follow the token budget)
    preference_problems: int = 24  # problems the DPO policy is sampled on (MBPP train + verified exercises)
    judged_prompts: int = 12  # open prompts per source the policy answers for LLM-judged pairs (judged_pairs)
    rai_per_cell: int = 4  # held-out safety requests per (category, harmful/benign) rai_scores asks each model
    eval_problems: int = 1000  # HumanEval / MBPP problems evaluated per benchmark (1000: all 164 / 500)
    # the same for the trained checkpoints; the reference model (generator_model) always gets eval_problems
    checkpoint_eval_problems: int = 20
    # whether the trained checkpoints get the LLM-graded understanding score (the reference always does, off ci)
    grade_checkpoints: bool = False
    # dedup's bucket partitions: LSH bands in this many groups x band hashes in this many ranges
    dedup_band_groups: int = 1
    dedup_hash_ranges: int = 2
    # data ablations (phi_assets/ablations): the arms (comma-separated names of arms.ARMS, raw first), seeds
    # per arm, and the model every arm trains (ablations/train.py SHAPES) on steps x batch x seq_len tokens
    ablation_arms: str = "raw,heuristics+dedup,edu>=3,edu>=3+textbooks"
    ablation_seeds: int = 3
    ablation_shape: str = "tiny"
    ablation_steps: int = 80
    ablation_seq_len: int = 128
    ablation_batch_size: int = 8
    # whether each ablation model is also scored by pass@1 (greedy, through vLLM, run in the sandbox) on the
    # first checkpoint_eval_problems of HumanEval and MBPP: only where it can score above 0 (GPU presets)
    ablation_pass_at_1: bool = False
    # the model family the chain trains (PHI_MODEL_FAMILY overrides it): phi1 (phi-1/1.5/2 blocks), phi3
    # (phi-3/3.5 dense, LongRoPE midtraining), phi3_moe (phi-3.5-MoE), phi4 (phi-4 dense, RoPE-base midtraining)
    model_family: str = "phi1"
    # trainer recipes (phi_assets/training/configs.py TRAIN_RECIPES) the training assets use by default; the
    # pretraining recipe is the phi1 family's, which model_family swaps for its own of the same scale
    pretrain_recipe: str = "debug"
    finetune_recipe: str = "debug_finetune"
    dpo_recipe: str = "debug_dpo"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is int and value < 1:
                raise ValueError(f"Sizes.{f.name} must be >= 1, got {value}")
            if isinstance(value, str) and not value:
                raise ValueError(f"Sizes.{f.name} must name a recipe, got an empty string")
        if self.model_family not in MODEL_FAMILIES:
            raise ValueError(f"model family must be one of {MODEL_FAMILIES}, got {self.model_family!r}")

    def embedded(self) -> dict[str, int]:
        """The fields that select the embedded corpora (what their fingerprint depends on)."""
        return {k: v for k, v in asdict(self).items()
                if k in ("num_code_shards", "code_sample_every", "num_web_shards", "web_sample_every",
                         "max_doc_bytes")}


DEMO = Sizes()
CI = Sizes(num_code_shards=2, code_sample_every=16, num_web_shards=2, web_sample_every=1,
           edu_annotations_per_source=32, synthetic_batches=2, textbooks_per_batch=3,
           exercises_per_batch=4, rewrites_per_batch=3, topic_clusters=4,
           synthetic_max_tokens=160, vocab_size=1024, token_budget=200_000, mixture_proxies=6,
           proxy_steps=20, proxy_seq_len=64, train_seq_len=64,
           preference_problems=8, judged_prompts=2, rai_per_cell=2, eval_problems=10,
           checkpoint_eval_problems=10,
           ablation_arms="raw,edu>=3+textbooks", ablation_seeds=2, ablation_steps=30,
           ablation_seq_len=64, model_family="phi3")
# phi-1 ("Textbooks Are All You Need", arXiv:2306.11644), RegMix (arXiv:2407.01492) and phi-1.5
# (arXiv:2309.05463): docs/scale.md gives the source of every number.
PHI1 = replace(
    DEMO,
    edu_annotations_per_source=100_000,  # phi-1 §2.1: GPT-4 annotates about 100k samples
    synthetic_batches=1_000,  # a partition per 1,000 draws: one vLLM-server step each
    textbooks_per_batch=1_000,  # 1e6 sections x <= 1,000 tokens: phi-1's < 1B tokens of textbooks
    exercises_per_batch=225,  # x 4 samples x 1,000 batches x ~200 tokens: phi-1's ~180M tokens
    rewrites_per_batch=1_000,
    topic_clusters=10_000,  # phi-1.5 §2: 20K topics seed its synthetic data (10K per source here)
    synthetic_max_tokens=1_000,
    vocab_size=50_257,  # phi-1 §2.3: codegen-350M-mono's tokenizer (50,257 tokens)
    token_budget=50_331_648_000,  # phi-1 §2.3: 24,000 steps x 1,024 x 2,048 ("a little over 50B")
    mixture_proxies=512,  # RegMix trains 512 proxy models
    proxy_steps=1_000,
    proxy_seq_len=2_048,
    train_seq_len=2_048,  # phi-1 §2.3
    preference_problems=10_000,
    judged_prompts=10_000,  # per source: textbooks, rewrites' questions, user requests (the file's, all)
    rai_per_cell=1_000,  # every held-out request of a curated set of that size
    checkpoint_eval_problems=1_000,  # every checkpoint on all of HumanEval and MBPP, graded
    grade_checkpoints=True,
    dedup_band_groups=15,  # one partition per band (14 LSH bands + the exact-id band) ...
    dedup_hash_ranges=64,  # ... x 64 ranges: 960 bucket steps of ~1e9 / 64 slices each (docs/scale.md)
    # phi-1 Figure 2.1: 350M models (phi-1-small's shape) on raw, filtered and filtered+textbook code, 26B
    # tokens each (here 50,000 steps x 256 x 2,048 = 26.2B); every arm of arms.ARMS but the canary
    ablation_arms="raw,heuristics+dedup,edu>=2,edu>=3,edu>=4,edu>=3+textbooks,edu>=3+textbooks+exercises,phi4_mix",
    ablation_shape="phi1_small",
    ablation_steps=50_000,
    ablation_seq_len=2_048,
    ablation_batch_size=256,
    ablation_pass_at_1=True,
    pretrain_recipe="phi1_pretrain",
    finetune_recipe="phi1_finetune",
    dpo_recipe="phi_dpo",
)
SCALES: dict[str, Sizes] = {"ci": CI, "demo": DEMO, "phi1": PHI1}


def reductions(sizes: Sizes, full: Sizes = PHI1) -> list[tuple[str, object, object]]:
    """Every size this run has smaller than the phi-1 preset (or turned off): (field, here, phi1), in field
    order. What a smaller preset leaves out, for the demo's output to say."""
    out = []
    for f in fields(sizes):
        here, there = getattr(sizes, f.name), getattr(full, f.name)
        smaller = here < there if type(here) is int else (here is False and there is True)
        if smaller or (isinstance(here, str) and here != there):
            out.append((f.name, here, there))
    return out


@dataclass(frozen=True)
class Profile:
    name: str
    phi_home: str
    dagster_home: str
    artifact_root: str
    landing_root: str
    catalog_path: str
    scale: str = "demo"
    sizes: Sizes = field(default_factory=Sizes)

    def landing_uri(self, source: str) -> str:
        return f"{self.landing_root.rstrip('/')}/{source}"


def scale_name(profile: str, env: Mapping[str, str]) -> str:
    """``PHI_SCALE``, else the profile's default preset."""
    scale = env.get("PHI_SCALE") or DEFAULT_SCALE[profile]
    if scale not in SCALES:
        raise ValueError(f"PHI_SCALE={scale!r} is not a scale preset; choose one of {tuple(SCALES)}")
    return scale


def load_profile(env: Mapping[str, str] | None = None) -> Profile:
    """Read the profile from the environment (``PHI_PROFILE``, ``PHI_SCALE``, ``PHI_HOME``, ...)."""
    env = os.environ if env is None else env
    name = env.get("PHI_PROFILE", "local") or "local"
    if name not in PROFILES:
        raise ValueError(f"PHI_PROFILE={name!r} is not a profile; choose one of {PROFILES}")
    scale = scale_name(name, env)
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
        scale=scale,
        sizes=replace(SCALES[scale], model_family=env.get("PHI_MODEL_FAMILY") or SCALES[scale].model_family),
    )
