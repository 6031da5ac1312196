"""Exit codes and the one error type every subcommand raises for a clean one-line message."""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1  # check found problems, diff found differences, a refusal about the data
EXIT_USAGE = 2  # bad arguments, unreadable or missing files
EXIT_LOCKED = 3  # a running pmxcfs holds the database
EXIT_DAMAGED = 8  # diff: added to 0/1 when a database is damaged (the rest is compared)


class AdminError(Exception):
    """A failure the user can act on; cli.py prints it as one line and exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
