"""FUSE inode numbers of tree entries: the tree inode + 1, so the tree's root (0) is FUSE's
root (1). The only place that knows the offset; everything in fs/ converts through here.

The root's fixed entries (symlinks, generated files) have numbers of their own, in a range
tree inodes never reach (namespace.py); converting one gives an inode no entry has.
"""

from __future__ import annotations

TREE_ROOT = 0


def to_fuse(tree_inode: int) -> int:
    """The number the kernel knows a tree entry by."""
    return tree_inode + 1


def to_tree(fuse_inode: int) -> int:
    """The tree inode a kernel inode number stands for."""
    return fuse_inode - 1


ROOT = to_fuse(TREE_ROOT)  # pyfuse3.ROOT_INODE
