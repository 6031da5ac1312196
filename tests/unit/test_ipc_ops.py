"""The `pve2` operations without a transport (status-ipc §6.2-§6.6): parsing, access, results."""

from __future__ import annotations

import errno
import json
import struct

import pytest

from pmxcfs.ipc import ops
from pmxcfs.ipc.ops import IpcState, Peer, check_access, handle
from pmxcfs.paths import VmConfig
from pmxcfs.status.clusterlog import ClusterLog
from pmxcfs.status.render import render_vmlist
from pmxcfs.status.state import ClusterStatus
from pmxcfs.tree import Tree
from pmxcfs.vmlist import VmList

ROOT = Peer(0, 0, 4242, readonly=False)
RO = Peer(1000, 33, 4343, readonly=True)
TOKEN = b"root@pam!mytoken 11111111-2222-3333-4444-555555555555"


def req(op: int, payload: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack("=i4xi4x", op, 16 + len(payload) if size is None else size) + payload


def name(s: bytes) -> bytes:
    return s.ljust(256, b"\x00")


def log_req(pri: int, ident: bytes, tag: bytes, msg: bytes) -> bytes:
    return bytes([pri, len(ident) + 1, len(tag) + 1]) + ident + b"\0" + tag + b"\0" + msg + b"\0"


def put(tree: Tree, path: str, data: bytes) -> None:
    parts = path.split("/")
    for i in range(1, len(parts)):
        d = "/".join(parts[:i])
        if tree.lookup(d) is None:
            tree.mkdir(d, 0, 1)
    if tree.lookup(path) is None:
        tree.create(path, 0, 1)
    tree.write(path, 0, data, 0, 1, truncate=True)


@pytest.fixture
def state() -> IpcState:
    tree = Tree()
    put(tree, "storage.cfg", b"dir: local\n\tpath /var/lib/vz\n")
    put(tree, "priv/token.cfg", TOKEN + b"\n" + b"other@pve!t 0000\n")
    put(tree, "nodes/n1/priv/authorized_keys", b"ssh-rsa x\n")
    put(tree, "nodes/n1/qemu-server/100.conf",
        b'memory: 2048\nlock: backup\nname: vm100\ndescription: say "hi" \\o/\n'
        b"[snap]\nlock: snapshot\nmemory: 1\n")  # fmt: skip
    put(tree, "nodes/n2/lxc/101.conf", b"memory: 512\n\nonboot:   \nhostname:ct101")
    put(tree, "nodes/n2/qemu-server/102.conf", b"")
    return IpcState(tree, ClusterStatus("n1"), ClusterLog("n1", clock=lambda: 1700000000))


def run(state: IpcState, op: int, payload: bytes = b"", peer: Peer = ROOT) -> tuple[int, bytes]:
    return handle(state, peer, req(op, payload))


# ---------------------------------------------------------------------- framing and access


def test_header_must_match_the_request_length(state: IpcState) -> None:
    assert handle(state, ROOT, req(1))[0] == 0
    assert handle(state, ROOT, req(1, size=17)) == (-errno.EINVAL, b"")
    assert handle(state, ROOT, req(1, size=15)) == (-errno.EINVAL, b"")
    assert handle(state, ROOT, req(1)[:12]) == (-errno.EINVAL, b"")
    assert handle(state, ROOT, req(6, b"storage.cfg\0", size=20)) == (-errno.EINVAL, b"")


@pytest.mark.parametrize("op", [0, 9, 14, 99, -1])
def test_unknown_ops_get_echrng(state: IpcState, op: int) -> None:
    assert run(state, op) == (-errno.ECHRNG, b"")


@pytest.mark.parametrize("op", [1, 2, 3, 10])
def test_no_payload_ops_reject_any_payload(state: IpcState, op: int) -> None:
    assert run(state, op)[0] == 0
    assert run(state, op, b"x") == (-errno.EINVAL, b"")


def test_access_rules() -> None:
    assert check_access(0, 0, 7, 33) == Peer(0, 0, 7, readonly=False)
    assert check_access(0, 33, 7, 33) == Peer(0, 33, 7, readonly=True)
    assert check_access(1000, 33, 7, 33) == Peer(1000, 33, 7, readonly=True)
    assert check_access(1000, 0, 7, 33) is None
    assert check_access(0, 1, 7, 33) is None
    assert check_access(1000, 1000, 7, 33) is None


def test_read_only_peer(state: IpcState) -> None:
    assert run(state, 4, name(b"kv/x") + b"v", RO) == (-errno.EPERM, b"")
    assert run(state, 4, b"", RO) == (-errno.EPERM, b"")  # checked before the size
    assert run(state, 7, log_req(6, b"root@pam", b"t", b"m"), RO) == (-errno.EPERM, b"")
    for path in (b"priv/token.cfg", b"/priv", b"//priv/x", b"nodes/n1/priv/authorized_keys"):
        assert run(state, 6, path + b"\0", RO) == (-errno.EPERM, b"")
    assert run(state, 6, b"storage.cfg\0", RO)[0] == 0
    assert run(state, 6, b"nodes/n1/qemu-server/100.conf\0", RO)[0] == 0
    assert run(state, 12, TOKEN + b"\0", RO) == (0, b"")
    assert run(state, 5, name(b"kv/x") + name(b""), RO) == (-errno.ENOENT, b"")
    assert state.status.kv.get(b"kv/x") is None
    assert b"root@pam" not in state.clog.dump_bytes()


# ---------------------------------------------------------------------- status


def test_set_and_get_status(state: IpcState) -> None:
    assert run(state, 4, name(b"kv/test") + b"value1") == (0, b"")
    assert run(state, 5, name(b"kv/test") + name(b"")) == (0, b"value1")
    assert run(state, 5, name(b"kv/test") + name(b"n1") + b"extra") == (0, b"value1")
    assert run(state, 5, name(b"kv/test") + name(b"n2")) == (-errno.ENOENT, b"")
    assert state.status.kv.version(b"kv/test") == 0
    assert run(state, 4, name(b"kv/test") + b"value2") == (0, b"")
    assert state.status.kv.version(b"kv/test") == 1
    # a 0-length value deletes
    assert run(state, 4, name(b"kv/test")) == (0, b"")
    assert run(state, 5, name(b"kv/test") + name(b"")) == (-errno.ENOENT, b"")
    # byte 255 of the name is forced to NUL
    long_key = b"k" * 256
    assert run(state, 4, long_key + b"v") == (0, b"")
    assert state.status.kv.get(b"k" * 255) == b"v"


def test_set_status_limits(state: IpcState) -> None:
    assert run(state, 4, b"kv/x\0") == (-errno.EINVAL, b"")
    assert run(state, 4, name(b"kv/x") + b"a" * 32769) == (-errno.EFBIG, b"")
    assert state.status.kv.get(b"kv/x") is None
    assert run(state, 4, name(b"kv/x") + b"a" * 32768) == (0, b"")
    # rrd/ and nodeip need a NUL-terminated value of bounded size
    assert run(state, 4, name(b"rrd/pve2-node/n1") + b"1:2") == (-errno.ENOMEM, b"")
    assert run(state, 4, name(b"rrd/pve2-node/n1") + b"x" * 4095 + b"\0") == (-errno.ENOMEM, b"")
    assert run(state, 4, name(b"nodeip") + b"10.0.0.1") == (-errno.ENOMEM, b"")
    assert run(state, 4, name(b"nodeip") + b"10.0.0.1\0") == (0, b"")
    assert state.status.node_ips["n1"] == "10.0.0.1"
    assert run(state, 5, name(b"nodeip") + name(b"")) == (-errno.ENOENT, b"")


def test_get_status_needs_both_fields(state: IpcState) -> None:
    assert run(state, 5, name(b"kv/x") + b"n1\0") == (-errno.EINVAL, b"")


def test_rrd_dump_is_text_plus_nul(state: IpcState) -> None:
    assert run(state, 10) == (0, b"\0")
    line = b"1700000000:100861726720:9261178880"
    assert run(state, 4, name(b"rrd/pve2-storage/n1/local") + line + b"\0") == (0, b"")
    assert run(state, 10) == (0, b"pve2-storage/n1/local:" + line + b"\n\0")
    assert run(state, 5, name(b"rrd/pve2-storage/n1/local") + name(b""))[0] == -errno.ENOENT


# ---------------------------------------------------------------------- config


def test_get_config(state: IpcState) -> None:
    assert run(state, 6, b"storage.cfg\0") == (0, b"dir: local\n\tpath /var/lib/vz\n")
    assert run(state, 6, b"//storage.cfg\0") == (0, b"dir: local\n\tpath /var/lib/vz\n")
    assert run(state, 6, b"storage.cfgX") == (0, b"dir: local\n\tpath /var/lib/vz\n")  # last->NUL
    assert run(state, 6, b"priv/token.cfg\0")[1].startswith(TOKEN)
    assert run(state, 6, b"nodes/n2/qemu-server/102.conf\0") == (0, b"")
    assert run(state, 6, b"missing.cfg\0") == (-errno.ENOENT, b"")
    assert run(state, 6, b"nodes\0") == (-errno.ENOENT, b"")
    assert run(state, 6, b"\0") == (-errno.ENOENT, b"")
    assert run(state, 6, b"") == (-errno.EINVAL, b"")


# ---------------------------------------------------------------------- cluster log


def test_log_cluster_msg_and_dump(state: IpcState) -> None:
    assert run(state, 7, log_req(6, b"root@pam", b"pvedaemon", b"hello cluster log")) == (0, b"")
    umlaut = 'quote " ctl\n uml\u00e4t \u20ac'.encode()
    assert run(state, 7, log_req(3, b"alice@pve", b"pveproxy", umlaut)) == (0, b"")
    assert run(state, 7, log_req(8, b"root@pam", b"x", b"not logged")) == (0, b"")
    err, text = run(state, 8, struct.pack("=IIII", 0, 0, 0, 0) + b"\0")
    assert err == 0
    data = json.loads(text)["data"]
    assert [e["msg"] for e in data] == ['quote " ctl#010 uml\u00e4t \u20ac', "hello cluster log"]
    assert data[0] == {"uid": 2, "time": 1700000000, "pri": 3, "tag": "pveproxy", "pid": 4242,
                       "node": "n1", "user": "alice@pve", "msg": data[0]["msg"]}  # fmt: skip
    assert rb'"msg": "quote \" ctl#010 uml\u00e4t \u20ac"' in text
    err, text = run(state, 8, struct.pack("=IIII", 50, 0, 0, 0) + b"alice@pve\0")
    assert [e["user"] for e in json.loads(text)["data"]] == ["alice@pve"]
    err, text = run(state, 8, struct.pack("=IIII", 1, 0, 0, 0) + b"\0")
    assert len(json.loads(text)["data"]) == 1
    assert text == state.clog.dump_bytes(1)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x06\x01",
        b"\x06\x02\x02a\0b\0",  # no message part
        b"\x06\x02\x02ab\0\0m\0",  # ident not NUL-terminated
        b"\x06\x02\x02a\0bxm\0",  # tag not NUL-terminated
        b"\x06\x02\x02a\0b\0msg",  # message not NUL-terminated
        b"\x06\x00\x02b\0m\0",  # empty ident
        b"\x06\x02\x00a\0m\0",  # empty tag
        b"\x06\xff\x02a\0b\0m\0",  # ident longer than the request
    ],
)
def test_log_cluster_msg_rejects(state: IpcState, payload: bytes) -> None:
    before = state.clog.dump_bytes()
    assert run(state, 7, payload) == (-errno.EINVAL, b"")
    assert state.clog.dump_bytes() == before


