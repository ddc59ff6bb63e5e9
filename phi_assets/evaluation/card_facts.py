"""What ``model_card`` shows, read from the artifact store: the evaluated checkpoint, its chain, the data
it trained on, the lineage (the current version of every asset partition upstream of it) and, when it
exists, the ``ablation_report`` of the data recipe.

The lineage is the walk of the code location's asset graph from the checkpoint back to the raw shards:
every partition the code location knows (dynamic partition keys from the Dagster instance), each with
its current version and what its manifest records of its inputs, and whether the assets downstream of
it recorded that version (a version nobody recorded is ``-``; one replaced after its consumers ran is
``stale``). Nothing is recomputed.
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from phi_assets.common.store import current
from phi_assets.evaluation.assets import EVAL_ASSET, STAGES
from resources import ArtifactStore
from resources.artifact_store import MANIFEST

#: partition -> the checkpoint the card describes (eval_scores' stages less the untrained reference)
CARD_STAGES = {stage: asset for stage, asset in STAGES.items() if stage != "reference"}
#: the training chain, each checkpoint initialized from the one before
CHAIN = ("pretrained_checkpoint", "midtrained_checkpoint", "sft_checkpoint", "dpo_checkpoint")
ABLATION_ASSET = "ablation_report"  # the data-recipe ablations (phi-4's mixture against the raw data)
_VERSION = re.compile(r"\b[0-9a-f]{12,64}\b")


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
    ablation: dict | None = None  # ablation_report's current manifest; None: not run


# --- reading the lineage ------------------------------------------------------------------------------


def recorded_versions(manifest: dict) -> frozenset[str]:
    """The data versions a manifest names as its inputs (its ``inputs`` and its metadata's ``lineage``;
    a checkpoint's training recipe there is configuration, not an input)."""
    lineage = manifest.get("metadata", {}).get("lineage")
    if isinstance(lineage, dict):
        lineage = {k: v for k, v in lineage.items() if k != "recipe"}
    text = json.dumps([manifest.get("inputs"), lineage])
    return frozenset(_VERSION.findall(text))


def _decontamination(manifest: dict) -> dict | None:
    meta = manifest.get("metadata", {})
    if "contaminated" not in meta or "recheck_flagged" not in meta:
        return None
    return {
        "removed": [task_name(r.get("benchmark", ""), str(r["task_id"])) for r in meta["contaminated"]],
        "recheck_flagged": meta["recheck_flagged"],
        "kept": meta.get("funnel", {}).get("kept"),
        "decontaminator": manifest.get("inputs", {}).get("decontamination"),
    }


def task_name(benchmark: str, task_id: str) -> str:
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


def _partitions(
    context: dg.AssetExecutionContext, graph, order: list[str], asset: str
) -> list[tuple[str, str | None]]:
    """Every (asset, partition) of ``order`` the code location knows: all keys of a partitioned asset."""
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
    return pairs


def lineage(context: dg.AssetExecutionContext, store: ArtifactStore, graph, facts: Facts) -> None:
    """Fill ``facts.entries`` (every asset partition upstream of the checkpoint, then this stage's
    evaluation, each with its status) and ``facts.sources`` from the walk of ``graph``."""
    asset, evaluation = facts.asset, facts.eval
    start = [asset] + (["generator_model"] if evaluation["inputs"].get("judge") else [])
    order, children = upstream_assets(graph, start)
    facts.sources = [
        n
        for n in order
        if graph.get(dg.AssetKey(n)).partitions_def and not graph.get(dg.AssetKey(n)).parent_keys
    ]
    entries = read_entries(store, _partitions(context, graph, order, asset))
    for e in entries:
        if e.version is None and e.partition is None:
            raise dg.Failure(
                description=f"model_card: {e.asset} is upstream of {asset} but has no materialized version"
            )
    entries.append(
        Entry(
            EVAL_ASSET,
            facts.stage,
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


def lineage_inputs(facts: Facts) -> list[list]:
    """What the card is a function of: every entry's version (the chain's manifests are immutable)."""
    return [[e.asset, e.partition, e.version] for e in facts.entries]


# --- the data ablations ---------------------------------------------------------------------------


def read_ablation(store: ArtifactStore) -> dict | None:
    """``ablation_report``'s current manifest, or None when it was never materialized (the card says "not
    run"). It is read, not depended on: the card does not wait for the ablations, and records the version
    it showed among its inputs so that a new report makes a new card."""
    try:
        return current(store, ABLATION_ASSET, reader="model_card")
    except dg.Failure:  # no materialized version
        return None


# --- the checkpoint and its chain ---------------------------------------------------------------------


def _read(store: ArtifactStore, asset: str, version: str, partition: str | None = None) -> dict:
    manifest = store.read_manifest(asset, partition, version)
    if manifest is None:
        raise dg.Failure(description=f"model_card: {asset} version {version} is not in the artifact store")
    return manifest


def gather(context: dg.AssetExecutionContext, store: ArtifactStore, graph, stage: str) -> Facts:
    """The facts of ``stage``'s card; ``graph``: the code location's asset graph, partitions included."""
    facts = read_facts(store, stage)
    lineage(context, store, graph, facts)
    return facts


def read_facts(store: ArtifactStore, stage: str) -> Facts:
    """The facts of ``stage``'s card read from the store's manifests, all but the lineage (``lineage`` walks
    the asset graph): the evaluated checkpoint, its chain, its export's config, the mixture, the tokenizer and
    the ablation report."""
    asset = CARD_STAGES[stage]
    evaluation = current(
        store,
        EVAL_ASSET,
        stage,
        f"train {asset}, then materialize {EVAL_ASSET} partition {stage} (eval_job)",
        reader="model_card",
    )
    checkpoint = current(
        store, asset, None, f"materialize it (training_job), then {EVAL_ASSET}[{stage}]", reader="model_card"
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
    return Facts(
        stage,
        asset,
        checkpoint,
        chain,
        config,
        evaluation,
        _read(store, "mixture_weights", mixture) if mixture else None,
        _read(store, "tokenizer", tokenizer) if tokenizer else None,
        ablation=read_ablation(store),
    )
