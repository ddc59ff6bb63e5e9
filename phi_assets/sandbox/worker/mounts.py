"""The worker's file tree: read-only, hidden directories, private tmpfs, Python's directories bound back.

``isolate_worker`` runs once per worker, ``isolate_program`` in each program's supervisor. Standard
library only: it runs in the worker (see ``phi_assets.sandbox.worker``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .kernel import (
    CLONE_NEWIPC,
    CLONE_NEWNS,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    libc,
    loopback_up,
    make_read_only,
    make_tree_read_only,
    mount,
    tmpfs,
    unshare,
)
from .protocol import SANDBOX_GID, SANDBOX_UID

#: Hidden from the program (an empty read-only tmpfs on top), except the Python directories inside them.
HIDDEN_DIRS = ("/root", "/home", "/run")
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
SMALL_TMPFS_MB = 16  # /var/tmp and /dev/shm


def isolate_worker(config: dict, notes: dict[str, str]) -> dict:
    """Once per worker: the read-only tree, hidden directories, loopback and hostname; what each program's
    supervisor is to bind back into its private tmpfs (Python's directories there)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    read_only = make_tree_read_only()
    dirs, links = python_dirs(), _python_links()
    hidden, shown = hide(hidden_dirs(config["homes"]), dirs, links=links)
    workdir = config["workdir"]
    if not any(_within(workdir, tmp) for tmp in PRIVATE_TMP):
        os.makedirs(workdir, exist_ok=True)  # a mount point for its tmpfs, even in a hidden directory
    for path in hidden:
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    try:
        loopback_up()
        notes["network"] = "private network namespace (no interfaces but its own loopback)"
    except OSError as exc:
        notes["network"] = f"private network namespace (no interfaces; loopback down: {exc.strerror})"
    libc.sethostname(b"sandbox", 7)
    exposed = _outermost([d for d in dirs if any(d != h and _within(d, h) for h in hidden)])
    hidden_note = f"hidden: {', '.join(hidden)}"
    if exposed:
        hidden_note += f" (Python's directories in them re-exposed read-only: {', '.join(exposed)})"
    if shown:
        hidden_note += f"; NOT hidden (they hold Python): {', '.join(shown)}"
    # A private tmp directory itself in sys.path is not bound back: the program's would be the host's.
    in_tmp = _outermost([d for d in dirs if any(d != tmp and _within(d, tmp) for tmp in PRIVATE_TMP)])
    tmp_note = f"private tmpfs {', '.join(PRIVATE_TMP)}"
    if in_tmp:
        tmp_note += f" (Python's directories in them bound back read-only: {', '.join(in_tmp)})"
    if unshared := [d for d in dirs if d in PRIVATE_TMP]:
        tmp_note += f" ({', '.join(unshared)} in Python's sys.path NOT bound back: it is private)"
    tmp_links = {link: target for link, target in links.items() if any(_within(link, t) for t in PRIVATE_TMP)}
    return {
        "read_only": read_only,
        "hidden": hidden_note,
        "tmp": tmp_note,
        "tmp_python": in_tmp,
        "tmp_links": tmp_links,
    }


def isolate_program(config: dict, limits: dict, root: bool, setup: dict, notes: dict[str, str]) -> None:
    """Per program, in the supervisor: fresh mount and IPC namespaces, /proc, private tmpfs; says what holds."""
    size = limits["workdir_mb"]
    unshare(CLONE_NEWNS | CLONE_NEWIPC)
    # The private tmpfs first: Python's directories in them are bound back through /proc/self/fd, which
    # the fallback below (no fresh /proc) would cover.
    for path in PRIVATE_TMP:
        if os.path.isdir(path) and not os.path.islink(path):
            mb = size if path == "/tmp" else min(size, SMALL_TMPFS_MB)
            _cover(path, f"size={mb}m,nr_inodes=16384,mode=1777", setup["tmp_python"], setup["tmp_links"])
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        proc_note = "a /proc of its own"
        ipc_note = _limit_ipc(size)  # while /proc is writable
        mount(None, "/proc", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError as exc:
        tmpfs("/proc", "size=4k,mode=555", MS_RDONLY | MS_NOEXEC)
        proc_note = f"/proc hidden (a fresh one cannot be mounted: {exc.strerror})"
        ipc_note = "System V IPC limits NOT set (no /proc)"
    workdir = config["workdir"]
    os.makedirs(workdir, exist_ok=True)
    owner = f",uid={SANDBOX_UID},gid={SANDBOX_GID}" if root else ""
    tmpfs(workdir, f"size={size}m,nr_inodes=16384,mode=700{owner}")
    notes["filesystem"] = (
        f"private mount namespace: {setup['read_only']}; writable: its working directory ({size} MiB tmpfs), "
        f"{setup['tmp']}; {setup['hidden']}"
    )
    notes["processes"] = (
        f"private PID namespace: it sees and can signal only its own processes, all killed when it ends; "
        f"{proc_note}"
    )
    notes["ipc"] = f"private IPC and UTS namespaces; {ipc_note}"


def _limit_ipc(size_mb: int) -> str:
    """Cap System V shared memory and message queues in the new IPC namespace (not counted by RLIMIT_AS)."""
    page = os.sysconf("SC_PAGE_SIZE")
    values = {"shmmax": size_mb << 20, "shmall": (size_mb << 20) // page, "shmmni": 64, "msgmni": 16}
    try:
        for name, value in values.items():
            fd = os.open(f"/proc/sys/kernel/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(value).encode())
            finally:
                os.close(fd)
    except OSError as exc:
        return f"System V IPC limits NOT set ({exc.strerror})"
    return f"System V shared memory at most {size_mb} MiB"


def hidden_dirs(homes: Sequence[str]) -> list[str]:
    found: list[str] = []
    for path in (*HIDDEN_DIRS, *homes):
        real = os.path.realpath(path)
        # HOME=/tmp or inside it: private anyway (each program gets an empty /tmp)
        if any(_within(tmp, real) or _within(real, tmp) for tmp in PRIVATE_TMP):
            continue
        if real != "/" and os.path.isdir(real) and not any(_within(real, seen) for seen in found):
            found = [seen for seen in found if not _within(seen, real)] + [real]
    return found


def _python_paths() -> set[str]:
    """Where the program's Python is, as Python names it (symbolic links not resolved): its prefixes, the
    executable's directory and that of the file it links to (a venv's bin/python points to its base
    interpreter, e.g. /usr/local/bin/python3.11), the sys.path directories."""
    candidates = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    if sys.executable:
        candidates |= {os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    candidates |= {entry for entry in sys.path if entry and os.path.isdir(entry)}
    return {os.path.abspath(path) for path in candidates if path}


def python_dirs() -> list[str]:
    """The directories the program's Python needs (``_python_paths``), symbolic links resolved."""
    return sorted({os.path.realpath(path) for path in _python_paths()})


def _python_links() -> dict[str, str]:
    """The symbolic links on the way to the program's Python (``_python_paths`` and sys.executable), each
    with its target. Where one lies in a directory the program gets an empty tmpfs on, it is made again
    there: the paths Python reports (sys.executable, sys.prefix) then resolve for the program too, as for
    a checkout reached through a link (/home/ci/repo -> /data/repo, /tmp/current -> /tmp/release-3)."""
    links: dict[str, str] = {}
    for path in _python_paths() | ({os.path.abspath(sys.executable)} if sys.executable else set()):
        _resolve(path, links)
    return links


def _resolve(path: str, links: dict[str, str], depth: int = 0) -> str:
    """``os.path.realpath(path)``, adding every symbolic link met to ``links`` (link -> target, the link's
    directory already resolved, so that no recorded link lies behind another)."""
    real = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            real = os.path.dirname(real)
            continue
        step = os.path.join(real, part)
        if depth < 40 and os.path.islink(step):  # 40: the kernel's own limit on links in one lookup
            target = os.readlink(step)
            links[step] = target
            real = _resolve(os.path.join(real, target), links, depth + 1)  # an absolute target restarts at /
        else:
            real = step
    return real


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _outermost(paths: Sequence[str]) -> list[str]:
    return sorted(p for p in set(paths) if not any(p != other and _within(p, other) for other in paths))


def hide(
    dirs: Sequence[str], keep: Sequence[str], can_rebind: bool = True, links: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Cover each dir with an empty tmpfs, bind-mounting back, read-only, the ``keep`` paths inside it and
    making the ``links`` inside it again (see ``_cover``).

    Returns (hidden, not hidden): a dir that is, or is inside, a kept path stays visible, and so does one
    holding kept paths when they cannot be bound back (no /proc/self/fd). Call ``mount(..., MS_REMOUNT |
    MS_BIND | MS_RDONLY)`` on the hidden ones once nothing more is to be created in them.
    """
    hidden, shown = [], []
    for path in dirs:
        inside = [k for k in keep if _within(k, path)]
        if any(_within(path, k) for k in keep) or (inside and not can_rebind):
            shown.append(path)
            continue
        _cover(path, "size=1m,nr_inodes=4096,mode=755", inside, links or {})
        hidden.append(path)
    return hidden, shown


def _cover(path: str, options: str, keep: Sequence[str], links: dict[str, str]) -> None:
    """Mount an empty tmpfs (``options``) on ``path``, then bind-mount back, read-only, the ``keep``
    directories strictly inside it (the outermost ones) and make the ``links`` inside it again; the rest
    of what ``path`` held stays invisible.

    Each kept directory is opened (O_PATH) before the tmpfs covers it and bound from /proc/self/fd. One
    that is gone is skipped: it is gone for the program's Python too. The directories leading to a kept
    one are made in the tmpfs (mode 755, owned by root where the evaluator is root).
    """
    kept = _outermost([k for k in keep if k != path and _within(k, path)])
    fds: list[tuple[str, int]] = []
    try:
        for target in kept:
            try:
                fds.append((target, os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
            except FileNotFoundError:
                continue
        tmpfs(path, options)
        for target, fd in fds:
            os.makedirs(target, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            make_read_only(target)  # as a bind it would keep its source's flags: the program must not write
    finally:
        for _, fd in fds:
            os.close(fd)
    for link, target in sorted(links.items()):
        if link != path and _within(link, path) and not any(_within(link, k) for k in kept):
            os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
            try:
                os.symlink(target, link)
            except FileExistsError:  # something was made there already, for another path: leave it
                pass
