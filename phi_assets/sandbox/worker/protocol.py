"""What the evaluator and its workers share: ids, the worker's command and environment, the socket messages.

Standard library only: the worker imports it too (see ``phi_assets.sandbox.worker``).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
from collections.abc import Sequence

#: The host uid and gid a program runs as when the evaluator is root (nobody, nogroup).
SANDBOX_UID = 65534
SANDBOX_GID = 65534

WORKER_FLAG = "--sandbox-worker"
#: The worker's entry point: ``python -I -B WORKER_MAIN WORKER_FLAG FD``.
WORKER_MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
SCRUBBED_ENV_KEYS = ("PATH", "LANG", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED")
GRACE_S = 2.0  # after the kill (or the supervisor's exit), how long output may still drain


def scrubbed_env(workdir: str) -> dict[str, str]:
    """The program's whole environment: nothing is inherited from the evaluator's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


def send_message(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    for _ in range(2):
        try:
            socket.send_fds(sock, [data], list(fds))
            return
        except BlockingIOError:  # the evaluator's end is non-blocking; the worker reads it at once
            _wait_writable(sock, GRACE_S)
    raise BrokenPipeError("the sandbox worker does not read its socket")


def _wait_writable(sock: socket.socket, timeout: float) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        selector.select(timeout)


def receive_message(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message (SOCK_SEQPACKET keeps them apart) and the fds sent with it; None at end of file."""
    data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 8, socket.MSG_CMSG_CLOEXEC)
    if not data:
        return None, fds
    message = json.loads(data)
    return (message if isinstance(message, dict) else {}), fds


def remove_tree(path: str) -> None:
    """Remove the working directory, whatever the program did to the permissions inside it."""
    import shutil

    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError:
        _make_dirs_accessible(path)
        shutil.rmtree(path, ignore_errors=True)


def _make_dirs_accessible(path: str) -> None:
    try:
        os.chmod(path, 0o700)
        with os.scandir(path) as entries:
            subdirs = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for subdir in subdirs:
        _make_dirs_accessible(subdir)
