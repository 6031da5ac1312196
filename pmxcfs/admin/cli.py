"""Command line of pmxcfs-admin: argument parsing, output formatting, exit codes.

The work itself lives in one module per subcommand; this file only wires them up, and turns
every expected failure into one line on stderr (no traceback) and a documented exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import backup, check, diff, listing, repair, salvage, status, transfer
from .dbread import load_tree
from .errors import EXIT_DAMAGED, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, AdminError
from .lock import exclusive

PROG = "pmxcfs-admin"
EPILOG = (
    "exit codes: 0 success/clean, 1 problems found, differences or refused, "
    "2 usage error or unreadable file, 3 database in use by a running pmxcfs, "
    "4 no running pmxcfs answered"
)

DIFF_EPILOG = """\
A damaged database (one the daemon refuses, or SQLite cannot read) is not refused: every
problem 'check' would report is listed first as '! DB1 ...' or '! DB2 ...', with which load
rules fail and which pages or inode ranges of table 'tree' could not be read (rows on intact
pages are read from the file directly). Then the entries that could be read are compared; an
entry the other side lacks but may have lost, or has at another path, is marked. Rows the
daemon would refuse still get a path: a duplicate name gets ' [inode N]', an orphan is shown
below '<missing P>/', a parent cycle below '<cycle N>/', a name that is not UTF-8 with escapes.

