"""``model_card`` (group ``evaluation``): a markdown card per trained checkpoint stage.

One partition per stage of the training chain: ``pretrained``, ``midtrained``, ``sft``, ``dpo`` (the
stages of ``eval_scores`` less ``reference``, which is not trained here). The card describes the
checkpoint that ``eval_scores`` of the same stage evaluated, which must be the stage's current version:

- **model**: the checkpoint's data version, its architecture (from its Hugging Face ``config.json``) and
  the chain of parent checkpoints it was initialized from;
- **recipe**: each stage of the chain's training config and losses;
- **data**: the tokenizer, the mixture (tokens per source, weights, epochs) and the post-training data;
- **decontamination**: the HumanEval/MBPP method and thresholds and what every corpus removed;
- **evaluation**: pass@k per benchmark beside the rows of the phi-1 paper's Table 1;
- **lineage**: the current data version of every asset partition upstream of the checkpoint, back to
  the raw shards (the walk of the asset graph), and whether the assets downstream of each recorded
  that version (a version nobody recorded is ``-``; one replaced after its consumers ran is ``stale``).

Everything is read from the artifact store's manifests (and the Dagster instance for dynamic partition
keys); nothing is recomputed. A version holds ``MODEL_CARD.md`` and ``lineage.json``; the data version is
a hash of the card, and the work is skipped when every upstream version is unchanged.
"""

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from k8s import steps
from phi_assets.automation import ON_NEW_DATA
from phi_assets.curation.decontaminate import DecontamConfig
from phi_assets.curation.metadata import md_table
from phi_assets.evaluation import assets as eval_assets
from phi_assets.evaluation.assets import EVAL_ASSET, STAGES, _table1, eval_scores
from phi_assets.training import trainer
from phi_assets.versioning import Built, code_version_of, materialize_versioned, stable_hash
from resources import ArtifactStore, DecontaminationResource
from resources.artifact_store import MANIFEST

CODE_VERSION = code_version_of(sys.modules[__name__], eval_assets)
CARD_ASSET = "model_card"
CARD, LINEAGE = "MODEL_CARD.md", "lineage.json"
#: partition -> the checkpoint the card describes (eval_scores' stages less the untrained reference)
CARD_STAGES = {stage: asset for stage, asset in STAGES.items() if stage != "reference"}
card_stages = dg.StaticPartitionsDefinition(list(CARD_STAGES))
#: the training chain, each checkpoint initialized from the one before
CHAIN = ("pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint")
#: TrainConfig fields the training assets set themselves (the rest come from the recipe)
DERIVED_FIELDS = ("model", "seq_len", "max_steps", "overrides")
_VERSION = re.compile(r"\b[0-9a-f]{12,64}\b")


class ModelCardConfig(dg.Config):
    max_partition_rows: int = 64  # a partitioned asset with more partitions gets one summary row in the card


# --- reading the lineage ------------------------------------------------------------------------------


