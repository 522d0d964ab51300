"""The error of bad input data, shared by the edge runtime's readers and :mod:`medmeta.data`
(which re-exports it): every message names the file or argument at fault, what was expected
and what was found."""

from __future__ import annotations

import os

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file or argument is invalid.

    Attributes:
        source: the file, folder or argument at fault (``None`` when not applicable).
        problem: what is wrong, in words (expected vs. found).
    """

    def __init__(self, problem: str, source: str | os.PathLike[str] | None = None) -> None:
        self.source = None if source is None else os.fspath(source)
        self.problem = problem
        super().__init__(problem if self.source is None else f"{self.source}: {problem}")
