"""Small real input files for reader tests; finding the engine's vLLM processes; a failed step's error;
a copy of a demo home."""

from __future__ import annotations

import gzip
import os
import shutil
import sysconfig
import uuid
from pathlib import Path

IDLE_HELP = Path(sysconfig.get_paths()["stdlib"]) / "idlelib" / "help.html"  # real Sphinx HTML
#: The sensors the code location runs (docs/retraining-loop.md).
SENSORS = frozenset({
    "shard_sensor",
    "automation_sensor",
    "mixture_retraining_sensor",
    "checkpoint_eval_sensor",
    "eval_regression_sensor",
    "run_failure_sensor",
})


def warc_record(uri: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> bytes:
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\n"
            f"WARC-Date: 2026-11-01T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def write_warc(path: Path, records: list[tuple[str, bytes, str]], gz: bool) -> Path:
    with open(path, "wb") as f:
        for uri, body, ctype in records:
            rec = warc_record(uri, body, ctype)
            f.write(gzip.compress(rec) if gz else rec)  # one gzip member per record, as CC does
    return path


def vllm_worker_pids() -> list[int]:
    """Processes running the engine's vLLM child (``python -m resources.llm.vllm_backend``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"resources.llm.vllm_backend" in cmd:  # zombies have no cmdline
            pids.append(int(proc.name))
    return pids


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def step_error(result) -> str:
    """The failed step's error messages of an in-process run, its causes' included."""
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def copy_home(source: Path, target: Path) -> None:
    """A copy of a home that leaves ``source`` as it was: artifacts, training runs and models hard-linked
    (versions are immutable; pointers are replaced, never edited), the Dagster instance and the rest
    copied."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_dir():
            link = entry.name in ("artifacts", "runs", "models")
            shutil.copytree(
                entry, target / entry.name, copy_function=os.link if link else shutil.copy2, symlinks=True
            )
        else:
            shutil.copy2(entry, target / entry.name)
