"""Step 5: hostile, malformed and random input never crashes a node or corrupts its tree."""

from __future__ import annotations

import contextlib
import errno
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmxcfs.dcdb import codec as dc
from pmxcfs.dcdb.app import DcdbApp
from pmxcfs.dcdb.codec import PROTOCOL_VERSION, FuseOp, Subtype
from pmxcfs.dfsm import codec
from pmxcfs.dfsm.codec import Epoch, Mode, MsgType, WireError
from pmxcfs.dfsm.machine import ConfChg, Deliver, Dfsm, Tick
from pmxcfs.dfsm.sim import Sim
from pmxcfs.kvstore import codec as kvcodec
from pmxcfs.tree import Tree

T0 = 1_700_000_000
DECODERS = [
    codec.decode,
    dc.decode_fuse,
    dc.decode_unlock,
    dc.decode_index,
    dc.decode_update,
    codec.decode_verify,
    codec.decode_verify_request,
    kvcodec.decode_kv_update,
    kvcodec.decode_log_entry,
    kvcodec.decode_clog,
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(DECODERS))
def test_decoders_only_raise_wire_error(data: bytes, decoder: object) -> None:
    with contextlib.suppress(WireError):
        decoder(data)  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=64),
)
def test_fuse_header_lies_are_rejected(
    size: int, off: int, pl: int, tl: int, fl: int, rest: bytes
) -> None:
    payload = struct.pack("<IIIII", size, off, pl, tl, fl) + rest
    try:
        op = dc.decode_fuse(payload)
    except WireError:
        return
    assert op.encode() == payload


names = st.binary(min_size=0, max_size=20).filter(lambda b: b"\x00" not in b)


@given(names, st.none() | names, st.binary(max_size=50), st.integers(0, 2**32 - 1))
def test_fuse_roundtrip(path: bytes, to: bytes | None, data: bytes, off: int) -> None:
    op = FuseOp(path, to, data, off, 0)
    assert dc.decode_fuse(op.encode()) == op


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from([4, 8]),
    names,
    st.binary(max_size=40),
)
def test_update_roundtrip(parent: int, inode: int, etype: int, name: bytes, data: bytes) -> None:
    u = dc.UpdateEntry(parent, inode, 3, 1, T0, etype, name, data if etype == 8 else b"")
    assert dc.decode_update(u.encode()) == u


# ---------------------------------------------------------------------------- DFSM feed


def _synced_pair() -> tuple[Sim, dict[int, DcdbApp]]:
    sim = Sim(total_nodes=2)
    apps = {}
    for n in (1, 2):
        t = Tree()
        t.mkdir("nodes", 0, T0)
        t.create("nodes/f", 0, T0)
        t.write("nodes/f", 0, b"content", 0, T0)
        apps[n] = DcdbApp(t)
        sim.add(Dfsm(n, n, apps[n], PROTOCOL_VERSION, name="dcdb"))
    sim.join((1, 1))
    sim.join((2, 2), (1, 1))
    sim.run()
    return sim, apps


def _consistent(t: Tree) -> None:
    again = Tree.from_rows(t.rows())
    assert again.encode_index() == t.encode_index()
    assert not t.error


