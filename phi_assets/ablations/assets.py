"""Data ablation assets (group ``ablations``): what each curation step buys, with confidence intervals.

- ``tokenized_raw_{code,web}`` (``raw_tokens.py``): the raw shards as a training source.
- ``data_ablations``: partitions = arm x seed (``arms.py``: named data recipes; the preset's
  ``ablation_arms`` and ``ablation_seeds``). Each partition trains the preset's ablation model
  (``train.py``) from scratch on the same number of tokens, the arm's bases read through
  ``MixtureLoader`` (curated bases are views of the raw tokens: the documents the filtered corpus
  scored, and at least ``min_edu``), then scores it on the held-out benchmark sets (``heldout.py``) and
  on the validation split of each base. The seed sets the initialisation and the batch order: two arms
  with the same seed start from the same weights.
- ``ablation_report``: arms x metrics, mean and 95% interval over seeds, paired differences against
  ``raw`` (same seeds) with their intervals (``stats.py``), a plot in the manner of phi-1's Figure 2.1
  and one line per arm saying whether it beat ``raw`` beyond noise.
"""

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from k8s import steps
from phi_assets.ablations import arms as arm_defs
from phi_assets.ablations import heldout, stats
from phi_assets.ablations import train as ablation_train
from phi_assets.ablations.raw_tokens import RAW_TOKEN_ASSETS
from phi_assets.common import plots
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy, materialized, user_error
from phi_assets.common.tables import md_lines
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import stages
from phi_assets.curation.assets import filtered_code_corpus, filtered_web_corpus
from phi_assets.evaluation import execute, generate, harness
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.mixture import loader
from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture import tokens as tokfiles
from phi_assets.mixture.assets import mixture_weights
from phi_assets.mixture.proxy import ProxyConfig
from phi_assets.mixture.token_assets import SUBDIR, TOKEN_SOURCES, TOKENIZED_ASSETS, open_shards, tokenizer
from phi_assets.mixture.tokens import TokenShard
from phi_assets.sandbox import Limits
from resources import ArtifactStore, ProfileResource, load_profile
from resources.curation import DecontaminationResource
from resources.llm import LLMEngine
from resources.llm.checkpoint import checkpoint_engine, checkpoint_model

SIZES = load_profile().sizes
ARM_NAMES = arm_defs.parse_arms(SIZES.ablation_arms)
ABLATIONS = dg.MultiPartitionsDefinition(
    {
        "arm": dg.StaticPartitionsDefinition(ARM_NAMES),
        "seed": dg.StaticPartitionsDefinition([str(s) for s in range(SIZES.ablation_seeds)]),
    }
)
ABLATIONS_CODE_VERSION = code_version(__name__, "data_ablations")
REPORT_CODE_VERSION = code_version(__name__, "ablation_report")
VAL_BASES = ("raw_code", "raw_web", "synthetic_textbooks", "synthetic_exercises")
CORPUS = {"code": filtered_code_corpus, "web": filtered_web_corpus}
CURATED_DECISIONS = ("kept", "below_threshold")  # scored by the classifier; contaminated is never read
SYNTHETIC = ("synthetic_textbooks", "synthetic_exercises", "rewritten_web")


class AblationConfig(dg.Config):
    arms: dict = {}  # extra arms by name: {"weights": {base: share}, "min_edu": 3.0}
    shape: str = ""  # train.SHAPES; empty: the preset's (demo tiny, phi1 phi1_small)
    steps: int = 0  # 0: the preset's
    seq_len: int = 0  # 0: the preset's
    batch_size: int = 0  # 0: the preset's
    lr: float = 3e-3
    warmup_steps: int = 5
    eval_batches: int = 4  # validation batches per base (the same batches for every arm)
    val_fraction: float = 0.05  # documents of every base held out (by id: the same documents in every view)
    threads: int = 1
    pass_at_1: str = "auto"  # on, off, or auto: the preset's ablation_pass_at_1 (GPU presets)
    eval_problems: int = 0  # pass@1 on the first N problems of each benchmark; 0: checkpoint_eval_problems
    timeout_s: float = 3.0  # per program in the sandbox


