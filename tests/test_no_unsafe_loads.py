"""Nothing executes code from a data or model file: the source is scanned (its syntax tree,
so a call split over lines is still seen) for deserializers that can run code.

* ``torch.load`` only with ``weights_only=True`` (package, benchmarks and tests);
* ``np.load`` / ``numpy.load`` only with ``allow_pickle=False`` spelled out, and no
  ``allow_pickle=True`` anywhere (``np.lib.format.read_array`` included) in the package;
* no ``pickle``/``dill``/``joblib``/``marshal``/``shelve`` loads, ``pandas.read_pickle``,
  ``yaml.load`` or ``torch.jit.load`` in the package; ``eval``/``exec`` only where the
  native-op layer compiles its own generated wrappers (no file content reaches them).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "python" / "medmeta"

#: Calls that unpickle (or otherwise run code from) their input, by dotted name.
FORBIDDEN = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads",
    "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
    "pd.read_pickle", "pandas.read_pickle", "yaml.load", "yaml.unsafe_load",
    "torch.jit.load", "jsonpickle.decode",
}  # fmt: skip
#: ``eval``/``exec`` sites and why they are safe.
CODEGEN = {
    "python/medmeta/ops/_register.py": "compiles the op wrappers it generates from op schemas",
    "python/medmeta/ops/_native.py": "compiles the bindings it generates for the native ops",
}


def _name(node: ast.AST) -> str:
    """The dotted name of a call target (``np.lib.format.read_array``), or ``""``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword(call: ast.Call, name: str) -> object:
    """The constant value of keyword ``name`` (``...`` when absent or not a constant)."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else ...
    return ...


@functools.cache
def _calls(root: Path) -> list[tuple[str, int, str, ast.Call]]:
    """``(file relative to the repo, line, dotted name, call)`` of every call under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        rel = path.relative_to(REPO).as_posix()
        found += [(rel, n.lineno, _name(n.func), n) for n in ast.walk(tree)
                  if isinstance(n, ast.Call)]  # fmt: skip
    return found


def test_the_scan_sees_the_calls_it_checks():
    names = {name for _, _, name, _ in _calls(PACKAGE)}
    assert {"torch.load", "np.load", "np.lib.format.read_array"} <= names


def test_torch_load_only_with_weights_only_true():
    bad = [f"{f}:{line}" for root in (PACKAGE, REPO / "benchmarks", REPO / "tests")
           for f, line, name, call in _calls(root)
           if name.endswith("torch.load") and _keyword(call, "weights_only") is not True]  # fmt: skip
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_np_load_only_with_allow_pickle_false():
    bad = []
    for f, line, name, call in _calls(PACKAGE):
        given = [kw for kw in call.keywords if kw.arg == "allow_pickle"]
        if any(_keyword(call, "allow_pickle") is not False for _ in given):
            bad.append(f"{f}:{line} {name}(allow_pickle=<not False>)")  # read_array too
        elif name in ("np.load", "numpy.load") and not given:
            bad.append(f"{f}:{line}")
    assert not bad, f"np.load without allow_pickle=False: {bad}"


def test_no_code_executing_deserializer_in_the_package():
    bad = [f"{f}:{line} {name}" for f, line, name, _ in _calls(PACKAGE) if name in FORBIDDEN]
    assert not bad, f"deserializers that can run code: {bad}"
    evals = {f for f, _, name, _ in _calls(PACKAGE) if name in ("eval", "exec")}
    assert evals <= set(CODEGEN), f"eval/exec outside the op code generation: {evals}"
