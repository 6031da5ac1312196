"""Process plumbing of the daemon: node identity, instance lock, PID file, restart flag,
mount point preparation and the fork-with-ready-pipe protocol (spec §9.2, §9.5).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import tempfile
import time

log = logging.getLogger("pmxcfs.main")

MNT_FORCE = 1
MNT_DETACH = 2


class StartupError(Exception):
    """Startup cannot go on; the message is logged and the process exits 255."""


def nodename_from_host() -> str:
    return os.uname().nodename.split(".", 1)[0]


def resolve_node_ip(nodename: str) -> str:
    try:
        infos = socket.getaddrinfo(nodename, None, 0, socket.SOCK_STREAM, 0, socket.AI_ALL)
    except OSError as exc:
        raise StartupError(f"Unable to resolve node name '{nodename}': {exc}") from exc
    for family, _, _, _, sa in infos:
        addr = str(sa[0])
        if family == socket.AF_INET and not addr.startswith("127."):
            return addr
        if family == socket.AF_INET6 and addr != "::1" and not addr.startswith("::ffff:127."):
            return addr
    raise StartupError(
        f"Unable to resolve node name '{nodename}' to a non-loopback IP address - "
        "missing entry in '/etc/hosts' or DNS?"
    )


def acquire_lock(path: str, tries: int = 11) -> int:
    """The instance lock; the fd stays open (and locked) for the process lifetime."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise StartupError(f"unable to acquire pmxcfs lock: {exc.strerror}") from exc
            if attempt == 0:
                log.error("unable to acquire pmxcfs lock - trying again")
            if attempt + 1 < tries:
                time.sleep(1)
    os.close(fd)
    raise StartupError("unable to acquire pmxcfs lock: Resource temporarily unavailable")


def write_pid_file(path: str, pid: int) -> None:
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", dir=d)
    try:
        os.write(fd, f"{pid}\n".encode())
        os.fchmod(fd, 0o644)
        os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def create_restart_flag(path: str, gid: int) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o444)
        os.fchown(fd, 0, gid)
        os.close(fd)
    except OSError as exc:
        log.warning("unable to create restart flag '%s': %s", path, exc)


_libc = ctypes.CDLL(None, use_errno=True)


def force_unmount(path: str) -> None:
    """Clear a stale mount left by a crashed instance (errors are expected and ignored)."""
    _libc.umount2(path.encode(), MNT_FORCE)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            _libc.umount2(path.encode(), MNT_DETACH)


def prepare_mountpoint(path: str) -> None:
    force_unmount(path)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StartupError(f"unable to create mount point '{path}': {exc.strerror}") from exc
    try:
        if os.listdir(path):
            raise StartupError("fuse_mount error: File exists")
    except OSError as exc:
        raise StartupError(f"fuse_mount error: {exc.strerror}") from exc


class ReadyPipe:
    """Fork; the parent waits for the child's b"1", writes the PID file and exits 0."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def ready(self) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, b"1")
        finally:
            os.close(self.fd)
            self.fd = None


def daemonize(pid_file: str) -> ReadyPipe:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        try:
            got = os.read(rfd, 1)
        except OSError:
            got = b""
        if got != b"1":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os._exit(255)
        write_pid_file(pid_file, pid)
        os._exit(0)
    os.close(rfd)
    os.chroot("/")
    os.setsid()
    return ReadyPipe(wfd)


def detach_stdio() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)
