"""Training assets (group ``training``): the checkpoints, trained outside the Dagster process.

The chain is ``pretrained_checkpoint`` -> ``midtrained_checkpoint`` -> ``sft_checkpoint`` ->
``preference_pairs`` -> ``dpo_checkpoint``. Each training asset writes the entrypoint's config
(``phi_assets.training.entrypoint``) and starts it through the ``training_launcher`` resource (Dagster
Pipes: a subprocess on local/ci, a Kubernetes Job or PyTorchJob on k8s), so the orchestrator never
imports CUDA. Only rank 0 reports; every step's metrics come back as Pipes messages.

The run directory is keyed by the work's provenance (code version and inputs), so a retried step
resumes from the run's last checkpoint. A version holds the Hugging Face export (``hf/``: config,
safetensors, tokenizer; transformers and vLLM load it), ``metrics.jsonl`` and ``summary.json``; its
data version is the sha256 of the weights. Metadata: the loss curve, final and validation losses,
tokens seen, wall time, tokens/s, MFU and lineage (mixture, tokenizer and parent versions).
"""

import hashlib
import io
import json
import math
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets import plots
from phi_assets.curation.assets import _current, _file, _local
from phi_assets.curation.metadata import md_table
from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture.assets import SUBDIR, TOKENIZER_SUBDIR, mixture_weights, tokenizer
from phi_assets.synthetic.generated import synthetic_corpus
from phi_assets.training import dpo, entrypoint, model, preferences, sft, trainer
from phi_assets.versioning import Built, code_version_of, materialize_versioned, stable_hash
from resources import ArtifactStore, DecontaminationResource, LLMEngine, ProfileResource
from resources.training import TrainingLauncher

TRAIN_CODE_VERSION = code_version_of(sys.modules[__name__], model, trainer, entrypoint, sft, dpo)
PAIRS_CODE_VERSION = code_version_of(sys.modules[__name__], preferences)
HF = "hf"


# --- launching and recording a run --------------------------------------------------------------


def _input(store: ArtifactStore, manifest: dict, sub: str) -> str:
    """Where the training process reads a stored directory: a local path, or the store's URI (the
    entrypoint copies it once into its run directory)."""
    if store.is_local:
        return str(_local(store, manifest, sub))
    where = store.version_path(manifest["asset"], manifest["partition"], manifest["data_version"])
    return store.uri(f"{where}/{sub}")


def _parent(store: ArtifactStore, asset: str) -> tuple[dict, str]:
    manifest = _current(store, asset)
    return manifest, _input(store, manifest, HF)