def arm_of(name: str, config: AblationConfig) -> arm_defs.Arm:
    extra = config.arms.get(name)
    if extra is not None:
        return arm_defs.Arm(name, dict(extra["weights"]), extra.get("min_edu"), extra.get("description", ""))
    return arm_defs.arm(name)


def model_config(config: AblationConfig, sizes, seed: int) -> ProxyConfig:
    shape = config.shape or sizes.ablation_shape
    if shape not in ablation_train.SHAPES:
        raise ValueError(f"ablation shape {shape!r} is not one of {sorted(ablation_train.SHAPES)}")
    hidden, layers, heads = ablation_train.SHAPES[shape]
    return ProxyConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        seq_len=config.seq_len or sizes.ablation_seq_len,
        batch_size=config.batch_size or sizes.ablation_batch_size,
        steps=config.steps or sizes.ablation_steps,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        eval_batches=config.eval_batches,
        seed=seed,
        threads=config.threads,
    )


# --- the bases an arm reads -----------------------------------------------------------------------------


def _raw(context, store: ArtifactStore, source: str) -> list[tuple[str, dict]]:
    keys = sorted(context.instance.get_dynamic_partitions(PARTITIONS[source].name))
    return materialized(context, store, RAW_TOKEN_ASSETS[source].key.to_user_string(), keys, "data_ablations")


def _curated(context, store: ArtifactStore, source: str) -> list[tuple[str, dict, dict]]:
    """(shard, raw tokens manifest, filtered corpus manifest) of every shard that has both."""
    raw = _raw(context, store, source)
    corpus = dict(
        materialized(context, store, CORPUS[source].key.to_user_string(), [k for k, _ in raw], "data_ablations")
    )
    return [(k, m, corpus[k]) for k, m in raw if k in corpus]


def curated_filter(store: ArtifactStore, shards: list[TokenShard], corpora: list[dict], min_edu: float | None):
    """The view of a curated base: for shard k, which of its raw documents the filtered corpus scored (not
    contaminated), and at least ``min_edu``; read when the loader asks (one shard's ids at a time)."""

    def keep(k: int) -> np.ndarray:
        scores = pl.read_parquet(
            file_uri(store, corpora[k], stages.SCORES), columns=["id", "edu_score", "decision"]
        )
        chosen = scores.filter(pl.col("decision").is_in(CURATED_DECISIONS))
        if min_edu is not None:
            chosen = chosen.filter(pl.col("edu_score") >= min_edu)
        return pl.Series(shards[k].ids(), dtype=pl.String).is_in(chosen["id"]).to_numpy()

    return keep


def canary_shard(problems: list, loaded: tk.Loaded, tok_version: str, out: Path) -> TokenShard:
    """The benchmark solutions as one token shard (the contamination canary's base)."""
    texts = heldout.solutions_text(problems)
    ids = [stable_hash(t) for t in texts]
    tokfiles.write_shard(iter([(ids, texts)]), loaded, out, tok_version)
    return TokenShard.open(out)


