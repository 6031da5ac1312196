"""corosync ``cs_error_t`` codes as a Python exception hierarchy.

Every non-OK result of a corosync library call is raised as a :class:`CSError`
subclass named after the C constant, so callers can catch exactly the case they
handle (``except CSErrTryAgain``) and logs show the C name.  ``CS_ERR_LIBRARY`` and
``CS_ERR_BAD_HANDLE`` -- what the libraries return when corosync is not running, died
or restarted -- derive from :class:`CorosyncUnavailable`: the handle is useless and the
caller reconnects by creating a new one (pmxcfs' loop.c does the same).
"""

from __future__ import annotations

from typing import ClassVar

CS_OK = 1


class CorosyncError(Exception):
    """Base of every error raised by the :mod:`cpg` bindings."""


class HandleClosedError(CorosyncError, RuntimeError):
    """The handle was finalized; create a new object to talk to corosync again."""


class CpgNameError(CorosyncError, ValueError):
    """A CPG group name that corosync cannot represent (empty, NUL inside, > 128 bytes)."""


class CpgNotJoined(CorosyncError):
    """The CPG handle is not in a group (corosync would silently drop a multicast)."""


class QuorumNotConfigured(CorosyncError):
    """corosync has no quorum provider (``quorum_initialize`` type != QUORUM_SET)."""


class CSError(CorosyncError):
    """A corosync library call returned a ``cs_error_t`` other than ``CS_OK``."""

    code: ClassVar[int] = 0
    name: ClassVar[str] = "CS_ERR_UNKNOWN"

    def __init__(self, func: str, code: int | None = None, *, detail: str = "") -> None:
        if code is not None and code != type(self).code:
            # only used for codes without a dedicated class
            self.code = code  # type: ignore[misc]
        self.func = func
        msg = f"{func}: {self.name} ({self.code})"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class CorosyncUnavailable(CSError):
    """corosync is not running or the connection to it broke (LIBRARY / BAD_HANDLE)."""


class CSErrLibrary(CorosyncUnavailable):
    code, name = 2, "CS_ERR_LIBRARY"


class CSErrVersion(CSError):
    code, name = 3, "CS_ERR_VERSION"


class CSErrInit(CSError):
    code, name = 4, "CS_ERR_INIT"


class CSErrTimeout(CSError):
    code, name = 5, "CS_ERR_TIMEOUT"


class CSErrTryAgain(CSError):
    code, name = 6, "CS_ERR_TRY_AGAIN"


class CSErrInvalidParam(CSError):
    code, name = 7, "CS_ERR_INVALID_PARAM"


class CSErrNoMemory(CSError):
    code, name = 8, "CS_ERR_NO_MEMORY"


class CSErrBadHandle(CorosyncUnavailable):
    code, name = 9, "CS_ERR_BAD_HANDLE"


class CSErrBusy(CSError):
    code, name = 10, "CS_ERR_BUSY"


class CSErrAccess(CSError):
    code, name = 11, "CS_ERR_ACCESS"


class CSErrNotExist(CSError):
    code, name = 12, "CS_ERR_NOT_EXIST"


class CSErrNameTooLong(CSError):
    code, name = 13, "CS_ERR_NAME_TOO_LONG"


class CSErrExist(CSError):
    code, name = 14, "CS_ERR_EXIST"


class CSErrNoSpace(CSError):
    code, name = 15, "CS_ERR_NO_SPACE"


class CSErrInterrupt(CSError):
    code, name = 16, "CS_ERR_INTERRUPT"


class CSErrNameNotFound(CSError):
    code, name = 17, "CS_ERR_NAME_NOT_FOUND"


class CSErrNoResources(CSError):
    code, name = 18, "CS_ERR_NO_RESOURCES"


class CSErrNotSupported(CSError):
    code, name = 19, "CS_ERR_NOT_SUPPORTED"


class CSErrBadOperation(CSError):
    code, name = 20, "CS_ERR_BAD_OPERATION"


class CSErrFailedOperation(CSError):
    code, name = 21, "CS_ERR_FAILED_OPERATION"


class CSErrMessageError(CSError):
    code, name = 22, "CS_ERR_MESSAGE_ERROR"


class CSErrQueueFull(CSError):
    code, name = 23, "CS_ERR_QUEUE_FULL"


class CSErrQueueNotAvailable(CSError):
    code, name = 24, "CS_ERR_QUEUE_NOT_AVAILABLE"


class CSErrBadFlags(CSError):
    code, name = 25, "CS_ERR_BAD_FLAGS"


class CSErrTooBig(CSError):
    code, name = 26, "CS_ERR_TOO_BIG"


class CSErrNoSections(CSError):
    code, name = 27, "CS_ERR_NO_SECTIONS"


class CSErrContextNotFound(CSError):
    code, name = 28, "CS_ERR_CONTEXT_NOT_FOUND"


class CSErrTooManyGroups(CSError):
    code, name = 30, "CS_ERR_TOO_MANY_GROUPS"


class CSErrSecurity(CSError):
    code, name = 100, "CS_ERR_SECURITY"


ERROR_CLASSES: dict[int, type[CSError]] = {
    cls.code: cls
    for cls in (
        CSErrLibrary, CSErrVersion, CSErrInit, CSErrTimeout, CSErrTryAgain,
        CSErrInvalidParam, CSErrNoMemory, CSErrBadHandle, CSErrBusy, CSErrAccess,
        CSErrNotExist, CSErrNameTooLong, CSErrExist, CSErrNoSpace, CSErrInterrupt,
        CSErrNameNotFound, CSErrNoResources, CSErrNotSupported, CSErrBadOperation,
        CSErrFailedOperation, CSErrMessageError, CSErrQueueFull, CSErrQueueNotAvailable,
        CSErrBadFlags, CSErrTooBig, CSErrNoSections, CSErrContextNotFound,
        CSErrTooManyGroups, CSErrSecurity,
    )
}  # fmt: skip


def error_for(code: int, func: str) -> CSError:
    """The exception for a non-OK *code* returned by C function *func*."""
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return CSError(func, code)
    return cls(func)


def check(code: int, func: str) -> None:
    """Raise the matching :class:`CSError` unless *code* is ``CS_OK``."""
    if code != CS_OK:
        raise error_for(code, func)
