"""The `pve2` IPC operations, sans I/O (status-ipc §6.2-§6.6).

`handle(state, peer, request)` takes one whole request (16-byte header included) and returns
`(error, payload)`: error is 0 or a negative errno, and the payload is empty on error. The
transport (libqb, see `server.py`) adds the 24-byte response header.

Deliberate differences from C (all but the last on malformed input only):

* the header's size must equal the request's length (C trusts the size field): -EINVAL;
* LOG_CLUSTER_MSG needs ident and tag of at least one byte and a NUL as the last request
  byte (C reads the byte after the request, §6.4);
* GET_RRD_DUMP always answers like a fresh C dump (text plus one NUL), never like its
  2-second cache (no NUL); Perl accepts both;
* GET_GUEST_CONFIG_PROPERTY/PROPERTIES for VMID 0 list the guests by VMID, where C lists
  them in its hash table's order (each guest's object is the same).

Everything else, odd corners included, answers as the reference binary does
(tests/test_ipc_reference.py asks both).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cstr import c_str
from ..paths import VM_KINDS, is_private
from ..status.clusterlog import ClusterLog
from ..status.render import render_members, render_rrd, render_version_bytes, render_vmlist
from ..status.state import ClusterStatus
from ..tree import Tree

if TYPE_CHECKING:
    from ..kvstore.service import KvstoreService

HEADER = struct.Struct("=i4xi4x")  # struct qb_ipc_request_header
HEADER_SIZE = HEADER.size  # 16

GET_FS_VERSION = 1
GET_CLUSTER_INFO = 2
GET_GUEST_LIST = 3
SET_STATUS = 4
GET_STATUS = 5
GET_CONFIG = 6
LOG_CLUSTER_MSG = 7
GET_CLUSTER_LOG = 8
GET_RRD_DUMP = 10
GET_GUEST_CONFIG_PROPERTY = 11
VERIFY_TOKEN = 12
GET_GUEST_CONFIG_PROPERTIES = 13

NAME_FIELD = 256  # char name[256] of SET_STATUS / GET_STATUS
TOKEN_CFG = "priv/token.cfg"

Reply = tuple[int, bytes]
_OK: Reply = (0, b"")


def _err(code: int) -> Reply:
    return -code, b""


@dataclass(frozen=True, slots=True)
class Peer:
    """A connected client: kernel credentials and whether it may only read (§6.3)."""

    uid: int
    gid: int
    pid: int
    readonly: bool


def check_access(uid: int, gid: int, pid: int, www_gid: int) -> Peer | None:
    """§6.3: root:root has full access, group www-data reads, everyone else is refused."""
    if uid == 0 and gid == 0:
        return Peer(uid, gid, pid, readonly=False)
    if gid == www_gid:
        return Peer(uid, gid, pid, readonly=True)
    return None


@dataclass
class IpcState:
    """What the operations read and change.

    In cluster mode set `kvstore`: SET_STATUS and LOG_CLUSTER_MSG then go through the
    status group so they replicate; without it they apply to `status`/`clog` directly.
    """

    tree: Tree
    status: ClusterStatus
    clog: ClusterLog
    kvstore: KvstoreService | None = None
    #: GET_GUEST_LIST's last answer: (the VmList.ids dict it was rendered from, its version,
    #: the reply); holding the dict keeps its identity from being reused
    _guest_list: tuple[Any, int, bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def guest_list(self) -> bytes:
        """`.vmlist` as GET_GUEST_LIST answers it, rendered again only when it changed.

        VmList changes its `ids` in place only together with a `version` bump (register,
        remove) and otherwise replaces the dict (rebuild), so the dict's identity and the
        version say whether the last rendering still holds.
        """
        vmlist = self.tree.vmlist
        ids, version = vmlist.ids, vmlist.version
        cached = self._guest_list
        if cached is not None and cached[0] is ids and cached[1] == version:
            return cached[2]
        reply = render_vmlist(vmlist).encode()
        self._guest_list = (ids, version, reply)
        return reply

    def set_status(self, key: bytes, value: bytes) -> int:
        if self.kvstore is not None:
            return self.kvstore.set_status(key, value)
        return self.status.set_status(key, value)

    def log(self, ident: bytes, tag: bytes, priority: int, msg: bytes, pid: int) -> None:
        if self.kvstore is not None:
            self.kvstore.log(ident, tag, priority, msg, pid)
        else:
            self.clog.add_local(ident, tag, priority, msg, pid)


def _field(payload: bytes, start: int) -> bytes:
    """A char[256] field whose byte 255 is forced to NUL."""
    return c_str(payload[start : start + NAME_FIELD - 1])


# ---------------------------------------------------------------------- dispatch


def handle(state: IpcState, peer: Peer, request: bytes) -> Reply:
    """One request → (error, payload)."""
    if len(request) < HEADER_SIZE:
        return _err(errno.EINVAL)
    op, size = HEADER.unpack_from(request)
    if size != len(request):
        return _err(errno.EINVAL)
    fn = _OPS.get(op)
    if fn is None:
        return _err(errno.ECHRNG)
    return fn(state, peer, request[HEADER_SIZE:])


def _no_payload(render: Callable[[IpcState], bytes]) -> Callable[[IpcState, Peer, bytes], Reply]:
    def op(state: IpcState, peer: Peer, payload: bytes) -> Reply:
        if payload:
            return _err(errno.EINVAL)
        return 0, render(state)

    return op


def _set_status(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if peer.readonly:
        return _err(errno.EPERM)
    if len(payload) < NAME_FIELD:
        return _err(errno.EINVAL)
    return state.set_status(_field(payload, 0), payload[NAME_FIELD:]), b""


def _get_status(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if len(payload) < 2 * NAME_FIELD:
        return _err(errno.EINVAL)
    key = _field(payload, 0)
    node = _field(payload, NAME_FIELD).decode("utf-8", "surrogateescape")
    data = state.status.get_status(key, node)
    if data is None:
        return _err(errno.ENOENT)
    return 0, data


def _get_config(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if not payload:
        return _err(errno.EINVAL)
    path = c_str(payload[:-1]).decode("utf-8", "surrogateescape")
    if peer.readonly and is_private(path):
        return _err(errno.EPERM)
    e = state.tree.lookup(path)
    if e is None or e.is_dir:
        return _err(errno.ENOENT)
    return 0, e.data


def _log_cluster_msg(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if peer.readonly:
        return _err(errno.EPERM)
    if len(payload) < 3:
        return _err(errno.EINVAL)
    priority, ident_len, tag_len = payload[0], payload[1], payload[2]
    msg_start = 3 + ident_len + tag_len
    if ident_len < 1 or tag_len < 1 or len(payload) - msg_start < 1:
        return _err(errno.EINVAL)
    if payload[3 + ident_len - 1] != 0 or payload[msg_start - 1] != 0 or payload[-1] != 0:
        return _err(errno.EINVAL)
    if priority >= 8:
        return _OK  # C: success, nothing logged
    ident = c_str(payload[3 : 3 + ident_len])
    tag = c_str(payload[3 + ident_len : msg_start])
    msg = c_str(payload[msg_start:])
    state.log(ident, tag, priority, msg, peer.pid)
    return _OK


def _get_cluster_log(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if len(payload) < 17:  # u32 max, u32 reserved x3, then at least the user's NUL
        return _err(errno.EINVAL)
    (max_entries,) = struct.unpack_from("=I", payload)
    user = c_str(payload[16:-1])
    return 0, state.clog.dump_bytes(max_entries, user)


def _rrd_dump(state: IpcState) -> bytes:
    return render_rrd(state.status).encode() + b"\x00"


# ---------------------------------------------------------------------- guest config (§6.5)

_CONF_DIR = {vmtype: d for d, vmtype in VM_KINDS.items()}


def _guest_config(state: IpcState, vmid: int) -> bytes | None:
    info = state.tree.vmlist.ids.get(vmid)
    if info is None:
        return None
    e = state.tree.lookup(f"nodes/{info.node}/{_CONF_DIR[info.vmtype]}/{vmid}.conf")
    if e is None or e.is_dir:
        return None
    return e.data


def _escape(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def _match_props(config: bytes, props: list[bytes]) -> list[bytes | None]:
    """The value of each requested name, in request order (None: not found).

    Like C, every request entry keeps its own value (a repeated name is answered twice) and
    a later line overrides an earlier one, but the scan stops early: it counts matches of
    an entry that already had a value and stops after the line where that count equals
    the number of entries. With a config that repeats a key this can keep an earlier value
    or miss a later key, exactly as C does (measured against the reference binary).
    """
    values: list[bytes | None] = [None] * len(props)
    repeats = 0
    if not config.endswith(b"\n"):
        config += b"\n"
    for line in config.split(b"\n"):
        if not line:
            continue
        if line.startswith(b"["):
            break  # snapshot and pending sections are never searched
        for i, p in enumerate(props):
            if line.startswith(p + b":") and len(line) > len(p) + 1:
                raw = line[len(p) + 1 :]
                value = raw.strip(b" \t\r\n\v\f")
                if values[i] is not None:
                    repeats += 1
                values[i] = value if value else raw[-1:]  # C: whitespace only -> last char
        if repeats == len(props):
            break
    return values


def _guest_props(state: IpcState, vmid: int, props: list[bytes]) -> Reply:
    ids = state.tree.vmlist.ids
    out = [b"{\n"]
    guests: list[bytes] = []
    if ids:
        if vmid >= 100:
            config = _guest_config(state, vmid)
            if not config:
                return _err(errno.EIO)  # C quirk: an empty config is an I/O error too
            configs = [(vmid, config)]
        else:
            configs = []
            for v in sorted(ids):
                c = _guest_config(state, v)
                if c:
                    configs.append((v, c))
        for v, config in configs:
            found = zip(props, _match_props(config, props), strict=True)
            items = [b'"%s": "%s"' % (p, _escape(f)) for p, f in found if f is not None]
            if items:
                guests.append(b'"%d":{%s}' % (v, b",".join(items)))
    out.append(b",\n".join(guests))
    out.append(b"\n}\n")
    return 0, b"".join(out)


def _check_vmid(state: IpcState, vmid: int) -> Reply | None:
    if 1 <= vmid <= 99:
        return _err(errno.EINVAL)
    if vmid >= 100 and vmid not in state.tree.vmlist.ids:
        return _err(errno.ENOENT)
    return None


def _guest_config_property(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if len(payload) < 4:
        return _err(errno.EINVAL)
    (vmid,) = struct.unpack_from("=I", payload)
    bad = _check_vmid(state, vmid)
    if bad is not None:
        return bad
    rest = payload[4:]
    if not rest:
        return _err(errno.EINVAL)
    # C takes the request's last byte as the name's terminator: a name sent without its NUL
    # loses its last character, and an empty name is a name (it matches lines ":...").
    return _guest_props(state, vmid, [c_str(rest[:-1])])


def _guest_config_properties(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    if len(payload) < 5:
        return _err(errno.EINVAL)
    (vmid,) = struct.unpack_from("=I", payload)
    num = payload[4]
    bad = _check_vmid(state, vmid)
    if bad is not None:
        return bad
    rest = payload[5:]
    if num == 0 or len(rest) <= 1:
        return _err(errno.EINVAL)
    props: list[bytes] = []
    pos = 0
    for _ in range(num):
        end = rest.find(b"\x00", pos)
        if end <= pos or not b"a"[0] <= rest[pos] <= b"z"[0]:
            return _err(errno.EINVAL)  # empty name, no NUL, or not starting with a-z
        props.append(rest[pos:end])
        pos = end + 1
    if pos != len(rest):
        return _err(errno.EINVAL)
    return _guest_props(state, vmid, props)


# ---------------------------------------------------------------------- VERIFY_TOKEN (§6.6)


def _verify_token(state: IpcState, peer: Peer, payload: bytes) -> Reply:
    tokenlen = len(payload) - 1
    if tokenlen <= 0:
        return _err(errno.EINVAL)
    token = payload[:tokenlen]
    if b"\n" in token or b"\x00" in token or payload[tokenlen] != 0:
        return _err(errno.EINVAL)
    e = state.tree.lookup(TOKEN_CFG)
    if e is None or e.is_dir or len(e.data) < tokenlen:
        return _err(errno.ENOENT)
    if token in e.data.split(b"\n"):
        return _OK
    return _err(errno.ENOENT)


_OPS: dict[int, Callable[[IpcState, Peer, bytes], Reply]] = {
    GET_FS_VERSION: _no_payload(lambda s: render_version_bytes(s.status, s.tree.vmlist)),
    GET_CLUSTER_INFO: _no_payload(lambda s: render_members(s.status).encode()),
    GET_GUEST_LIST: _no_payload(IpcState.guest_list),
    SET_STATUS: _set_status,
    GET_STATUS: _get_status,
    GET_CONFIG: _get_config,
    LOG_CLUSTER_MSG: _log_cluster_msg,
    GET_CLUSTER_LOG: _get_cluster_log,
    GET_RRD_DUMP: _no_payload(_rrd_dump),
    GET_GUEST_CONFIG_PROPERTY: _guest_config_property,
    VERIFY_TOKEN: _verify_token,
    GET_GUEST_CONFIG_PROPERTIES: _guest_config_properties,
}
