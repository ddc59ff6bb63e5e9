"""Mixture assets (group ``mixture``): tokenizer, packed token sources, mixture weights.

- ``tokenizer``: a byte-level BPE trained on the filtered corpora (or a pretrained Hugging Face
  tokenizer directory by configuration), saved as a standard tokenizer directory.
- ``tokenized_<source>`` for every training source (filtered code and web per shard, the three
  synthetic sets per hash batch): memory-mappable token shards (``tokens.py``).
- ``mixture_weights``: per-source weights (phi-4's table, the mixture search's proposal, or
  explicit) and the epochs each implies for the token budget; what the trainer reads.

The mixture search (proxies and regression) is in ``search_assets.py``.
"""

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import polars as pl

from k8s import steps
from phi_assets import plots
from phi_assets.automation import ON_NEW_DATA, ON_NEW_PARTITIONS
from phi_assets.curation import stages
from phi_assets.curation.assets import (
    _current,
    _file,
    _local,
    _user_error,
    filtered_code_corpus,
    filtered_web_corpus,
)
from phi_assets.curation.metadata import md_table
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture import tokens as tokfiles
from phi_assets.mixture import weights as mix
from phi_assets.mixture.tokens import TokenShard
from phi_assets.synthetic.generated import BATCHES, _materialized, _shards, synthetic_corpus
from phi_assets.versioning import Built, code_version_of, materialize_versioned, stable_hash
from resources import ArtifactStore, ProfileResource

_HERE = sys.modules[__name__]
TOKENIZER_CODE_VERSION = code_version_of(tk)
TOKENIZE_CODE_VERSION = code_version_of(tk, tokfiles)
WEIGHTS_CODE_VERSION = code_version_of(_HERE, mix)
SUBDIR = "tokens"  # the shard files inside a tokenized version (a directory, so it copies as one)
TOKENIZER_SUBDIR = "tokenizer"
DEFAULT_MAX_EPOCHS = 16.0  # Muennighoff et al. (2023): repeated data adds little beyond ~16 epochs


@dataclass(frozen=True)
class TokenSource:
    """A training source: where its documents are, and how they are partitioned."""

    name: str  # the mixture's name for it, e.g. "filtered_code"
    upstream: dg.AssetsDefinition
    partitions: dg.PartitionsDefinition
    corpus_set: str | None = None  # synthetic: the set file of synthetic_corpus, split by hash of id

    @property
    def asset(self) -> str:
        return f"tokenized_{self.name}"

    def keys(self, instance: dg.DagsterInstance) -> list[str]:
        if isinstance(self.partitions, dg.DynamicPartitionsDefinition):
            return sorted(instance.get_dynamic_partitions(self.partitions.name))
        return self.partitions.get_partition_keys()


TOKEN_SOURCES = {
    s.name: s
    for s in (
        TokenSource("filtered_code", filtered_code_corpus, PARTITIONS["code"]),
        TokenSource("filtered_web", filtered_web_corpus, PARTITIONS["web"]),
        TokenSource("synthetic_textbooks", synthetic_corpus, BATCHES, "textbooks"),
        TokenSource("synthetic_exercises", synthetic_corpus, BATCHES, "exercises"),
        TokenSource("rewritten_web", synthetic_corpus, BATCHES, "rewrites"),
    )
}
assert set(TOKEN_SOURCES) == set(mix.SOURCES)


def source_shards(context, store: ArtifactStore, reader: str) -> dict[str, list[tuple[str, dict]]]:
    """(partition, current manifest) of every materialized tokenized shard, per source."""
    return {
        name: _materialized(context, store, s.asset, s.keys(context.instance), reader)
        for name, s in TOKEN_SOURCES.items()
    }


def shard_versions(shards: dict[str, list[tuple[str, dict]]]) -> dict[str, list[tuple[str, str]]]:
    return {name: [(k, m["data_version"]) for k, m in found] for name, found in shards.items()}


def token_counts(shards: dict[str, list[tuple[str, dict]]]) -> dict[str, int]:
    return {name: sum(m["metadata"]["num_tokens"] for _, m in found) for name, found in shards.items()}