def test_get_cluster_log_needs_user_bytes(state: IpcState) -> None:
    assert run(state, 8, struct.pack("=IIII", 0, 0, 0, 0)) == (-errno.EINVAL, b"")
    assert run(state, 8, b"\0" * 3) == (-errno.EINVAL, b"")


def test_local_state_without_kvstore_and_with_one(state: IpcState) -> None:
    calls: list[tuple[object, ...]] = []

    class FakeKv:
        def set_status(self, key: bytes, value: bytes) -> int:
            calls.append(("set", key, value))
            return 0

        def log(self, *args: object) -> bool:
            calls.append(("log", *args))
            return True

    state.kvstore = FakeKv()  # type: ignore[assignment]
    assert run(state, 4, name(b"kv/a") + b"1") == (0, b"")
    assert run(state, 7, log_req(5, b"root@pam", b"t", b"m")) == (0, b"")
    assert calls == [("set", b"kv/a", b"1"), ("log", b"root@pam", b"t", 5, b"m", ROOT.pid)]
    assert state.status.kv.get(b"kv/a") is None  # went through the (fake) status group


# ---------------------------------------------------------------------- guests (§6.5)


def test_guest_config_property(state: IpcState) -> None:
    def prop(vmid: int, p: bytes) -> tuple[int, bytes]:
        return run(state, 11, struct.pack("=I", vmid) + p)

    assert prop(100, b"lock\0") == (0, b'{\n"100":{"lock": "backup"}\n}\n')
    assert run(state, 11, struct.pack("=I", 100) + b"description\0") == (
        0, b'{\n"100":{"description": "say \\"hi\\" \\\\o/"}\n}\n')  # fmt: skip
    assert run(state, 11, struct.pack("=I", 100) + b"nothing\0") == (0, b"{\n\n}\n")
    assert prop(101, b"hostname\0") == (0, b'{\n"101":{"hostname": "ct101"}\n}\n')
    assert prop(101, b"onboot\0") == (0, b'{\n"101":{"onboot": " "}\n}\n')
    assert run(state, 11, struct.pack("=I", 0) + b"memory\0") == (
        0, b'{\n"100":{"memory": "2048"},\n"101":{"memory": "512"}\n}\n')  # fmt: skip
    assert run(state, 11, struct.pack("=I", 102) + b"memory\0") == (-errno.EIO, b"")
    assert run(state, 11, struct.pack("=I", 50) + b"memory\0") == (-errno.EINVAL, b"")
    assert run(state, 11, struct.pack("=I", 103) + b"memory\0") == (-errno.ENOENT, b"")
    assert run(state, 11, struct.pack("=I", 100)) == (-errno.EINVAL, b"")
    assert run(state, 11, b"\x64\0") == (-errno.EINVAL, b"")
    # as the reference answers (tests/daemon/test_ipc_reference.py): the last byte ends the name
    assert prop(100, b"\0") == (0, b"{\n\n}\n")  # an empty name is a name
    assert prop(100, b"lock") == (0, b"{\n\n}\n")  # "loc"
    assert prop(100, b"lockX") == (0, b'{\n"100":{"lock": "backup"}\n}\n')
    assert prop(100, b"lock\0junk") == (0, b'{\n"100":{"lock": "backup"}\n}\n')


