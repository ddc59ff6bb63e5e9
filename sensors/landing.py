"""Scan a landing prefix (local path or fsspec URI) for new shard files. Dagster-free.

A file is new when its (size, mtime) is not in the scan state; it is then hashed, and reported
only when its content hash was not seen before (a touched or renamed copy is not new). Names that
start with ``.`` or ``_`` or end in ``.tmp``/``.part`` are in-progress uploads and are ignored:
write elsewhere and move into the landing area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec

from phi_assets.ingest.shards import content_hash

IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".crdownload", ".inprogress")


@dataclass(frozen=True)
class NewShard:
    name: str
    content_hash: str
    uri: str


def _signature(entry: dict[str, Any]) -> list:
    mtime = entry.get("mtime") or entry.get("LastModified") or entry.get("updated") or ""
    return [entry.get("size"), str(mtime), entry.get("type")]


def scan_landing(uri: str, state: dict[str, Any], max_new: int = 100) -> tuple[list[NewShard], dict]:
    """Return new shards under ``uri`` and the updated state (``{"files": ..., "hashes": ...}``)."""
    files = dict(state.get("files", {}))
    hashes = dict(state.get("hashes", {}))
    fs, root = fsspec.core.url_to_fs(uri)
    if not fs.exists(root):
        return [], {"files": files, "hashes": hashes}
    new: list[NewShard] = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith((".", "_")) or name.endswith(IN_PROGRESS_SUFFIXES):
            continue
        signature = _signature(entry)
        previous = files.get(name)
        if previous is not None and previous[:-1] == signature and entry.get("type") != "directory":
            continue
        entry_uri = fs.unstrip_protocol(entry["name"])
        digest = content_hash(entry_uri)
        files[name] = signature + [digest]
        if digest in hashes:
            continue  # same bytes as a shard already registered (possibly under another name)
        hashes[digest] = name
        new.append(NewShard(name, digest, entry_uri))
        if len(new) >= max_new:
            break
    return new, {"files": files, "hashes": hashes}
