"""The machinery shared by the fuzz harnesses: what a harness is, how one input is judged,
and the atheris entry point (:func:`main`).

Only the standard library is imported here, so that :func:`main` can import the reader
modules inside ``atheris.instrument_imports`` (coverage feedback needs them instrumented).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPLIT", "Call", "Finding", "Harness", "check_one", "fresh", "join", "main", "split"]

REPO = Path(__file__).resolve().parents[2]
DATASETS = REPO / "python" / "medmeta" / "datasets"
FILES = REPO / "tests" / "data" / "files"

#: Separates the files of a multi-file input (a WFDB record, a signal and its annotations).
SPLIT = b"\n--medmeta-fuzz-next-file--\n"
#: The size limits the harnesses pass to the readers (scaled down from the defaults so that
#: an allocation far beyond them shows under ``-rss_limit_mb``).
MAX_BYTES = 64 << 20
MAX_PIXELS = 1 << 22

#: One reader call: ``(thunk, the exception types it documents)``.
Call = tuple[Callable[[], object], tuple[type[BaseException], ...]]


class Finding(AssertionError):
    """An input made a reader fail in a way it does not document."""


@dataclass(frozen=True)
class Harness:
    """A fuzz target.

    Attributes:
        name: the harness name (``fuzz_<name>.py``; the folder of its regressions).
        calls: ``calls(data, scratch)`` writes the input under ``scratch`` and returns the
            reader calls to make on it.
        seeds: ``seeds()`` -> ``{file name: bytes}``, built from the real sample files.
        modules: the reader modules, imported inside the instrumentation before fuzzing.
        instrument: module prefixes that atheris instruments for coverage feedback
            (``"medmeta"``: every function of medmeta, see :func:`_instrument_loaded`).
    """

    name: str
    calls: Callable[[bytes, Path], Sequence[Call]]
    seeds: Callable[[], Mapping[str, bytes]]
    modules: tuple[str, ...]
    instrument: tuple[str, ...] = ("medmeta",)


def split(data: bytes, n: int) -> list[bytes]:
    """The ``n`` files of a multi-file input (missing ones empty, extra ones in the last)."""
    parts = data.split(SPLIT, n - 1)
    return parts + [b""] * (n - len(parts))


def join(*files: bytes) -> bytes:
    """The multi-file input holding ``files`` (inverse of :func:`split`)."""
    return SPLIT.join(files)


def fresh(scratch: Path, *files: tuple[str, bytes]) -> Path:
    """An emptied folder ``scratch/in`` holding ``files`` (``(relative path, bytes)``)."""
    folder = scratch / "in"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for rel, data in files:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def check_one(harness: Harness, data: bytes, scratch: Path) -> list[str]:
    """Feed one input to every call of ``harness``: ``"accepted"`` or ``"refused"`` per call.

    Raises:
        Finding: a documented error without a message.
        Exception: anything else the reader raised (the finding itself).
    """
    outcomes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are not failures; their text is not read
        for thunk, errors in harness.calls(data, scratch):
            try:
                thunk()
            except errors as err:
                if not str(err).strip():
                    raise Finding(
                        f"{harness.name}: {type(err).__name__} without a message"
                    ) from err
                outcomes.append("refused")
            else:
                outcomes.append("accepted")
    return outcomes


def write_seeds(harness: Harness, folder: Path) -> int:
    """Write the harness's seeds into ``folder`` (created); returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = harness.seeds()
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    return len(seeds)


def _instrument_loaded(atheris: object, package: str) -> None:
    """Instrument every Python function already imported from ``package``."""
    import gc
    import types

    for obj in gc.get_objects():
        module = getattr(obj, "__module__", None) if isinstance(obj, types.FunctionType) else None
        if isinstance(module, str) and (module == package or module.startswith(package + ".")):
            atheris.instrument_func(obj)  # type: ignore[attr-defined]


def main(harness: Harness, argv: Iterable[str] | None = None) -> None:
    """Fuzz ``harness`` with atheris; ``argv`` are libFuzzer's (flags, then corpus folders).

    Environment: ``MEDMETA_FUZZ_SCRATCH`` is the folder for the input files (default: a
    folder under /dev/shm or the temp folder), ``MEDMETA_FUZZ_SEEDS`` a folder that receives
    the seeds before fuzzing starts (pass it as a corpus folder too).
    """
    import importlib
    import tempfile

    import atheris

    logging.disable(logging.CRITICAL)  # readers log skipped files; keep libFuzzer's output
    # The editable install loads medmeta through its own loader, which atheris's import hook
    # does not instrument reliably: medmeta's functions are instrumented once imported.
    # MEDMETA_FUZZ_INSTRUMENT=medmeta: medmeta's own code only (a quick start for short runs)
    only = os.environ.get("MEDMETA_FUZZ_INSTRUMENT") == "medmeta"
    others = [] if only else [m for m in harness.instrument if m != "medmeta"]
    if others:  # (an empty include list would instrument every module imported)
        with atheris.instrument_imports(include=others, enable_loader_override=False):
            for module in harness.modules:
                importlib.import_module(module)
    for module in harness.modules:
        importlib.import_module(module)
    _instrument_loaded(atheris, "medmeta")
    seeds = os.environ.get("MEDMETA_FUZZ_SEEDS")
    if seeds:
        write_seeds(harness, Path(seeds))
    scratch = os.environ.get("MEDMETA_FUZZ_SCRATCH")
    if not scratch:
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        scratch = tempfile.mkdtemp(prefix=f"medmeta-fuzz-{harness.name}-", dir=base)
    folder = Path(scratch)

    def one_input(data: bytes) -> None:
        check_one(harness, data, folder)

    args = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    atheris.Setup(args, one_input)
    atheris.Fuzz()