def test_guest_config_repeats(state: IpcState) -> None:
    """A repeated key or name: C's early exit counts matches of names already found."""
    config = b"cores: 1\ncores: 2\ncores: 3\nmemory: 7\n:x\n"
    put(state.tree, "nodes/n1/qemu-server/100.conf", config)

    def props(*names: bytes) -> tuple[int, bytes]:
        raw = b"".join(n + b"\0" for n in names)
        return run(state, 13, struct.pack("=IB", 100, len(names)) + raw)

    assert run(state, 11, struct.pack("=I", 100) + b"cores\0") == (
        0, b'{\n"100":{"cores": "2"}\n}\n')  # fmt: skip
    assert props(b"memory", b"cores") == (0, b'{\n"100":{"cores": "3"}\n}\n')
    assert props(b"memory", b"cores", b"name") == (
        0, b'{\n"100":{"memory": "7","cores": "3"}\n}\n')  # fmt: skip
    assert props(b"memory", b"memory") == (0, b'{\n"100":{"memory": "7","memory": "7"}\n}\n')
    assert props(b"cores", b"cores", b"memory", b"name") == (
        0, b'{\n"100":{"cores": "3","cores": "3"}\n}\n')  # fmt: skip
    assert run(state, 11, struct.pack("=I", 100) + b"\0") == (0, b'{\n"100":{"": "x"}\n}\n')