@dataclass
class Entry:
    """The current version of one asset partition upstream of the checkpoint."""

    asset: str
    partition: str | None
    version: str | None  # None: a partition the code location knows that has no materialized version
    code_version: str | None = None
    recorded: frozenset[str] = frozenset()  # the versions this manifest's inputs and lineage name
    decontamination: dict | None = None  # what a corpus removed as HumanEval/MBPP matches
    status: str = ""  # whether the assets downstream recorded this version

    @property
    def where(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition is not None else self.asset


def recorded_versions(manifest: dict) -> frozenset[str]:
    """The data versions a manifest names as its inputs (its ``inputs`` and its metadata's ``lineage``)."""
    text = json.dumps([manifest.get("inputs"), manifest.get("metadata", {}).get("lineage")])
    return frozenset(_VERSION.findall(text))


def _decontamination(manifest: dict) -> dict | None:
    meta = manifest.get("metadata", {})
    if "contaminated" not in meta or "recheck_flagged" not in meta:
        return None
    return {
        "removed": [_task(r.get("benchmark", ""), str(r["task_id"])) for r in meta["contaminated"]],
        "recheck_flagged": meta["recheck_flagged"],
        "kept": meta.get("funnel", {}).get("kept"),
        "decontaminator": manifest.get("inputs", {}).get("decontamination"),
    }


def _task(benchmark: str, task_id: str) -> str:
    """``HumanEval/12`` stays as it is; MBPP's plain numbers become ``mbpp/123``."""
    return task_id if task_id.lower().startswith(benchmark.lower()) else f"{benchmark}/{task_id}"


def upstream_assets(graph, start: Iterable[str]) -> tuple[list[str], dict[str, set[str]]]:
    """``start`` and every asset upstream of it in topological order (sources first), and each one's
    children among them (the sources are those with no parents: the raw shards and the generator model)."""
    seen: set[dg.AssetKey] = set()
    todo = [dg.AssetKey(name) for name in start]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        if not graph.has(key) or not graph.get(key).is_materializable:
            raise dg.Failure(
                description=f"model_card: {key.to_user_string()} is not an asset of this code location, so the "
                "lineage cannot be followed past it"
            )
        seen.add(key)
        todo.extend(graph.get(key).parent_keys)
    order = [k.to_user_string() for k in graph.toposorted_asset_keys if k in seen]
    children: dict[str, set[str]] = {name: set() for name in order}
    for key in seen:
        for parent in graph.get(key).parent_keys:
            children[parent.to_user_string()].add(key.to_user_string())
    return order, children


def project_asset_graph():
    """This project's asset graph (``phi_assets.definitions``), partitions definitions included. A run
    executed in process has no repository on its context, and a job's own graph keeps neither the
    partitions nor the definitions of the assets it does not run, so the card reads the code location's."""
    from phi_assets.definitions import defs  # imported late: the definitions import this module

    return defs.resolve_asset_graph()


def _cat_many(store: ArtifactStore, paths: list[str]) -> dict[str, bytes | None]:
    """Many small files in one call (concurrent on object stores); a missing one is None."""
    if not paths:
        return {}
    found = store.fs.cat(paths, on_error="omit")
    strip = store.fs._strip_protocol
    return {p: found.get(p, found.get(strip(p))) for p in paths}


def read_entries(store: ArtifactStore, pairs: list[tuple[str, str | None]]) -> list[Entry]:
    """The current version of each (asset, partition), with what its manifest says about its inputs."""
    pointers = _cat_many(store, [f"{store.partition_path(a, p)}/CURRENT" for a, p in pairs])
    versions = {}
    for a, p in pairs:
        text = pointers[f"{store.partition_path(a, p)}/CURRENT"]
        versions[(a, p)] = text.decode().strip() if text else None
    wanted = [(a, p, v) for (a, p), v in versions.items() if v]
    texts = _cat_many(store, [f"{store.version_path(a, p, v)}/{MANIFEST}" for a, p, v in wanted])
    entries = []
    for a, p in pairs:
        version = versions[(a, p)]
        text = texts.get(f"{store.version_path(a, p, version)}/{MANIFEST}") if version else None
        if version and text is None:
            raise dg.Failure(description=f"model_card: {a}[{p}] names version {version}, which has no manifest")
        manifest = json.loads(text) if text else {}
        entries.append(
            Entry(
                a,
                p,
                version,
                manifest.get("code_version"),
                recorded_versions(manifest) if manifest else frozenset(),
                _decontamination(manifest) if manifest else None,
            )
        )
    return entries


def check_recorded(store: ArtifactStore, entries: list[Entry], children: dict[str, set[str]]) -> None:
    """Set each entry's status: ``ok`` when an asset downstream of it recorded its current version,
    ``stale: ...`` when one recorded another version of it, ``-`` when none records it."""
    recorded: dict[str, set[str]] = {}
    for e in entries:
        recorded.setdefault(e.asset, set()).update(e.recorded)
    for e in entries:
        if e.version is None:
            e.status = "not materialized"
            continue
        consumers = sorted(children.get(e.asset, ()))
        if any(e.version in recorded.get(c, ()) for c in consumers):
            e.status = "ok"
            continue
        others = set(store.list_versions(e.asset, e.partition)) - {e.version}
        used = [(c, v) for c in consumers for v in sorted(others & recorded.get(c, set()))]
        e.status = f"stale: {used[0][0]} used {used[0][1][:12]}" if used else "-"


# --- what the card says -------------------------------------------------------------------------------


@dataclass
class Facts:
    """Everything the card shows, read from the store."""

    stage: str
    asset: str
    checkpoint: dict  # the evaluated checkpoint's manifest
    chain: list[dict]  # its parents' manifests and its own, pretraining first
    config: dict  # its Hugging Face config.json
    eval: dict  # eval_scores' manifest of this stage
    mixture: dict | None  # mixture_weights' manifest (the version pretraining used)
    tokenizer: dict | None  # tokenizer's manifest (the version the checkpoint used)
    entries: list[Entry] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the walk's partitioned assets without parents: shards


def _read(store: ArtifactStore, asset: str, version: str, partition: str | None = None) -> dict:
    manifest = store.read_manifest(asset, partition, version)
    if manifest is None:
        raise dg.Failure(description=f"model_card: {asset} version {version} is not in the artifact store")
    return manifest


def _current_or_fail(store: ArtifactStore, asset: str, partition: str | None, hint: str) -> dict:
    manifest = store.current_manifest(asset, partition)
    if manifest is None:
        where = f"{asset}[{partition}]" if partition else asset
        raise dg.Failure(description=f"model_card: {where} has no materialized version; {hint}")
    return manifest


def gather(context: dg.AssetExecutionContext, store: ArtifactStore, stage: str) -> Facts:
    asset = CARD_STAGES[stage]
    evaluation = _current_or_fail(
        store, EVAL_ASSET, stage, f"train {asset}, then materialize {EVAL_ASSET} partition {stage} (eval_job)"
    )
    checkpoint = _current_or_fail(
        store, asset, None, f"materialize it (training_job), then {EVAL_ASSET}[{stage}]"
    )
    evaluated = evaluation["metadata"]["model_version"]
    if evaluated != checkpoint["data_version"]:
        raise dg.Failure(
            description=f"model_card: {EVAL_ASSET}[{stage}] evaluated {asset} version {evaluated}, but its "
            f"current version is {checkpoint['data_version']}; materialize {EVAL_ASSET}[{stage}] again first"
        )
    chain = [checkpoint]
    while "parent" in chain[0]["inputs"]:
        parent = CHAIN[CHAIN.index(chain[0]["asset"]) - 1]
        chain.insert(0, _read(store, parent, chain[0]["inputs"]["parent"]))
    hf = f"{store.version_path(asset, None, checkpoint['data_version'])}/hf/config.json"
    config = json.loads(store.fs.cat_file(hf))
    tokenizer = checkpoint["inputs"].get("tokenizer")
    mixture = chain[0]["inputs"].get("mixture")
    facts = Facts(
        stage,
        asset,
        checkpoint,
        chain,
        config,
        evaluation,
        _read(store, "mixture_weights", mixture) if mixture else None,
        _read(store, "tokenizer", tokenizer) if tokenizer else None,
    )
    start = [asset] + (["generator_model"] if evaluation["inputs"].get("judge") else [])
    graph = project_asset_graph()
    order, children = upstream_assets(graph, start)
    facts.sources = [
        n
        for n in order
        if graph.get(dg.AssetKey(n)).partitions_def and not graph.get(dg.AssetKey(n)).parent_keys
    ]
    pairs: list[tuple[str, str | None]] = []
    for name in order:
        partitions_def = graph.get(dg.AssetKey(name)).partitions_def
        if partitions_def is None:
            pairs.append((name, None))
            continue
        keys = partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
        if not keys:
            raise dg.Failure(
                description=f"model_card: {name} is upstream of {asset} but has no partitions in this Dagster "
                "instance (register the shards first: shard_sensor or make demo)"
            )
        pairs += [(name, key) for key in sorted(keys)]
    entries = read_entries(store, pairs)
    for e in entries:
        if e.version is None and e.partition is None:
            raise dg.Failure(
                description=f"model_card: {e.asset} is upstream of {asset} but has no materialized version"
            )
    entries.append(
        Entry(
            EVAL_ASSET,
            stage,
            evaluation["data_version"],
            evaluation["code_version"],
            recorded_versions(evaluation),
        )
    )
    children.setdefault(EVAL_ASSET, set())
    for name in start:
        children[name].add(EVAL_ASSET)
    check_recorded(store, entries, children)
    entries[-1].status = "ok"  # eval_scores: this card records it
    facts.entries = entries
    return facts


def lineage_inputs(facts: Facts) -> list[list]:
    """What the card is a function of: every entry's version (the chain's manifests are immutable)."""
    return [[e.asset, e.partition, e.version] for e in facts.entries]


# --- rendering ----------------------------------------------------------------------------------------


def _md(head: list[str], rows: list[list[Any]]) -> str:
    return md_table(head, rows).value


def _num(n: float | int | None) -> str:
    if n is None:
        return "-"
    if isinstance(n, int) or float(n).is_integer():
        return f"{int(n):,}"
    return f"{n:.4g}"


def _mean_tenth(values: list[float], last: bool) -> float | None:
    if not values:
        return None
    tenth = max(1, len(values) // 10)
    part = values[-tenth:] if last else values[:tenth]
    return sum(part) / len(part)


def recipe_name(asset: str, train: dict) -> str:
    """The trainer recipe a stored TrainConfig came from: the one whose fields it keeps (the asset sets
    the model, sequence length, steps and overrides itself); midtraining derives its config instead."""
    if asset == "midtrained_checkpoint":
        return "trainer.midtrain of the pretraining config"
    kept = {k: v for k, v in train.items() if k not in DERIVED_FIELDS}
    names = [
        name
        for name, make in trainer.TRAIN_RECIPES.items()
        if json.loads(json.dumps({k: v for k, v in asdict(make()).items() if k not in DERIVED_FIELDS})) == kept
    ]
    return " = ".join(names) if names else "custom (no recipe has these fields)"


def _architecture(facts: Facts) -> str:
    c, train = facts.config, facts.checkpoint["inputs"]["train"]
    heads = c["num_attention_heads"]
    head_dim = c["hidden_size"] // heads
    rows = [
        [
            "config",
            f"`{train['model']}` ({', '.join(c.get('architectures', []))}, model_type {c.get('model_type')})",
        ],
        ["parameters", _num(facts.checkpoint["metadata"].get("num_params"))],
        ["layers", c["num_hidden_layers"]],
        ["hidden size", c["hidden_size"]],
        ["MLP size", c.get("intermediate_size", "-")],
        ["attention heads", f"{heads} (head dim {head_dim}, {c.get('num_key_value_heads', heads)} key/value)"],
        [
            "rotary dims",
            f"{round(c.get('partial_rotary_factor', 1.0) * head_dim)} of {head_dim}, base "
            f"{_num(c.get('rope_theta'))}",
        ],
        ["vocabulary", _num(c["vocab_size"])],
        ["positions", _num(c["max_position_embeddings"])],
        [
            "dropout (residual, attention, embedding)",
            f"{c.get('resid_pdrop')}, {c.get('attention_dropout')}, {c.get('embd_pdrop')}",
        ],
    ]
    return _md(["architecture", ""], rows)


def _stage_data(manifest: dict) -> str:
    inputs, lineage = manifest["inputs"], manifest["metadata"].get("lineage", {})
    if manifest["asset"] == "pretrained_checkpoint":
        return f"mixture `{inputs['mixture'][:12]}`"
    if manifest["asset"] == "midtrained_checkpoint":
        weights = ", ".join(f"{k} {v:.3f}" for k, v in inputs.get("weights", {}).items())
        return f"mixture `{inputs['mixture'][:12]}` reweighted toward long documents: {weights}"
    if manifest["asset"] == "sft_checkpoint":
        examples = ", ".join(f"{k} {v}" for k, v in sorted(lineage.get("examples", {}).items()))
        return f"examples: {examples} (synthetic_corpus `{lineage.get('synthetic_corpus', '?')[:12]}`)"
    if manifest["asset"] == "dpo_checkpoint":
        pairs = ", ".join(f"{k} {v}" for k, v in sorted(lineage.get("pairs", {}).items()))
        return f"preference pairs: {pairs} (`{inputs['pairs'][:12]}`), beta {inputs.get('beta')}"
    return "-"


def _recipe(facts: Facts) -> str:
    rows, losses = [], []
    for m in facts.chain:
        t, meta = m["inputs"]["train"], m["metadata"]
        summary = meta.get("summary", {})
        rows.append(
            [
                m["asset"],
                f"`{m['data_version'][:12]}`",
                recipe_name(m["asset"], t),
                _num(meta.get("steps")),
                _num(meta.get("tokens")),
                t["seq_len"],
                f"{t['micro_batch_size']} x {t['grad_accum']}",
                f"{t['lr']:g} (min x{t['min_lr_ratio']:g})",
                f"{t['schedule']}, warmup {t['warmup_steps']}",
                f"{t['weight_decay']:g}",
                t["precision"],
                ", ".join(
                    f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["overrides"].items()
                )
                or "-",
            ]
        )
        val = ", ".join(f"{v:.3f} @{k}" for k, v in summary.get("val_loss", {}).items()) or "-"
        parent_val = ", ".join(f"{v:.3f} @{k}" for k, v in summary.get("parent_val_loss", {}).items()) or "-"
        first, final = _mean_tenth(meta.get("loss", []), False), _mean_tenth(meta.get("loss", []), True)
        extra = (
            f"preference accuracy {summary['preference_accuracy']:.3f}"
            if "preference_accuracy" in summary
            else ""
        )
        losses.append(
            [
                m["asset"],
                "-" if first is None else f"{first:.3f}",
                "-" if final is None else f"{final:.3f}",
                val,
                parent_val,
                extra or "-",
                _stage_data(m),
            ]
        )
    head = [
        "stage",
        "version",
        "recipe",
        "steps",
        "tokens",
        "seq len",
        "batch (micro x accum)",
        "peak lr",
        "schedule",
        "weight decay",
        "precision",
        "model overrides",
    ]
    loss_head = [
        "stage",
        "first loss",
        "final loss",
        "validation loss @seq len",
        "parent's validation loss",
        "other",
        "data",
    ]
    return "\n\n".join(
        [
            _md(head, rows),
            "Losses: the mean of the first and of the last tenth of the steps; validation on held-out tokens.",
            _md(loss_head, losses),
        ]
    )


def _data(facts: Facts) -> str:
    out = []
    if facts.tokenizer is not None:
        t = facts.tokenizer["metadata"]
        out.append(
            f"**Tokenizer** `{facts.tokenizer['data_version']}`: {t.get('origin', '?')}, vocabulary "
            f"{_num(t.get('vocab_size'))}, trained on {_num(t.get('training_docs'))} documents "
            f"({_num(t.get('training_bytes'))} bytes); bytes per token "
            + ", ".join(f"{k} {v}" for k, v in t.get("bytes_per_token", {}).items())
            + "."
        )
    if facts.mixture is not None:
        m = facts.mixture["metadata"]
        shards = {s: len(v) for s, v in m.get("shards", {}).items()}
        out.append(
            f"**Mixture** `{facts.mixture['data_version']}` (mixture_weights, origin {m.get('origin')}): "
            f"token budget {_num(m.get('token_budget'))}, at most {_num(m.get('max_epochs'))} epochs of any "
            "source."
        )
        rows = [
            [
                r["source"],
                r.get("category", "-"),
                shards.get(r["source"], "-"),
                _num(r["unique_tokens"]),
                f"{r['requested_weight']:.4f}",
                f"{r['weight']:.4f}",
                _num(r["tokens_seen"]),
                f"{r['epochs']:.2f}",
            ]
            for r in m.get("table", [])
        ]
        head = [
            "source",
            "category",
            "shards",
            "unique tokens",
            "requested weight",
            "weight",
            "tokens seen",
            "epochs",
        ]
        out.append(_md(head, rows))
    return "\n\n".join(out) or "No pretraining data recorded."


def _decontamination_section(facts: Facts, settings: dict) -> str:
    cfg = DecontamConfig(**settings)
    method = (
        f"Every corpus that reaches training is scanned for HumanEval (164) and MBPP (974) tasks "
        f"(docs/decontamination.md). Pass 1, every document: {cfg.ngram}-gram overlap "
        f"({cfg.min_component_tokens}-grams for components of {cfg.min_component_tokens}-{cfg.ngram - 1} "
        f"tokens) confirmed by a difflib ratio >= {cfg.min_ngram_ratio}. "
    )
    if cfg.use_embeddings:
        method += (
            f"Pass 2, code: functions of >= {cfg.min_syntax_tokens} abstracted tokens with a syntax ratio >= "
            f"{cfg.min_syntax_ratio} under a consistent renaming and an embedding cosine >= "
            f"{cfg.min_embedding_similarity} (all-MiniLM-L6-v2). "
        )
    else:
        method += "Pass 2 (embeddings and syntax) is off in this deployment's settings. "
    method += (
        "Flagged documents are removed and listed; the written corpus is scanned again and the blocking "
        "`decontaminated` check passes only when nothing matches."
    )
    per_asset: dict[str, dict] = {}
    for e in facts.entries:
        if e.decontamination is None:
            continue
        d = per_asset.setdefault(
            e.asset, {"partitions": 0, "kept": 0, "removed": [], "recheck": 0, "scanners": set()}
        )
        d["partitions"] += 1
        d["kept"] += e.decontamination["kept"] or 0
        d["removed"] += e.decontamination["removed"]
        d["recheck"] += e.decontamination["recheck_flagged"]
        if e.decontamination["decontaminator"]:
            d["scanners"].add(e.decontamination["decontaminator"])
    rows = []
    for name, d in per_asset.items():
        tasks: dict[str, int] = {}
        for t in d["removed"]:
            tasks[t] = tasks.get(t, 0) + 1
        listed = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(tasks.items())) or "-"
        rows.append(
            [
                name,
                d["partitions"],
                _num(d["kept"]),
                len(d["removed"]),
                listed,
                d["recheck"],
                ", ".join(f"`{s}`" for s in sorted(d["scanners"])) or "-",
            ]
        )
    removed = sum(len(d["removed"]) for d in per_asset.values())
    recheck = sum(d["recheck"] for d in per_asset.values())
    noun = "document" if removed == 1 else "documents"
    total = f"{removed} {noun} removed in total; the re-scan of the written corpora found {recheck}" + (
        " (the check passed)." if recheck == 0 else " (**the decontaminated check failed**)."
    )
    head = [
        "corpus",
        "partitions",
        "documents kept",
        "removed",
        "matched tasks",
        "re-scan matches",
        "decontaminator",
    ]
    return "\n\n".join([method, _md(head, rows) if rows else "No decontaminated corpus upstream.", total])


def _evaluation(facts: Facts) -> str:
    meta = facts.eval["metadata"]
    ks = sorted(
        {k for s in meta["scores"].values() for k in s if k.startswith("pass@")}, key=lambda k: int(k[5:])
    )
    rows = []
    for benchmark, s in sorted(meta["scores"].items()):
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(meta.get("verdicts", {}).get(benchmark, {}).items()))
        rows.append(
            [
                benchmark,
                s["problems"],
                s["samples"],
                s["passed"],
                *[f"{100 * s[k]:.1f}%" if k in s else "-" for k in ks],
                verdicts or "-",
            ]
        )
    out = [
        f"`{EVAL_ASSET}[{facts.stage}]` `{facts.eval['data_version']}` (eval set `{meta['eval_set']}`, "
        f"{'chat' if meta.get('chat') else 'base-model'} prompts, every sample executed in the sandbox):",
        _md(["benchmark", "problems", "samples", "passed", *ks, "verdicts"], rows),
    ]
    if meta.get("engine_errors"):
        out.append(
            "Engine errors (counted as wrong): "
            + ", ".join(f"{k} {v}" for k, v in sorted(meta["engine_errors"].items()))
            + "."
        )
    if meta.get("understanding"):
        u = meta["understanding"]
        out.append(
            f"Understanding (LLM-graded, phi-1's Table 2): {u.get('score')} by {u.get('judge')}, judge gap "
            f"{u.get('judge_gap')} ({'reliable' if u.get('judge_reliable') else 'not a measurement'})."
        )
    out.append("Beside the phi-1 paper's Table 1 (pass@1):")
    out.append(_table1({facts.stage: meta}).value)
    return "\n\n".join(out)


