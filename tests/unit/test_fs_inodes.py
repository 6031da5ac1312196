"""The boundary between fs/ and the tree: the inode mapping and the tree's query API."""

from __future__ import annotations

import ast
from pathlib import Path

import pyfuse3
import pytest

from pmxcfs.checksum import Hollow
from pmxcfs.fs import inodes
from pmxcfs.fs.namespace import FIXED_INODE_BASE, Namespace
from pmxcfs.tree import Tree

FS_DIR = Path(__file__).resolve().parents[2] / "pmxcfs" / "fs"


def test_root_maps_to_fuse_root() -> None:
    assert inodes.ROOT == pyfuse3.ROOT_INODE == inodes.to_fuse(inodes.TREE_ROOT)
    assert inodes.to_tree(pyfuse3.ROOT_INODE) == 0


@pytest.mark.parametrize("tree_inode", [0, 1, 2, 4096, 2**31, 2**40])
def test_mapping_round_trips(tree_inode: int) -> None:
    fuse = inodes.to_fuse(tree_inode)
    assert fuse == tree_inode + 1
    assert inodes.to_tree(fuse) == tree_inode


def test_fixed_entries_never_collide_with_tree_inodes() -> None:
    ns = Namespace("n1")
    ns.add_generated(".version", lambda: b"")
    assert min(ns.by_inode) >= FIXED_INODE_BASE
    assert inodes.to_fuse(2**62 - 2) < FIXED_INODE_BASE  # far beyond any version count


def test_tree_queries() -> None:
    t = Tree()
    t.mkdir("d", 0, 1)
    t.create("d/f", 0, 1)
    t.write("d/f", 0, b"hello world", 0, 1)
    d, f = t.lookup("d"), t.lookup("d/f")
    assert d is not None and f is not None
    assert t.entry(0) is t.root and t.entry(f.inode) is f and t.entry(999) is None
    assert t.child(t.root, "d") is d and t.child(d, "f") is f
    assert t.child(d, "g") is None and t.child(f, "x") is None  # a file has no children
    assert list(t.children_of(d) or ()) == [("f", f)]
    assert t.children_of(f) is None
    assert (t.read(f, 0, 5), t.read(f, 6, 100), t.read(f, 11, 1), t.read(f, 50, 1)) == (
        b"hello",
        b"world",
        b"",
        b"",
    )
    assert dict(t.entries()) == {0: t.root, d.inode: d, f.inode: f}
    assert t.entry_count == 3
    t.delete("d/f", 0, 1)
    assert t.entry(f.inode) is None and t.entry_count == 2
    assert t.read(f, 0, 5) == b"hello"  # a handle's last version stays readable


def test_read_of_a_hollow_file_gives_plain_zeros() -> None:
    t = Tree()
    t.create("h", 0, 1)
    t.truncate("h", 4, 0, 1)
    e = t.lookup("h")
    assert e is not None and isinstance(e.data, Hollow)
    got = t.read(e, 1, 10)
    assert got == b"\0\0\0" and type(got) is bytes


def test_fs_reads_no_tree_internals() -> None:
    """fs/ goes through the query API: no `index`, `children` or `data` of the tree's."""
    for path in sorted(FS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        used = {
            (node.attr, node.lineno)
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("index", "children", "data")
        }
        assert not used, f"{path.name}: {sorted(used)}"
