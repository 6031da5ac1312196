"""Pure rules over memdb paths: splitting and normalizing, which paths are private, VM configs,
openvz script names and locks (spec §3.3, §5, §6, §7).

They classify paths and nothing more; what a class means for modes and chmod is owned by
:mod:`pmxcfs.permissions`, and who may read a private path over IPC by :mod:`pmxcfs.ipc.ops`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .constants import LOCK_DIR

VM_KINDS: dict[str, str] = {"qemu-server": "qemu", "lxc": "lxc", "openvz": "openvz"}
_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_VMID_CONF = re.compile(r"([1-9][0-9]*)\.conf\Z")
_OPENVZ_SCRIPT = re.compile(
    r"(?:vps|[1-9][0-9]*)\.(?:mount|umount|start|stop|premount|postumount)\Z"
)
# components, empty ones ignored: "priv" first, or "nodes", any one, "priv"
_PRIVATE = re.compile(r"/*(?:priv|nodes/+[^/]+/+priv)(?:/|\Z)")
_MAX_VMID = 0xFFFFFFFF
_LOCK_PREFIX = LOCK_DIR + "/"


def components(path: str) -> list[str]:
    """Split on '/' ignoring empty components; [] is the root."""
    return [c for c in path.split("/") if c]


def split_parent(path: str) -> tuple[str, str]:
    """dirname/basename after stripping trailing slashes (GLib semantics, '.' for no dir)."""
    p = path.rstrip("/")
    if "/" not in p:
        return ".", p
    head, _, base = p.rpartition("/")
    return head or "/", base


def bad_basename(name: str) -> bool:
    return name in ("", ".", "..")


def normalize(path: str) -> str:
    """Canonical memdb form: no leading, trailing or doubled slashes."""
    return "/".join(components(path))


def is_private(path: str) -> bool:
    """priv/... and nodes/<x>/priv/..., matched per component: the one privacy rule, for the
    modes the filesystem shows and for what IPC hands to read-only clients. (One regex: it
    runs for every attribute the filesystem makes.)"""
    return _PRIVATE.match(path) is not None


def is_ldh(name: str) -> bool:
    return _LDH.match(name) is not None


class VmConfig(NamedTuple):
    node: str
    vmtype: str
    vmid: int


def parse_vm_config(path: str) -> VmConfig | None:
    """nodes/<ldh>/<qemu-server|lxc|openvz>/<vmid>.conf exactly, else None."""
    parts = components(path)
    if len(parts) != 4 or parts[0] != "nodes":
        return None
    vmtype = VM_KINDS.get(parts[2])
    if vmtype is None or not is_ldh(parts[1]):
        return None
    m = _VMID_CONF.match(parts[3])
    if m is None:
        return None
    vmid = int(m.group(1))
    if vmid > _MAX_VMID:
        return None
    return VmConfig(parts[1], vmtype, vmid)


def is_openvz_script(name: str) -> bool:
    return _OPENVZ_SCRIPT.match(name) is not None


def is_under_lock_dir(path: str) -> bool:
    """Any path below priv/lock/ (at least one more character), the wire rule of §7."""
    p = path.lstrip("/")
    return p.startswith(_LOCK_PREFIX) and len(p) > len(_LOCK_PREFIX)


def is_lock_child(path: str) -> bool:
    """A direct child of priv/lock: the only entries the lock table tracks."""
    parts = components(path)
    return len(parts) == 3 and parts[0] == "priv" and parts[1] == "lock"