def test_guest_config_properties(state: IpcState) -> None:
    p = struct.pack("=IB", 0, 2) + b"memory\0lock\0"
    want = b'{\n"100":{"memory": "2048","lock": "backup"},\n"101":{"memory": "512"}\n}\n'
    assert run(state, 13, p) == (0, want)
    p = struct.pack("=IB", 100, 2) + b"name\0memory\0"
    assert run(state, 13, p) == (0, b'{\n"100":{"name": "vm100","memory": "2048"}\n}\n')
    for bad in (
        struct.pack("=IB", 100, 0) + b"memory\0",  # no names
        struct.pack("=IB", 100, 1) + b"\0",  # nothing left
        struct.pack("=IB", 100, 2) + b"memory\0",  # fewer names than announced
        struct.pack("=IB", 100, 1) + b"memory\0x\0",  # leftover bytes
        struct.pack("=IB", 100, 2) + b"memory\0\0",  # empty name
        struct.pack("=IB", 100, 1) + b"Memory\0",  # first char outside a-z
        struct.pack("=IB", 100, 1) + b"memory",  # no NUL
        struct.pack("=IB", 7, 1) + b"memory\0",  # vmid 1..99
        struct.pack("=I", 100),
    ):
        assert run(state, 13, bad) == (-errno.EINVAL, b""), bad
    assert run(state, 13, struct.pack("=IB", 999, 1) + b"memory\0") == (-errno.ENOENT, b"")


