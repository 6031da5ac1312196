"""Generated files byte for byte: rebuild the state each recorded snapshot shows and render it."""

from __future__ import annotations

import json

import pytest

from pmxcfs.status.clusterlog import ClusterLog, clean_message, make_entry
from pmxcfs.status.render import (
    RrdTable,
    render_members,
    render_rrd,
    render_version,
    render_vmlist,
)
from pmxcfs.status.state import ClusterStatus, KvStore, NodeInfo
from pmxcfs.vmlist import VmInfo, VmList
from tests.shared import SHARED

VECTORS = SHARED / "vectors"


def snapshots() -> list[dict[str, str]]:
    out = []
    for line in (VECTORS / "ipc-replies.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "file" in d:
            out.append(d)
    return out


def _by_file(name: str) -> list[dict[str, str]]:
    return [s for s in snapshots() if s["file"] == name]


def vmlist_from(doc: dict) -> VmList:  # type: ignore[type-arg]
    vl = VmList()
    vl.version = doc["version"]
    for vmid, info in doc.get("ids", {}).items():
        vl.ids[int(vmid)] = VmInfo(info["node"], info["type"], info["version"])
    return vl


@pytest.mark.parametrize("snap", _by_file(".vmlist"), ids=lambda s: s["node"])
def test_vmlist_matches_reference(snap: dict[str, str]) -> None:
    assert render_vmlist(vmlist_from(json.loads(snap["text"]))) == snap["text"]


def test_vmlist_empty() -> None:
    assert render_vmlist(VmList()) == '{\n"version": 0\n\n}\n'


@pytest.mark.parametrize("snap", _by_file(".members"), ids=lambda s: s["node"])
def test_members_matches_reference(snap: dict[str, str]) -> None:
    doc = json.loads(snap["text"])
    st = ClusterStatus(doc["nodename"])
    nodes = []
    for name, info in doc["nodelist"].items():
        nodes.append(NodeInfo(name, info["id"], online=bool(info["online"])))
        if "ip" in info:
            st.node_ips[name] = info["ip"]
    st.set_cluster_info(doc["cluster"]["name"], doc["cluster"]["version"], nodes)
    st.clinfo_version = doc["version"]
    st.quorate = bool(doc["cluster"]["quorate"])
    assert render_members(st) == snap["text"]


def test_members_local_mode() -> None:
    assert (
        render_members(ClusterStatus("pvetest")) == '{\n"nodename": "pvetest",\n"version": 0\n}\n'
    )


@pytest.mark.parametrize("snap", _by_file(".version"), ids=lambda s: s["node"])
def test_version_matches_reference(snap: dict[str, str]) -> None:
    doc = json.loads(snap["text"])
    st = ClusterStatus(snap["node"], starttime=doc["starttime"])
    st.clinfo_version = doc["clinfo"]
    for p in st.path_versions:
        st.path_versions[p] = doc[p]
    kv = doc["kvstore"]
    st.nodes = {i: NodeInfo(n, i) for i, n in enumerate(kv, 1)}
    for node in st.nodes.values():
        store = st.kv if node.name == snap["node"] else KvStore()
        for key, version in kv[node.name].items():
            for n in range(version + 1):
                store.put(key.encode(), b"v%d" % n)
        if node.name != snap["node"]:
            node.kv = store
    vl = VmList()
    vl.version = doc["vmlist"]
    assert render_version(st, vl) == snap["text"]


def test_version_local_sample_shape() -> None:
    st = ClusterStatus("pvetest", starttime=1795434913)
    for p in st.path_versions:
        st.path_versions[p] = 1
    text = render_version(st, VmList())
    assert text.startswith('{\n"starttime": 1795434913,\n"clinfo": 0,\n"vmlist": 0,\n')
    assert text.endswith('"mapping/usb.cfg": 1,\n"kvstore": {\n"pvetest": {\n}\n}\n}\n')
    assert len(json.loads(text)) == 3 + 42 + 1


@pytest.mark.parametrize("snap", _by_file(".clusterlog"), ids=lambda s: s["node"])
def test_clusterlog_matches_reference(snap: dict[str, str]) -> None:
    doc = json.loads(snap["text"])
    log = ClusterLog(snap["node"])
    for e in reversed(doc["data"]):  # the dump shows the newest inserted first
        entry = make_entry(e["uid"], e["time"], e["node"].encode(), e["user"].encode(),
                           e["tag"].encode(), e["pid"], e["pri"], e["msg"].encode())  # fmt: skip
        assert log.insert(entry)
    assert log.dump() == snap["text"]
    assert log.dump_bytes() == snap["text"].encode()


def test_clusterlog_message_cleaning() -> None:
    raw = 'quote " ctl\n umlät €'.encode()
    assert clean_message(raw) == 'quote \\" ctl#010 uml\\u00e4t \\u20ac'
    assert clean_message("x\U0001f600y".encode()) == "xy"
    assert clean_message(b'bad \xff "q"\x01') == 'bad ? \\"q\\"#001'


def test_clusterlog_empty() -> None:
    assert ClusterLog("n").dump() == '{\n"data": [\n]\n}\n'


def test_rrd_dump_drops_old_entries() -> None:
    t = RrdTable()
    t.update("pve2-node/n1", "1:2:3", now=1000)
    t.update("pve2-storage/n1/local", "4:5:6", now=1200)
    assert t.dump(now=1301) == "pve2-storage/n1/local:4:5:6\n"
    assert t.dump(now=2000) == ""


def test_rrd_render_from_status() -> None:
    st = ClusterStatus("n1", clock=lambda: 1000.0)
    assert st.set_local(b"rrd/pve2-node/n1", b"1:2:3\x00")
    assert st.set_local(b"rrd/pve2-storage/n1/local", b"4:5\x00")
    assert render_rrd(st, now=1300) == "pve2-node/n1:1:2:3\npve2-storage/n1/local:4:5\n"
    assert render_rrd(st, now=1301) == ""


def test_version_is_rendered_again_after_every_change_it_shows() -> None:
    """.version is cached (PVE tools poll it): every kind of change must show at once."""
    from pmxcfs.paths import VmConfig
    from pmxcfs.tree import Change, Op

    st = ClusterStatus("n1", starttime=1795434913)
    st.set_cluster_info("c", 1, [NodeInfo("n1", 1), NodeInfo("n2", 2)])
    vl = VmList()
    seen = {render_version(st, vl)}
    assert render_version(st, vl) in seen  # unchanged: the same text

    def changed() -> None:
        text = render_version(st, vl)
        assert text not in seen
        assert json.loads(text)  # still valid
        seen.add(text)

    st.on_tree_change(Change(Op.WRITE, path="user.cfg"))
    changed()
    st.on_tree_change(Change(Op.RENAME, path="x.tmp", to_path="storage.cfg"))
    changed()
    st.on_tree_change(Change(Op.RELOAD))
    changed()
    st.set_local(b"ceph-versions", b"1")
    changed()
    st.set_local(b"ceph-versions", b"2")  # a version bump of the same key
    changed()
    st.set_remote(2, b"ceph-versions", b"1")
    changed()
    st.set_online({1, 2})
    changed()
    st.set_cluster_info("c", 2, [NodeInfo("n1", 1)])
    changed()
    vl.register(VmConfig("n1", "qemu", 100))
    changed()
    st.on_tree_change(Change(Op.MKDIR, path="user.cfg"))  # mkdir does not count
    assert render_version(st, vl) in seen
