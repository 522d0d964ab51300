"""Exit statuses of the ``medmeta`` and ``medmeta-edge`` commands, the errors that map to them,
and the one runner that turns a subcommand's exception into one line and its status."""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_CHECK = 5
EXIT_WRITE = 6

EXIT_CODES_HELP = """exit status:
  0  success
  1  unexpected error (run again with --debug for the traceback)
  2  usage error: unknown option, bad value, bad config file
  3  data error: missing, corrupt or unsuitable data (the message names the file or class)
  4  model error: missing or invalid model folder, checkpoint or ONNX file
  5  a verification failed (e.g. the exported model disagrees with PyTorch)
  6  an output could not be written (full disk, read-only folder); the previous file is kept"""


class CLIError(Exception):
    """An error the command reports as one line with exit status ``code``."""

    code = EXIT_INTERNAL


class UsageError(CLIError):
    """Bad options or config file."""

    code = EXIT_USAGE


class ModelError(CLIError):
    """A model folder, checkpoint or ONNX file is missing or invalid."""

    code = EXIT_MODEL


class CheckFailed(CLIError):
    """A verification the command promised did not hold."""

    code = EXIT_CHECK


def exit_code_of(err: BaseException) -> int:
    """The exit status for an exception raised by a subcommand."""
    from medmeta._files import WriteError
    from medmeta.edge.errors import DataError
    from medmeta.edge.schema import EdgeModelError

    if isinstance(err, CLIError):
        return err.code
    if isinstance(err, WriteError):
        return EXIT_WRITE
    if isinstance(err, EdgeModelError):
        return EXIT_MODEL
    if isinstance(err, (DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return EXIT_DATA
    return EXIT_INTERNAL


def one_line(err: BaseException) -> str:
    """The error's message on one line (its type name when the message is empty)."""
    text = " ".join(str(err).split())
    if isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename}: no such file or folder"
    return text or type(err).__name__


def run_command(name: str, command: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``command()`` and return its exit status; an exception becomes one line on stderr
    (``{name}: error: ...``) and the status of :func:`exit_code_of` (the traceback with
    ``debug``), Ctrl-C becomes 130."""
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as err:  # one line for people, the traceback with --debug
        if debug:
            raise
        code = exit_code_of(err)
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        if code == EXIT_INTERNAL:
            print(
                "(an unexpected error; run again with --debug for the traceback)", file=sys.stderr
            )
        return code
