"""Versioned artifact store over fsspec with atomic writes.

Layout: ``{root}/{asset}/{partition}/{data_version}/`` holds one immutable version of an asset
partition; ``_manifest.json`` inside it is written last, so a version directory without a
manifest is never read. ``CURRENT`` names the latest version and ``_provenance/{key}`` maps a
(code version, input versions) key to the version it produced, which is how unchanged assets skip
their work.

Locations: whatever is persisted in the store and read back later (manifest metadata, files
written into versions, the catalog's ``raw_shards`` rows) names an artifact by its path RELATIVE TO
THE ARTIFACT ROOT, in POSIX form, e.g. ``tokenized_filtered_code/shard-3/<version>/tokens/tokens.bin``
(``ArtifactStore.relative``); readers turn it into something openable with
``ArtifactStore.resolve``, against the root the store has now. A home copied or moved to another
path, or an artifact root synced to another bucket, therefore still reads its own files and never
the original's. ``resolve`` passes absolute locations (a ``/`` path or a ``scheme://`` URI) through
unchanged, so manifests written before this convention still read on the machine that wrote them.
Locations that are only shown (Dagster materialization metadata, log lines) stay absolute: they say
where a run wrote, and nothing reads a location back from them.

Atomicity: on a local filesystem files are staged in a hidden ``.staging-*`` directory beside
the target and renamed into place (one ``rename``); on object stores each file is a single put and
the manifest goes last. A writer killed at any point leaves only hidden staging debris, which
``collect_garbage`` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "_manifest.json"
UNPARTITIONED = "__all__"
_SAFE = re.compile(r"[^A-Za-z0-9._=-]")


def safe_segment(name: str) -> str:
    """A path segment for a partition key: readable, and distinct keys stay distinct."""
    cleaned = _SAFE.sub("_", name)
    if cleaned == name and not name.startswith("."):
        return name
    return f"{cleaned.lstrip('.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def is_absolute(location: str) -> bool:
    """A location that names its filesystem itself: a ``scheme://`` URI or an absolute local path."""
    return "://" in location or location.startswith("/")