def _train(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    launcher: TrainingLauncher,
    *,
    stage: str,
    spec: dict,
    cfg: trainer.TrainConfig,
    inputs: dict,
    lineage: dict,
    write_inputs=None,
) -> dg.MaterializeResult:
    """Launch the entrypoint for ``spec`` (unless this exact run is already stored) and record it."""
    asset = context.asset_key.to_user_string()
    key = stable_hash([TRAIN_CODE_VERSION, inputs], 16)
    runs = f"{store.base_path}/_runs/{asset}/{key}"  # the config and, on a cluster, the published result
    work = launcher.work_dir(asset, key)  # checkpoints: local disk, or the cluster's checkpoint volume

    def build(out: Path) -> Built:
        config = {**spec, "stage": stage, "train": cfg.__dict__, "out": f"{work}/run"}
        if write_inputs is not None:
            config.update(write_inputs(runs))
        if not store.is_local:
            config["publish"] = store.uri(f"{runs}/result")
        store.write_json(f"{runs}/config.json", config)  # atomic
        started = time.perf_counter()
        messages = launcher.run(context, store.uri(f"{runs}/config.json"), f"{asset}-{key}")
        wall = time.perf_counter() - started
        if store.is_local:
            shutil.copytree(Path(work) / "run" / HF, out / HF)
            for name in ("metrics.jsonl", "summary.json"):
                shutil.copyfile(Path(work) / "run" / name, out / name)
        else:
            store.fs.get(f"{runs}/result/", str(out), recursive=True)
        digest = hashlib.sha256((out / HF / "model.safetensors").read_bytes()).hexdigest()
        rows = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
        rows = [rows[s] for s in sorted(rows)]  # a resumed run logs the steps after its checkpoint again
        summary = json.loads((out / "summary.json").read_text())

        def median(name: str) -> float:
            return sorted(r[name] for r in rows)[len(rows) // 2]

        return Built(
            digest[:32],
            {
                "loss": [r["loss"] for r in rows],
                "lr": [r["lr"] for r in rows],
                "tokens": summary["tokens"],
                "steps": summary["steps"],
                "num_params": summary["num_params"],
                "tokens_per_s": median("tokens_per_s"),
                "mfu": median("mfu"),
                "wall_s": round(wall, 1),
                "step_messages": sum(1 for m in messages if m.get("kind") == "step"),
                "summary": summary,
                "lineage": lineage,
            },
        )

    outcome = materialize_versioned(context, store, code_version=TRAIN_CODE_VERSION, inputs=inputs, build=build)
    meta = outcome.metadata
    summary = meta["summary"]
    series = {"train": meta["loss"]}
    tenth = max(1, len(meta["loss"]) // 10)
    extra: dict = {}
    for label in ("val_loss", "parent_val_loss"):
        for length, value in summary.get(label, {}).items():
            extra[f"{label}_{length}"] = float(value)
    if "preference_accuracy" in summary:
        extra["preference_accuracy"] = float(summary["preference_accuracy"])
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "first_loss": _mean_loss(meta["loss"][:tenth]),  # single steps are noisy: means of a tenth
            "final_loss": _mean_loss(meta["loss"][-tenth:]),
            **extra,
            "tokens_seen": meta["tokens"],
            "steps": meta["steps"],
            "num_params": meta["num_params"],
            "tokens_per_s": meta["tokens_per_s"],
            "mfu": meta["mfu"],
            "wall_time_s": meta["wall_s"],
            "loss_curve": plots.line_plot(series, f"{stage} loss", "step", "loss"),
            "train_config": dg.MetadataValue.json(inputs["train"]),
            "lineage": dg.MetadataValue.json(meta["lineage"]),
            "path": store.uri(
                f"{store.version_path(outcome.manifest['asset'], None, outcome.data_version)}/{HF}"
            ),
            "skipped": outcome.skipped,
        },
    )


