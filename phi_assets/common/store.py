"""Reading what other assets stored: the one home for version lookups and local copies.

Every stage reads its inputs the same way: the current version of an (asset, partition) from the
artifact store (``current``; a clear ``dg.Failure`` naming it when there is none), the URI of a file in
that version (``file_uri``), a local directory holding a stored folder (``local_copy``, copied once per
version and machine when the store is remote), and a ``ValueError`` from user configuration turned into a
failure that names the asset (``user_error``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg

if TYPE_CHECKING:
    import polars as pl

    from resources.artifact_store import ArtifactStore

T = TypeVar("T")


def where(asset: str, partition: str | None) -> str:
    """``asset[partition]``, or ``asset`` for an unpartitioned one: how logs and errors name a version."""
    return f"{asset}[{partition}]" if partition else asset


def current(store: ArtifactStore, asset: str, partition: str | None = None, hint: str = "materialize it first",
            reader: str = "") -> dict:
    """The manifest of the current version of ``asset[partition]``; a ``dg.Failure`` naming it (and what to
    do, ``hint``) when it has none. ``reader``: the asset asking, named first in the error."""
    manifest = store.current_manifest(asset, partition)
    if manifest is None:
        prefix = f"{reader}: " if reader else ""
        raise dg.Failure(description=f"{prefix}{where(asset, partition)} has no materialized version; {hint}")
    return manifest


def materialized(context: Any, store: ArtifactStore, asset: str, keys: Iterable[str],
                 reader: str) -> list[tuple[str, dict]]:
    """(partition, current manifest) for each of ``keys`` that has one; the others are logged as left out."""
    found = []
    for key in keys:
        manifest = store.current_manifest(asset, key)
        if manifest is None:
            context.log.warning(f"{asset}[{key}] has no materialized version; {reader} leaves it out")
            continue
        found.append((key, manifest))
    return found


def version_dir(store: ArtifactStore, manifest: dict) -> str:
    """The store path of the version a manifest describes."""
    return store.version_path(manifest["asset"], manifest["partition"], manifest["data_version"])


def file_uri(store: ArtifactStore, manifest: dict, name: str) -> str:
    """The URI of file ``name`` inside the version a manifest describes."""
    return store.uri(f"{version_dir(store, manifest)}/{name}")


def current_table(store: ArtifactStore, asset: str, name: str, reader: str) -> tuple[dict, pl.DataFrame]:
    """The current version of ``asset`` (``current``: a failure naming ``reader`` when there is none) and its
    parquet file ``name``, read whole: for the small tables one step consumes (pairs, examples)."""
    import polars as pl

    manifest = current(store, asset, reader=reader)
    with store.fs.open(file_uri(store, manifest, name), "rb") as f:
        return manifest, pl.read_parquet(f)


def local_copy(store: ArtifactStore, manifest: dict, sub: str, root: str | Path | None = None) -> Path:
    """A local directory with the stored folder ``sub`` of a version: the store itself when it is local, else
    one copy per version under ``root`` (default: the temporary directory's ``phi-artifacts``), shared by every
    step on this machine (versions are immutable). The copy lands under a temporary name and is renamed into
    place, so a killed copy is never read."""
    stored = f"{version_dir(store, manifest)}/{sub}"
    if store.is_local:
        return Path(stored)
    base = Path(root) if root else Path(tempfile.gettempdir()) / "phi-artifacts"
    dest = base / manifest["asset"] / manifest["data_version"] / sub
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        store.fs.get(stored.rstrip("/") + "/", str(partial), recursive=True)
        try:
            os.rename(partial, dest)
        except OSError:  # another step on this machine got there first
            shutil.rmtree(partial, ignore_errors=True)
    return dest


def user_error(what: str, build: Callable[[], T]) -> T:
    """``build()``, with a ``ValueError`` (bad configuration or input) turned into a failure naming ``what``."""
    try:
        return build()
    except ValueError as e:
        raise dg.Failure(description=f"{what}: {e}") from e
