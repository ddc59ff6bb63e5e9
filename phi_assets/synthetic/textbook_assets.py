"""``synthetic_textbooks`` and ``synthetic_exercises``: batches written by the generator model from
seeded (topic, audience, format) draws of ``topics`` (phi-1.5's textbooks, phi-1's CodeExercises).

Each batch generates through the LLM engine, whose request cache makes a killed run resume where it
stopped; validates every candidate (failures are rows with reasons); exercises run in the
evaluation sandbox; HumanEval/MBPP matches are removed (blocking ``decontaminated`` check).
"""

from functools import partial
from typing import Any

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets import sandbox
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, user_error
from phi_assets.common.versioning import materialize_versioned
from phi_assets.curation.checks import decontamination_check_spec
from phi_assets.models.assets import generator_model, model_ref
from phi_assets.synthetic import batches, exercises, generate, templates
from phi_assets.synthetic import topics as topic_space
from phi_assets.synthetic.batches import BATCHES
from phi_assets.synthetic.topic_assets import topics
from resources import ArtifactStore, ProfileResource
from resources.curation import DecontaminationResource, EncoderResource
from resources.llm import LLMEngine
from resources.llm.engine import GenerationStats

# Computed from what each asset's logic imports (the decontamination, batch selection, the sandbox that
# decides which exercises are kept) and the prompt files (templates.VERSIONED_FILES).
TEXTBOOKS_CODE_VERSION = code_version(__name__, "synthetic_textbooks")
EXERCISES_CODE_VERSION = code_version(__name__, "synthetic_exercises")


# --- textbooks ----------------------------------------------------------------------------------


class TextbookConfig(dg.Config):
    draws_per_batch: int = 0  # 0: the profile's size (ci 3, local 8)
    max_tokens: int = 0  # 0: the profile's synthetic_max_tokens (ci 160, local 256)
    temperature: float = 0.8  # each draw has its own seed: sampled, and reproducible
    seed: int = 0
    min_words: int = 60
    min_distinct_trigrams: float = 0.5
    drop_truncated: bool = False


def _build_textbooks(
    context,
    config: TextbookConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    generator: dict,
    topic_list: list[str],
    rules: generate.TextRules,
    scanner,
    template: templates.Template,
    n: int,
    max_tokens: int,
    ran: dict[str, Any],
    out,
):
    draws = topic_space.draw(topic_list, n, config.seed, batches.batch_index(context.partition_key), "tb")
    requests = generate.textbook_requests(
        draws, template, max_tokens=max_tokens, temperature=config.temperature
    )
    model = model_ref(generator, store, llm, f"{profile.get().phi_home}/models")
    gen = llm.generate(model, requests, log=context.log, desc=f"textbooks {context.partition_key}")
    kept, failed = generate.textbook_rows(draws, gen.results, rules, batches.model_fields(generator), template)
    clean, removed, decon = batches.decontaminate(
        kept, scanner, is_code=False, set_name="textbooks", desc="decontaminate textbooks"
    )
    failed = pl.concat([failed, generate.failures_frame(removed)])
    return batches.finish(
        out, TEXTBOOKS_CODE_VERSION, clean, failed, draws.height, {"llm": gen.stats.metadata(), **decon}, ran
    )


