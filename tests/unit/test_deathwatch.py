"""The death watch finds our FUSE connection without a request to ourselves (mountinfo)."""

from __future__ import annotations

from pathlib import Path

from pmxcfs.fs.deathwatch import connection_of

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 0:41 / /etc/pve rw,nosuid,nodev,relatime shared:19 - fuse pmxcfs rw,user_id=0
37 22 0:43 / /mnt/with\\040space rw - fuse.sshfs host: rw
38 36 0:44 / /etc/pve rw,relatime shared:20 - fuse pmxcfs rw,user_id=0
39 22 0:45 / /etc/other rw - tmpfs tmpfs rw
"""


def test_the_top_fuse_mount_at_the_path_is_ours(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert connection_of("/etc/pve", str(mi)) == 44  # stacked: the last one
    assert connection_of("/etc/pve/", str(mi)) == 44
    assert connection_of("/mnt/with space", str(mi)) == 43
    assert connection_of("/etc/other", str(mi)) is None  # not FUSE
    assert connection_of("/nowhere", str(mi)) is None