def _mean_loss(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _steps(tokens: float, cfg: trainer.TrainConfig) -> int:
    return max(1, math.ceil(tokens / cfg.tokens_per_step))


def _with_epochs(cfg: trainer.TrainConfig, epochs: float, rows: int, overrides: dict) -> trainer.TrainConfig:
    """``epochs`` passes over ``rows`` examples (one per sequence), unless max_steps is given."""
    steps = overrides.get("max_steps") or max(
        1, math.ceil(epochs * rows / (cfg.micro_batch_size * cfg.grad_accum))
    )
    return trainer.TrainConfig(**{**cfg.__dict__, "max_steps": steps})


def _recipe(name: str, overrides: dict) -> trainer.TrainConfig:
    if name not in trainer.TRAIN_RECIPES:
        raise dg.Failure(description=f"recipe {name!r} is not one of {sorted(trainer.TRAIN_RECIPES)}")
    base = trainer.TRAIN_RECIPES[name]()
    return trainer.TrainConfig(**{**base.__dict__, **overrides})


def _architecture(parent: dict) -> dict:
    """The parent's model, sequence length and model overrides (a child keeps its architecture)."""
    train = parent["inputs"]["train"]
    return {"model": train["model"], "seq_len": train["seq_len"], "overrides": train["overrides"]}


def _tokenizer(store: ArtifactStore) -> tuple[dict, str]:
    manifest = _current(store, "tokenizer")
    return manifest, _input(store, manifest, TOKENIZER_SUBDIR)


def _mixture(store: ArtifactStore) -> tuple[dict, dict]:
    weights = _current(store, "mixture_weights")
    return weights, json.loads(store.fs.cat_file(_file(store, weights, "mixture.json")))


def _sources(store: ArtifactStore, mixture: dict) -> dict[str, list[str]]:
    return {
        name: [_input(store, s, SUBDIR) for s in shards]
        for name, shards in mixture["shards"].items()
        if mixture["weights"].get(name, 0) > 0
    }


def _document_lengths(store: ArtifactStore, shards: list[dict]):
    """Token counts of every document of a source's shards (their ``documents.parquet``)."""
    import numpy as np
    import pyarrow.parquet as pq

    parts = []
    for s in shards:
        with store.fs.open(_file(store, s, f"{SUBDIR}/documents.parquet"), "rb") as f:
            parts.append(pq.read_table(f, columns=["num_tokens"])["num_tokens"].to_numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --- pretraining ----------------------------------------------------------------------------------


class PretrainConfig(dg.Config):
    recipe: str = "debug"  # a trainer recipe (debug on CPU; phi1_pretrain on the A100 pool)
    train: dict = {}  # TrainConfig fields over the recipe's
    steps: int = 0  # 0: the mixture's token budget / tokens per step


@dg.asset(
    deps=[mixture_weights, tokenizer],
    group_name="training",
    op_tags=steps.tags("light"), pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=TRAIN_CODE_VERSION,
    description="Pretraining on the mixture: the Phi model trained by the training entrypoint (Dagster Pipes), "
    "exported in Hugging Face format with its loss curve and throughput.",
)
def pretrained_checkpoint(
    context: dg.AssetExecutionContext,
    config: PretrainConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    weights, mixture = _mixture(store)
    tok, tok_path = _tokenizer(store)
    cfg = _recipe(config.recipe, {"seq_len": profile.get().sizes.train_seq_len, **config.train})
    cfg = trainer.TrainConfig(
        **{**cfg.__dict__, "max_steps": config.steps or _steps(mixture["token_budget"], cfg)}
    )
    return _train(
        context,
        store,
        training_launcher,
        stage="pretrain",
        spec={
            "sources": _sources(store, mixture),
            "weights": mixture["weights"],
            "tokenizer": tok_path,
            "eval_seq_lens": [cfg.seq_len],
        },
        cfg=cfg,
        inputs={"mixture": weights["data_version"], "tokenizer": tok["data_version"], "train": cfg.__dict__},
        lineage={"mixture": weights["data_version"], "tokenizer": tok["data_version"]},
    )


# --- midtraining ----------------------------------------------------------------------------------


class MidtrainConfig(dg.Config):
    rope_theta: float = 250_000.0  # phi-4 raised the RoPE base from 10K to 250K for 16K context
    seq_len_factor: int = 2  # the new context length is the parent's times this (phi-4: 4K -> 16K)
    lr_factor: float = 0.1  # peak lr relative to pretraining (phi-4: a tenth)
    long_mix: float = 0.3  # share of the mix given to long documents (phi-4: 30% long, 70% recall)
    token_fraction: float = 0.25  # tokens relative to the pretraining token budget
    train: dict = {}  # TrainConfig fields over the derived ones


@dg.asset(
    deps=["pretrained_checkpoint", mixture_weights, tokenizer],
    group_name="training",
    op_tags=steps.tags("light"), pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=TRAIN_CODE_VERSION,
    description="Context extension as phi-4 did it: a higher RoPE base, longer sequences, a mix weighted "
    "toward long documents, a lower peak lr; validation loss at the old and the new length.",
)
def midtrained_checkpoint(
    context: dg.AssetExecutionContext,
    config: MidtrainConfig,
    store: ArtifactStore,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    parent, init = _parent(store, "pretrained_checkpoint")
    weights, mixture = _mixture(store)
    tok, tok_path = _tokenizer(store)
    base = trainer.TrainConfig(
        **{**parent["inputs"]["train"], "betas": tuple(parent["inputs"]["train"]["betas"])}
    )
    cfg = trainer.midtrain(base, config.rope_theta, config.seq_len_factor, config.lr_factor)
    cfg = trainer.TrainConfig(
        **{
            **cfg.__dict__,
            "warmup_steps": max(1, base.warmup_steps // 2),
            "max_steps": _steps(config.token_fraction * mixture["token_budget"], cfg),
            **config.train,
        }
    )
    sources = _sources(store, mixture)
    lengths = {name: _document_lengths(store, mixture["shards"][name]) for name in sources}
    mixed, long_share = trainer.long_context_weights(lengths, mixture["weights"], cfg.seq_len, config.long_mix)
    context.log.info(
        "midtraining mix (long-document share in brackets): "
        + ", ".join(f"{n} {w:.3f} ({long_share[n]:.2f})" for n, w in mixed.items())
    )
    return _train(
        context,
        store,
        training_launcher,
        stage="midtrain",
        spec={
            "sources": sources,
            "weights": mixed,
            "tokenizer": tok_path,
            "init": init,
            "eval_seq_lens": [base.seq_len, cfg.seq_len],
        },
        cfg=cfg,
        inputs={
            "parent": parent["data_version"],
            "mixture": weights["data_version"],
            "tokenizer": tok["data_version"],
            "weights": mixed,
            "train": cfg.__dict__,
        },
        lineage={
            "pretrained_checkpoint": parent["data_version"],
            "mixture": weights["data_version"],
            "tokenizer": tok["data_version"],
            "long_document_share": long_share,
        },
    )


# --- supervised finetuning ------------------------------------------------------------------------

SFT_SOURCES = ("exercises", "textbooks", "mbpp_train")


class FinetuneConfig(dg.Config):
    recipe: str = "debug_finetune"  # phi1_finetune on the A100 pool
    train: dict = {}  # TrainConfig fields over the recipe's
    sources: list[str] = list(SFT_SOURCES)  # instruction data: synthetic exercises and textbooks, MBPP train
    epochs: float = 2.0  # passes over the examples (steps follow)


def _exercises(store: ArtifactStore) -> tuple[list[dict], list[dict], str]:
    """The synthetic corpus's verified exercises and textbooks, and its version."""
    corpus = _current(store, "synthetic_corpus")
    rows = {}
    for name in ("exercises", "textbooks"):
        with store.fs.open(_file(store, corpus, f"{name}.parquet"), "rb") as f:
            rows[name] = pl.read_parquet(f).to_dicts()
    return rows["exercises"], rows["textbooks"], corpus["data_version"]


def sft_examples(
    sources: list[str], exercises: list[dict], textbooks: list[dict], mbpp_path: str
) -> pl.DataFrame:
    """(source, prompt, completion) rows. Exercises: signature + docstring -> body (phi-1's
    CodeExercises); textbooks: an instruction naming topic, audience and format -> the section;
    MBPP's training split (task ids 601-974; the test split 11-510 stays unseen): the phi-1 prompt ->
    the reference code."""
    unknown = sorted(set(sources) - set(SFT_SOURCES))
    if unknown:
        raise dg.Failure(description=f"sft sources {unknown} are not among {SFT_SOURCES}")
    rows = []
    if "exercises" in sources:
        for p in preferences.exercise_problems(exercises, len(exercises)):
            if p.reference is not None:
                rows.append(("exercises", p.prompt, p.reference))
    if "textbooks" in sources:
        for t in textbooks:
            ask = f"Write a {t['format']} about {t['topic']} for {t['audience']}.\n\n"
            rows.append(("textbooks", ask, t["text"]))
    if "mbpp_train" in sources:
        for p in preferences.mbpp_problems(Path(mbpp_path), len(preferences.MBPP_TRAIN)):
            rows.append(("mbpp_train", p.prompt, p.reference))
    return pl.DataFrame(rows, schema=["source", "prompt", "completion"], orient="row")


def _parquet_writer(store: ArtifactStore, frame: pl.DataFrame, name: str):
    """``write_inputs`` for ``_train``: the frame stored (atomically) beside the run's config."""

    def write(runs: str) -> dict:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        store.write_bytes(f"{runs}/{name}", buffer.getvalue())
        return {name.split(".")[0]: store.uri(f"{runs}/{name}")}

    return write


@dg.asset(
    deps=["midtrained_checkpoint", synthetic_corpus],
    group_name="training",
    op_tags=steps.tags("light"), pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=TRAIN_CODE_VERSION,
    description="Supervised finetuning (phi-1's CodeExercises step) on verified synthetic exercises, "
    "textbook instructions and MBPP's training split, with the loss on completions only.",
)
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    store: ArtifactStore,
    decontamination: DecontaminationResource,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    parent, init = _parent(store, "midtrained_checkpoint")
    tok, tok_path = _tokenizer(store)
    exercises, textbooks, corpus_version = _exercises(store)
    mbpp = decontamination.resolved_mbpp_path() if "mbpp_train" in config.sources else ""
    examples = sft_examples(config.sources, exercises, textbooks, mbpp)
    if not examples.height:
        raise dg.Failure(description=f"sft_checkpoint: no examples in sources {config.sources}")
    counts = dict(examples.group_by("source").len().iter_rows())
    context.log.info(f"sft examples: {counts}")
    cfg = _recipe(config.recipe, {**_architecture(parent), **config.train})
    cfg = _with_epochs(cfg, config.epochs, examples.height, config.train)
    return _train(
        context,
        store,
        training_launcher,
        stage="sft",
        spec={"tokenizer": tok_path, "init": init},
        cfg=cfg,
        inputs={
            "parent": parent["data_version"],
            "tokenizer": tok["data_version"],
            "examples": stable_hash(examples.rows()),
            "train": cfg.__dict__,
        },
        lineage={
            "midtrained_checkpoint": parent["data_version"],
            "synthetic_corpus": corpus_version,
            "tokenizer": tok["data_version"],
            "examples": counts,
        },
        write_inputs=_parquet_writer(store, examples, "examples.parquet"),
    )


# --- preference pairs and DPO ---------------------------------------------------------------------


class PreferenceConfig(dg.Config):
    problems: int = 0  # MBPP training-split problems plus verified exercises (0: the profile's number)
    samples: int = 4  # policy samples per problem (rejection sampling)
    temperature: float = 0.8
    max_tokens: int = 128  # per sampled completion
    pts_problems: int = 4  # problems whose passing solution is searched for pivotal tokens
    pts_samples: int = 4  # continuations sampled per success-probability estimate
    pts_gap: float = 0.25  # a token is pivotal when it moves p(success) by at least this
    max_solution_tokens: int = 96  # a solution is searched over at most this many tokens
    seed: int = 0


class EnginePolicy:
    """The checkpoint being post-trained, sampled through the LLM engine (vLLM; cached by request)."""

    def __init__(self, llm: LLMEngine, model, max_tokens: int, temperature: float, log):
        self.llm, self.model, self.max_tokens, self.temperature, self.log = (
            llm,
            model,
            max_tokens,
            temperature,
            log,
        )
        self.generated = 0

    def sample(self, prompts, n: int, seed: int) -> list[list[str]]:
        from resources.llm import Request

        requests = [
            Request.completion(
                p,
                n=n,
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                stop=preferences.STOPS,
                seed=seed,
            )
            for p in prompts
        ]
        generation = self.llm.generate(self.model, requests, log=self.log, desc="policy samples")
        self.generated += generation.stats.num_new_generated_tokens
        return [[c.text for c in r.completions] if r.error is None else [""] * n for r in generation.results]


def _policy_engine(llm: LLMEngine, hf: Path) -> LLMEngine:
    """The profile's engine for a checkpoint: float32, a context no longer than the checkpoint's positions,
    and the profile's checkpoint backend (on the cluster, a vLLM server of its own: k8s/model_server.py)."""
    positions = json.loads((hf / "config.json").read_text())["max_position_embeddings"]
    fields = {name: getattr(llm, name) for name in type(llm).model_fields}
    return type(llm)(**{**fields, "backend": llm.checkpoint_backend or llm.backend,
                        "max_model_len": min(llm.max_model_len, positions), "dtype": "float32"})


def _policy_model(engine: LLMEngine, store: ArtifactStore, manifest: dict, hf: Path, name: str):
    """The checkpoint's model reference: its local export, or its export's URI for a server to copy."""
    path = _file(store, manifest, HF) if engine.backend == "k8s-vllm" else str(hf)
    return engine.model_for(name, manifest["data_version"], path)


def _judge(programs) -> list[bool]:
    from phi_assets.evaluation import sandbox

    limits = sandbox.Limits(timeout_s=5.0, cpu_s=5)
    return [v.passed for v in sandbox.run_programs(programs, limits)]


def _tokenize(loaded: tk.Loaded):
    def pieces(text: str) -> list[str]:
        starts = [a for a, _ in loaded.tokenizer.encode(text).offsets]
        if not starts:
            return []
        starts[0] = 0
        return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True) if b > a]

    return pieces


@dg.asset(
    deps=["sft_checkpoint", synthetic_corpus],
    group_name="training",
    op_tags=steps.tags("eval"),
    kinds={"vllm"},
    code_version=PAIRS_CODE_VERSION,
    description="DPO pairs from the SFT policy: rejection sampling (failing samples against execution-verified "
    "answers) and phi-4's Pivotal Token Search (single-token pairs where p(success) jumps).",
)
def preference_pairs(
    context: dg.AssetExecutionContext,
    config: PreferenceConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    llm: LLMEngine,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    parent, _ = _parent(store, "sft_checkpoint")
    exercises, _, corpus_version = _exercises(store)
    limit = config.problems or profile.get().sizes.preference_problems
    problems = preferences.exercise_problems(exercises, limit)
    problems += preferences.mbpp_problems(Path(decontamination.resolved_mbpp_path()), limit - len(problems))
    inputs = {
        "policy": parent["data_version"],
        "corpus": corpus_version,
        "config": config.model_dump(),
        "problems": stable_hash([(p.id, p.prompt, p.tests, p.reference) for p in problems]),
    }

    def build(out: Path) -> Built:
        hf = _local(store, parent, HF)
        engine = _policy_engine(llm, hf)
        policy = EnginePolicy(
            engine,
            _policy_model(engine, store, parent, hf, f"sft-{parent['data_version'][:12]}"),
            config.max_tokens,
            config.temperature,
            context.log,
        )
        try:
            rows, stats = preferences.build_pairs(
                problems,
                policy,
                _judge,
                _tokenize(tk.load(hf)),
                samples=config.samples,
                pts_samples=config.pts_samples,
                gap=config.pts_gap,
                pts_problems=config.pts_problems,
                max_solution_tokens=config.max_solution_tokens,
                seed=config.seed,
                log=context.log.info,
            )
            greedy = policy.llm.generate(policy.model, [_greedy_request(problems[0].prompt)], log=context.log)
        finally:
            engine.close()
        frame = pl.DataFrame(rows, schema=PAIR_SCHEMA)
        frame.write_parquet(out / "pairs.parquet")
        return Built(
            stable_hash(frame.rows()),
            {
                **stats.__dict__,
                "greedy_probe": {"prompt": problems[0].prompt, "text": greedy.results[0].completions[0].text},
                "examples": [{k: r[k] for k in ("problem_id", "kind", "chosen", "rejected")} for r in rows[:3]]
                + [
                    {k: r[k] for k in ("problem_id", "kind", "chosen", "rejected")}
                    for r in rows
                    if r["kind"] == "pivotal"
                ][:3],
            },
        )

    outcome = materialize_versioned(context, store, code_version=PAIRS_CODE_VERSION, inputs=inputs, build=build)
    meta = outcome.metadata
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "pairs": sum(meta["pairs"].values()),
            "rejection_pairs": meta["pairs"]["rejection"],
            "pivotal_pairs": meta["pairs"]["pivotal"],
            "problems": meta["problems"],
            "policy_pass_rate": meta["passed_samples"] / max(meta["samples"], 1),
            "references_passed": meta["references_passed"],
            "references_failed": meta["references_failed"],
            "pts_estimates": meta["estimates"],
            "pivots": meta["pivots"],
            "greedy_probe": dg.MetadataValue.json(meta["greedy_probe"]),
            "examples": (
                md_table(
                    ["problem", "kind", "chosen", "rejected"],
                    [
                        [e["problem_id"], e["kind"], repr(e["chosen"][:60]), repr(e["rejected"][:60])]
                        for e in meta["examples"]
                    ],
                )
            ),
            "lineage": dg.MetadataValue.json(
                {"sft_checkpoint": parent["data_version"], "synthetic_corpus": corpus_version}
            ),
            "skipped": outcome.skipped,
        },
    )


PAIR_SCHEMA = {
    "problem_id": pl.String,
    "kind": pl.String,
    "prompt": pl.String,
    "chosen": pl.String,
    "rejected": pl.String,
    "p_before": pl.Float64,
    "p_after": pl.Float64,
}


def _greedy_request(prompt: str):
    from resources.llm import Request

    return Request.completion(prompt, max_tokens=24, temperature=0.0)


class DPOConfig(dg.Config):
    recipe: str = "debug_dpo"  # phi_dpo on the A100 pool
    train: dict = {}  # TrainConfig fields over the recipe's
    beta: float = 0.1  # the DPO temperature
    epochs: float = 2.0  # passes over the pairs


@dg.asset(
    deps=["sft_checkpoint", preference_pairs],
    group_name="training",
    op_tags=steps.tags("light"), pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=TRAIN_CODE_VERSION,
    description="DPO on the preference pairs against the frozen SFT checkpoint as reference; reports the "
    "share of pairs whose implicit reward prefers the chosen answer.",
)
def dpo_checkpoint(
    context: dg.AssetExecutionContext,
    config: DPOConfig,
    store: ArtifactStore,
    training_launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    parent, init = _parent(store, "sft_checkpoint")
    pairs_manifest = _current(store, "preference_pairs")
    tok, tok_path = _tokenizer(store)
    with store.fs.open(_file(store, pairs_manifest, "pairs.parquet"), "rb") as f:
        pairs = pl.read_parquet(f)
    if not pairs.height:
        raise dg.Failure(
            description="dpo_checkpoint: preference_pairs holds no pairs (no problem had both a passing and a "
            "failing answer); raise its problems or samples"
        )
    cfg = _with_epochs(
        _recipe(config.recipe, {**_architecture(parent), **config.train}),
        config.epochs,
        pairs.height,
        config.train,
    )
    return _train(
        context,
        store,
        training_launcher,
        stage="dpo",
        spec={"tokenizer": tok_path, "init": init, "beta": config.beta},
        cfg=cfg,
        inputs={
            "parent": parent["data_version"],
            "pairs": pairs_manifest["data_version"],
            "tokenizer": tok["data_version"],
            "beta": config.beta,
            "train": cfg.__dict__,
        },
        lineage={
            "sft_checkpoint": parent["data_version"],
            "preference_pairs": pairs_manifest["data_version"],
            "tokenizer": tok["data_version"],
            "pairs": dict(pairs.group_by("kind").len().iter_rows()),
        },
        write_inputs=_parquet_writer(store, pairs.select("prompt", "chosen", "rejected"), "pairs.parquet"),
    )


TRAINING_ASSETS = [
    pretrained_checkpoint,
    midtrained_checkpoint,
    sft_checkpoint,
    preference_pairs,
    dpo_checkpoint,
]
