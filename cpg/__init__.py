"""trio-friendly cffi bindings to the corosync client libraries pmxcfs needs.

* :class:`Cpg` -- closed process groups: join/leave, agreed multicast, deliveries and
  confchg events in total order (``cpg.group``).
* :class:`Quorum` -- quorate flag and change notifications (``cpg.quorum``).
* :class:`Cmap` -- cluster name, config_version, nodelist, change tracking
  (``cpg.cmap``).
* :class:`Votequorum` -- expected/total votes for status output (``cpg.votequorum``).
* :mod:`cpg.errors` -- every ``cs_error_t`` as an exception class.

All dispatching is driven by fd readiness inside trio; nothing blocks the event loop
except short synchronous IPC round trips to the local corosync.
"""

from .cmap import ClusterInfo, Cmap, CmapValue, NodeInfo, parse_nodelist
from .errors import (
    CorosyncError,
    CorosyncUnavailable,
    CpgNameError,
    CpgNotJoined,
    CSErrBadHandle,
    CSErrExist,
    CSErrInvalidParam,
    CSErrLibrary,
    CSErrNotExist,
    CSError,
    CSErrTooBig,
    CSErrTryAgain,
    HandleClosedError,
    QuorumNotConfigured,
    error_for,
)
from .group import (
    CPG_MAX_NAME_LENGTH,
    CPG_TYPE_AGREED,
    Cpg,
    CpgAddress,
    CpgConfchg,
    CpgDeliver,
    CpgEvent,
    CpgReason,
    group_name,
)
from .quorum import Quorum, QuorumChange
from .votequorum import Votequorum, VotequorumInfo

__all__ = [
    "CPG_MAX_NAME_LENGTH",
    "CPG_TYPE_AGREED",
    "CSErrBadHandle",
    "CSErrExist",
    "CSErrInvalidParam",
    "CSErrLibrary",
    "CSErrNotExist",
    "CSErrTooBig",
    "CSErrTryAgain",
    "CSError",
    "ClusterInfo",
    "Cmap",
    "CmapValue",
    "CorosyncError",
    "CorosyncUnavailable",
    "Cpg",
    "CpgAddress",
    "CpgConfchg",
    "CpgDeliver",
    "CpgEvent",
    "CpgNameError",
    "CpgNotJoined",
    "CpgReason",
    "HandleClosedError",
    "NodeInfo",
    "Quorum",
    "QuorumChange",
    "QuorumNotConfigured",
    "Votequorum",
    "VotequorumInfo",
    "error_for",
    "group_name",
    "parse_nodelist",
]
