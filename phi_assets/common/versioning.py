"""Skip-if-unchanged materialization, implemented once for every asset.

Dagster records code and data versions but still runs an asset's body when asked. Every asset in
this project goes through ``materialize_versioned``: it hashes (asset, partition, code version,
input versions, config) into a provenance key; when the artifact store already holds a version
for that key the body is not run, the log says so, and the same data version is reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from resources.artifact_store import ArtifactStore


def stable_hash(obj: Any, length: int = 32) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


@dataclass
class Built:
    """What an asset body produced in its staging directory."""

    data_version: str
    metadata: dict[str, Any] = field(default_factory=dict)  # plain JSON, kept in the manifest


@dataclass
class Outcome:
    manifest: dict[str, Any]
    skipped: bool

    @property
    def data_version(self) -> str:
        return self.manifest["data_version"]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})


def asset_and_partition(context: dg.AssetExecutionContext) -> tuple[str, str | None]:
    partition = context.partition_key if context.has_partition_key else None
    return context.asset_key.to_user_string(), partition


def materialize_versioned(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    *,
    code_version: str,
    inputs: Mapping[str, Any],
    build: Callable[[Path], Built],
) -> Outcome:
    """Run ``build`` into a staging directory unless this exact work was already done."""
    asset, partition = asset_and_partition(context)
    where = f"{asset}[{partition}]" if partition else asset
    key = stable_hash({"asset": asset, "partition": partition, "code": code_version, "in": inputs})
    known = store.lookup_provenance(asset, partition, key)
    manifest = store.read_manifest(asset, partition, known) if known else None
    if manifest is not None:
        store.set_current(asset, partition, known)
        context.log.info(
            f"{where}: code version {code_version} and inputs unchanged; skipping work, "
            f"data version stays {known}"
        )
        return Outcome(manifest, skipped=True)
    context.log.info(f"{where}: computing (code version {code_version}, provenance {key[:12]})")
    with store.stage(asset, partition) as staging:
        built = build(staging.path)
        manifest = {
            "asset": asset,
            "partition": partition,
            "code_version": code_version,
            "provenance": key,
            "inputs": dict(inputs),
            "metadata": built.metadata,
        }
        staging.commit(built.data_version, manifest)
    store.record_provenance(asset, partition, key, built.data_version)
    store.set_current(asset, partition, built.data_version)
    manifest = store.read_manifest(asset, partition, built.data_version)
    context.log.info(f"{where}: wrote data version {built.data_version}")
    return Outcome(manifest, skipped=False)
