"""Processes the tests start or look for: free loopback ports, the engine's vLLM children, process groups."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_worker_pids() -> list[int]:
    """Processes running the engine's vLLM child (``vllm_backend.CHILD``, whose text names the module)."""
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
