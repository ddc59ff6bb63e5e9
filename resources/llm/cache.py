"""Durable request cache: every finished request, keyed by hash(model version, request).

Results live as parquet segments under the artifact store, one directory per model version:
``{store}/_llm_cache/{model_version}/seg-*.parquet``. The engine writes one segment per chunk of
requests it finished, atomically (temp file + rename, or one put on object stores), so a run
killed mid-batch keeps every chunk it completed and a re-run pays only for the rest. Successful
results and deterministic failures are stored; transient failures never are.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from resources.artifact_store import ArtifactStore, safe_segment
from resources.llm.types import Completion, ModelRef, Request, Result

CACHE_DIR = "_llm_cache"
SCHEMA = pa.schema([
    ("key", pa.string()),
    ("model", pa.string()),
    ("request", pa.string()),  # the request as JSON, so the cache explains itself
    ("texts", pa.list_(pa.string())),
    ("num_tokens", pa.list_(pa.int32())),
    ("finish_reasons", pa.list_(pa.string())),
    ("num_prompt_tokens", pa.int32()),
    ("error", pa.string()),
    ("error_kind", pa.string()),
    ("created_at", pa.float64()),
])


class RequestCache:
    def __init__(self, store: ArtifactStore):
        self.store = store

    def directory(self, model: ModelRef) -> str:
        return f"{self.store.base_path}/{CACHE_DIR}/{safe_segment(model.version)}"

    def _dataset(self, model: ModelRef) -> pads.Dataset | None:
        path = self.directory(model)
        if not self.store.fs.exists(path):
            return None
        fs = None if self.store.is_local else PyFileSystem(FSSpecHandler(self.store.fs))
        # Files starting with "." or "_" (temp files of a write in progress) are ignored.
        return pads.dataset(path, filesystem=fs, format="parquet", schema=SCHEMA)

    def lookup(self, model: ModelRef, keys: Iterable[str]) -> dict[str, Result]:
        wanted = sorted(set(keys))
        dataset = self._dataset(model) if wanted else None
        if dataset is None:
            return {}
        table = dataset.to_table(filter=pads.field("key").isin(wanted))
        found: dict[str, Result] = {}
        for row in table.to_pylist():
            found[row["key"]] = _result_from_row(row)
        return found

    def put(self, model: ModelRef, pairs: Sequence[tuple[Request, Result]]) -> int:
        """Store the cacheable results (successes and deterministic failures) as one segment."""
        rows = [_row(model, request, result) for request, result in pairs if not result.transient]
        if not rows:
            return 0
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf, compression="zstd")
        name = f"seg-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        self.store.write_bytes(f"{self.directory(model)}/{name}", buf.getvalue())
        return len(rows)

    def count(self, model: ModelRef) -> int:
        dataset = self._dataset(model)
        return 0 if dataset is None else dataset.count_rows()


def _row(model: ModelRef, request: Request, result: Result) -> dict:
    return {
        "key": result.key,
        "model": model.name,
        "request": json.dumps(request.to_json(), sort_keys=True),
        "texts": [c.text for c in result.completions],
        "num_tokens": [c.num_tokens for c in result.completions],
        "finish_reasons": [c.finish_reason for c in result.completions],
        "num_prompt_tokens": result.num_prompt_tokens,
        "error": result.error,
        "error_kind": result.error_kind,
        "created_at": time.time(),
    }


def _result_from_row(row: dict) -> Result:
    completions = [Completion(t, n, f) for t, n, f in
                   zip(row["texts"], row["num_tokens"], row["finish_reasons"], strict=True)]
    return Result(key=row["key"], completions=completions, num_prompt_tokens=row["num_prompt_tokens"],
                  error=row["error"], error_kind=row["error_kind"], cached=True)
