"""Class selections on the command line: ``'0-4'``, ``'5,6,7'`` or class names."""

from __future__ import annotations

from collections.abc import Sequence

from medmeta.edge.errors import DataError

__all__ = ["CLASSES_HELP", "parse_classes"]

CLASSES_HELP = (
    "classes to use, by id or name: '0-4', '5,6,7' or 'basophil,eosinophil' (default: all)"
)


def parse_classes(spec: str | None, class_names: Sequence[str]) -> list[int] | None:
    """Class ids from ``'0-4'``, ``'5,6,7'`` or names (``None`` when ``spec`` is empty)."""
    if spec is None or not str(spec).strip():
        return None
    names = list(class_names)
    ids: list[int] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        if part in names:
            ids.append(names.index(part))
        elif "-" in part and all(s.strip().isdigit() for s in part.split("-", 1)):
            lo, hi = (int(s) for s in part.split("-", 1))
            if lo > hi:
                raise DataError(f"empty class range {part!r}", "--classes")
            ids.extend(range(lo, hi + 1))
        elif part.isdigit():
            ids.append(int(part))
        else:
            raise DataError(f"unknown class {part!r}; classes are {names}", "--classes")
    bad = [i for i in ids if not 0 <= i < len(names)]
    if bad:
        raise DataError(f"class ids {bad} out of range [0, {len(names)})", "--classes")
    if len(set(ids)) != len(ids):
        raise DataError(f"classes listed twice in {spec!r}", "--classes")
    return ids