def _lineage(facts: Facts, max_rows: int) -> str:
    by_asset: dict[str, list[Entry]] = {}
    for e in facts.entries:
        by_asset.setdefault(e.asset, []).append(e)
    rows = []
    for name, entries in by_asset.items():
        if len(entries) > max_rows:
            statuses: dict[str, int] = {}
            for e in entries:
                statuses[e.status.split(":")[0]] = statuses.get(e.status.split(":")[0], 0) + 1
            digest = stable_hash([[e.partition, e.version] for e in entries], 12)
            summary = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
            rows.append(
                [
                    name,
                    f"{len(entries)} partitions ({LINEAGE})",
                    f"all: `{digest}`",
                    entries[0].code_version or "-",
                    summary,
                ]
            )
            continue
        for e in entries:
            rows.append(
                [
                    e.asset,
                    "-" if e.partition is None else e.partition,
                    f"`{e.version}`" if e.version else "-",
                    e.code_version or "-",
                    e.status,
                ]
            )
    counts = [(n, len(by_asset[n])) for n in facts.sources if n in by_asset]
    shards = f"{sum(c for _, c in counts)} shards ({', '.join(f'{c} {n}' for n, c in counts)})"
    head = ["asset", "partition", "data version", "code version", "recorded downstream"]
    return "\n\n".join(
        [
            f"{len(facts.entries)} asset partitions of {len(by_asset)} assets, from {shards} to the evaluation."
            f" *recorded downstream*: `ok` when an asset below it names this version among its "
            "inputs, `-` when none records versions of it, `stale` when one used another version.",
            _md(head, rows),
        ]
    )