def open_shards(store: ArtifactStore, shards: dict[str, list[tuple[str, dict]]]) -> dict[str, list[TokenShard]]:
    """Memory-mapped shards per source (copied to local disk first when the store is remote)."""
    return {
        name: [TokenShard.open(_local(store, m, SUBDIR)) for _, m in found] for name, found in shards.items()
    }


def _open(uri: str):
    return fsspec.open(uri, "rb").open()


# --- tokenizer ----------------------------------------------------------------------------------


class TokenizerConfig(dg.Config):
    vocab_size: int = 0  # 0: the profile's size (ci 1024, local 8192)
    pretrained: str = ""  # a Hugging Face tokenizer directory to use instead of training one
    min_frequency: int = 2  # a pair is merged only if seen this often
    sample_fraction: float = 1.0  # share of corpus documents the trainer reads (chosen by id hash)
    model_max_length: int = 2048


def _corpus_docs(
    store: ArtifactStore, corpora: dict[str, list[tuple[str, dict]]], fraction: float, counts: dict[str, int]
) -> Iterator[str]:
    # a fraction f reads the documents of one hash partition of round(1/f)
    keep = None if fraction >= 1 else tokfiles.hash_partition(0, round(1 / fraction))
    for _source, found in corpora.items():
        for _, manifest in found:
            with _open(_file(store, manifest, stages.DOCS)) as f:
                for _ids, texts in tokfiles.read_documents(f, keep=keep):
                    counts["docs"] += len(texts)
                    counts["bytes"] += sum(len(t.encode()) for t in texts)
                    yield from texts


