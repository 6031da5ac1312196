"""What an RRD table update means on disk (status-ipc §4.1, §4.3), without doing any I/O.

`plan(key, data, now)` maps one `rrd/<key>` update to the file it feeds (relative to the RRD
base directory), the `<ts>:<v1>:...` string for `rrd update`, and the definition the file is
created with when missing. Keys the reference does not know (including the `pve-*-9.0/...`
keys of newer releases) give a `Refusal`: they stay in the table but write nothing.

Stricter than the reference, because its failure modes are worse: `.`/`..` and control
characters in a key part are refused (the reference would write `pve2-storage/../x` to
`<base>/x`), and so is a value string with the wrong number of fields or with whitespace (the
reference hands it to rrdcached, which accepts it and fails later while flushing the batch, or
lets it break the line-based protocol).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

STEP = 60  # seconds per primary data point
HEARTBEAT = 120

NODE_DS: tuple[tuple[str, str], ...] = (
    ("loadavg", "GAUGE"),
    ("maxcpu", "GAUGE"),
    ("cpu", "GAUGE"),
    ("iowait", "GAUGE"),
    ("memtotal", "GAUGE"),
    ("memused", "GAUGE"),
    ("swaptotal", "GAUGE"),
    ("swapused", "GAUGE"),
    ("roottotal", "GAUGE"),
    ("rootused", "GAUGE"),
    ("netin", "DERIVE"),
    ("netout", "DERIVE"),
)
VM_DS: tuple[tuple[str, str], ...] = (
    ("maxcpu", "GAUGE"),
    ("cpu", "GAUGE"),
    ("maxmem", "GAUGE"),
    ("mem", "GAUGE"),
    ("maxdisk", "GAUGE"),
    ("disk", "GAUGE"),
    ("netin", "DERIVE"),
    ("netout", "DERIVE"),
    ("diskread", "DERIVE"),
    ("diskwrite", "DERIVE"),
)
STORAGE_DS: tuple[tuple[str, str], ...] = (("total", "GAUGE"), ("used", "GAUGE"))

# the same ten archives for every kind: 1 min, 30 min, 3 h, 12 h and 1 week, 70 rows each
RRAS: tuple[str, ...] = tuple(
    f"RRA:{cf}:0.5:{steps}:70" for cf in ("AVERAGE", "MAX") for steps in (1, 30, 180, 720, 10080)
)

_BAD_PART = re.compile(r"[\x00-\x1f\x7f]")
_VALUE = re.compile(r"[!-~]+")  # printable ASCII without space: one protocol field


@dataclass(frozen=True, slots=True)
class RrdFile:
    """Update `path` (relative to the base dir) with `values`, creating it first if missing."""

    path: str
    values: str
    ds: tuple[tuple[str, str], ...]
    start: int  # creation start time: the first update must be later

    @property
    def step(self) -> int:
        return STEP

    @property
    def create_args(self) -> tuple[str, ...]:
        """The DS and RRA arguments of `rrd create`."""
        return (*(f"DS:{n}:{t}:{HEARTBEAT}:0:U" for n, t in self.ds), *RRAS)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Write nothing; `reason` is the log line."""

    reason: str
    path: str = ""  # the file of a known key whose data is refused; '' for a wrong key


def day_start(now: float) -> int:
    """Today 00:00:00 local time as epoch: the reference's creation start."""
    t = time.localtime(now)
    return int(time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1)))


def _part_ok(part: str) -> bool:
    return bool(part) and "/" not in part and part not in (".", "..") and not _BAD_PART.search(part)


def _target(key: str) -> tuple[str, int, tuple[tuple[str, str], ...]] | None:
    """(relative path, fields to skip, data sources) of a valid key, else None."""
    kind, sep, rest = key.partition("/")
    if not sep:
        return None
    if kind == "pve2-node":
        return (key, 2, NODE_DS) if _part_ok(rest) else None
    if kind in ("pve2.3-vm", "pve2-vm"):
        skip = 4 if kind == "pve2.3-vm" else 2
        return (f"pve2-vm/{rest}", skip, VM_DS) if _part_ok(rest) else None
    if kind == "pve2-storage":
        node, sep, storeid = rest.partition("/")
        if sep and _part_ok(node) and _part_ok(storeid):
            return (key, 0, STORAGE_DS)
    return None


def plan(key: str, data: str, now: float) -> RrdFile | Refusal:
    """The disk work for the RRD table update `key` (without `rrd/`) = `data`."""
    target = _target(key)
    if target is None:
        return Refusal(f"RRD update error: unknown/wrong key {key}")
    path, skip, ds = target
    fields = data.split(":")
    want = skip + 1 + len(ds)  # skipped fields, the timestamp, one value per data source
    if len(fields) != want:
        many = "many" if len(fields) > want else "few"
        return Refusal(
            f"RRD update error {path}: too {many} fields ({len(fields)}, expected {want})", path
        )
    values = ":".join(fields[skip:])
    if not _VALUE.fullmatch(values):
        return Refusal(f"RRD update error {path}: bad characters in {values!r}", path)
    return RrdFile(path, values, ds, day_start(now))