def render(facts: Facts, decontamination: dict, max_rows: int = 64) -> str:
    """The card as markdown: a function of the facts only (no clock), so equal inputs give equal cards."""
    cp = facts.checkpoint
    parents = " <- ".join(f"{m['asset']} `{m['data_version'][:12]}`" for m in reversed(facts.chain))
    stale = [e for e in facts.entries if e.status.startswith("stale")]
    missing = [e for e in facts.entries if e.version is None]
    warnings = [f"> **Warning**: {e.where} is {e.status}." for e in stale + missing]
    he = facts.eval["metadata"]["scores"]
    headline = ", ".join(
        f"{b} pass@1 {100 * s['pass@1']:.1f}% ({s['problems']} problems)" for b, s in sorted(he.items())
    )
    parts = [
        f"# Model card: phi-factory {facts.stage}",
        f"`{facts.asset}` data version `{cp['data_version']}` (code version {cp['code_version']}): "
        f"{_num(cp['metadata'].get('num_params'))} parameters, {_num(cp['metadata'].get('tokens'))} tokens in "
        f"this stage; {headline}.",
        *warnings,
        "## Model",
        f"Chain: {parents}.",
        _architecture(facts),
        "## Recipe",
        _recipe(facts),
        "## Data",
        _data(facts),
        "## Decontamination",
        _decontamination_section(facts, decontamination),
        "## Evaluation",
        _evaluation(facts),
        "## Lineage",
        _lineage(facts, max_rows),
    ]
    return "\n\n".join(parts) + "\n"


