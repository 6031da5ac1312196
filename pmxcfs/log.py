"""Logging as the reference does it: syslog ident pmxcfs, facility daemon, lines
"[domain] priority: message" cleaned to ASCII, and stderr too in the foreground.
"""

from __future__ import annotations

import logging
import sys
import syslog

NOTICE = 25
logging.addLevelName(NOTICE, "notice")

_PRIO = {
    logging.DEBUG: ("debug", syslog.LOG_DEBUG),
    logging.INFO: ("info", syslog.LOG_INFO),
    NOTICE: ("notice", syslog.LOG_NOTICE),
    logging.WARNING: ("warning", syslog.LOG_WARNING),
    logging.ERROR: ("err", syslog.LOG_ERR),
    logging.CRITICAL: ("crit", syslog.LOG_CRIT),
}


def clean(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if cp < 0x20 or cp == 0x7F:
            out.append(f"#{cp:03d}")
        elif cp < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{cp:04x}" if cp <= 0xFFFF else "?")
    return "".join(out)


class _Formatter(logging.Formatter):
    def __init__(self, debug_info: bool = False) -> None:
        super().__init__()
        self.debug_info = debug_info

    def format(self, record: logging.LogRecord) -> str:
        domain = record.name.rsplit(".", 1)[-1] if "." in record.name else "main"
        prio = _PRIO.get(record.levelno, ("info", 0))[0]
        msg = clean(record.getMessage())
        if self.debug_info:
            msg += f" ({record.filename}:{record.lineno}:{record.funcName})"
        return f"[{domain}] {prio}: {msg}"


class _SyslogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            syslog.syslog(
                syslog.LOG_DAEMON | _PRIO.get(record.levelno, ("", 6))[1], self.format(record)
            )
        except Exception:
            self.handleError(record)


_stderr: logging.Handler | None = None
_formatter = _Formatter()


def setup(foreground: bool, debug: bool) -> None:
    global _stderr
    syslog.openlog("pmxcfs", syslog.LOG_PID, syslog.LOG_DAEMON)
    root = logging.getLogger("pmxcfs")
    root.handlers.clear()
    root.propagate = False
    sys_handler = _SyslogHandler()
    sys_handler.setFormatter(_formatter)
    root.addHandler(sys_handler)
    if foreground:
        _stderr = logging.StreamHandler(sys.stderr)
        _stderr.setFormatter(_formatter)
        root.addHandler(_stderr)
    set_debug(debug)


def set_debug(on: bool) -> None:
    logging.getLogger("pmxcfs").setLevel(logging.DEBUG if on else logging.INFO)
    _formatter.debug_info = on


def is_debug() -> bool:
    return logging.getLogger("pmxcfs").level <= logging.DEBUG


def stop_stderr() -> None:
    """A daemonized child logs to syslog only."""
    global _stderr
    if _stderr is not None:
        logging.getLogger("pmxcfs").removeHandler(_stderr)
        _stderr = None