class Staging:
    """Files written into ``path`` become one version on ``commit``; nothing is visible before."""

    def __init__(self, store: ArtifactStore, base: str, path: Path, remote: bool):
        self.store, self.base, self.path, self.remote = store, base, path, remote

    def commit(self, data_version: str, manifest: dict[str, Any]) -> str:
        fs = self.store.fs
        final = f"{self.base}/{data_version}"
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name != MANIFEST)
        names = [p.relative_to(self.path).as_posix() for p in files]  # model directories nest
        manifest = {
            **manifest,
            "data_version": data_version,
            "files": {n: p.stat().st_size for n, p in zip(names, files, strict=True)},
            "committed_at": time.time(),
        }
        if fs.exists(f"{final}/{MANIFEST}"):  # same content already committed: immutable
            return final
        if self.remote:
            for name, p in zip(names, files, strict=True):
                fs.put_file(str(p), f"{final}/{name}")
            fs.pipe_file(f"{final}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        else:
            (self.path / MANIFEST).write_text(json.dumps(manifest, indent=1))
            if os.path.isdir(final):  # a version without manifest: debris of a killed writer
                shutil.rmtree(final)
            os.rename(self.path, final)
        return final


class ArtifactStore(dg.ConfigurableResource):
    """Immutable, versioned artifacts at ``root`` (a local path or any fsspec URI)."""

    root: str

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return fsspec.core.url_to_fs(self.root)[0]

    @property
    def base_path(self) -> str:
        return fsspec.core.url_to_fs(self.root)[1].rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def partition_path(self, asset: str, partition: str | None) -> str:
        return f"{self.base_path}/{asset}/{safe_segment(partition or UNPARTITIONED)}"

    def version_path(self, asset: str, partition: str | None, data_version: str) -> str:
        return f"{self.partition_path(asset, partition)}/{data_version}"

    def uri(self, path: str) -> str:
        """A path as a URI a reader (polars, duckdb, fsspec) can open."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def relative(self, location: str) -> str:
        """``location`` (a store path, a URI from ``uri``, or a local path) relative to the root: the
        form to persist. Raises ``ValueError`` for a location outside the root, which has no form
        that would survive moving the home."""
        base = self.base_path
        path = self.fs._strip_protocol(location).rstrip("/")
        if self.is_local:  # one spelling per file: no ``..``, no doubled slashes
            path, base = os.path.normpath(path), os.path.normpath(base)
        if path == base:
            return ""
        if path.startswith(f"{base}/"):
            return path[len(base) + 1:]
        if self.is_local:  # the same file reached through a symlink (e.g. /tmp on macOS)
            real, real_base = os.path.realpath(path), os.path.realpath(base)
            if real.startswith(f"{real_base}/"):
                return real[len(real_base) + 1:]
        raise ValueError(f"{location!r} is not under the artifact root {self.root!r}")

    def resolve(self, location: str) -> str:
        """A persisted location as a URI a reader can open: a relative one against the current root;
        an absolute one (a manifest written before locations were relative) unchanged."""
        if is_absolute(location):
            return location
        parts = location.split("/")
        if ".." in parts:  # a relative location never leaves the root
            raise ValueError(f"{location!r} points outside the artifact root")
        return self.uri(f"{self.base_path}/{location}" if location else self.base_path)

    # -- writes ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, asset: str, partition: str | None) -> Iterator[Staging]:
        base = self.partition_path(asset, partition)
        if self.is_local:
            os.makedirs(base, exist_ok=True)
            path = Path(base) / f".staging-{uuid.uuid4().hex}"
            path.mkdir()
        else:
            path = Path(tempfile.mkdtemp(prefix="phi-staging-"))
        staging = Staging(self, base, path, remote=not self.is_local)
        try:
            yield staging
        finally:
            if path.exists():
                shutil.rmtree(path, ignore_errors=True)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write one small file atomically (temp file + rename, or a single put)."""
        if self.is_local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{os.path.dirname(path)}/.tmp-{uuid.uuid4().hex}-{os.path.basename(path)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    def set_current(self, asset: str, partition: str | None, data_version: str) -> None:
        self.write_bytes(f"{self.partition_path(asset, partition)}/CURRENT", data_version.encode())

    def record_provenance(self, asset: str, partition: str | None, key: str, version: str) -> None:
        self.write_bytes(f"{self.partition_path(asset, partition)}/_provenance/{key}", version.encode())

    # -- reads ----------------------------------------------------------------------------
    def _read_text(self, path: str) -> str | None:
        try:
            return self.fs.cat_file(path).decode()
        except (FileNotFoundError, OSError):
            return None

    def read_manifest(self, asset: str, partition: str | None, data_version: str) -> dict | None:
        text = self._read_text(f"{self.version_path(asset, partition, data_version)}/{MANIFEST}")
        return json.loads(text) if text else None

    def current_version(self, asset: str, partition: str | None) -> str | None:
        text = self._read_text(f"{self.partition_path(asset, partition)}/CURRENT")
        return text.strip() if text else None

    def current_manifest(self, asset: str, partition: str | None) -> dict | None:
        version = self.current_version(asset, partition)
        return self.read_manifest(asset, partition, version) if version else None

    def lookup_provenance(self, asset: str, partition: str | None, key: str) -> str | None:
        text = self._read_text(f"{self.partition_path(asset, partition)}/_provenance/{key}")
        return text.strip() if text else None

    def list_versions(self, asset: str, partition: str | None) -> list[str]:
        """Committed versions only: directories that hold a manifest."""
        base = self.partition_path(asset, partition)
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(
            n for n in names
            if not n.startswith((".", "_")) and n != "CURRENT"
            and self.fs.exists(f"{base}/{n}/{MANIFEST}")
        )

    def collect_garbage(self, asset: str, partition: str | None, older_than_s: float = 3600) -> int:
        """Remove staging debris left by killed writers (local filesystems only)."""
        base = Path(self.partition_path(asset, partition))
        if not self.is_local or not base.is_dir():
            return 0
        removed = 0
        for p in base.iterdir():
            stale = time.time() - p.stat().st_mtime > older_than_s
            if (p.name.startswith((".staging-", ".tmp-"))) and stale:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed += 1
        return removed
