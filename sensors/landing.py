"""Scan a landing prefix (local path or fsspec URI) for new shard objects, from listings only. Dagster-free.

An object is identified by what the store's listing already knows (``shards.listing_identity``): its
name, size and ETag or version id where the store has one (s3, gcs, azure), else its modification
time; a directory shard by the names, sizes and ETags/mtimes of the files under it. The scan lists
(``ls(detail=True)``, and ``find(detail=True)`` for a directory) and never opens an object, so a
tick costs the same over a multi-GB object as over a small one. The content hash is the ingest
step's business (``shards.shard_fingerprint``, its data versioning input).

An object is new when its identity differs from the one the state recorded for its name: a new
name, or new bytes under an old name (a changed size, mtime or ETag). A touched file (new mtime, same
bytes) is new too: its ingest run hashes the bytes, finds the content hash its partition's version was
built from, and skips the work (``materialize_versioned``). A renamed copy of known bytes is a new
name, so a partition of its own, ingested as such; its documents keep the original's ids, and dedup
removes them as exact duplicates. (Before, the tick hashed every new object to spot both cases.)

The state is bounded by the landing area, not by its history: per source, ``{"seen": {name:
identity}}`` for the names of the latest listing only (a name that left the landing area leaves the
state). With ``max_new`` reached, the rest of the listing is not identified this tick: names already in
the state keep their recorded identity, unknown ones stay out of it, so the next tick reports them.
A state of the earlier, content-hashing scan (``{"files": ..., "hashes": ...}``) is read once: its
files whose size and mtime are unchanged count as seen.

Names that start with ``.`` or ``_`` or end in ``.tmp``/``.part`` are in-progress uploads and are
ignored: write elsewhere and move into the landing area.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec

from phi_assets.ingest.shards import listing_identity

IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".crdownload", ".inprogress")


@dataclass(frozen=True)
class NewShard:
    name: str
    identity: str  # listing_identity: name, size, ETag or mtime (never the content)
    uri: str


def is_in_progress(name: str) -> bool:
    return name.startswith((".", "_")) or name.endswith(IN_PROGRESS_SUFFIXES)


def _legacy_seen(fs: fsspec.AbstractFileSystem, entries: list[dict[str, Any]], state: dict[str, Any]) -> dict:
    """A cursor of the content-hashing sensor (``{"files": {name: [size, mtime, type, hash]}, "hashes":
    ...}``) read as identities: files whose size and mtime it recorded are known; the rest, new."""
    files = state.get("files") or {}
    seen = {}
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        old = files.get(name)
        mtime = entry.get("mtime") or entry.get("LastModified") or entry.get("updated") or ""
        if old is not None and entry.get("type") != "directory" and \
                old[:-1] == [entry.get("size"), str(mtime), entry.get("type")]:
            seen[name] = listing_identity(fs, entry)
    return seen


def scan_landing(uri: str, state: dict[str, Any], max_new: int = 100) -> tuple[list[NewShard], dict]:
    """Return the new shards under ``uri`` (at most ``max_new``, by name) and the updated state
    (``{"seen": {name: identity}}``, the names of this listing only)."""
    fs, root = fsspec.core.url_to_fs(uri)
    if not fs.exists(root):
        return [], {"seen": {}}
    entries = [e for e in fs.ls(root, detail=True)
               if not is_in_progress(e["name"].rstrip("/").rsplit("/", 1)[-1])]
    entries.sort(key=lambda e: e["name"])
    previous = state.get("seen")
    if previous is None:
        previous = _legacy_seen(fs, entries, state) if "files" in state else {}
    seen: dict[str, str] = {}
    new: list[NewShard] = []
    for entry in entries:
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if len(new) >= max_new:  # not identified this tick: keep what was known, report the rest next
            if name in previous:
                seen[name] = previous[name]
            continue
        identity = listing_identity(fs, entry)
        seen[name] = identity
        if previous.get(name) != identity:
            new.append(NewShard(name, identity, fs.unstrip_protocol(entry["name"].rstrip("/"))))
    return new, {"seen": seen}
