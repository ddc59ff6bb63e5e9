"""Post-training assets (group ``training``): ``sft_checkpoint`` and ``preference_pairs``.

SFT finetunes the midtrained checkpoint on verified synthetic exercises, textbook instructions and
MBPP's training split; ``preference_pairs`` samples the SFT policy through the LLM engine (vLLM)
and builds DPO pairs by execution (``preferences.py``). ``judged_pairs`` (``judged_assets.py``) adds pairs an
LLM judge prefers, and ``dpo_checkpoint`` (``dpo_assets.py``) trains on both. The training runs are launched and
recorded by ``runs.train_and_record``.
"""

import io
import math
from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.mixture import tokenizer as tk
from phi_assets.synthetic.corpus_assets import synthetic_corpus
from phi_assets.training import configs, preferences
from phi_assets.training.pretraining import midtrained_checkpoint
from phi_assets.training.runs import (
    HF,
    current_tokenizer,
    parent_checkpoint,
    recipe_config,
    train_and_record,
)
from phi_assets.training.safety_data import mix_safety, safety_sft
from resources import ArtifactStore, DecontaminationResource, LLMEngine, ProfileResource
from resources.llm.checkpoint import COMPLETION_STOPS, checkpoint_engine, checkpoint_model
from resources.training import TrainingLauncher

SFT_CHECKPOINT_CODE_VERSION = code_version(__name__, "sft_checkpoint")
PAIRS_CODE_VERSION = code_version(__name__, "preference_pairs")


def with_epochs(cfg: configs.TrainConfig, epochs: float, rows: int, overrides: dict) -> configs.TrainConfig:
    """``epochs`` passes over ``rows`` examples (one per sequence; DPO: one per pair), unless max_steps
    is given: steps of the global batch, whatever the world size."""
    steps = overrides.get("max_steps") or max(1, math.ceil(epochs * rows / cfg.global_batch_size))
    return configs.TrainConfig(**{**cfg.__dict__, "max_steps": steps})


def architecture(parent: dict) -> dict:
    """The parent's model, sequence length and model overrides (a child keeps its architecture)."""
    train = parent["inputs"]["train"]
    return {"model": train["model"], "seq_len": train["seq_len"], "overrides": train["overrides"]}


def exercises_and_textbooks(store: ArtifactStore) -> tuple[list[dict], list[dict], str]:
    """The synthetic corpus's verified exercises and textbooks, and its version."""
    corpus = current(store, "synthetic_corpus")
    rows = {}
    for name in ("exercises", "textbooks"):
        with store.fs.open(file_uri(store, corpus, f"{name}.parquet"), "rb") as f:
            rows[name] = pl.read_parquet(f).to_dicts()
    return rows["exercises"], rows["textbooks"], corpus["data_version"]


def parquet_writer(store: ArtifactStore, frame: pl.DataFrame, name: str):
    """``write_inputs`` for ``train_and_record``: the frame stored (atomically) beside the run's config."""

    def write(run_dir: str) -> dict:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        store.write_bytes(f"{run_dir}/{name}", buffer.getvalue())
        return {name.split(".")[0]: store.uri(f"{run_dir}/{name}")}

    return write


# --- supervised finetuning ------------------------------------------------------------------------

SFT_SOURCES = ("exercises", "textbooks", "mbpp_train")


class FinetuneConfig(dg.Config):
    recipe: str = ""  # a trainer recipe; empty: the scale preset's (demo: debug_finetune, phi1: phi1_finetune)
    train: dict = {}  # TrainConfig fields over the recipe's
    sources: list[str] = list(SFT_SOURCES)  # instruction data: synthetic exercises and textbooks, MBPP train
    epochs: float = 2.0  # passes over the examples (steps follow)
    safety_share: float = 0.1  # safety_sft's share of the examples (0: none; the no-safety control: none)
    safety_max_repeats: int = 4  # passes over safety_sft at most (a small set is not repeated without bound)
    seed: int = 0  # which safety examples, in what order


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


def with_safety(context, store: ArtifactStore, examples: pl.DataFrame, config: FinetuneConfig,
                reader: str) -> tuple[pl.DataFrame, dict]:
    """``examples`` with safety_sft's mixed in at ``config.safety_share`` (source ``safety``), and what the mix
    adds to the run's inputs and lineage."""
    columns = ("prompt", "completion")
    manifest, picked = mix_safety(context, store, "safety_sft", columns, examples.height, config, reader)
    mixed = pl.concat([examples, pl.DataFrame([("safety", p, c) for p, c in picked], schema=examples.schema,
                                              orient="row")])
    share = round(len(picked) / mixed.height, 4) if mixed.height else 0.0
    return mixed, {"safety_sft": manifest["data_version"], "safety_share": share}


