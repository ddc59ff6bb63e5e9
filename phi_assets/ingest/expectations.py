"""The Great Expectations 1.x suite every raw shard must pass before it flows on.

Schema (the document columns in order), non-null and non-empty text within the length bound,
unique ids, and a known source. Column expectations run batch by batch over the parquet file so a
large shard is never loaded whole; uniqueness runs over the id column alone. GX is imported lazily
(it costs seconds) and configured without progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from phi_assets.ingest.schema import DOC_COLUMNS, SOURCES

BATCH_ROWS = 50_000


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


def validate_docs(path: Path, max_chars: int) -> SuiteResult:
    """Run the suite over a ``docs.parquet`` file."""
    ctx = _context()
    source = ctx.data_sources.add_pandas("raw_shard")
    batch_def = source.add_dataframe_asset("docs").add_batch_definition_whole_dataframe("all")
    batch_suite, id_suite = (ctx.suites.add(s) for s in _suites(max_chars))
    outcomes: dict[tuple[str, str | None], ExpectationOutcome] = {}
    parquet = pq.ParquetFile(path)
    frames = (b.to_pandas() for b in parquet.iter_batches(batch_size=BATCH_ROWS))
    for frame in frames:
        _merge(outcomes, batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(batch_suite))
    ids = parquet.read(columns=["id"]).to_pandas()
    _merge(outcomes, batch_def.get_batch(batch_parameters={"dataframe": ids}).validate(id_suite))
    result = list(outcomes.values())
    return SuiteResult(all(o.success for o in result), result)