def test_guest_list_follows_every_vmlist_change(state: IpcState) -> None:
    """GET_GUEST_LIST keeps its rendering until the VM list changes: each change shows."""

    def guest_list() -> bytes:
        err, data = run(state, 3)
        assert err == 0
        assert data == render_vmlist(state.tree.vmlist).encode()  # never a stale rendering
        return data

    first = guest_list()
    assert guest_list() is first  # unchanged: the same reply, not rendered again
    put(state.tree, "nodes/n1/qemu-server/103.conf", b"memory: 1\n")  # register
    added = guest_list()
    assert b'"103"' in added and added != first
    state.tree.rename("nodes/n1/qemu-server/103.conf", "nodes/n2/qemu-server/103.conf", 0, 2)
    moved = guest_list()
    assert b'"103": { "node": "n2"' in moved
    state.tree.delete("nodes/n2/qemu-server/103.conf", 0, 3)  # remove
    assert b'"103"' not in guest_list()
    # a rebuild that keeps the list's version still renders again: new per-VM versions
    vmlist = state.tree.vmlist
    version, before = vmlist.version, guest_list()
    vmlist.rebuild([VmConfig(i.node, i.vmtype, v) for v, i in vmlist.ids.items()], bump=False)
    assert vmlist.version == version
    assert guest_list() != before
    state.tree.vmlist = VmList()  # a new list altogether
    assert guest_list() == b'{\n"version": 0\n\n}\n'


def test_guest_ops_on_an_empty_vmlist() -> None:
    st = IpcState(Tree(), ClusterStatus("n1"), ClusterLog("n1"))
    assert run(st, 11, struct.pack("=I", 0) + b"lock\0") == (0, b"{\n\n}\n")
    assert run(st, 13, struct.pack("=IB", 0, 1) + b"lock\0") == (0, b"{\n\n}\n")


# ---------------------------------------------------------------------- VERIFY_TOKEN (§6.6)


def test_verify_token(state: IpcState) -> None:
    assert run(state, 12, TOKEN + b"\0") == (0, b"")
    assert run(state, 12, b"other@pve!t 0000\0") == (0, b"")
    assert run(state, 12, b"root@pam!other 0000\0") == (-errno.ENOENT, b"")
    assert run(state, 12, TOKEN[:-1] + b"\0") == (-errno.ENOENT, b"")  # prefix only
    for bad in (b"", b"\0", TOKEN, TOKEN + b"\n\0", b"a\0b\0"):
        assert run(state, 12, bad) == (-errno.EINVAL, b""), bad
    st = IpcState(Tree(), ClusterStatus("n1"), ClusterLog("n1"))
    assert run(st, 12, TOKEN + b"\0") == (-errno.ENOENT, b"")
    assert ops.TOKEN_CFG == "priv/token.cfg"
