"""Rewrites CUDA sources into C++ that the emulator (emu/cuda_emu.h) runs on the CPU.

Each ``*.cu`` / ``*.cuh`` under a source folder is written to the same relative path under
an output folder (``*.cu`` as ``*.cpp``), starting with a ``#line`` directive so that compiler
and sanitizer messages name the original file. Every rewrite keeps the newlines of the text
it replaces, so line numbers stay those of the original. The constructs handled:

``kernel<Targs><<<grid, block[, smem[, stream]]>>>(args)``
    ``::emu::launch<&kernel<Targs>>(EMU_SITE("kernel<Targs>"), ::emu::config(grid, ...), args)``
``extern __shared__ [__align__(n)] TYPE name[];``
    ``TYPE* const name = ::emu::dynamic_shared<TYPE>();`` (the launch's dynamic shared memory)
``__shared__ [__align__(n)] TYPE name[dims];``
    ``static ... TYPE name[dims]; ::emu::static_shared(name, sizeof(name));`` (one copy per
    kernel instantiation, poisoned at the first touch in every block)
``__global__ ... __launch_bounds__(max, ...) name(params) {``
    ``... { ::emu::kernel_entry(max);`` (checks the block size against the bound)

Comments and string literals are never rewritten. Any ``<<<`` or ``__shared__`` that does not
match these forms is an error (exit status 1), never passed through. The kernels found are
listed in ``kernels.txt`` in the output folder (``name<TAB>relative path<TAB>line``), which the
harness uses to check that every kernel is launched by the checks.

usage: rewrite.py SRC_DIR OUT_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_]\w*"
ALIGN = r"(?:__align__\s*\(\s*\w+\s*\)\s*)?"
TYPE = r"(?:[A-Za-z_][\w:<>, ]*?)"
DYNAMIC_SHARED = re.compile(rf"extern\s+__shared__\s+({ALIGN})({TYPE})\s+({IDENT})\s*\[\s*\]\s*;")
STATIC_SHARED = re.compile(
    rf"__shared__\s+({ALIGN})({TYPE})\s+({IDENT})\s*((?:\[[^\]\n;]+\]\s*)+);"
)
GLOBAL = re.compile(r"\b__global__\b")
LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\(")


class RewriteError(Exception):
    pass


def mask_comments_and_strings(src: str) -> str:
    """The source with comments and string/char literals replaced by spaces (newlines kept),
    so that positions in the mask are positions in the source."""
    out = list(src)
    i, n = 0, len(src)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            if j < 0:
                raise RewriteError(f"line {line_of(src, i)}: unterminated comment")
            blank(i, j + 2)
            i = j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            if j >= n:
                raise RewriteError(f"line {line_of(src, i)}: unterminated literal")
            blank(i + 1, j)
            i = j + 1
        else:
            i += 1
    return "".join(out)


def line_of(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def newlines(text: str) -> str:
    """The newlines of `text`, to append to a one-line replacement."""
    return "\n" * text.count("\n")


def matching(mask: str, pos: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one at `pos`."""
    depth = 0
    for k in range(pos, len(mask)):
        if mask[k] == open_:
            depth += 1
        elif mask[k] == close:
            depth -= 1
            if depth == 0:
                return k + 1
    raise RewriteError(f"line {line_of(mask, pos)}: unbalanced '{open_}'")


def split_top_level(text: str) -> list[str]:
    """Splits at commas outside (), <>, [] and {}."""
    parts, depth, start = [], 0, 0
    for k, c in enumerate(text):
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return parts


def kernel_expression_start(mask: str, end: int) -> int:
    """Start of the kernel expression (a qualified name with template arguments) ending at `end`."""
    k = end
    while k > 0 and mask[k - 1].isspace():
        k -= 1
    if mask[k - 1] == ">":  # template arguments: back to the matching '<'
        depth = 0
        k -= 1
        while k >= 0:
            if mask[k] == ">":
                depth += 1
            elif mask[k] == "<":
                depth -= 1
                if depth == 0:
                    break
            k -= 1
        if k < 0:
            raise RewriteError(
                f"line {line_of(mask, end)}: unbalanced template arguments before <<<"
            )
    while k > 0 and (mask[k - 1].isalnum() or mask[k - 1] in "_:"):
        k -= 1
    return k


