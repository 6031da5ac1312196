"""Abort our FUSE connection when the daemon dies without unmounting (SIGKILL, OOM killer).

A killed daemon normally takes its FUSE connection with it: the last close of /dev/fuse
aborts it and every caller waiting on it gets an error. Not so when one of our threads is
inside the kernel, waiting for something only the dead daemon could have answered: the
invalidation thread's `notify_inval_entry` waits (uninterruptibly) for the lock of a
directory in which a create is waiting for our reply. That thread never returns, so the
process never ends, /dev/fuse is never closed, and the caller and the thread wait forever
(a SIGKILLed node found by the fault schedules: `D fuse_reverse_inval_entry`).

So a tiny shell process watches the daemon's main thread: the kernel sends it SIGUSR1
when that thread exits (`setpriv --pdeathsig`), and it aborts the connection through
fusectl, which ends the wait and lets the process go. A clean shutdown stops the watcher
first. It holds no FUSE fd itself and costs one dash process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger("pmxcfs.fs")

FUSECTL = "/sys/fs/fuse/connections"

# $1: the connection (device minor). fusectl is mounted on PVE hosts (systemd); where it is
# not (a private mount namespace), mount it privately for the abort only.
_SCRIPT = r"""
conn=$1
abort() {
    if [ -e "/sys/fs/fuse/connections/$conn/abort" ]; then
        echo 1 > "/sys/fs/fuse/connections/$conn/abort"
    else
        d=$(mktemp -d) || exit 1
        unshare -m --propagation private sh -c \
            'mount -t fusectl fusectl "$1" && echo 1 > "$1/$2/abort"' sh "$d" "$conn"
        rmdir "$d"
    fi
}
s=
trap 'abort; [ -n "$s" ] && kill "$s" 2>/dev/null; exit 0' USR1
trap '[ -n "$s" ] && kill "$s" 2>/dev/null; exit 0' TERM
while :; do
    sleep 3600 &
    s=$!
    wait "$s"
done
"""


def connection_of(mount: str, mountinfo: str = "/proc/self/mountinfo") -> int | None:
    """The FUSE connection number of the filesystem mounted at *mount* (its device minor),
    from mountinfo: a stat of the mount point would be a request to ourselves, which the
    loop that has not started yet could never answer. The top one if several are stacked."""
    target = os.path.abspath(mount)  # (realpath would stat the mount point too)
    conn = None
    with open(mountinfo) as f:
        for line in f:
            head, _, tail = line.partition(" - ")  # tail: fstype source options
            fields = head.split()
            if len(fields) < 5 or not tail:
                continue
            point = fields[4].replace("\\040", " ").replace("\\011", "\t")
            if point == target and tail.startswith("fuse"):
                conn = int(fields[2].partition(":")[2])
    return conn


class DeathWatch:
    """Started right after the mount, from the thread that runs the FUSE loop."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, mount: str) -> bool:
        setpriv = shutil.which("setpriv")
        sh = shutil.which("sh")
        if setpriv is None or sh is None:
            log.warning("setpriv or sh missing: a killed daemon may leave a hung mount")
            return False
        try:
            conn = connection_of(mount)
            if conn is None:
                log.warning("cannot find our FUSE connection for %s", mount)
                return False
            self.proc = subprocess.Popen(
                [setpriv, "--pdeathsig", "USR1", "--", sh, "-c", _SCRIPT, "pmxcfs-deathwatch",
                 str(conn)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            log.warning("cannot start the FUSE death watch: %s", exc)
            return False
        return True

    def stop(self) -> None:
        """Clean shutdown: the connection goes with the unmount; the watcher must not act."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
