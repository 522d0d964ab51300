"""Argument parsing with an optional TOML or YAML config file whose keys mirror the flags.

``medmeta train --config run.toml --steps 50``: the file sets defaults (``ways = 3`` or
``meta-batch = 4``; dashes and underscores are the same), flags on the command line win.
Unknown keys and values of the wrong type are usage errors naming the key.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medmeta.edge.cli.errors import UsageError


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become :class:`UsageError` (one line, exit 2)
    instead of printing the usage and calling ``sys.exit`` from library code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def make_parser(prog: str, description: str, epilog: str | None = None) -> Parser:
    """A subcommand parser with ``--config`` and the raw-text help formatter."""
    parser = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or YAML file whose keys mirror the flags (flags on the command line win)",
    )
    return parser


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a ``.toml``, ``.yaml`` or ``.yml`` file (a ``[medmeta]`` table or
    top-level keys)."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file {file} not found")
    suffix = file.suffix.lower()
    text = file.read_text(encoding="utf-8")
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError as err:
                raise UsageError(
                    "reading TOML on Python 3.10 needs tomli: pip install tomli"
                ) from err
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"config file {file} is not valid TOML: {err}") from err
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ModuleNotFoundError as err:
            raise UsageError("reading YAML config files needs PyYAML: pip install pyyaml") from err
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"config file {file} is not valid YAML: {err}") from err
    else:
        raise UsageError(f"config file {file}: expected a .toml, .yaml or .yml file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {file} must hold a mapping of option names to values")
    if isinstance(data.get("medmeta"), dict):
        data = data["medmeta"]
    return data


def _destinations(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions
        if a.dest not in ("help", "config", argparse.SUPPRESS) and a.option_strings
    }


def _coerce(key: str, value: Any, action: argparse.Action, file: str) -> Any:
    """A config value checked like the flag would check its string."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or (
        isinstance(action, argparse.BooleanOptionalAction)
    ):
        if not isinstance(value, bool):
            raise UsageError(f"config file {file}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if isinstance(value, bool) or isinstance(value, dict):
        raise UsageError(f"config file {file}: {key} has a value of the wrong type: {value!r}")
    text = str(value)
    if action.type is not None:
        try:
            converted = action.type(text)  # type: ignore[operator]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
            raise UsageError(f"config file {file}: {key}: {err}") from err
    else:
        converted = text
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"config file {file}: {key} must be one of {choices}, got {value!r}")
    return converted


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config FILE`` become defaults that flags override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    first, _ = pre.parse_known_args(argv)
    if first.config:
        data = read_config(first.config)
        actions = _destinations(parser)
        defaults: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in actions:
                known = ", ".join(sorted(k.replace("_", "-") for k in actions))
                raise UsageError(
                    f"config file {first.config}: unknown key {raw_key!r}; known: {known}"
                )
            defaults[key] = _coerce(str(raw_key), value, actions[key], first.config)
        parser.set_defaults(**defaults)
        # options required on the command line may come from the file instead
        for key in defaults:
            actions[key].required = False
    return parser.parse_args(argv)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers ``>= minimum`` (a bad value is a usage error, 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as the folder a command will write, checked before any work starts: an
    existing file there (or above it) is a usage error naming the option."""
    folder = Path(path)
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == folder else f" ({p} is a file)"
            raise UsageError(
                f"{option} {folder}: expected a folder to write into, found an existing file{where}"
            )
    return folder
