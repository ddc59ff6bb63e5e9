"""Kernel interfaces Python 3.11 lacks (ctypes on libc): namespaces, mounts, capabilities, prctl.

Standard library only: it runs in the worker (see ``phi_assets.sandbox.worker``).
"""

from __future__ import annotations

import ctypes
import errno
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 1, 2
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_READ, PR_CAPBSET_DROP = 1, 4, 23, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 36, 38, 47, 4
_CAP_VERSION_3 = 0x20080522
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def unshare(flags: int) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def raw(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    _check(libc.mount(raw(source), raw(target), raw(fstype), flags, raw(data)), f"mount {target}")


def tmpfs(target: str, options: str, flags: int = 0) -> None:
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | flags, options)


def prctl(option: int, arg: int = 0) -> int:
    return _check(libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def mount_setattr(path: str, attrs: int) -> None:
    """Set ``attrs`` (MOUNT_ATTR_*) on the mount at ``path`` and every mount under it (Linux 5.12)."""
    attr = _MountAttr(attr_set=attrs)
    setattr_fn = getattr(libc, "mount_setattr", None)
    target, flags = os.fsencode(path), ctypes.c_uint(AT_RECURSIVE)
    args = (ctypes.c_int(AT_FDCWD), target, flags, ctypes.byref(attr), ctypes.c_size_t(32))
    if setattr_fn is not None:
        _check(setattr_fn(*args), "mount_setattr")
    else:
        _check(libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), *args), "mount_setattr")


def make_tree_read_only() -> str:
    """Every mount read-only and nosuid (mount_setattr, Linux 5.12); else / alone. Says which."""
    try:
        mount_setattr("/", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
        return "every mount read-only"
    except OSError as exc:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | kept_mount_flags("/")
        mount(None, "/", None, flags)
        return f"only / itself read-only ({exc.strerror}): other mounts keep their flags"


def make_read_only(path: str) -> None:
    """The bind mount at ``path`` and the mounts under it read-only and nosuid, whatever flags their source
    had: without mount_setattr, the bind mount itself (its source may be a mount the worker could not make
    read-only, or a writable tmpfs)."""
    try:
        mount_setattr(path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    except OSError:
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | kept_mount_flags(path))


def kept_mount_flags(path: str) -> int:
    """The flags a bind remount must repeat (a user namespace may not clear locked ones)."""
    flag = os.statvfs(path).f_flag
    pairs = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC))
    pairs += ((os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
    return sum(ms for st, ms in pairs if flag & st)


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets of this process."""
    cap = 0
    while libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EPERM:
            raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
        cap += 1
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")


def capabilities_left() -> int:
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    return sum(d.effective | d.permitted | d.inheritable for d in data)


def loopback_up() -> None:
    import fcntl
    import socket
    import struct

    siocsifflags, iff_up_loopback_running = 0x8914, 0x1 | 0x8 | 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), siocsifflags, struct.pack("16sH22x", b"lo", iff_up_loopback_running))


def setns(fd: int, nstype: int) -> None:
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")