def train_sft(context, config: FinetuneConfig, store: ArtifactStore, decontamination: DecontaminationResource,
              training_launcher: TrainingLauncher, profile: ProfileResource, *, code_version: str,
              safety_data: bool) -> dg.MaterializeResult:
    """SFT from the midtrained checkpoint; ``safety_data``: with safety_sft's examples at the config's share
    (``sft_checkpoint``), else without them (``sft_checkpoint_no_safety``, the responsible-AI control)."""
    asset = context.asset_key.to_user_string()
    recipe = config.recipe or profile.get().sizes.finetune_recipe
    parent, init = parent_checkpoint(store, "midtrained_checkpoint")
    tok, tok_path = current_tokenizer(store)
    exercises, textbooks, corpus_version = exercises_and_textbooks(store)
    mbpp = decontamination.resolved_mbpp_path() if "mbpp_train" in config.sources else ""
    examples = sft_examples(config.sources, exercises, textbooks, mbpp)
    if not examples.height:
        raise dg.Failure(description=f"{asset}: no examples in sources {config.sources}")
    mix = {}
    if safety_data and config.safety_share != 0:  # a share outside [0, 1) fails in the mix, naming it
        examples, mix = with_safety(context, store, examples, config, asset)
    counts = dict(examples.group_by("source").len().iter_rows())
    context.log.info(f"sft examples: {counts}")
    cfg = recipe_config(recipe, {**architecture(parent), **config.train})
    cfg = with_epochs(cfg, config.epochs, examples.height, config.train)
    return train_and_record(
        context,
        store,
        training_launcher,
        code_version=code_version,
        stage="sft",
        spec={"tokenizer": tok_path, "init": init},
        cfg=cfg,
        recipe=recipe,
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
            **mix,
            "examples": counts,
        },
        write_inputs=parquet_writer(store, examples, "examples.parquet"),
    )


@dg.asset(
    deps=[midtrained_checkpoint, synthetic_corpus, safety_sft],
    group_name="training",
    op_tags=steps.tags("light"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=SFT_CHECKPOINT_CODE_VERSION,
    description="Supervised finetuning (phi-1's CodeExercises step) on verified synthetic exercises, "
    "textbook instructions and MBPP's training split, with safety examples mixed in (phi-3), the loss on "
    "completions only.",
)
def sft_checkpoint(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    store: ArtifactStore,
    decontamination: DecontaminationResource,
    training_launcher: TrainingLauncher,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    return train_sft(context, config, store, decontamination, training_launcher, profile,
                     code_version=SFT_CHECKPOINT_CODE_VERSION, safety_data=True)


# --- preference pairs -----------------------------------------------------------------------------


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
                stop=COMPLETION_STOPS,
                seed=seed,
            )
            for p in prompts
        ]
        generation = self.llm.generate(self.model, requests, log=self.log, desc="policy samples")
        self.generated += generation.stats.num_new_generated_tokens
        return [[c.text for c in r.completions] if r.error is None else [""] * n for r in generation.results]


def sft_policy(context, store: ArtifactStore, llm: LLMEngine, parent: dict, max_tokens: int,
               temperature: float) -> tuple[EnginePolicy, Path]:
    """The SFT checkpoint ``parent`` served through the profile's checkpoint engine, as a policy, and its local
    export. The caller closes the engine (``policy.llm.close()``)."""
    hf = local_copy(store, parent, HF)
    engine = checkpoint_engine(llm, hf)
    name = f"sft-{parent['data_version'][:12]}"
    model = checkpoint_model(engine, name, parent["data_version"], hf, file_uri(store, parent, HF))
    return EnginePolicy(engine, model, max_tokens, temperature, context.log), hf


def _judge(programs) -> list[bool]:
    from phi_assets import sandbox

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


def _sample_pairs(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    llm: LLMEngine,
    parent: dict,
    problems: list[preferences.Problem],
    config: PreferenceConfig,
    out: Path,
) -> Built:
    """Serve the SFT checkpoint, build the pairs into ``out/pairs.parquet``, and probe it greedily."""
    policy, hf = sft_policy(context, store, llm, parent, config.max_tokens, config.temperature)
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
        policy.llm.close()
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


def _pairs_metadata(meta: dict, lineage: dict) -> dict:
    return {
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
        "lineage": dg.MetadataValue.json(lineage),
    }


@dg.asset(
    deps=[sft_checkpoint, synthetic_corpus],
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
    parent, _ = parent_checkpoint(store, "sft_checkpoint")
    exercises, _, corpus_version = exercises_and_textbooks(store)
    limit = config.problems or profile.get().sizes.preference_problems
    problems = preferences.exercise_problems(exercises, limit)
    problems += preferences.mbpp_problems(Path(decontamination.resolved_mbpp_path()), limit - len(problems))
    inputs = {
        "policy": parent["data_version"],
        "corpus": corpus_version,
        "config": config.model_dump(),
        "problems": stable_hash([(p.id, p.prompt, p.tests, p.reference) for p in problems]),
    }
    outcome = materialize_versioned(
        context,
        store,
        code_version=PAIRS_CODE_VERSION,
        inputs=inputs,
        build=lambda out: _sample_pairs(context, store, llm, parent, problems, config, out),
    )
    lineage = {"sft_checkpoint": parent["data_version"], "synthetic_corpus": corpus_version}
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={**_pairs_metadata(outcome.metadata, lineage), "skipped": outcome.skipped},
    )


POST_TRAINING_ASSETS = [sft_checkpoint, preference_pairs]