class Bases:
    """The token shards (and views) every base of the arms can read, with the versions they come from."""

    def __init__(self, context, store: ArtifactStore, wanted: set[str], min_edu: float | None):
        self.shards: dict[str, list[TokenShard]] = {}
        self.filters: dict[str, object] = {}
        self.versions: dict[str, object] = {}
        self.mixture_weights: dict[str, float] = {}
        for source in ("code", "web"):
            if f"raw_{source}" in wanted:
                found = _raw(context, store, source)
                self.shards[f"raw_{source}"] = open_shards(store, {source: found})[source]
                self.versions[f"raw_{source}"] = [(k, m["data_version"]) for k, m in found]
            if f"curated_{source}" in wanted:
                found3 = _curated(context, store, source)
                shards = open_shards(store, {source: [(k, m) for k, m, _ in found3]})[source]
                self.shards[f"curated_{source}"] = shards
                self.filters[f"curated_{source}"] = curated_filter(
                    store, shards, [c for _, _, c in found3], min_edu
                )
                self.versions[f"curated_{source}"] = [
                    (k, m["data_version"], c["data_version"]) for k, m, c in found3
                ]
        for name in SYNTHETIC:
            if name in wanted:
                source = TOKEN_SOURCES[name]
                found = materialized(
                    context, store, source.asset, source.keys(context.instance), "data_ablations"
                )
                self.shards[name] = open_shards(store, {name: found})[name]
                self.versions[name] = [(k, m["data_version"]) for k, m in found]
        if "mixture" in wanted:
            manifest = current(store, "mixture_weights", reader="data_ablations")
            mixture = json.loads(store.fs.cat_file(file_uri(store, manifest, "mixture.json")))
            for name, weight in mixture["weights"].items():
                if weight > 0:
                    self.shards[f"mixture:{name}"] = [
                        TokenShard.open(local_copy(store, m, SUBDIR)) for m in mixture["shards"][name]
                    ]
                    self.mixture_weights[f"mixture:{name}"] = weight
            self.versions["mixture"] = manifest["data_version"]

    def loader_weights(self, arm: arm_defs.Arm) -> dict[str, float]:
        out: dict[str, float] = {}
        for base, share in arm.shares.items():
            if base == "mixture":
                total = sum(self.mixture_weights.values())
                out.update({n: share * w / total for n, w in self.mixture_weights.items()})
            else:
                out[base] = share
        return out


# --- pass@1 (GPU presets) --------------------------------------------------------------------------------


def pass_at_1_on(config: AblationConfig, sizes) -> bool:
    if config.pass_at_1 not in ("on", "off", "auto"):
        raise ValueError(f"pass_at_1 must be on, off or auto, got {config.pass_at_1!r}")
    return sizes.ablation_pass_at_1 if config.pass_at_1 == "auto" else config.pass_at_1 == "on"


def pass_at_1(context, llm: LLMEngine, hf: Path, name: str, problems: dict, config: AblationConfig) -> dict:
    """Greedy pass@1 of the exported model on ``problems`` (benchmark -> problems), as eval_scores scores a
    checkpoint: base-model prompts, vLLM on this step's own machine, every program run in the sandbox."""
    from phi_assets.common.model_files import file_sha256

    engine = checkpoint_engine(llm, hf, backend="vllm")  # the step's own GPU: the export is not stored yet
    try:
        ref = checkpoint_model(engine, name, file_sha256(hf / "model.safetensors")[:32], hf, str(hf))
        flat = [p for ps in problems.values() for p in ps]
        generation = engine.generate(
            ref, generate.requests(flat, chat=False), log=context.log, desc=f"{name} pass@1"
        )
    finally:
        engine.close()
    samples = generate.samples(flat, generation.results, chat=False)
    out = {}
    for benchmark, ps in problems.items():
        ids = {p.task_id for p in ps}
        report = execute.evaluate(
            ps,
            [s for s in samples if s["task_id"] in ids],
            (1,),
            Limits(timeout_s=config.timeout_s, cpu_s=max(1, round(config.timeout_s))),
        )
        out[benchmark] = {"pass@1": report.pass_at_k["pass@1"], "problems": len(ps)}
    return out


# --- data_ablations -------------------------------------------------------------------------------------