HOSTILE_PATHS = [b"", b"..", b"../x", b"/abs", b"a/../b", b"\xff\xfe", b"nodes/f", b"nodes",
                 b"nodes/f/x", b"a\x00b", b"."]  # fmt: skip


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=120))
    if kind == 1:  # a NORMAL with a valid header and any subtype/payload
        sub = draw(st.integers(0, 12))
        return codec.encode_normal(sub, 1, T0, draw(st.integers(0, 2**64 - 1)),
                                   draw(st.binary(max_size=80)))  # fmt: skip
    if kind == 2:  # a FUSE op with hostile but well-formed fields
        path = draw(st.sampled_from(HOSTILE_PATHS))
        to = draw(st.none() | st.sampled_from([b"nodes/f", b"nodes/g", b"..", b"nodes"]))
        sub = draw(st.integers(1, 6))
        op = FuseOp(path if draw(st.booleans()) else None, to, draw(st.binary(max_size=8)),
                    draw(st.integers(0, 2**21)), draw(st.integers(0, 1)))  # fmt: skip
        return codec.encode_normal(sub, 1, T0, 5, op.encode())
    mtype = draw(st.integers(1, 9))
    ep = Epoch(*draw(st.tuples(*[st.integers(0, 3)] * 4)))
    return codec.encode_state(MsgType(mtype) if mtype <= 6 else mtype, 1, T0, ep,  # type: ignore[arg-type]
                              draw(st.binary(max_size=90)))  # fmt: skip


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([(1, 1), (2, 2), (3, 3)]), hostile()), max_size=8))
def test_dfsm_survives_hostile_deliveries(msgs: list[tuple[tuple[int, int], bytes]]) -> None:
    sim, apps = _synced_pair()
    for sender, data in msgs:
        for m in ((1, 1), (2, 2)):
            p = sim.procs[m]
            if p.joined:
                sim._run_actions(p, p.dfsm.feed(Deliver(sender[0], sender[1], data)))
        sim.run()
    for app in apps.values():
        _consistent(app.tree)
    modes = {p.dfsm.mode for p in sim.procs.values()}
    assert modes <= {Mode.SYNCED, Mode.VERSION_ERROR}
    if modes == {Mode.SYNCED}:
        assert apps[1].tree.encode_index() == apps[2].tree.encode_index()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(Deliver, st.integers(0, 4), st.integers(0, 4), st.binary(max_size=60)),
            st.builds(
                ConfChg,
                st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), max_size=4).map(tuple),
                st.just(()),
                st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), max_size=2).map(tuple),
            ),
            st.builds(Tick, st.floats(0, 1e10)),
        ),
        max_size=12,
    )
)
def test_single_dfsm_random_events(events: list[object]) -> None:
    t = Tree()
    d = Dfsm(1, 1, DcdbApp(t), PROTOCOL_VERSION, name="dcdb")
    for ev in events:
        d.feed(ev)  # type: ignore[arg-type]
    _consistent(t)


# ---------------------------------------------------------------------------- specific cases


def _apply(sim: Sim, sub: int, op: FuseOp) -> int:
    rid = sim.request((1, 1), sub, op.encode())
    sim.run()
    return sim.procs[(1, 1)].results[rid]


def test_hostile_paths_are_rejected_without_fatal() -> None:
    sim, apps = _synced_pair()
    before = apps[1].tree.encode_index()
    assert _apply(sim, Subtype.CREATE, FuseOp(b"../escape")) == -errno.ENOENT
    assert _apply(sim, Subtype.MKDIR, FuseOp(b"nodes/..")) == -errno.EACCES
    assert _apply(sim, Subtype.CREATE, FuseOp(None)) == -errno.EINVAL
    assert _apply(sim, Subtype.CREATE, FuseOp(b"\xff\xfe")) == -errno.EINVAL
    assert _apply(sim, Subtype.RENAME, FuseOp(b"nodes/f")) == -errno.EINVAL  # no `to`
    assert _apply(sim, Subtype.WRITE, FuseOp(b"nodes/f", data=b"x", offset=1 << 20)) == (
        -errno.EFBIG
    )
    assert apps[1].tree.encode_index() == before
    # leading slash resolves like the reference; an embedded NUL ends the path as in C
    assert _apply(sim, Subtype.CREATE, FuseOp(b"/abs")) == 0
    assert _apply(sim, Subtype.CREATE, FuseOp(b"cut\x00ignored")) == 0
    for app in apps.values():
        assert app.tree.lookup("abs") is not None and app.tree.lookup("cut") is not None
    assert all(p.dfsm.stats.fatal == 0 for p in sim.procs.values())
    assert apps[1].tree.encode_index() == apps[2].tree.encode_index()


def test_malformed_payload_is_fatal_and_resyncs() -> None:
    sim, apps = _synced_pair()
    bad = FuseOp(b"nodes/x").encode()[:-1]  # length rule broken
    rid = sim.request((1, 1), Subtype.CREATE, bad)
    sim.run()
    assert sim.procs[(1, 1)].results[rid] == -1
    assert all(p.dfsm.stats.fatal == 1 for p in sim.procs.values())
    assert all(p.dfsm.mode == Mode.SYNCED for p in sim.procs.values())
    assert apps[1].tree.lookup("nodes/x") is None


def test_bad_state_message_sizes_are_fatal() -> None:
    sim, _apps = _synced_pair()
    d = sim.procs[(2, 2)].dfsm
    d.feed(Deliver(1, 1, struct.pack("<HHIII", 2, 0, 1, T0, 0) + b"\x00" * 8))  # < 32 bytes
    assert d.mode == Mode.LEAVE
    d2 = Dfsm(3, 3, DcdbApp(Tree()), PROTOCOL_VERSION, name="dcdb")
    d2.feed(Deliver(1, 1, codec.encode_normal(1, 1, T0, 1, b"")))  # before any confchg
    assert d2.mode == Mode.LEAVE
