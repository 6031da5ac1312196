"""The root's fixed entries: symlinks and generated files, as small plugins (spec §4.2, §8).

They take priority over tree entries of the same name at the root, and have fixed inode numbers
in a range tree inodes never reach.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from ..permissions import generated_mode

FIXED_INODE_BASE = 1 << 62


@dataclass(slots=True)
class Symlink:
    name: str
    inode: int
    suffix: str  # appended to nodes/<nodename>

    def target(self, nodename: str) -> bytes:
        return f"nodes/{nodename}{self.suffix}".encode()


class GeneratedError(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(err)
        self.errno = err


@dataclass(slots=True)
class Generated:
    """A file whose text is made on demand; `write` is None for read-only ones."""

    name: str
    inode: int
    mode: int
    render: Callable[[], bytes]
    write: Callable[[bytes, int], int] | None = None

    def safe_render(self) -> bytes:
        try:
            return self.render()
        except Exception:
            return b""  # the reference shows an empty file when generation fails


class Namespace:
    """Lookup table of the fixed root entries by name and by inode."""

    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.by_name: dict[bytes, Symlink | Generated] = {}
        self.by_inode: dict[int, Symlink | Generated] = {}
        self.order: list[Symlink | Generated] = []
        for i, (name, suffix) in enumerate(
            (("local", ""), ("qemu-server", "/qemu-server"), ("lxc", "/lxc"), ("openvz", "/openvz"))
        ):
            self._add(Symlink(name, FIXED_INODE_BASE + i, suffix))

    def _add(self, obj: Symlink | Generated) -> None:
        self.by_name[obj.name.encode()] = obj
        self.by_inode[obj.inode] = obj
        self.order.append(obj)

    def add_generated(
        self,
        name: str,
        render: Callable[[], bytes],
        write: Callable[[bytes, int], int] | None = None,
        mode: int | None = None,
    ) -> None:
        """`mode` (permission bits) defaults to the rule for read-only or writable ones."""
        if mode is None:
            mode = generated_mode(write is not None)
        self._add(Generated(name, FIXED_INODE_BASE + 16 + len(self.order), mode, render, write))

    def is_fixed_name(self, name: str) -> bool:
        return name.encode() in self.by_name


def debug_writer(
    get: Callable[[], bool], set_: Callable[[bool], None]
) -> Callable[[bytes, int], int]:
    """`.debug`: only "0\\n"/"1\\n" at offset 0 are accepted, and 2 bytes are consumed (Q9)."""

    def write(data: bytes, offset: int) -> int:
        if offset != 0 or len(data) < 2:
            raise GeneratedError(errno.EIO)
        head = data[:2]
        if head == b"0\n":
            set_(False)
        elif head == b"1\n":
            set_(True)
        else:
            raise GeneratedError(errno.EIO)
        return 2

    return write
