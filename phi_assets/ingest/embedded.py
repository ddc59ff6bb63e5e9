"""Embedded default corpora: real text that exists on any fresh install, without network.

- code: the running Python's standard library source files, split into shards by a hash of the
  file's path (stable across machines with the same Python).
- web: documentation that ships inside installed packages: each distribution's long description
  in ``*.dist-info/METADATA`` (the package's index page), and Python's pydoc topics.

Partition keys: ``embedded:stdlib-NN`` (code), ``embedded:pkgdocs-NN`` and ``embedded:pydoc-topics``
(web). How many shards, and what fraction of files, comes from the profile's ``Sizes``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from phi_assets.common.profiles import Sizes
from phi_assets.ingest.readers import Item, ReaderOptions, Record, read_source_files

PREFIX = "embedded:"
EXCLUDED_DISTRIBUTIONS = {"phi-factory"}  # our own package: its README is not third-party docs
STDLIB_LICENSE = "PSF-2.0"


def _bucket(name: str, buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % buckets


def _sampled(name: str, every: int) -> bool:
    return every == 1 or _bucket("sample:" + name, every) == 0


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(shard: int, sizes: Sizes) -> list[tuple[str, str]]:
    """(absolute path, path relative to the stdlib) of one stdlib shard, sorted."""
    root = stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or not _sampled(rel, sizes.code_sample_every):
            continue
        if _bucket(rel, sizes.num_code_shards) == shard:
            out.append((str(path), rel))
    return out


def _distributions() -> list[importlib.metadata.Distribution]:
    seen, out = set(), []
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name and name not in seen and name not in EXCLUDED_DISTRIBUTIONS:
            seen.add(name)
            out.append(dist)
    return sorted(out, key=lambda d: d.metadata["Name"].lower())


def _description(dist: importlib.metadata.Distribution) -> str | None:
    meta = dist.metadata
    body = meta.get_payload() if hasattr(meta, "get_payload") else None
    return body or meta.get("Description")


def package_doc_records(shard: int, sizes: Sizes) -> Iterator[Item]:
    for dist in _distributions():
        name = dist.metadata["Name"]
        key = name.lower().replace("_", "-")
        if _bucket(key, sizes.num_web_shards) != shard or not _sampled(key, sizes.web_sample_every):
            continue
        meta = dist.metadata
        yield Record(
            text=_description(dist),
            uri=f"https://pypi.org/project/{key}/{dist.version}/",
            position=f"{key}/METADATA",
            license=meta.get("License-Expression") or meta.get("License"),
            meta={
                "package": name,
                "version": dist.version,
                "content_type": meta.get("Description-Content-Type"),
                "summary": meta.get("Summary"),
            },
        )


def pydoc_topic_records() -> Iterator[Item]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Record(topics[name], f"pydoc:topics/{name}", name, STDLIB_LICENSE, {"topic": name})


def embedded_keys(source: str, sizes: Sizes) -> list[str]:
    if source == "code":
        return [f"{PREFIX}stdlib-{i:02d}" for i in range(sizes.num_code_shards)]
    pkg = [f"{PREFIX}pkgdocs-{i:02d}" for i in range(sizes.num_web_shards)]
    return pkg + [f"{PREFIX}pydoc-topics"]


def _shard_index(key: str, stem: str, count: int) -> int:
    try:
        index = int(key.removeprefix(f"{PREFIX}{stem}-"))
    except ValueError:
        index = -1
    if not 0 <= index < count:
        raise ValueError(f"unknown embedded shard {key!r}: expected {stem}-00..{count - 1:02d}")
    return index


def embedded_records(source: str, key: str, sizes: Sizes, options: ReaderOptions) -> Iterator[Item]:
    if source == "code":
        files = stdlib_files(_shard_index(key, "stdlib", sizes.num_code_shards), sizes)
        return read_source_files(files, STDLIB_LICENSE, options)
    if key == f"{PREFIX}pydoc-topics":
        return pydoc_topic_records()
    return package_doc_records(_shard_index(key, "pkgdocs", sizes.num_web_shards), sizes)


def embedded_fingerprint(source: str, key: str, sizes: Sizes) -> str:
    """Content hash of an embedded shard's inputs, without parsing them."""
    h = hashlib.sha256(f"{source}|{key}|{sorted(sizes.embedded().items())}".encode())
    if source == "code":
        for path, rel in stdlib_files(_shard_index(key, "stdlib", sizes.num_code_shards), sizes):
            h.update(rel.encode() + b"\0" + Path(path).read_bytes())
    else:
        for item in embedded_records(source, key, sizes, ReaderOptions()):
            h.update(f"{item.uri}\0{item.text}\0".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]
