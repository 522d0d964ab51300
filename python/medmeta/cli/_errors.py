"""Exit statuses of the ``medmeta`` command and the errors that map to them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_CHECK = 5

EXIT_CODES_HELP = """exit status:
  0  success
  1  unexpected error (run again with --debug for the traceback)
  2  usage error: unknown option, bad value, bad config file
  3  data error: missing, corrupt or unsuitable data (the message names the file or class)
  4  model error: missing or invalid model folder, checkpoint or ONNX file
  5  a verification failed (e.g. the exported model disagrees with PyTorch)"""


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
    from medmeta.data.errors import DataError  # numpy only

    if isinstance(err, CLIError):
        return err.code
    if isinstance(err, (DataError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return EXIT_DATA
    edge_error = _edge_error_type()
    if edge_error is not None and isinstance(err, edge_error):
        return EXIT_MODEL
    return EXIT_INTERNAL


def _edge_error_type() -> type[BaseException] | None:
    try:
        from medmeta.edge.schema import EdgeModelError  # numpy only
    except ImportError:  # pragma: no cover - part of the package
        return None
    return EdgeModelError


def one_line(err: BaseException) -> str:
    """The error's message on one line (its type name when the message is empty)."""
    text = " ".join(str(err).split())
    if isinstance(err, FileNotFoundError) and err.filename:
        text = f"{err.filename}: no such file or folder"
    return text or type(err).__name__
