"""Token assets (group ``mixture``): the tokenizer and the packed token sources the trainer reads.

- ``tokenizer``: a byte-level BPE trained on the filtered corpora (or a pretrained Hugging Face
  tokenizer directory by configuration), saved as a standard tokenizer directory.
- ``tokenized_<source>`` for every training source (filtered code and web per shard, the three
  synthetic sets per hash batch): memory-mappable token shards (``tokens.py``).

``TOKEN_SOURCES`` names the sources; ``source_shards`` and its helpers read their current shards
(the mixture search and ``mixture_weights`` use them).
"""

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import fsspec

from k8s import steps
from phi_assets.common import plots
from phi_assets.common.automation import ON_NEW_DATA
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current, file_uri, local_copy, materialized, user_error
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from phi_assets.curation import stages
from phi_assets.curation.assets import corpus_shards, filtered_code_corpus, filtered_web_corpus
from phi_assets.ingest.assets import PARTITIONS
from phi_assets.mixture import tokenizer as tk
from phi_assets.mixture import tokens as tokfiles
from phi_assets.mixture import weights as mix
from phi_assets.mixture.tokens import TokenShard
from phi_assets.synthetic.batches import BATCHES
from phi_assets.synthetic.corpus_assets import synthetic_corpus
from resources import ArtifactStore, ProfileResource

TOKENIZER_CODE_VERSION = code_version(__name__, "tokenizer")
TOKENIZE_CODE_VERSION = code_version(__name__, "tokenized_asset")
SUBDIR = "tokens"  # the shard files inside a tokenized version (a directory, so it copies as one)
TOKENIZER_SUBDIR = "tokenizer"


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
        name: materialized(context, store, s.asset, s.keys(context.instance), reader)
        for name, s in TOKEN_SOURCES.items()
    }


def shard_versions(shards: dict[str, list[tuple[str, dict]]]) -> dict[str, list[tuple[str, str]]]:
    return {name: [(k, m["data_version"]) for k, m in found] for name, found in shards.items()}


def token_counts(shards: dict[str, list[tuple[str, dict]]]) -> dict[str, int]:
    return {name: sum(m["metadata"]["num_tokens"] for _, m in found) for name, found in shards.items()}


def open_shards(store: ArtifactStore, shards: dict[str, list[tuple[str, dict]]]) -> dict[str, list[TokenShard]]:
    """Memory-mapped shards per source (copied to local disk first when the store is remote)."""
    return {
        name: [TokenShard.open(local_copy(store, m, SUBDIR)) for _, m in found]
        for name, found in shards.items()
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
            with _open(file_uri(store, manifest, stages.DOCS)) as f:
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
            with _open(file_uri(store, manifest, stages.DOCS)) as f:
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
    corpora = {s: corpus_shards(context, store, s, "tokenizer") for s in ("code", "web")}
    inputs = {"config": {**config.model_dump(), "vocab_size": vocab_size}}
    if config.pretrained:  # its files, so an edited directory is taken again
        inputs["pretrained"] = _files_hash(Path(config.pretrained))
    else:
        inputs["corpora"] = shard_versions(corpora)

    def build(staging: Path) -> Built:
        counts, out = {"docs": 0, "bytes": 0}, staging / TOKENIZER_SUBDIR
        if config.pretrained:
            user_error("tokenizer", lambda: tk.copy_pretrained(Path(config.pretrained), out))
        else:
            texts = _corpus_docs(store, corpora, config.sample_fraction, counts)
            trained = user_error(
                "tokenizer", lambda: tk.train_bpe(texts, vocab_size, min_frequency=config.min_frequency)
            )
            tk.save(trained, out, model_max_length=config.model_max_length)
            context.log.info(f"tokenizer: trained on {counts['docs']} documents ({counts['bytes']:,} bytes)")
        loaded = user_error("tokenizer", lambda: tk.load(out))
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
    manifest = current(store, "tokenizer")
    return local_copy(store, manifest, TOKENIZER_SUBDIR), manifest["data_version"]


# --- tokenized sources --------------------------------------------------------------------------


def _documents(context, store: ArtifactStore, source: TokenSource) -> tuple[str, str, Callable | None]:
    """(parquet URI, its version, row filter) of this partition's documents."""
    key = context.partition_key
    if source.corpus_set is None:
        manifest = current(store, source.upstream.key.to_user_string(), key)
        return file_uri(store, manifest, stages.DOCS), manifest["data_version"], None
    manifest = current(store, "synthetic_corpus")
    batch, num_batches = int(key.rsplit("-", 1)[1]), len(BATCHES.get_partition_keys())
    keep = tokfiles.hash_partition(batch, num_batches)
    return file_uri(store, manifest, f"{source.corpus_set}.parquet"), manifest["data_version"], keep


def plot_bins(stats: tokfiles.ShardStats) -> list[int]:
    """Documents per power-of-two length bucket, as the 24 bins of the metadata plot (the last one open)."""
    per_bucket = stats.length_docs or []
    return (per_bucket + [0] * 23)[:23] + [sum(per_bucket[23:])]


class TokenizeConfig(dg.Config):
    # Peak memory of the step, whatever the shard size: documents are read and encoded in batches sized
    # from it (tokens.TOKENIZE_MEMORY). Not an input of the data version: outputs do not depend on it.
    memory_budget_mb: int = 2048


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
        "(uint16/uint32, memory-mappable), offsets.bin (document boundaries), split.bin (the validation "
        "split's index), documents.parquet (ids), tokens.json (counts, length histogram).",
    )
    def _asset(
        context: dg.AssetExecutionContext, config: TokenizeConfig, store: ArtifactStore
    ) -> dg.MaterializeResult:
        uri, upstream_version, keep = _documents(context, store, source)
        directory, tok_version = tokenizer_dir(store)
        inputs = {"documents": upstream_version, "tokenizer": tok_version}
        limits = user_error(source.asset, lambda: tokfiles.TOKENIZE_MEMORY.batches(config.memory_budget_mb))

        def build(out: Path) -> Built:
            loaded = tk.load(directory)
            done = {"docs": 0}

            def progress(docs: int, _tokens: int) -> None:
                done["docs"] += docs
                context.log.debug(f"{source.asset}[{context.partition_key}]: {done['docs']} documents")

            with _open(uri) as f:
                stats = tokfiles.write_shard(
                    tokfiles.read_documents(f, keep=keep, limits=limits),
                    loaded,
                    out / SUBDIR,
                    tok_version,
                    progress,
                )
            hist = plot_bins(stats)
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


TOKEN_ASSETS = [tokenizer, *TOKENIZED_ASSETS.values()]
