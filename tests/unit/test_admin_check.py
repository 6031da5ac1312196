"""The collecting checker agrees with the daemon's loader on arbitrary row sets."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pmxcfs.admin.check import check_rows
from pmxcfs.admin.dbread import RawRow, to_rows
from pmxcfs.tree import LoadError, Tree
from pmxcfs.vmlist import VmListError

# Kinds the daemon tolerates at load (it raises the version itself, Q4; sizes are unchecked).
TOLERATED = {"version-missing", "version-low", "oversize"}
NAMES = [b"a", b"b", b"", b".", b"x/y", b"\xff", b"100.conf", b"nodes", b"qemu-server", b"n1"]


@st.composite
def row_sets(draw: st.DrawFn) -> list[RawRow]:
    inodes = draw(st.lists(st.integers(1, 9), unique=True, max_size=8))
    rows = []
    for inode in inodes:
        rows.append(
            RawRow(
                inode=inode,
                parent=draw(st.sampled_from([0, 0, *range(1, 11)])),
                version=draw(st.integers(0, 12)),
                writer=0,
                mtime=1,
                type=draw(st.sampled_from([4, 4, 8, 8, 5])),
                name=draw(st.sampled_from(NAMES)),
                data=draw(st.sampled_from([None, b"", b"d"])),
            )
        )
    if draw(st.booleans()):
        name = draw(st.sampled_from([b"__version__", b"__version__", b"root"]))
        rows.append(RawRow(0, 0, draw(st.integers(0, 12)), 0, 1, 8, name, None))
    return draw(st.permutations(rows))


def daemon_loads(raw: list[RawRow]) -> bool:
    try:
        tree = Tree.from_rows(to_rows(raw))
        tree.finish_load()
    except (LoadError, VmListError):
        return False
    return True


CYCLE = [
    RawRow(1, 2, 1, 0, 1, 4, b"a", None),
    RawRow(2, 1, 2, 0, 1, 4, b"b", None),
    RawRow(0, 0, 2, 0, 1, 8, b"__version__", None),
]


@settings(max_examples=600, deadline=None)
@given(row_sets())
@example(CYCLE)
def test_checker_flags_exactly_what_the_daemon_refuses(raw: list[RawRow]) -> None:
    fatal = [p for p in check_rows(raw) if p.kind not in TOLERATED]
    assert daemon_loads(raw) == (not fatal), fatal


def test_vm_tree_duplicate_is_found() -> None:
    raw = [
        RawRow(1, 0, 1, 0, 1, 4, b"nodes", None),
        RawRow(2, 1, 2, 0, 1, 4, b"n1", None),
        RawRow(3, 1, 3, 0, 1, 4, b"n2", None),
        RawRow(4, 2, 4, 0, 1, 4, b"qemu-server", None),
        RawRow(5, 3, 5, 0, 1, 4, b"lxc", None),
        RawRow(6, 4, 6, 0, 1, 8, b"100.conf", b"a"),
        RawRow(7, 5, 9, 0, 1, 8, b"100.conf", b"b"),
        RawRow(0, 0, 9, 0, 1, 8, b"__version__", None),
    ]
    problems = check_rows(raw)
    assert [(p.kind, p.inode, p.path) for p in problems] == [
        ("duplicate-vmid", 6, "nodes/n1/qemu-server/100.conf")
    ]
    assert not daemon_loads(raw)