class Edits:
    """Replacements (start, end, text) applied to the source in one pass."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, str]] = []

    def add(self, start: int, end: int, text: str) -> None:
        self.items.append((start, end, text))

    def apply(self, src: str) -> str:
        out, pos = [], 0
        for start, end, text in sorted(self.items):
            if start < pos:
                raise RewriteError(f"line {line_of(src, start)}: overlapping rewrites")
            out.append(src[pos:start])
            out.append(text)
            pos = end
        out.append(src[pos:])
        return "".join(out)


def rewrite_launches(src: str, mask: str, edits: Edits) -> int:
    count, i = 0, 0
    while (j := mask.find("<<<", i)) >= 0:
        start = kernel_expression_start(mask, j)
        name = " ".join(src[start:j].split())
        if not re.match(r"[A-Za-z_:]", name):
            raise RewriteError(f"line {line_of(src, j)}: no kernel name before <<<")
        e = mask.find(">>>", j)
        if e < 0:
            raise RewriteError(f"line {line_of(src, j)}: <<< without >>>")
        p = e + 3
        while p < len(mask) and mask[p].isspace():
            p += 1
        if p >= len(mask) or mask[p] != "(":
            raise RewriteError(f"line {line_of(src, j)}: no '(' after >>>")
        end = matching(mask, p, "(", ")")
        config = src[j + 3 : e]
        if not 2 <= len(split_top_level(mask[j + 3 : e])) <= 4:
            raise RewriteError(
                f"line {line_of(src, j)}: a launch takes 2 to 4 configuration values"
            )
        args = src[p + 1 : end - 1]
        gap = src[e + 3 : p]
        text = (
            f'::emu::launch<&{name}>(EMU_SITE("{name}"), ::emu::config({config}){newlines(gap)}'
            + (f", {args})" if args.strip() else ")")
        )
        edits.add(start, end, text + newlines(src[start:j]))
        count += 1
        i = end
    return count


def rewrite_shared(src: str, mask: str, edits: Edits) -> None:
    handled = set()
    for m in DYNAMIC_SHARED.finditer(mask):
        type_, name = src[m.start(2) : m.end(2)].strip(), m.group(3)
        edits.add(
            m.start(),
            m.end(),
            f"{type_}* const {name} = ::emu::dynamic_shared<{type_}>();" + newlines(m.group(0)),
        )
        handled.add(mask.index("__shared__", m.start()))
    for m in STATIC_SHARED.finditer(mask):
        align, type_, name, dims = (
            src[m.start(1) : m.end(1)],
            src[m.start(2) : m.end(2)],
            m.group(3),
            m.group(4),
        )
        edits.add(
            m.start(),
            m.end(),
            f"static {align}{type_} {name}{dims.rstrip()}; ::emu::static_shared({name}, sizeof({name}));"
            + newlines(m.group(0)),
        )
        handled.add(m.start())
    for m in re.finditer(r"\b__shared__\b", mask):
        if m.start() not in handled:
            raise RewriteError(
                f"line {line_of(src, m.start())}: a __shared__ declaration the rewriter does not know"
            )


def rewrite_kernels(src: str, mask: str, edits: Edits) -> list[tuple[str, int]]:
    """Inserts ::emu::kernel_entry(max threads) at the top of every __global__ function body."""
    kernels = []
    for m in GLOBAL.finditer(mask):
        p = mask.find("(", m.end())
        bound = "0"
        lb = LAUNCH_BOUNDS.search(mask, m.end(), p + 1)
        if lb is not None and lb.end() - 1 == p:  # the '(' found is the launch bounds'
            close = matching(mask, p, "(", ")")
            bound = split_top_level(src[p + 1 : close - 1])[0].strip()
            p = mask.find("(", close)
        name_match = re.search(rf"({IDENT})\s*$", mask[m.end() : p])
        if name_match is None:
            raise RewriteError(f"line {line_of(src, m.start())}: no kernel name after __global__")
        params_end = matching(mask, p, "(", ")")
        brace = params_end
        while brace < len(mask) and mask[brace].isspace():
            brace += 1
        if brace >= len(mask) or mask[brace] != "{":
            if mask[brace : brace + 1] == ";":
                continue  # a declaration
            raise RewriteError(
                f"line {line_of(src, m.start())}: no body after the kernel's parameters"
            )
        edits.add(brace + 1, brace + 1, f" ::emu::kernel_entry({bound});")
        kernels.append((name_match.group(1), line_of(src, m.start())))
    return kernels


def transform(src: str, origin: str) -> tuple[str, int, list[tuple[str, int]]]:
    """(rewritten source, launches rewritten, kernels defined as (name, line))."""
    mask = mask_comments_and_strings(src)
    edits = Edits()
    launches = rewrite_launches(src, mask, edits)
    rewrite_shared(src, mask, edits)
    kernels = rewrite_kernels(src, mask, edits)
    return f'#line 1 "{origin}"\n' + edits.apply(src), launches, kernels


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_dir, out_dir = Path(argv[1]), Path(argv[2])
    files = sorted(p for p in src_dir.rglob("*") if p.suffix in (".cu", ".cuh") and p.is_file())
    manifest, launches = [], 0
    for path in files:
        rel = path.relative_to(src_dir)
        try:
            text, n, kernels = transform(path.read_text(), str(path.resolve()))
        except RewriteError as err:
            print(f"rewrite: {path}: {err}", file=sys.stderr)
            return 1
        dest = out_dir / (rel.with_suffix(".cpp") if path.suffix == ".cu" else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        launches += n
        manifest += [f"{name}\t{rel}\t{line}" for name, line in kernels]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kernels.txt").write_text("".join(line + "\n" for line in manifest))
    print(f"rewrite: {len(files)} files, {launches} launches, {len(manifest)} kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