def _files_hash(directory: Path) -> str:
    """sha256 over the names and bytes of a directory's files ("" when it does not exist)."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()) if directory.is_dir() else []:
        if path.is_file():
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:32] if directory.is_dir() else ""


def _bytes_per_token(store: ArtifactStore, loaded: tk.Loaded, corpora, limit: int = 200) -> dict[str, float]:
    """Compression on (up to ``limit``) documents of each corpus: UTF-8 bytes per token."""
    out = {}
    for source, found in corpora.items():
        texts: list[str] = []
        for _, manifest in found:
            with _open(_file(store, manifest, stages.DOCS)) as f:
                for _, batch in tokfiles.read_documents(f, batch_rows=limit):
                    texts += batch[: limit - len(texts)]
                    break
        if texts:
            ids, _ = tk.encode_documents(loaded, texts)
            out[source] = round(sum(len(t.encode()) for t in texts) / (len(ids) - len(texts)), 3)
    return out


@dg.asset(
    deps=[filtered_code_corpus, filtered_web_corpus],
    group_name="mixture",
    op_tags=steps.tags("heavy"),
    kinds={"huggingface"},
    code_version=TOKENIZER_CODE_VERSION,
    description="Byte-level BPE (Hugging Face tokenizers) trained on the filtered corpora, <|endoftext|> "
    "between documents as in phi-1; a standard tokenizer directory transformers and vLLM load.",
)
def tokenizer(
    context: dg.AssetExecutionContext, config: TokenizerConfig, store: ArtifactStore, profile: ProfileResource
) -> dg.MaterializeResult:
    vocab_size = config.vocab_size or profile.get().sizes.vocab_size
    if not 0 < config.sample_fraction <= 1:
        raise dg.Failure(
            description=f"tokenizer: sample_fraction must be in (0, 1], got {config.sample_fraction}"
        )
    corpora = {s: _shards(context, store, s, "tokenizer") for s in ("code", "web")}
    inputs = {"config": {**config.model_dump(), "vocab_size": vocab_size}}
    if config.pretrained:  # its files, so an edited directory is taken again
        inputs["pretrained"] = _files_hash(Path(config.pretrained))
    else:
        inputs["corpora"] = shard_versions(corpora)

    def build(staging: Path) -> Built:
        counts, out = {"docs": 0, "bytes": 0}, staging / TOKENIZER_SUBDIR
        if config.pretrained:
            _user_error("tokenizer", lambda: tk.copy_pretrained(Path(config.pretrained), out))
        else:
            texts = _corpus_docs(store, corpora, config.sample_fraction, counts)
            trained = _user_error(
                "tokenizer", lambda: tk.train_bpe(texts, vocab_size, min_frequency=config.min_frequency)
            )
            tk.save(trained, out, model_max_length=config.model_max_length)
            context.log.info(f"tokenizer: trained on {counts['docs']} documents ({counts['bytes']:,} bytes)")
        loaded = _user_error("tokenizer", lambda: tk.load(out))
        return Built(
            _files_hash(out),
            {
                "vocab_size": loaded.vocab_size,
                "eot_id": loaded.eot_id,
                "dtype": loaded.dtype.name,
                "training_docs": counts["docs"],
                "training_bytes": counts["bytes"],
                "origin": config.pretrained or "trained",
                "bytes_per_token": _bytes_per_token(store, loaded, corpora),
                "example": " | ".join(
                    loaded.tokenizer.decode([i])
                    for i in loaded.tokenizer.encode("def fibonacci(n):\n    return n").ids
                ),
            },
        )

    outcome = materialize_versioned(
        context, store, code_version=TOKENIZER_CODE_VERSION, inputs=inputs, build=build
    )
    meta = outcome.metadata
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            **{
                k: meta[k]
                for k in ("vocab_size", "eot_id", "dtype", "training_docs", "training_bytes", "origin")
            },
            "bytes_per_token": dg.MetadataValue.json(meta["bytes_per_token"]),
            "example": dg.MetadataValue.md(f"`{meta['example']}`"),
            "path": store.uri(
                f"{store.version_path('tokenizer', None, outcome.data_version)}/{TOKENIZER_SUBDIR}"
            ),
            "skipped": outcome.skipped,
        },
    )


def tokenizer_dir(store: ArtifactStore) -> tuple[Path, str]:
    """The current tokenizer as a local directory, and its data version."""
    manifest = _current(store, "tokenizer")
    return _local(store, manifest, TOKENIZER_SUBDIR), manifest["data_version"]


# --- tokenized sources --------------------------------------------------------------------------


def _documents(context, store: ArtifactStore, source: TokenSource) -> tuple[str, str, Callable | None]:
    """(parquet URI, its version, row filter) of this partition's documents."""
    key = context.partition_key
    if source.corpus_set is None:
        manifest = _current(store, source.upstream.key.to_user_string(), key)
        return _file(store, manifest, stages.DOCS), manifest["data_version"], None
    manifest = _current(store, "synthetic_corpus")
    batch, num_batches = int(key.rsplit("-", 1)[1]), len(BATCHES.get_partition_keys())
    keep = tokfiles.hash_partition(batch, num_batches)
    return _file(store, manifest, f"{source.corpus_set}.parquet"), manifest["data_version"], keep


