"""Where the MBPP benchmark file comes from: the one resolution every consumer uses.

Decontamination (every corpus that can reach training), the SFT and preference data (MBPP's
training split) and evaluation (its test split) all read MBPP's ``mbpp.jsonl`` (974 tasks).
``resolve_mbpp`` finds it, in this order:

1. the configured path: the ``decontamination`` resource's ``mbpp_path``, else ``PHI_MBPP_PATH``.
   A configured path that is not a file is an error naming it (it is never silently replaced).
2. the cached copy ``$PHI_HOME/benchmarks/mbpp/mbpp.jsonl`` from an earlier download, even offline.
3. the Hugging Face Hub, when network access is allowed (``HF_HUB_OFFLINE`` is not set): the
   dataset ``google-research-datasets/mbpp``, config ``full`` (its four splits, all 974 tasks), at a
   pinned commit, converted to the published JSONL format (same records, same key order, same
   ``json.dumps`` formatting) and written atomically to the cache of step 2.
4. otherwise one ``MBPPUnavailable`` error that names both ways to provide it.

Run ``python -m phi_assets.common.mbpp_source`` to resolve it once (downloading it if needed and
allowed) and print the path; exit 2 with a one-line message when it cannot be had.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

HF_REPO = "google-research-datasets/mbpp"
# "Convert dataset to Parquet (#4)": the commit that put the full config's parquet files on main.
# Pinned, so every download gets the same bytes whatever is pushed to the dataset later.
HF_REVISION = "4bb6404fdc6cacfda99d4ac4205087b89d32030c"
# The full config's splits (task ids prompt 1-10, test 11-510, validation 511-600, train 601-974).
HF_FILES = tuple(f"full/{split}-00000-of-00001.parquet" for split in ("prompt", "test", "validation", "train"))
# The published mbpp.jsonl: these keys in this order, task ids 1..974 each once and in order.
KEYS = ("text", "code", "task_id", "test_setup_code", "test_list", "challenge_test_list")
NUM_TASKS = 974
# sha256 of the published file (google-research/google-research, mbpp/mbpp.jsonl), which the
# conversion reproduces byte for byte when the Hub's records are the published ones.
PUBLISHED_SHA256 = "0b7004a79cd62d9ec7ecdd5a6e5f0ef1210ff00b286df3c5d5b57bf38c58e19a"
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of a boolean environment variable


class MBPPUnavailable(ValueError):
    """MBPP is neither configured nor cached, and cannot be downloaded (offline, or the Hub failed)."""


def cache_path(home: str | Path | None = None) -> Path:
    """Where a downloaded copy is kept: ``<home>/benchmarks/mbpp/mbpp.jsonl`` (home: the profile's
    ``PHI_HOME``)."""
    if home is None:
        from phi_assets.common.profiles import load_profile

        home = load_profile().phi_home
    return Path(home) / "benchmarks" / "mbpp" / "mbpp.jsonl"


def configured_path(setting: str = "") -> str:
    """The configured MBPP path: ``setting`` (the resource's ``mbpp_path``), else ``PHI_MBPP_PATH``;
    "" when neither is set."""
    return setting or os.environ.get("PHI_MBPP_PATH", "")


def offline_reason() -> str | None:
    """Why the Hub may not be contacted, or None when it may.

    huggingface_hub reads ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) once, at import; the
    environment is read here as well so that a process which sets it later is offline too."""
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return f"{name}={os.environ[name]} is set"
    if constants.is_offline_mode():
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
    return None


def resolve_mbpp(setting: str = "", home: str | Path | None = None) -> Path:
    """The MBPP file to read (see the module docstring for the order).

    ``setting``: the resource's ``mbpp_path`` ("" = ``PHI_MBPP_PATH``); ``home``: where the cache lives
    (default: the active profile's ``PHI_HOME``). Raises ``ValueError`` for a configured path that is
    not a file or a download that is not MBPP, and ``MBPPUnavailable`` (a ``ValueError``) when MBPP
    can be had neither way."""
    configured = configured_path(setting)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            source = "the decontamination resource's mbpp_path" if setting else "PHI_MBPP_PATH"
            raise ValueError(f"{path}: MBPP file not found ({source} points here); set it to the mbpp.jsonl "
                             "of the MBPP dataset (974 tasks), or unset it to use the copy downloaded from "
                             "the Hugging Face Hub")
        return path.resolve()
    cached = cache_path(home)
    if cached.is_file():  # written atomically: present means complete
        return cached
    reason = offline_reason()
    if reason is not None:
        raise MBPPUnavailable(_unavailable(cached, f"network access is off ({reason})"))
    return download_mbpp(cached)


def _unavailable(cached: Path, why: str) -> str:
    return (f"the MBPP benchmark file (mbpp.jsonl, 974 tasks) is not available: {why} and none is configured "
            f"or cached. Either set PHI_MBPP_PATH (or the decontamination resource's mbpp_path) to mbpp.jsonl, "
            f"or allow network access to the Hugging Face Hub (unset HF_HUB_OFFLINE; HF_ENDPOINT and the proxy "
            f"variables apply) so that it is downloaded once from {HF_REPO} and cached at {cached}")


def download_mbpp(dest: Path) -> Path:
    """The full config's four parquet files from the Hub (pinned revision), converted and written
    atomically to ``dest``. The parquet files go to a temporary directory beside ``dest`` (deleted
    afterwards, so ``dest`` is the only copy kept and the user's Hugging Face cache is untouched)."""
    from huggingface_hub import constants, hf_hub_download

    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"MBPP: downloading {HF_REPO} (config full, revision {HF_REVISION[:7]}) from {constants.ENDPOINT} "
          f"to {dest}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as tmp:
        files = []
        for name in HF_FILES:
            try:
                files.append(hf_hub_download(HF_REPO, name, repo_type="dataset", revision=HF_REVISION,
                                             cache_dir=tmp))
            # Any failure of the Hub client (no route, DNS, HTTP status, proxy) means the same thing
            # here: MBPP cannot be had this way. The cause stays chained for whoever debugs it.
            except Exception as exc:
                why = f"downloading {name} from {constants.ENDPOINT} failed ({_root_cause(exc)})"
                raise MBPPUnavailable(_unavailable(dest, why)) from exc
        rows = hub_records(files)
        write_jsonl_atomically(jsonl_lines(rows), dest, scratch=Path(tmp))
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    if digest != PUBLISHED_SHA256:
        # The records passed every check; a difference in bytes means the Hub's copy differs from the
        # published file somewhere, which a reviewer of scores should know about.
        warnings.warn(f"{dest}: sha256 {digest} differs from the published mbpp.jsonl's {PUBLISHED_SHA256}; "
                      f"the records of {HF_REPO}@{HF_REVISION[:7]} are not byte-identical to it", stacklevel=2)
    return dest


def _root_cause(exc: BaseException) -> str:
    """The innermost error (``Connection refused`` rather than the Hub client's "cannot find the
    requested files in the local cache"), as ``Type: first line``."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def hub_records(files: Sequence[str | Path]) -> list[dict]:
    """The records of the full config's parquet files, checked and sorted by task id.

    Raises ``ValueError`` naming the file when a record lacks a field or has the wrong type, and
    when the task ids are not exactly 1..974."""
    import pyarrow.parquet as pq

    rows, where = [], {}
    for file in files:
        name = Path(file).name
        for row in pq.read_table(file).to_pylist():
            missing = [k for k in KEYS if k not in row]
            if missing:
                raise ValueError(f"{HF_REPO}@{HF_REVISION[:7]} {name}: no column {missing[0]!r}; not the MBPP "
                                 "full config")
            record = {k: row[k] for k in KEYS}
            problem = _type_problem(record)
            if problem:
                raise ValueError(f"{HF_REPO}@{HF_REVISION[:7]} {name}: task {record['task_id']!r}: {problem}")
            if record["task_id"] in where:
                raise ValueError(f"{HF_REPO}@{HF_REVISION[:7]}: task {record['task_id']} is in both "
                                 f"{where[record['task_id']]} and {name}")
            where[record["task_id"]] = name
            rows.append(record)
    ids, expected = set(where), set(range(1, NUM_TASKS + 1))
    if ids != expected:
        raise ValueError(f"{HF_REPO}@{HF_REVISION[:7]}: {len(rows)} tasks, expected task ids 1..{NUM_TASKS} "
                         f"(missing e.g. {sorted(expected - ids)[:5]}, "
                         f"unexpected e.g. {sorted(ids - expected)[:5]})")
    return sorted(rows, key=lambda r: r["task_id"])


def _type_problem(record: dict) -> str | None:
    if isinstance(record["task_id"], bool) or not isinstance(record["task_id"], int):
        return "task_id is not an integer"
    for key in ("text", "code", "test_setup_code"):
        if not isinstance(record[key], str):
            return f"{key} is not a string"
    for key in ("test_list", "challenge_test_list"):
        if not isinstance(record[key], list) or not all(isinstance(t, str) for t in record[key]):
            return f"{key} is not a list of strings"
    return None


def jsonl_lines(rows: Iterable[dict]) -> Iterator[str]:
    """The published file's formatting: ``json.dumps`` defaults (ASCII, ``", "`` and ``": "``), keys in
    ``KEYS`` order, one record per ``\\n``-terminated line."""
    for row in rows:
        yield json.dumps({k: row[k] for k in KEYS}) + "\n"


def write_jsonl_atomically(lines: Iterable[str], dest: Path, scratch: Path | None = None) -> None:
    """Write to a temporary file, flush it to disk, then rename it onto ``dest``: a process killed on
    the way leaves no file at ``dest``, so a file there is always complete. ``scratch`` (default:
    ``dest``'s directory) must be on ``dest``'s file system for the rename to be atomic."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=scratch or dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phi_assets.common.mbpp_source",
                                     description="Find MBPP's mbpp.jsonl (downloading it once if needed and "
                                                 "allowed) and print its path.")
    parser.parse_args(argv)
    try:
        path = resolve_mbpp()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
