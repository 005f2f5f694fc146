"""What every command-line tool shares: its parser's shape and the one way it reports a bad input.

A bad input (an option value, a file, a data tree, a checkpoint) is reported as one line on stderr,
`<prog>: error: <what is wrong, naming the option or file>`, and exit code 2, the code argparse uses
for its own errors. Code under a command raises `UsageError`, `DataError` or `CheckpointError` (or,
as older modules do, `SystemExit("error: ...")`); `run_command` turns each into that line, so no
call site needs a try/except of its own. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from rja_kernels import BackendUnavailableError
from rja_models.checkpoint import CheckpointError
from rja_models.data import DataError

T = TypeVar("T")


class UsageError(Exception):
    """A bad command-line input the user can fix; the message names the option or the file."""


class BadInputExit(SystemExit):
    """The exit of a command after a bad input: code 2, and `str()` is the message (what callers and
    tests running `main(argv)` in-process can read)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


# Errors that describe the user's input, not a bug (a forced kernel backend that cannot run here included).
BAD_INPUT_ERRORS = (UsageError, DataError, CheckpointError, BackendUnavailableError)


def command_parser(prog: str, description: str | None, usage: str = "%(prog)s [options]") -> argparse.ArgumentParser:
    """The parser of a command: its docstring as the description, and a one-line usage, so an argparse
    error is two short lines (the full option list belongs to --help)."""
    return argparse.ArgumentParser(prog=prog, description=description, usage=usage,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(prog: str, command: Callable[[], T]) -> T:
    """`command()`, with a bad input reported as one line and exit code 2 (see the module docstring)."""
    try:
        return command()
    except BadInputExit:
        raise
    except BAD_INPUT_ERRORS as e:
        message = str(e)
    except SystemExit as e:
        if not isinstance(e.code, str):  # --help, argparse's own errors, sys.exit(n): as they are
            raise
        message = e.code.removeprefix("error: ")
    message = " ".join(message.split())  # one line, whatever the error's own layout
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise BadInputExit(message) from None
