"""The Great Expectations 1.x suite every raw shard must pass before it flows on.

Schema (the document columns in order), non-null and non-empty text within the length bound,
unique ids, and a known source. Column expectations run batch by batch over the parquet file, the
batches sized from a memory budget (``VALIDATE_MEMORY``), so a large shard is never loaded whole;
uniqueness runs over the id column alone (about 100 bytes a document). GX is imported lazily (it
costs seconds) and configured without progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from phi_assets.ingest.batches import DEFAULT_MEMORY_BUDGET_MB, Batches, StepMemory, read_batches
from phi_assets.ingest.schema import DOC_COLUMNS, SOURCES

# Memory of the expectations (benchmarks/step_memory.py measures it): batches of at most ``text_bytes``
# of text, sized so that VALIDATE_BASELINE_MB + VALIDATE_PEAK_PER_TEXT_BYTE x text_bytes <= the budget.
# Per byte of a batch: the batch as a pandas frame (its texts as Python strings) and what GX computes
# over it (value lengths, masks, the unexpected values). The baseline: GX itself and what ingest's
# writers left behind. Measured on Python source (2 CPUs): 843 MiB at 32 MiB batches, 1,617 at 128,
# 1,757 at 181 (a fit: 682 MiB + 6.4 x batch MiB); these numbers lie above all three.
VALIDATE_PEAK_PER_TEXT_BYTE = 9
VALIDATE_BASELINE_MB = 640
VALIDATE_MAX_BATCH_ROWS = 50_000
VALIDATE_MEMORY = StepMemory("validate", VALIDATE_BASELINE_MB, VALIDATE_PEAK_PER_TEXT_BYTE,
                             VALIDATE_MAX_BATCH_ROWS)


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool = True
    unexpected_count: int = 0
    element_count: int = 0
    observed: Any = None


@dataclass
class SuiteResult:
    success: bool
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    batches: int = 0  # of the column expectations

    def failures(self) -> list[str]:
        return [f"{o.expectation}({o.column or ''}): {o.unexpected_count} unexpected"
                f"{'' if o.observed is None else f', observed {o.observed}'}"
                for o in self.outcomes if not o.success]


def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def _suites(max_chars: int):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    batch_suite = gx.ExpectationSuite(name="raw_shard_columns")
    for expectation in (
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=list(DOC_COLUMNS)),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=max_chars),
        gxe.ExpectColumnValueLengthsToEqual(column="id", value=32),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)),
    ):
        batch_suite.add_expectation(expectation)
    id_suite = gx.ExpectationSuite(name="raw_shard_ids")
    id_suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="id"))
    id_suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    return batch_suite, id_suite


def _merge(into: dict[tuple[str, str | None], ExpectationOutcome], results) -> None:
    for r in results.results:
        cfg = r.expectation_config
        column = cfg.kwargs.get("column")
        out = into.setdefault((cfg.type, column), ExpectationOutcome(cfg.type, column))
        out.success &= bool(r.success)
        out.unexpected_count += int(r.result.get("unexpected_count") or 0)
        out.element_count += int(r.result.get("element_count") or 0)
        if not r.success and r.result.get("observed_value") is not None:
            out.observed = r.result["observed_value"]


def validate_docs(
    path: Path,
    max_chars: int,
    *,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
    limits: Batches | None = None,
) -> SuiteResult:
    """Run the suite over a ``docs.parquet`` file, in batches: peak memory about ``memory_budget_mb``
    whatever the shard size (``limits`` overrides the batches derived from it). Every column
    expectation judges rows one by one, so the outcomes do not depend on the batches."""
    limits = limits or VALIDATE_MEMORY.batches(memory_budget_mb)
    ctx = _context()
    source = ctx.data_sources.add_pandas("raw_shard")
    batch_def = source.add_dataframe_asset("docs").add_batch_definition_whole_dataframe("all")
    batch_suite, id_suite = (ctx.suites.add(s) for s in _suites(max_chars))
    outcomes: dict[tuple[str, str | None], ExpectationOutcome] = {}
    batches = 0
    for table in read_batches(str(path), limits, columns=None):  # every column, to check the schema
        frame = table.to_pandas()
        del table
        _merge(outcomes, batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(batch_suite))
        batches += 1
        del frame
    ids = pq.read_table(path, columns=["id"]).to_pandas()
    _merge(outcomes, batch_def.get_batch(batch_parameters={"dataframe": ids}).validate(id_suite))
    result = list(outcomes.values())
    return SuiteResult(all(o.success for o in result), result, batches)
