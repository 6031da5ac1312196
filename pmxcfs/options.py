"""Command line, compatible with the reference's GLib options (spec §9.1), plus overrides of
the fixed paths so the daemon can run beside another one for tests and demos.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from . import constants as C

VERIFY_INTERVAL = 3600.0  # the reference's DCDB_VERIFY_TIME


@dataclass
class Options:
    debug: bool = False
    foreground: bool = False
    local: bool = False
    mount: str = C.MOUNT_POINT
    db_dir: str = C.DB_DIR
    run_dir: str = C.RUN_DIR
    pid_file: str = C.PID_FILE
    corosync_conf: str = C.HOST_COROSYNC_CONF
    nodename: str | None = None
    node_ip: str | None = None
    rrd_dir: str = C.RRD_DIR
    rrdcached_socket: str = C.RRDCACHED_SOCKET
    lock_timeout: int = C.LOCK_TIMEOUT
    verify_interval: float = VERIFY_INTERVAL


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"option parsing failed: {message}\n")
        raise SystemExit(1)


def parse(argv: list[str]) -> Options:
    p = _Parser(prog="pmxcfs", description="pmxcfs - the Proxmox cluster filesystem")
    p.add_argument("-d", "--debug", action="store_true", help="Turn on debug messages")
    p.add_argument("-f", "--foreground", action="store_true", help="Do not daemonize server")
    p.add_argument(
        "-l", "--local", action="store_true", help="Force local mode (ignore corosync.conf)"
    )
    g = p.add_argument_group("paths (for tests and demos; defaults are the reference's)")
    g.add_argument("--mount", default=C.MOUNT_POINT, metavar="DIR")
    g.add_argument("--db-dir", default=C.DB_DIR, metavar="DIR")
    g.add_argument("--run-dir", default=C.RUN_DIR, metavar="DIR")
    g.add_argument("--pid-file", default=C.PID_FILE, metavar="FILE")
    g.add_argument("--corosync-conf", default=C.HOST_COROSYNC_CONF, metavar="FILE")
    g.add_argument("--nodename", default=None, help="node name (default: the hostname)")
    g.add_argument(
        "--node-ip", default=None, help="node IP address (default: resolved from the node name)"
    )
    g.add_argument(
        "--rrd-dir",
        default=C.RRD_DIR,
        metavar="DIR",
        help="where RRD files are written ('' writes none, e.g. for benchmarks)",
    )
    g.add_argument(
        "--rrdcached-socket",
        default=C.RRDCACHED_SOCKET,
        metavar="FILE",
        help="rrdcached's unix socket ('' updates RRD files directly)",
    )
    g.add_argument(
        "--verify-interval",
        type=float,
        default=VERIFY_INTERVAL,
        metavar="SECONDS",
        help="how often this node, as sync coordinator, starts a data verification "
        "(default 3600, as the reference)",
    )
    p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.extra:
        sys.stderr.write("too many arguments\n")
        raise SystemExit(255)
    return Options(
        debug=ns.debug,
        foreground=ns.foreground,
        local=ns.local,
        mount=ns.mount,
        db_dir=ns.db_dir,
        run_dir=ns.run_dir,
        pid_file=ns.pid_file,
        corosync_conf=ns.corosync_conf,
        nodename=ns.nodename,
        node_ip=ns.node_ip,
        rrd_dir=ns.rrd_dir,
        rrdcached_socket=ns.rrdcached_socket,
        verify_interval=ns.verify_interval,
    )