@dg.asset(
    partitions_def=BATCHES,
    deps=[topics, generator_model],
    group_name="synthetic",
    op_tags=steps.tags("llm-client"),
    kinds={"parquet", "vllm"},
    code_version=TEXTBOOKS_CODE_VERSION,
    check_specs=[decontamination_check_spec("synthetic_textbooks")],
    description="Textbook sections, tutorials, worked examples and Q&As written by the generator model, one "
    "per seeded (topic, audience, format) draw (phi-1.5 / Cosmopedia).",
)
def synthetic_textbooks(
    context: dg.AssetExecutionContext,
    config: TextbookConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    encoder: EncoderResource,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    sizes = profile.get().sizes
    n, max_tokens = (
        config.draws_per_batch or sizes.textbooks_per_batch,
        config.max_tokens or sizes.synthetic_max_tokens,
    )
    generator = current(store, "generator_model")
    topic_list, topics_version = batches.topic_list(store)
    rules = user_error(
        "synthetic_textbooks",
        lambda: generate.TextRules(
            config.min_words, config.min_distinct_trigrams, drop_truncated=config.drop_truncated
        ),
    )
    scanner = user_error("synthetic_textbooks", lambda: decontamination.get(encoder))
    template = templates.load_all()["textbook"]
    inputs = {
        "model": generator["data_version"],
        "topics": topics_version,
        "decontamination": scanner.version,
        "config": {**config.model_dump(), "n": n, "max_tokens": max_tokens},
    }
    ran: dict[str, Any] = {}  # what this run generated (see batches.finish)
    build = partial(
        _build_textbooks, context, config, store, llm, profile, generator, topic_list, rules, scanner, template,
        n, max_tokens, ran,
    )
    outcome = materialize_versioned(
        context, store, code_version=TEXTBOOKS_CODE_VERSION, inputs=inputs, build=build
    )
    return batches.generation_result(store, outcome, "synthetic_textbooks", scanner.version, llm, ran)


# --- exercises ----------------------------------------------------------------------------------


class ExerciseConfig(dg.Config):
    draws_per_batch: int = 0  # 0: the profile's size (ci 4, local 12)
    samples: int = 4  # sampled exercises per draw; every verified one is kept (rejection sampling)
    max_tokens: int = 0  # stage one, the function (0: the profile's synthetic_max_tokens, ci 160, local 256)
    test_max_tokens: int = 96  # stage two: its tests
    temperature: float = 0.8
    seed: int = 0
    timeout_s: float = 5.0  # sandbox limits per program
    memory_mb: int = 512
    workers: int = 0  # parallel sandbox processes; 0: one per CPU


def _combined(*stats: GenerationStats) -> GenerationStats:
    out = GenerationStats()
    for one in stats:
        for name in (
            "num_requests",
            "num_cache_hits",
            "num_prompt_tokens",
            "num_generated_tokens",
            "num_new_generated_tokens",
            "generate_seconds",
        ):
            setattr(out, name, getattr(out, name) + getattr(one, name))
        out.failures.update(one.failures)
    return out


def _generate_exercises(
    context, config: ExerciseConfig, llm: LLMEngine, model, draws: pl.DataFrame, prompts: dict[str, Any]
):
    """Both LLM stages: functions, then their tests. The parsed programs, failures so far, and stats."""
    requests = exercises.exercise_requests(
        draws,
        prompts["exercise"],
        prompts["exercise_example"],
        samples=config.samples,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
    )
    gen = llm.generate(model, requests, log=context.log, desc=f"exercises {context.partition_key}")
    functions, failed = exercises.exercise_functions(
        draws, gen.results, prompts["exercise_example"], config.samples
    )
    tests = exercises.test_requests(requests, functions, max_tokens=config.test_max_tokens)
    gen_tests = llm.generate(model, tests, log=context.log, desc=f"exercise tests {context.partition_key}")
    runnable, failed = exercises.exercise_candidates(
        functions, gen_tests.results, prompts["exercise_example"], failed
    )
    return runnable, failed, _combined(gen.stats, gen_tests.stats)


def _build_exercises(
    context,
    config: ExerciseConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    generator: dict,
    topic_list: list[str],
    prompts: dict[str, templates.Template],
    limits,
    scanner,
    n: int,
    ran: dict[str, Any],
    out,
):
    draws = topic_space.draw(topic_list, n, config.seed, batches.batch_index(context.partition_key), "ex")
    model = model_ref(generator, store, llm, f"{profile.get().phi_home}/models")
    runnable, failed, stats = _generate_exercises(context, config, llm, model, draws, prompts)
    context.log.info(
        f"exercises: {len(runnable)} of {draws.height * config.samples} samples parse; "
        f"running their tests in the sandbox"
    )
    programs = [ex.runnable() for _, ex in runnable]
    verdicts = sandbox.run_programs(programs, limits, workers=config.workers or None, progress=True)
    # a passing program runs once more: tests that pass by chance (random numbers, the clock) verify nothing
    passed = [i for i, v in enumerate(verdicts) if v.passed]
    again = dict(zip(passed, sandbox.run_programs([programs[i] for i in passed], limits,
                                                  workers=config.workers or None), strict=True))
    kept, failed = exercises.exercise_rows(
        runnable, verdicts, failed, batches.model_fields(generator), prompts["exercise"].sha256, again
    )
    clean, removed, decon = batches.decontaminate(
        kept, scanner, is_code=True, set_name="exercises", desc="decontaminate exercises"
    )
    failed = pl.concat([failed, generate.failures_frame(removed)])
    kinds = {k: sum(v.kind == k for v in verdicts) for k in sandbox.VERDICTS}
    seconds = [v.duration_s for v in verdicts]
    return batches.finish(
        out,
        EXERCISES_CODE_VERSION,
        clean,
        failed,
        draws.height * config.samples,
        {
            "llm": stats.metadata(),
            **decon,
            "verdicts": kinds,
            "nondeterministic": sum(not v.passed for v in again.values()),
            "sandbox_seconds_total": round(sum(seconds), 2),
            "isolation": sandbox.isolation(),
        },
        ran,
    )


@dg.asset(
    partitions_def=BATCHES,
    deps=[topics, generator_model],
    group_name="synthetic",
    op_tags=steps.tags("eval"),
    kinds={"parquet", "vllm", "python"},
    code_version=EXERCISES_CODE_VERSION,
    check_specs=[decontamination_check_spec("synthetic_exercises")],
    description="phi-1's CodeExercises: a function with a docstring and its solution, then assert tests "
    "for it, generated per seeded draw and kept only if the tests pass in the evaluation sandbox.",
)
def synthetic_exercises(
    context: dg.AssetExecutionContext,
    config: ExerciseConfig,
    store: ArtifactStore,
    llm: LLMEngine,
    profile: ProfileResource,
    encoder: EncoderResource,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    sizes = profile.get().sizes
    n = config.draws_per_batch or sizes.exercises_per_batch
    config = config.model_copy(update={"max_tokens": config.max_tokens or sizes.synthetic_max_tokens})
    generator = current(store, "generator_model")
    topic_list, topics_version = batches.topic_list(store)
    scanner = user_error("synthetic_exercises", lambda: decontamination.get(encoder))
    prompts = templates.load_all()
    limits = user_error(
        "synthetic_exercises", lambda: sandbox.Limits(timeout_s=config.timeout_s, memory_mb=config.memory_mb)
    )
    inputs = {
        "model": generator["data_version"],
        "topics": topics_version,
        "decontamination": scanner.version,
        "config": {**config.model_dump(exclude={"workers"}), "n": n},
    }
    ran: dict[str, Any] = {}  # what this run generated (see batches.finish)
    build = partial(
        _build_exercises, context, config, store, llm, profile, generator, topic_list, prompts, limits, scanner,
        n, ran,
    )
    outcome = materialize_versioned(
        context, store, code_version=EXERCISES_CODE_VERSION, inputs=inputs, build=build
    )
    meta = outcome.metadata
    return batches.generation_result(
        store,
        outcome,
        "synthetic_exercises",
        scanner.version,
        llm,
        ran,
        {
            "sandbox_verdicts": dg.MetadataValue.json(meta["verdicts"]),
            **{f"num_{k}": v for k, v in meta["verdicts"].items()},
            "sandbox_isolation": dg.MetadataValue.json(meta["isolation"]),
            "sandbox_seconds_total": meta["sandbox_seconds_total"],
        },
    )
