"""The modes the mounted filesystem shows, and the chmod/chown it accepts (spec §4.3, §4.4, §5).

Pure functions of a memdb path, the kind of entry and quorum: nothing here knows FUSE or the
tree. Which paths are private and which names are openvz scripts are path rules, owned by
:mod:`pmxcfs.paths`; this module owns what they mean for modes. The FUSE layer and
`pmxcfs-admin ls` both ask it, so the two always show the same modes.

Every entry is owned by root and the www-data group, and the kernel enforces access from these
modes (default_permissions): a raw mode by kind and quorum, then a mask by path.
"""

from __future__ import annotations

import stat

from . import paths

OWNER_UID = 0  # every entry's owner; the group is www-data's gid, looked up at startup
UNCHANGED = 0xFFFFFFFF  # chown's "leave as is" (-1) as FUSE hands it over

_PRIVATE_MASK = 0o700  # priv/ and nodes/<node>/priv/: root only
_DIR_MASK = 0o755  # directories and symlinks elsewhere
_FILE_MASK = 0o750  # every other file elsewhere
_CHMOD_PRIVATE = 0o600  # the only mode chmod accepts on a private path
_CHMOD_OTHER = 0o640  # ... and on any other path, directories included

#: The mount point itself: raw 0777 whatever the quorum, masked like any directory.
ROOT_MODE = stat.S_IFDIR | (0o777 & _DIR_MASK)
#: Permission bits of the generated files: read-only ones, and `.debug` that can be written.
GENERATED_MODE = 0o440
WRITABLE_GENERATED_MODE = 0o640


def _raw_dir(quorate: bool) -> int:
    """Not quorate, nothing may be written: the write bits go."""
    return 0o777 if quorate else 0o555


def entry_mode(path: str, is_dir: bool, quorate: bool) -> int:
    """st_mode of the tree entry at `path` (memdb form; "" is the root)."""
    if not path:
        return ROOT_MODE
    private = paths.is_private(path)
    if is_dir:
        return stat.S_IFDIR | (_raw_dir(quorate) & (_PRIVATE_MASK if private else _DIR_MASK))
    raw = 0o666 if quorate else 0o444
    if paths.is_openvz_script(path.rpartition("/")[2]):
        raw |= stat.S_IXUSR
    return stat.S_IFREG | (raw & (_PRIVATE_MASK if private else _FILE_MASK))


def symlink_mode(quorate: bool) -> int:
    """st_mode of the root's symlinks (`local`, `qemu-server`, `lxc`, `openvz`)."""
    return stat.S_IFLNK | (_raw_dir(quorate) & _DIR_MASK)


def generated_mode(writable: bool) -> int:
    """Permission bits of a generated file; quorum does not change them."""
    return WRITABLE_GENERATED_MODE if writable else GENERATED_MODE


def chmod_allowed(path: str, mode: int) -> bool:
    """chmod never changes a mode: it succeeds, changing nothing, only when asked for the one
    mode the path stands for (0600 private, else 0640, directories included), else EPERM."""
    wanted = _CHMOD_PRIVATE if paths.is_private(path) else _CHMOD_OTHER
    return mode & 0o7777 == wanted


def chown_allowed(uid: int, gid: int, owner_gid: int) -> bool:
    """chown succeeds, changing nothing, only towards root and the www-data group."""
    return uid in (OWNER_UID, UNCHANGED) and gid in (owner_gid, UNCHANGED)