# --- the asset ----------------------------------------------------------------------------------------


@dg.asset(
    partitions_def=card_stages,
    deps=[dg.AssetDep(eval_scores, partition_mapping=dg.StaticPartitionMapping({s: s for s in CARD_STAGES}))],
    group_name="evaluation",
    op_tags=steps.tags("light"),
    kinds={"markdown"},
    code_version=CODE_VERSION,
    automation_condition=ON_NEW_DATA,
    description="A markdown card per trained checkpoint stage: architecture, recipe, tokens per source and the "
    "mixture, decontamination results, eval scores beside phi-1's Table 1, and the data version of every "
    "upstream asset partition back to the raw shards.",
)
def model_card(
    context: dg.AssetExecutionContext,
    config: ModelCardConfig,
    store: ArtifactStore,
    decontamination: DecontaminationResource,
) -> dg.MaterializeResult:
    stage = context.partition_key
    if config.max_partition_rows < 1:
        raise dg.Failure(
            description=f"model_card: max_partition_rows must be >= 1, got {config.max_partition_rows}"
        )
    facts = gather(context, store, stage)
    settings = {"ngram": decontamination.ngram, "use_embeddings": decontamination.use_embeddings}
    inputs = {
        "stage": stage,
        "lineage": lineage_inputs(facts),
        "decontamination": settings,
        "config": config.model_dump(),
    }

    def build(out: Path) -> Built:
        text = render(facts, settings, config.max_partition_rows)
        (out / CARD).write_text(text)
        rows = [
            {
                "asset": e.asset,
                "partition": e.partition,
                "data_version": e.version,
                "code_version": e.code_version,
                "recorded_downstream": e.status,
            }
            for e in facts.entries
        ]
        (out / LINEAGE).write_text(json.dumps(rows, indent=1))
        return Built(
            stable_hash(text),
            {
                "stage": stage,
                "checkpoint": facts.asset,
                "checkpoint_version": facts.checkpoint["data_version"],
                "eval_version": facts.eval["data_version"],
                "assets": len({e.asset for e in facts.entries}),
                "partitions": len(facts.entries),
                "shards": {n: sum(1 for e in facts.entries if e.asset == n) for n in facts.sources},
                "stale": [f"{e.where}: {e.status}" for e in facts.entries if e.status.startswith("stale")],
                "not_materialized": [e.where for e in facts.entries if e.version is None],
            },
        )

    outcome = materialize_versioned(context, store, code_version=CODE_VERSION, inputs=inputs, build=build)
    meta = outcome.metadata
    where = store.version_path(CARD_ASSET, stage, outcome.data_version)
    text = store.fs.cat_file(f"{where}/{CARD}").decode()
    for problem in meta["stale"] + [f"{w}: not materialized" for w in meta["not_materialized"]]:
        context.log.warning(f"model_card[{stage}]: {problem}")
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "card": dg.MetadataValue.md(text),
            "path": dg.MetadataValue.path(store.uri(f"{where}/{CARD}")),
            "lineage_file": dg.MetadataValue.path(store.uri(f"{where}/{LINEAGE}")),
            "checkpoint_version": meta["checkpoint_version"],
            "eval_version": meta["eval_version"],
            "lineage_assets": meta["assets"],
            "lineage_partitions": meta["partitions"],
            "shards": dg.MetadataValue.json(meta["shards"]),
            "stale": dg.MetadataValue.json(meta["stale"]),
            "not_materialized": dg.MetadataValue.json(meta["not_materialized"]),
            "skipped": outcome.skipped,
        },
    )


MODEL_CARD_ASSETS = [model_card]