def _train_partition(context, arm, cfg, config, bases: Bases, bench, canary, loaded, export) -> dict:
    weights = bases.loader_weights(arm)
    shards = {**bases.shards, **({"benchmark_solutions": [canary]} if canary is not None else {})}
    missing = [b for b in weights if not shards.get(b)]
    if missing:
        raise ValueError(f"arm {arm.name!r}: no token shards for {missing}; materialize them first")
    split = {"seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "val_fraction": config.val_fraction}
    filters = {b: f for b, f in bases.filters.items() if b in weights}
    train = loader.MixtureLoader(
        {b: shards[b] for b in weights},
        weights,
        loader.LoaderConfig(seed=cfg.seed, split="train", **split),
        filters,
    )
    val = {}
    for base in VAL_BASES:
        if bases.shards.get(base):
            try:
                val[base] = loader.MixtureLoader(
                    {base: bases.shards[base]}, {base: 1.0}, loader.LoaderConfig(seed=0, split="val", **split)
                )
            except ValueError:
                context.log.info(f"data_ablations: {base} has no validation documents; no loss for it")
    unique = train.num_tokens()

    def progress(step: int, loss: float) -> None:
        if step % max(cfg.steps // 5, 1) == 0 or step == cfg.steps - 1:
            context.log.info(f"{arm.name} seed {cfg.seed}: step {step + 1}/{cfg.steps} loss {loss:.3f}")

    result = ablation_train.train_arm(train, val, bench, loaded.vocab_size, cfg, progress, export=export)
    return {
        "arm": arm.name,
        "seed": cfg.seed,
        "weights": weights,
        "min_edu": arm.min_edu,
        "bench_loss": result.bench_loss,
        "val_loss": result.val_loss,
        "train_loss": result.train_loss,
        "tokens_seen": result.tokens_seen,
        "tokens_by_base": result.tokens_by_base,
        "unique_tokens": unique,
        "epochs": result.epochs,
        "num_params": result.num_params,
        "seconds": round(result.seconds, 2),
        "device": result.device,
        "model": cfg.__dict__,
    }


@dg.asset(
    partitions_def=ABLATIONS,
    deps=[
        *(dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in RAW_TOKEN_ASSETS.values()),
        *(dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in CORPUS.values()),
        *(dg.AssetDep(TOKENIZED_ASSETS[n], partition_mapping=dg.AllPartitionMapping()) for n in SYNTHETIC),
        mixture_weights,
        tokenizer,
    ],
    group_name="ablations",
    op_tags=steps.tags("heavy"),
    pool=steps.GPU_POOL,
    kinds={"pytorch"},
    code_version=ABLATIONS_CODE_VERSION,
    description="One ablation model per (arm, seed): the same model and recipe on the same number of tokens "
    "of each data recipe, scored on HumanEval/MBPP reference solutions and on every base's held-out split.",
)
def data_ablations(
    context: dg.AssetExecutionContext,
    config: AblationConfig,
    store: ArtifactStore,
    profile: ProfileResource,
    decontamination: DecontaminationResource,
    llm: LLMEngine,
) -> dg.MaterializeResult:
    keys = context.partition_key.keys_by_dimension
    sizes = profile.get().sizes
    arm = user_error("data_ablations", lambda: arm_of(keys["arm"], config))
    cfg = user_error("data_ablations", lambda: model_config(config, sizes, int(keys["seed"])))
    tok = current(store, "tokenizer", reader="data_ablations")
    mbpp = user_error("data_ablations", decontamination.resolved_mbpp_path)
    problems = {"humaneval": harness.load_humaneval(), "mbpp": harness.load_mbpp(mbpp)}
    scored = user_error("data_ablations", lambda: pass_at_1_on(config, sizes))
    num_eval = config.eval_problems or sizes.checkpoint_eval_problems
    wanted = set(arm.weights) | set(VAL_BASES)
    bases = Bases(context, store, wanted, arm.min_edu)
    inputs = {
        "arm": {"weights": arm.shares, "min_edu": arm.min_edu},
        "model": cfg.__dict__,
        "val_fraction": config.val_fraction,
        "tokenizer": tok["data_version"],
        "bases": bases.versions,
        "benchmarks": stable_hash([(p.task_id, p.prompt, p.reference) for ps in problems.values() for p in ps]),
        "pass_at_1": {"problems": num_eval, "timeout_s": config.timeout_s} if scored else None,
    }

    def build(out: Path) -> Built:
        tok_dir = local_copy(store, tok, "tokenizer")
        loaded = tk.load(tok_dir)
        bench = {n: heldout.encode(n, ps, loaded, cfg.seq_len) for n, ps in problems.items()}
        canary = None
        if "benchmark_solutions" in arm.weights:
            canary = canary_shard(
                [p for ps in problems.values() for p in ps], loaded, tok["data_version"], out / "canary"
            )
        export = out / "hf" if scored else None
        record = user_error(
            "data_ablations",
            lambda: _train_partition(context, arm, cfg, config, bases, bench, canary, loaded, export),
        )
        if export is not None:
            for f in tok_dir.iterdir():
                if f.is_file():
                    shutil.copyfile(f, export / f.name)
            name = f"ablation-{arm.name}-{cfg.seed}"
            record["pass_at_1"] = pass_at_1(
                context, llm, export, name, {b: ps[:num_eval] for b, ps in problems.items()}, config
            )
        (out / "result.json").write_text(json.dumps(record, indent=1))
        return Built(
            stable_hash(
                [ABLATIONS_CODE_VERSION, record["bench_loss"], record["val_loss"], record["train_loss"]]
            ),
            record,
        )

    outcome = materialize_versioned(
        context, store, code_version=ABLATIONS_CODE_VERSION, inputs=inputs, build=build
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={**partition_metadata(outcome.metadata), "skipped": outcome.skipped},
    )


def partition_metadata(meta: dict) -> dict:
    """What the UI shows for one (arm, seed): losses, tokens by base, pass@1 where scored, the loss curve."""
    return {
        **{f"{n}_solution_loss": round(v, 4) for n, v in meta["bench_loss"].items()},
        **{f"{n}_pass@1": round(v["pass@1"], 4) for n, v in (meta.get("pass_at_1") or {}).items()},
        "val_loss": dg.MetadataValue.json({b: round(v, 4) for b, v in meta["val_loss"].items()}),
        "tokens_seen": meta["tokens_seen"],
        "tokens_by_base": dg.MetadataValue.json(meta["tokens_by_base"]),
        "unique_tokens": dg.MetadataValue.json(meta["unique_tokens"]),
        "epochs": dg.MetadataValue.json({b: round(e, 3) for b, e in meta["epochs"].items()}),
        "weights": dg.MetadataValue.json({b: round(w, 4) for b, w in meta["weights"].items()}),
        "num_params": meta["num_params"],
        "final_train_loss": meta["train_loss"][-1],
        "loss_curve": plots.line_plot(
            {"train": meta["train_loss"]}, f"{meta['arm']} seed {meta['seed']}", "step", "loss"
        ),
    }


# --- ablation_report ------------------------------------------------------------------------------------


def metrics_of(record: dict) -> dict[str, float]:
    """A partition's numbers by metric name: ``<set>_loss`` for the held-out benchmark sets, ``val_<base>`` for
    the validation splits, ``<benchmark>_pass@1`` where pass@1 was scored."""
    return {
        **{f"{n}_loss": v for n, v in record["bench_loss"].items()},
        **{f"val_{b}": v for b, v in record["val_loss"].items()},
        **{f"{b}_pass@1": v["pass@1"] for b, v in (record.get("pass_at_1") or {}).items()},
    }


PRIMARY = ("humaneval_loss", "mbpp_loss", "humaneval_pass@1", "mbpp_pass@1")


def build_report(records: list[dict], baseline: str = arm_defs.BASELINE) -> dict:
    """Arms x metrics from the partitions' records (plain dicts, as ``data_ablations`` writes them)."""
    by_arm: dict[str, dict[int, dict[str, float]]] = {}
    for r in records:
        by_arm.setdefault(r["arm"], {})[int(r["seed"])] = metrics_of(r)
    if baseline not in by_arm:
        raise ValueError(f"no partition of the baseline arm {baseline!r}: the paired differences need it")
    metrics = sorted(
        set.intersection(*(set(m) for seeds in by_arm.values() for m in seeds.values())),
        key=lambda m: (not m.endswith("_loss") or m.startswith("val_"), m),
    )
    primary = [m for m in PRIMARY if m in metrics]
    order = [baseline] + sorted(a for a in by_arm if a != baseline)
    arms = []
    for name in order:
        seeds = by_arm[name]
        values = {m: {s: v[m] for s, v in seeds.items()} for m in metrics}
        row = {
            "arm": name,
            "seeds": len(seeds),
            "metrics": {m: stats.interval([values[m][s] for s in sorted(values[m])]) for m in metrics},
            "vs_baseline": {},
        }
        if name != baseline:
            base = {m: {s: v[m] for s, v in by_arm[baseline].items()} for m in metrics}
            row["vs_baseline"] = {m: stats.paired(values[m], base[m]) for m in metrics}
            row["verdict"] = stats.verdict_line(name, baseline, {m: row["vs_baseline"][m] for m in primary})
        else:
            row["verdict"] = f"{name}: the baseline"
        arms.append(row)
    return {"baseline": baseline, "metrics": metrics, "primary": primary, "arms": arms}


def report_table(report: dict) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "seeds"]
    for m in report["primary"]:
        head += [f"{m} (95% CI)", f"vs {report['baseline']} (paired)"]
    rows = []
    for a in report["arms"]:
        row = [a["arm"], str(a["seeds"])]
        for m in report["primary"]:
            v, d = a["metrics"][m], a["vs_baseline"].get(m)
            row += [
                f"{v['mean']:.4f} [{v['lo']:.4f}, {v['hi']:.4f}]",
                "-" if d is None else f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]",
            ]
        rows.append(row)
    return head, rows


