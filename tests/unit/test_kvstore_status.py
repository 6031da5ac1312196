"""Node key-value status (status-ipc §2.5, §5.1, §5.2) and its rendering in .version/.members."""

from __future__ import annotations

import errno

from pmxcfs.kvstore.app import KvstoreApp
from pmxcfs.kvstore.codec import decode_kv_update
from pmxcfs.status.clusterlog import ClusterLog
from pmxcfs.status.render import render_members, render_rrd, render_version
from pmxcfs.status.state import ClusterStatus, KvStore, NodeInfo
from pmxcfs.vmlist import VmList


def _status() -> ClusterStatus:
    st = ClusterStatus("n1", starttime=5, clock=lambda: 1000.0)
    st.set_cluster_info("clu", 3, [NodeInfo("n1", 1), NodeInfo("n2", 2), NodeInfo("n3", 3)])
    return st


def test_kv_store_versions_and_delete() -> None:
    s = KvStore()
    s.put(b"k", b"a")
    s.put(b"k", b"b")
    s.put(b"k", b"c")
    assert (s.get(b"k"), s.version(b"k")) == (b"c", 2)
    s.put(b"k", b"")
    assert b"k" not in s and len(s) == 0
    s.put(b"k", b"again")
    assert s.version(b"k") == 0
    s.put(b"gone", b"")  # deleting a missing key is fine
    assert len(s) == 1


def test_set_status_dispatch_and_limits() -> None:
    st = _status()
    app = KvstoreApp(st, ClusterLog("n1"), "10.0.0.1")
    res, payload = app.set_status(b"kv/x", b"x" * 32768)
    assert res == 0 and payload is not None and decode_kv_update(payload).value == b"x" * 32768
    assert app.set_status(b"kv/y", b"y" * 32769) == (-errno.EFBIG, None)
    assert st.kv.get(b"kv/y") is None
    # invalid rrd/nodeip values: -ENOMEM, nothing stored, but still multicast (C does)
    for key, value in ((b"rrd/pve2-node/n1", b"1:2"), (b"rrd/a", b""), (b"rrd/a", b"1" * 4096),
                       (b"nodeip", b"1.2.3.4"), (b"nodeip", b"9" * 255 + b"\0")):  # fmt: skip
        res, payload = app.set_status(key, value)
        assert res == -errno.ENOMEM and payload is not None, key
    assert render_rrd(st) == "" and st.node_ips == {}
    assert app.set_status(b"rrd/pve2-node/n1", b"1:2:3\0garbage\0")[0] == 0  # up to the NUL
    assert render_rrd(st) == "pve2-node/n1:1:2:3\n"
    version = st.clinfo_version
    assert app.set_status(b"nodeip", b"10.0.0.9\0")[0] == 0
    assert st.node_ips == {"n1": "10.0.0.9"} and st.clinfo_version == version + 1
    app.set_status(b"nodeip", b"10.0.0.9\0")
    assert st.clinfo_version == version + 1  # unchanged IP: no new clinfo
    # rrd/ and nodeip are not key-values; the wire key is cut at NUL and at 255 bytes
    assert [k for k, _ in st.kv.items()] == [b"kv/x"]
    _res, payload = app.set_status(b"k" * 300, b"v")
    assert payload is not None and decode_kv_update(payload).key == b"k" * 255
    assert st.kv.get(b"k" * 255) == b"v"


def test_remote_updates_go_to_the_senders_store() -> None:
    st = _status()
    assert st.set_remote(2, b"tasklist", b"[]\0")
    assert st.set_remote(2, b"tasklist", b"[1]\0")
    assert st.set_remote(2, b"nodeip", b"10.0.0.2\0")
    assert st.set_remote(3, b"rrd/pve2-node/n3", b"7:8\0")
    assert not st.set_remote(4, b"kv/x", b"1")  # not in the nodelist
    assert not st.set_remote(3, b"nodeip", b"no-nul")
    n2 = st.nodes[2].kv
    assert n2 is not None and n2.get(b"tasklist") == b"[1]\0" and n2.version(b"tasklist") == 1
    assert st.nodes[3].kv is None  # rrd/nodeip do not create a store
    assert st.node_ips == {"n2": "10.0.0.2"}
    assert render_rrd(st) == "pve2-node/n3:7:8\n"
    assert st.get_status(b"tasklist", "n2") == b"[1]\0"
    assert st.get_status(b"nodeip", "n2") is None and st.get_status(b"x", "nobody") is None
    assert st.set_remote(3, b"kv/del", b"")  # a delete still creates the (empty) store
    assert st.nodes[3].kv is not None and len(st.nodes[3].kv) == 0


def test_cmap_reread_keeps_stores_and_flags_by_nodeid() -> None:
    st = _status()
    st.set_online({1, 2})
    st.set_remote(2, b"k", b"v")
    st.set_remote(3, b"k", b"v")
    version = st.clinfo_version
    st.set_cluster_info("clu", 4, [NodeInfo("n1", 1), NodeInfo("n2-renamed", 2)])
    assert st.clinfo_version == version + 1
    assert st.nodes[2].online and st.nodes[2].kv is not None and st.nodes[2].kv.get(b"k") == b"v"
    assert 3 not in st.nodes  # removed node: its store is gone
    st.set_cluster_info("clu", 5, [NodeInfo("n1", 1), NodeInfo("n2", 2), NodeInfo("n3", 3)])
    assert st.nodes[3].kv is None and not st.nodes[3].online


def test_online_flags_need_cluster_info() -> None:
    st = ClusterStatus("n1")
    st.set_online({1})
    assert st.clinfo_version == 0
    st = _status()
    st.set_online({1, 3})
    assert [n.online for n in st.nodes.values()] == [True, False, True]
    assert st.clinfo_version == 2


def test_members_and_version_show_the_status() -> None:
    st = _status()
    st.set_online({1, 2})
    st.set_node_ip("n1", "10.0.0.1")
    st.set_node_ip("n2", "10.0.0.2")
    st.quorate = True
    assert render_members(st) == (
        '{\n"nodename": "n1",\n"version": 4,\n'
        '"cluster": { "name": "clu", "version": 3, "nodes": 3, "quorate": 1 },\n'
        '"nodelist": {\n'
        '  "n1": { "id": 1, "online": 1, "ip": "10.0.0.1"},\n'
        '  "n2": { "id": 2, "online": 1, "ip": "10.0.0.2"},\n'
        '  "n3": { "id": 3, "online": 0}\n'
        "  }\n}\n"
    )
    st.set_local(b"kv/static-info", b"{}\0")
    st.set_local(b"tasklist", b"[]\0")
    st.set_local(b"tasklist", b"[1]\0")
    st.set_remote(3, b"tasklist", b"[]\0")
    st.set_remote(2, b"kv/del", b"")
    text = render_version(st, VmList())
    assert text.endswith(
        '"kvstore": {\n'
        '"n1": {\n"kv/static-info": 0,\n"tasklist": 1}\n,\n'
        '"n2": {\n}\n,\n'
        '"n3": {\n"tasklist": 0}\n'
        "}\n}\n"
    )
