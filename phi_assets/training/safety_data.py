"""Safety post-training data (group ``training``, phi-3 section 4): ``safety_sft`` and ``safety_pairs``.

Both read the training split of the safety set (``phi_assets.common.safety``: harmful requests with a refusal,
benign look-alikes with a helpful answer; ``path`` points at another set of the same schema) and store it in
the form its consumer trains on:

- ``safety_sft``: ``examples.parquet`` (id, category, kind, prompt, completion: the chosen answer), which
  ``sft_checkpoint`` mixes in at its ``safety_share``;
- ``safety_pairs``: ``pairs.parquet`` (id, category, kind, prompt, chosen, rejected: refusal over compliance for
  harmful requests, an answer over an over-refusal for benign ones), which ``dpo_checkpoint`` mixes in at its
  ``safety_share``.

The evaluation split stays out of both: ``rai_scores`` measures refusal on it. A version is the rows' hash;
an unusable set fails the step with its file, line and reason.
"""

from pathlib import Path

import dagster as dg
import polars as pl

from k8s import steps
from phi_assets.common import safety
from phi_assets.common.code_version import code_version
from phi_assets.common.store import current_table
from phi_assets.common.tables import md_table
from phi_assets.common.versioning import Built, materialize_versioned, stable_hash
from resources import ArtifactStore

SAFETY_SFT_CODE_VERSION = code_version(__name__, "safety_sft")
SAFETY_PAIRS_CODE_VERSION = code_version(__name__, "safety_pairs")
SAFETY_FILES = {"safety_sft": "examples.parquet", "safety_pairs": "pairs.parquet"}
# what each stores of an item (besides id, category, kind and the prompt), under which column
COLUMNS = {"safety_sft": {"completion": "chosen"}, "safety_pairs": {"chosen": "chosen", "rejected": "rejected"}}


class SafetyDataConfig(dg.Config):
    path: str = ""  # a safety set of the same schema (JSON lines); empty: the project's (common/safety)


def train_split(asset: str, path: str) -> tuple[Path, list[safety.SafetyItem]]:
    """The set's training rows; an unusable set is a step failure naming the file, the line and the reason."""
    where = Path(path) if path else safety.DEFAULT_SET
    try:
        items = safety.load_set(where)
    except safety.SafetySetError as e:
        raise dg.Failure(description=f"{asset}: {e}") from e
    return where, safety.split_rows(items, "train")


def frame(asset: str, items: list[safety.SafetyItem]) -> pl.DataFrame:
    rows = [
        (i.id, i.category, i.kind, i.chat_prompt, *(getattr(i, f) for f in COLUMNS[asset].values()))
        for i in items
    ]
    return pl.DataFrame(rows, schema=["id", "category", "kind", "prompt", *COLUMNS[asset]], orient="row")


def _materialize(
    context: dg.AssetExecutionContext, store: ArtifactStore, config: SafetyDataConfig, asset: str, code: str
) -> dg.MaterializeResult:
    where, items = train_split(asset, config.path)
    rows = frame(asset, items)
    counts = {f"{c}/{k}": n for c, k, n in sorted(rows.group_by("category", "kind").len().rows())}

    def build(out: Path) -> Built:
        rows.write_parquet(out / SAFETY_FILES[asset])
        return Built(stable_hash(rows.rows()), {"rows": rows.height, "by_cell": counts})

    outcome = materialize_versioned(
        context, store, code_version=code, inputs={"rows": stable_hash(rows.rows())}, build=build
    )
    sample = rows.head(4).to_dicts()
    shown = list(COLUMNS[asset])
    return dg.MaterializeResult(
        data_version=dg.DataVersion(outcome.data_version),
        metadata={
            "rows": rows.height,
            "harmful": int((rows["kind"] == "harmful").sum()),
            "benign": int((rows["kind"] == "benign").sum()),
            "by_category_kind": dg.MetadataValue.json(counts),
            "source": str(where) if config.path else "phi_assets/common/safety/safety_set.jsonl",
            "examples": md_table(
                ["kind", "prompt", *shown],
                [[r["kind"], repr(r["prompt"][:50]), *(repr(r[c][:50]) for c in shown)] for r in sample],
            ),
            "skipped": outcome.skipped,
        },
    )


@dg.asset(
    group_name="training",
    op_tags=steps.tags("light"),
    code_version=SAFETY_SFT_CODE_VERSION,
    description="Safety SFT examples (phi-3): the safety set's training split, harmful requests answered with a"
    " refusal and benign look-alikes with a helpful answer; sft_checkpoint mixes them in at its safety_share.",
)
def safety_sft(
    context: dg.AssetExecutionContext, config: SafetyDataConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    return _materialize(context, store, config, "safety_sft", SAFETY_SFT_CODE_VERSION)


@dg.asset(
    group_name="training",
    op_tags=steps.tags("light"),
    code_version=SAFETY_PAIRS_CODE_VERSION,
    description="Safety DPO pairs (phi-3): for each training request of the safety set, refusal over compliance"
    " (harmful) or a helpful answer over an over-refusal (benign look-alike); dpo_checkpoint mixes them in.",
)
def safety_pairs(
    context: dg.AssetExecutionContext, config: SafetyDataConfig, store: ArtifactStore
) -> dg.MaterializeResult:
    return _materialize(context, store, config, "safety_pairs", SAFETY_PAIRS_CODE_VERSION)


def mix_safety(context, store: ArtifactStore, asset: str, columns: tuple[str, ...], other: int, config,
               reader: str) -> tuple[dict, list[tuple]]:
    """The rows (``columns``) of ``asset`` (``safety_sft`` or ``safety_pairs``) that join ``other`` rows of
    post-training data at ``config.safety_share`` (``safety.mix_in``: whole seeded passes, at most
    ``config.safety_max_repeats``), and the version read. A share outside [0, 1) fails the step, naming
    ``reader``; a mix short of the share is a warning."""
    manifest, rows = current_table(store, asset, SAFETY_FILES[asset], reader)
    try:
        picked = safety.mix_in(rows.select(*columns).rows(), other, config.safety_share,
                               config.safety_max_repeats, config.seed)
    except ValueError as e:
        raise dg.Failure(description=f"{reader}: {e}") from e
    wanted = safety.wanted_count(other, config.safety_share)
    if len(picked) < wanted:
        context.log.warning(f"{reader}: {len(picked)} rows of {asset} ({rows.height} x at most "
                            f"{config.safety_max_repeats} passes), short of the {wanted} safety_share asks")
    return manifest, picked


SAFETY_DATA_ASSETS = [safety_sft, safety_pairs]