class AblationReportConfig(dg.Config):
    baseline: str = arm_defs.BASELINE


@dg.asset(
    deps=[dg.AssetDep(data_ablations, partition_mapping=dg.AllPartitionMapping())],
    group_name="ablations",
    op_tags=steps.tags("light"),
    kinds={"json"},
    code_version=REPORT_CODE_VERSION,
    description="The ablations side by side: per arm the mean and 95% interval over seeds of every metric, the "
    "paired difference against raw, a Figure 2.1-style plot and a plain verdict line per arm.",
)
def ablation_report(
    context: dg.AssetExecutionContext, config: AblationReportConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    keys = ABLATIONS.get_partition_keys()
    found = materialized(context, store, "data_ablations", keys, "ablation_report")
    inputs = {"partitions": [(str(k), m["data_version"]) for k, m in found], "baseline": config.baseline}

    def build(out: Path) -> Built:
        report = user_error(
            "ablation_report", lambda: build_report([m["metadata"] for _, m in found], config.baseline)
        )
        head, rows = report_table(report)
        report["table_md"] = md_lines(head, rows)
        report["tokens_seen"] = sorted({m["metadata"]["tokens_seen"] for _, m in found})
        report["epochs"] = {
            m["metadata"]["arm"]: m["metadata"]["epochs"] for _, m in found if m["metadata"]["seed"] == 0
        }
        (out / "report.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(
            report["table_md"] + "\n\n" + "\n".join(f"- {a['verdict']}" for a in report["arms"]) + "\n"
        )
        return Built(stable_hash([REPORT_CODE_VERSION, report]), report)

    outcome = materialize_versioned(
        context, store, code_version=REPORT_CODE_VERSION, inputs=inputs, build=build
    )
    report = outcome.metadata
    names = [a["arm"] for a in report["arms"]]
    losses = [m for m in report["primary"] if m.endswith("_loss")]  # pass@1 is on another scale: not drawn here
    groups = {m: [a["metrics"][m]["mean"] for a in report["arms"]] for m in losses}
    spans = {m: [(a["metrics"][m]["lo"], a["metrics"][m]["hi"]) for a in report["arms"]] for m in losses}
    low = min(lo for s in spans.values() for lo, _ in s)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "table": dg.MetadataValue.md(report["table_md"]),
            "verdicts": dg.MetadataValue.md("\n".join(f"- {a['verdict']}" for a in report["arms"])),
            "plot": plots.grouped_bar_plot(
                names,
                groups,
                "benchmark solution loss by data recipe (95% CI)",
                "loss per solution token",
                spans,
                ylim_from=low * 0.98,
            ),
            "num_partitions": len(found),
            "tokens_seen": dg.MetadataValue.json(report["tokens_seen"]),
            "skipped": outcome.skipped,
        },
    )


ABLATION_ASSETS = [*RAW_TOKEN_ASSETS.values(), data_ablations, ablation_report]