exit codes: 0 no differences, 1 differences, plus 8 if either database is damaged
(8: damaged, no differences in what could be read; 9: damaged and differences),
2 usage error or unreadable file"""

Handler = Callable[[argparse.Namespace], int]


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _err(line: str) -> None:
    sys.stderr.write(f"{PROG}: {line}\n")


# ---------------------------------------------------------------------------------- handlers


def cmd_check(a: argparse.Namespace) -> int:
    report = check.check_db(a.db)
    if a.json:
        _json(report.as_dict())
    else:
        for p in report.problems:
            _out(p.line())
        if report.ok:
            _out(f"{a.db}: ok ({report.entries} entries, version {report.version})")
        else:
            fixable = sum(p.fixable for p in report.problems)
            _out(f"{a.db}: {len(report.problems)} problem(s), {fixable} fixable by '{PROG} repair'")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_ls(a: argparse.Namespace) -> int:
    items = listing.list_entries(load_tree(a.db), a.path, a.recursive)
    if a.json:
        _json(items)
        return EXIT_OK
    for info in items:
        if a.long:
            _out(listing.long_line(info, a.recursive))
        else:
            _out(info["path"] if a.recursive else info["name"])
    return EXIT_OK


def cmd_cat(a: argparse.Namespace) -> int:
    data = listing.read_file(load_tree(a.db), a.path)
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_export(a: argparse.Namespace) -> int:
    n = transfer.export_db(a.db, a.dir, a.force, a.exclude)
    _result(a, {"entries": n, "dir": a.dir}, f"exported {n} entries to {a.dir}")
    return EXIT_OK


def cmd_import(a: argparse.Namespace) -> int:
    n = transfer.import_dir(a.dir, a.db, a.force, a.exclude)
    _result(a, {"entries": n, "db": a.db}, f"imported {n} entries into {a.db}")
    return EXIT_OK


def cmd_backup(a: argparse.Namespace) -> int:
    r = backup.backup_db(a.db, a.file, a.force)
    msg = f"backed up {a.db} to {r.path} ({r.entries} entries, version {r.version})"
    _result(a, {"file": r.path, "entries": r.entries, "version": r.version}, msg)
    return EXIT_OK


def cmd_restore(a: argparse.Namespace) -> int:
    r = backup.restore_db(a.file, a.db)
    kept = f"; the old database is kept as {r.kept}" if r.kept else ""
    msg = f"restored {a.db} from {a.file} ({r.entries} entries, version {r.version}){kept}"
    _result(a, {"db": r.path, "entries": r.entries, "version": r.version, "kept": r.kept}, msg)
    return EXIT_OK


def cmd_repair(a: argparse.Namespace) -> int:
    with exclusive(a.db):
        report = check.check_db(a.db)
        if not report.usable:
            first = report.problems[0].line() if report.problems else "unusable"
            raise AdminError(f"{a.db}: cannot repair: {first}", EXIT_PROBLEMS)
        if report.ok:
            _result(a, {"steps": [], "manual": [], "applied": False}, f"{a.db}: nothing to repair")
            return EXIT_OK
        plan = repair.plan_repair(report.rows, report.problems, int(time.time()))
        if not a.json:
            for s in plan.steps:
                _out("fix " + s.line())
            for p in plan.manual:
                _out("cannot fix " + p.line())
        applied = False
        kept = None
        if plan.steps and not a.dry_run and (a.yes or _confirm(_question(plan))):
            kept = backup.snapshot(a.db)
            repair.apply_plan(a.db, plan)
            applied = True
        remaining = check.check_db(a.db, show_progress=False).problems
    if a.json:
        _json(
            {
                "steps": [s.as_dict() for s in plan.steps],
                "manual": [p.as_dict() for p in plan.manual],
                "applied": applied,
                "backup": kept,
                "remaining": [p.as_dict() for p in remaining],
            }
        )
    elif applied:
        _out(f"applied {len(plan.steps)} changes; a copy of the old database is kept as {kept}")
        _out(f"{len(remaining)} problem(s) remain" if remaining else f"{a.db}: ok")
    elif plan.steps:
        _out("nothing changed" + (" (dry run)" if a.dry_run else ""))
    return EXIT_OK if applied and not remaining else EXIT_PROBLEMS


def _question(plan: repair.Plan) -> str:
    kinds = ", ".join(dict.fromkeys(s.kind for s in plan.steps))
    return f"apply {len(plan.steps)} changes ({kinds})"


def _confirm(question: str) -> bool:
    sys.stderr.write(f"{question}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_diff(a: argparse.Namespace) -> int:
    sides = (("DB1", salvage.read_db(a.db1)), ("DB2", salvage.read_db(a.db2)))
    (_, left), (_, right) = sides
    compared = left.readable and right.readable
    diffs = (
        diff.diff_entries(
            diff.paths_of(left.rows), diff.paths_of(right.rows), left.may_hold, right.may_hold
        )
        if compared
        else []
    )
    damaged = left.damaged or right.damaged
    if a.json:
        _json(
            {
                "db1": left.as_dict(),
                "db2": right.as_dict(),
                "compared": compared,
                "differences": [d.as_dict() for d in diffs],
            }
        )
    else:
        for label, side in sides:
            for p in side.damage:
                line = p.line() if p.path or p.inode is not None else f"{p.kind}: {p.message}"
                _out(f"! {label} {line}")
        for d in diffs:
            _out(d.line())
        for label, side in sides:
            if side.damaged:
                _out(f"{label} {side.path} is damaged: {side.summary()}")
        versions = f"versions {_v(left.version)} and {_v(right.version)}"
        if not compared:
            which = " and ".join(label for label, side in sides if not side.readable)
            _out(f"nothing compared: nothing readable in {which}")
        elif not diffs:
            what = " in what could be read" if damaged else ""
            _out(f"no differences{what} ({versions})")
    return (EXIT_PROBLEMS if diffs else EXIT_OK) | (EXIT_DAMAGED if damaged else 0)


def _v(version: int | None) -> str:
    return "none" if version is None else str(version)


def _result(a: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if a.json:
        _json(obj)
    else:
        _out(text)


# ---------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Ask a running pmxcfs how it is (status, log, debug); inspect, check, "
        "repair, copy and convert a config.db offline.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")

    def add(
        name: str,
        handler: Handler,
        text: str,
        *extra: argparse.ArgumentParser,
        epilog: str = EPILOG,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common, *extra],
            help=text,
            description=text,
            epilog=epilog,
            # a long epilog keeps its own lines; the one-line EPILOG is wrapped as before
            formatter_class=argparse.HelpFormatter
            if epilog is EPILOG
            else argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler)
        return p

    live = argparse.ArgumentParser(add_help=False)
    status.add_arguments(live)
    p = add(
        "status", status.cmd_status,
        "is the running node quorate, synced, keeping up - and if not, why (exit 1: problems)",
        live,
    )  # fmt: skip
    p.add_argument("-w", "--watch", action="store_true", help="refresh every second, like top")
    p.add_argument("--interval", type=float, default=1.0, metavar="SEC", help=argparse.SUPPRESS)
    p.add_argument(
        "-n", "--iterations", type=int, default=0, metavar="N", help="with --watch: stop after N"
    )
    p = add("log", status.cmd_log, "print the cluster log of the running node", live)
    p.add_argument(
        "-n", "--lines", type=int, default=50, metavar="N", help="the newest N (0: all; default 50)"
    )
    p.add_argument("-f", "--follow", action="store_true", help="then print new entries as made")
    p.add_argument("--interval", type=float, default=1.0, metavar="SEC", help=argparse.SUPPRESS)
    p = add("debug", status.cmd_debug, "show or switch the running daemon's debug logging", live)
    p.add_argument("state", nargs="?", choices=("on", "off"))

    p = add("check", cmd_check, "report every consistency problem of a database (read-only)")
    p.add_argument("db", metavar="DB")

    p = add("ls", cmd_ls, "list a directory of a database (read-only)")
    p.add_argument("db", metavar="DB")
    p.add_argument("path", metavar="PATH", nargs="?", default="")
    p.add_argument("-l", "--long", action="store_true", help="mode, size, version, writer, mtime")
    p.add_argument("-R", "--recursive", action="store_true", help="list all descendants")

    p = add("cat", cmd_cat, "print a file of a database (read-only)")
    p.add_argument("db", metavar="DB")
    p.add_argument("path", metavar="PATH")

    excl = argparse.ArgumentParser(add_help=False)
    excl.add_argument(
        "--exclude",
        metavar="PATTERN",
        action="append",
        default=None,
        help="skip names matching this glob (repeatable; default: .git)",
    )
    p = add(
        "export", cmd_export, "write the tree as plain files and directories (mtimes kept)", excl
    )
    p.add_argument("db", metavar="DB")
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "--force",
        action="store_true",
        help="export into a non-empty DIR, making it mirror the database (excluded names stay)",
    )

    p = add("import", cmd_import, "build a fresh database from a directory tree", excl)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("db", metavar="DB")
    p.add_argument(
        "--force", action="store_true", help="replace a non-empty DB (kept as DB.bak-<time>)"
    )

    p = add("backup", cmd_backup, "consistent copy of a database, also while pmxcfs runs")
    p.add_argument("db", metavar="DB")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--force", action="store_true", help="overwrite an existing FILE")

    p = add("restore", cmd_restore, "replace DB by a checked backup (old DB kept as .bak)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("db", metavar="DB")

    p = add("repair", cmd_repair, "fix what check finds that has one safe fix (never deletes)")
    p.add_argument("db", metavar="DB")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before changing DB")
    p.add_argument("-n", "--dry-run", action="store_true", help="only show what would be done")

    p = add(
        "diff",
        cmd_diff,
        "paths that differ between two databases (content, version); a damaged database "
        "is compared as far as it can be read",
        epilog=DIFF_EPILOG,
    )
    p.add_argument("db1", metavar="DB1")
    p.add_argument("db2", metavar="DB2")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "exclude", "unset") is None:
        args.exclude = list(transfer.DEFAULT_EXCLUDES)
    handler: Handler = args.handler
    try:
        return handler(args)
    except AdminError as exc:
        _err(str(exc))
        return exc.code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