def tokenized_asset(source: TokenSource) -> dg.AssetsDefinition:
    shards = (
        "one partition per corpus shard" if source.corpus_set is None else "hash batches of synthetic_corpus"
    )

    @dg.asset(
        name=source.asset,
        partitions_def=source.partitions,
        deps=[source.upstream, tokenizer],
        group_name="mixture",
        op_tags=steps.tags("shard"),
        kinds={"numpy"},
        code_version=TOKENIZE_CODE_VERSION,
        automation_condition=ON_NEW_DATA if source.corpus_set is None else None,
        description=f"{source.name} as token ids joined with <|endoftext|> ({shards}): tokens.bin "
        "(uint16/uint32, memory-mappable), offsets.bin (document boundaries), documents.parquet (ids).",
    )
    def _asset(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        uri, upstream_version, keep = _documents(context, store, source)
        directory, tok_version = tokenizer_dir(store)
        inputs = {"documents": upstream_version, "tokenizer": tok_version}

        def build(out: Path) -> Built:
            loaded = tk.load(directory)
            done = {"docs": 0}

            def progress(docs: int, _tokens: int) -> None:
                done["docs"] += docs
                context.log.debug(f"{source.asset}[{context.partition_key}]: {done['docs']} documents")

            with _open(uri) as f:
                stats = tokfiles.write_shard(
                    tokfiles.read_documents(f, keep=keep), loaded, out / SUBDIR, tok_version, progress
                )
            lengths = pl.read_parquet(out / SUBDIR / tokfiles.DOCUMENTS)["num_tokens"]
            hist = [0] * 24
            for n in lengths.to_list():
                hist[min(n.bit_length() - 1, 23)] += 1
            return Built(
                stable_hash([TOKENIZE_CODE_VERSION, stats.content_sha256]),
                {**stats.__dict__, "bytes_per_token": round(stats.bytes_per_token, 3), "length_hist": hist},
            )

        outcome = materialize_versioned(
            context, store, code_version=TOKENIZE_CODE_VERSION, inputs=inputs, build=build
        )
        meta = outcome.metadata
        return dg.MaterializeResult(
            data_version=dg.DataVersion(outcome.data_version),
            metadata={
                "dagster/row_count": meta["num_docs"],
                **{
                    k: meta[k] for k in ("num_docs", "num_tokens", "dtype", "bytes_per_token", "max_doc_tokens")
                },
                "document_tokens": plots.log2_histogram(
                    meta["length_hist"], f"{source.name} document lengths", "tokens"
                ),
                "path": store.uri(
                    f"{store.version_path(source.asset, context.partition_key, outcome.data_version)}/{SUBDIR}"
                ),
                "skipped": outcome.skipped,
            },
        )

    return _asset


TOKENIZED_ASSETS = {name: tokenized_asset(s) for name, s in TOKEN_SOURCES.items()}


# --- mixture weights ----------------------------------------------------------------------------


class MixtureWeightsConfig(dg.Config):
    weights_from: str = "phi4"  # phi4 (the report's table), search (mixture_search's proposal), explicit
    weights: dict[str, float] = {}  # weights_from=explicit: source -> weight (renormalised)
    token_budget: int = 0  # 0: the profile's size (ci 200k, local 2M)
    max_epochs: float = DEFAULT_MAX_EPOCHS  # no source repeated more often than this
    enforce_cap: bool = True  # move over-cap weight to other sources; False: the check fails instead


def requested_weights(
    config: MixtureWeightsConfig, tokens: dict[str, int], store: ArtifactStore
) -> tuple[dict, str]:
    """The weights asked for, and what they came from (a search version when from the search)."""
    if config.weights_from == "phi4":
        return mix.default_weights(tokens), "phi4"
    if config.weights_from == "explicit":
        return mix.normalise(config.weights, tokens), "explicit"
    if config.weights_from == "search":
        manifest = store.current_manifest("mixture_search", None)
        if manifest is None:
            raise ValueError(
                "weights_from='search' but mixture_search has no materialization; materialize it first"
            )
        proposal = manifest["metadata"]["proposal"]
        return mix.normalise(
            {s: proposal.get(s, 0.0) for s in tokens}, tokens
        ), f"search:{manifest['data_version']}"
    raise ValueError(f"weights_from must be phi4, search or explicit, got {config.weights_from!r}")


@dg.asset(
    deps=[
        *(dg.AssetDep(a, partition_mapping=dg.AllPartitionMapping()) for a in TOKENIZED_ASSETS.values()),
        dg.AssetKey("mixture_search"),
    ],
    group_name="mixture",
    op_tags=steps.tags("light"),
    kinds={"json"},
    code_version=WEIGHTS_CODE_VERSION,
    automation_condition=ON_NEW_PARTITIONS,
    check_specs=[
        dg.AssetCheckSpec(
            "weights_sum_to_one",
            asset="mixture_weights",
            blocking=True,
            description="The sampling weights are non-negative and sum to 1.",
        ),
        dg.AssetCheckSpec(
            "epochs_within_cap",
            asset="mixture_weights",
            blocking=True,
            description="No source is repeated more than max_epochs times for the token budget.",
        ),
    ],
    description="Per-source sampling weights (phi-4's table by default, or mixture_search's proposal) and the "
    "epochs each implies for the token budget; mixture.json names every token shard the trainer reads.",
)
def mixture_weights(
    context: dg.AssetExecutionContext,
    config: MixtureWeightsConfig,
    store: ArtifactStore,
    profile: ProfileResource,
) -> dg.MaterializeResult:
    budget = config.token_budget or profile.get().sizes.token_budget
    shards = source_shards(context, store, "mixture_weights")
    tokens = token_counts(shards)
    requested, origin = _user_error("mixture_weights", lambda: requested_weights(config, tokens, store))
    inputs = {
        "shards": shard_versions(shards),
        "origin": origin,
        "requested": requested,
        "config": {**config.model_dump(), "token_budget": budget},
    }

    def build(out: Path) -> Built:
        final = requested
        if config.enforce_cap:
            final = _user_error(
                "mixture_weights", lambda: mix.cap_epochs(requested, tokens, budget, config.max_epochs)
            )
        table = mix.table(requested, final, tokens, budget)
        table.write_parquet(out / "table.parquet")
        mixture = {
            "weights": final,
            "requested": requested,
            "origin": origin,
            "token_budget": budget,
            "max_epochs": config.max_epochs,
            "tokens": tokens,
            "shards": {
                n: [{"asset": TOKEN_SOURCES[n].asset, "partition": k, "data_version": v} for k, v in found]
                for n, found in shard_versions(shards).items()
            },
        }
        (out / "mixture.json").write_text(json.dumps(mixture, indent=1))
        return Built(stable_hash([WEIGHTS_CODE_VERSION, mixture]), {**mixture, "table": table.rows(named=True)})

    outcome = materialize_versioned(
        context, store, code_version=WEIGHTS_CODE_VERSION, inputs=inputs, build=build
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata=weights_metadata(store, outcome),
        check_results=weights_checks(outcome.metadata),
    )


def mixture_table_md(rows: list[dict[str, Any]]) -> dg.MarkdownMetadataValue:
    return md_table(
        ["source", "category", "requested", "weight", "unique tokens", "tokens seen", "epochs"],
        [
            [
                r["source"],
                r["category"],
                f"{r['requested_weight']:.3f}",
                f"{r['weight']:.3f}",
                f"{r['unique_tokens']:,}",
                f"{r['tokens_seen']:,}",
                f"{r['epochs']:.2f}",
            ]
            for r in rows
        ],
    )


def weights_metadata(store: ArtifactStore, outcome) -> dict[str, Any]:
    meta = outcome.metadata
    rows = meta["table"]
    return {
        "mixture": mixture_table_md(rows),
        "origin": meta["origin"],
        "token_budget": meta["token_budget"],
        "max_epochs": meta["max_epochs"],
        **{f"weight_{r['source']}": float(r["weight"]) for r in rows},
        **{f"epochs_{r['source']}": float(r["epochs"]) for r in rows},
        "weights_plot": plots.grouped_bar_plot(
            [r["source"] for r in rows],
            {"requested": [r["requested_weight"] for r in rows], "weight": [r["weight"] for r in rows]},
            "mixture weights",
            "weight",
        ),
        "epochs_plot": plots.bar_plot(
            [r["source"] for r in rows],
            [r["epochs"] for r in rows],
            f"epochs for {meta['token_budget']:,} tokens (cap {meta['max_epochs']:g})",
            "",
            "epochs",
        ),
        "path": store.uri(f"{store.version_path('mixture_weights', None, outcome.data_version)}/mixture.json"),
        "skipped": outcome.skipped,
    }


def weights_checks(meta: dict[str, Any]) -> list[dg.AssetCheckResult]:
    weights = meta["weights"]
    total = sum(weights.values())
    over = {
        r["source"]: round(r["epochs"], 3) for r in meta["table"] if r["epochs"] > meta["max_epochs"] + 1e-6
    }
    return [
        dg.AssetCheckResult(
            check_name="weights_sum_to_one",
            passed=abs(total - 1) < 1e-6 and min(weights.values()) >= 0,
            metadata={"sum": total},
        ),
        dg.AssetCheckResult(
            check_name="epochs_within_cap",
            passed=not over,
            metadata={"over_cap": dg.MetadataValue.json(over), "max_epochs": meta["max_epochs"]},
        ),
    ]


MIXTURE_ASSETS = [tokenizer, *TOKENIZED_ASSETS.values(), mixture_weights]
