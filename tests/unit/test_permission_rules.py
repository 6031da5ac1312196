"""The mode and chmod/chown rules as pure functions (spec §4.3, §4.4, §5); test_permissions.py
checks what the kernel makes of them on a real mount."""

from __future__ import annotations

import itertools
import stat

import pytest

from pmxcfs import paths, permissions
from pmxcfs.admin import listing
from pmxcfs.fs.namespace import Namespace
from pmxcfs.tree import Tree

D, F = True, False

# (path, is_dir) -> (mode when quorate, mode when not): spec §4.3's table, cell by cell
MODES = {
    ("", D): (0o40755, 0o40755),  # the mount point keeps its write bits
    ("nodes", D): (0o40755, 0o40555),
    ("storage.cfg", F): (0o100640, 0o100440),
    ("priv", D): (0o40700, 0o40500),
    ("priv/shadow.cfg", F): (0o100600, 0o100400),
    ("priv/lock/x", D): (0o40700, 0o40500),
    ("nodes/n1/priv", D): (0o40700, 0o40500),
    ("nodes/n1/priv/key", F): (0o100600, 0o100400),
    ("nodes/n1/priv/a/b", F): (0o100600, 0o100400),
    ("nodes/n1/qemu-server/100.conf", F): (0o100640, 0o100440),
    # private is matched per component
    ("private", D): (0o40755, 0o40555),
    ("privx/f", F): (0o100640, 0o100440),
    ("nodes/n1/privfoo", D): (0o40755, 0o40555),
    ("nodes/priv", D): (0o40755, 0o40555),
    ("x/priv/f", F): (0o100640, 0o100440),
    # openvz scripts get owner-execute, by name wherever they are
    ("nodes/n1/openvz/100.mount", F): (0o100740, 0o100540),
    ("vps.premount", F): (0o100740, 0o100540),
    ("priv/101.postumount", F): (0o100700, 0o100500),
    ("1.stop", F): (0o100740, 0o100540),
    ("0100.mount", F): (0o100640, 0o100440),
    ("100.mounted", F): (0o100640, 0o100440),
    ("vps.mount.d", D): (0o40755, 0o40555),
}


@pytest.mark.parametrize(("path", "is_dir"), list(MODES))
def test_entry_modes(path: str, is_dir: bool) -> None:
    quorate, not_quorate = MODES[(path, is_dir)]
    assert permissions.entry_mode(path, is_dir, True) == quorate
    assert permissions.entry_mode(path, is_dir, False) == not_quorate


def _private_by_components(path: str) -> bool:
    """Spec §5 word for word, to pin the fast rule in paths.is_private to."""
    parts = [c for c in path.split("/") if c]
    return bool(parts) and (
        parts[0] == "priv" or (len(parts) >= 3 and parts[0] == "nodes" and parts[2] == "priv")
    )


def test_private_rule_matches_spec_per_component() -> None:
    words = ["priv", "nodes", "privx", "xpriv", "n1", "pri", "priv\n", "nodes2", "\u00e9"]
    seps = ["/", "//"]
    checked = 0
    for depth in range(5):
        for comps in itertools.product(words, repeat=depth):
            for lead, trail in itertools.product(("", "/"), repeat=2):
                for sep in seps:
                    path = lead + sep.join(comps) + trail
                    assert paths.is_private(path) is _private_by_components(path), repr(path)
                    checked += 1
    assert checked > 10_000


def test_symlinks_and_generated_files() -> None:
    assert permissions.symlink_mode(True) == 0o120755
    assert permissions.symlink_mode(False) == 0o120555
    assert permissions.generated_mode(False) == 0o440
    assert permissions.generated_mode(True) == 0o640
    ns = Namespace("n1")
    ns.add_generated(".version", lambda: b"")
    ns.add_generated(".debug", lambda: b"0\n", lambda data, off: 2)
    modes = {o.name: getattr(o, "mode", None) for o in ns.order}
    assert (modes[".version"], modes[".debug"]) == (0o440, 0o640)


@pytest.mark.parametrize(
    ("path", "mode", "ok"),
    [
        ("storage.cfg", 0o640, True),
        ("storage.cfg", stat.S_IFREG | 0o640, True),  # the file type is not compared
        ("storage.cfg", 0o600, False),
        ("storage.cfg", 0o4640, False),  # setuid/setgid/sticky are
        ("nodes", 0o640, True),  # directories too: not their shown 0755
        ("nodes", 0o755, False),
        ("", 0o640, True),  # the mount point
        (".version", 0o640, True),
        ("priv", 0o600, True),
        ("priv/shadow.cfg", 0o600, True),
        ("priv/shadow.cfg", 0o640, False),
        ("nodes/n1/priv/key", 0o600, True),
        ("nodes/n1/privfoo", 0o600, False),
    ],
)
def test_chmod(path: str, mode: int, ok: bool) -> None:
    assert permissions.chmod_allowed(path, mode) is ok


def test_chown() -> None:
    keep = permissions.UNCHANGED
    assert permissions.chown_allowed(0, 33, 33)
    assert permissions.chown_allowed(keep, keep, 33)
    assert permissions.chown_allowed(0, keep, 33)
    assert permissions.chown_allowed(keep, 33, 33)
    assert not permissions.chown_allowed(1, 33, 33)
    assert not permissions.chown_allowed(0, 0, 33)
    assert not permissions.chown_allowed(keep, 34, 33)


def test_admin_ls_shows_the_quorate_modes() -> None:
    t = Tree()
    for d in ("nodes", "nodes/n1", "nodes/n1/priv", "nodes/n1/openvz", "priv"):
        t.mkdir(d, 0, 1)
    for f in ("storage.cfg", "nodes/n1/openvz/100.mount", "nodes/n1/priv/key", "priv/a.cfg"):
        t.create(f, 0, 1)
    shown = {i["path"]: i["mode"] for i in listing.list_entries(t, "", recursive=True)}
    assert shown == {
        p: stat.filemode(permissions.entry_mode(p, t.lookup(p).is_dir, True))  # type: ignore[union-attr]
        for p, _ in t.walk()
    }
    assert shown["nodes/n1/openvz/100.mount"] == "-rwxr-----"
    assert shown["nodes/n1/priv"] == "drwx------"
    assert shown["storage.cfg"] == "-rw-r-----"
