"""Command-line flags generated from configuration dataclasses, plus config files.

Each config section is a keyword-only dataclass whose fields carry ``metadata={"help": ...}``.
Precedence: dataclass defaults < the config file (YAML or JSON, one mapping per section) < flags.

Every value, from a file or a flag, goes through ``convert`` against its field's type hint, so
a file cannot turn a guard off with the string ``"false"`` or split ``JPEG`` into characters:
a value of the wrong type is a ``ConfigError`` naming the key, never a coercion.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, NoReturn


class ConfigError(ValueError):
    """A config file or flag value that does not fit its field (the message names the key)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``error: ...``, exit code 2).

    The job has dozens of flags: argparse's default prints the whole usage before the error.
    """

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _flag(prefix: str, name: str) -> str:
    return "--" + (f"{prefix}-{name}" if prefix else name).replace("_", "-")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type a flag parses, whether None is allowed) for a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


_EXPECTED = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}
_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_TEXT |= {"false": False, "no": False, "off": False, "0": False}


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, (list, tuple)) else None
    )
    kind = kind or ("null" if value is None else "a mapping" if isinstance(value, dict) else None)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{shown} ({kind or type(value).__name__})"


def convert(hint: Any, value: Any, key: str, *, text: bool = False) -> Any:
    """``value`` checked against type hint ``hint`` (bool, int, float, str, ``X | None`` and
    ``tuple[X, ...]`` of those); raises ConfigError naming ``key`` when it does not fit.

    ``text`` is for command-line values, which arrive as strings and are parsed; file values
    must already have the type (YAML/JSON give booleans, numbers, strings and lists).
    """
    kind, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config {key}: expected {_expect(kind)}, got null")
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"config {key}: expected a list of {_PLURAL[typing.get_args(kind)[0]]}, got "
                f"{_describe(value)}; write it as [{value}] for one item"
            )
        item = typing.get_args(kind)[0]
        return tuple(convert(item, v, f"{key}[{i}]", text=text) for i, v in enumerate(value))
    if kind not in _EXPECTED:  # a field type this checker does not know: extend it, never skip
        raise TypeError(f"config {key}: no check for type {hint!r}")
    if text and isinstance(value, str):
        return _parse_text(kind, value, key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:  # exact: bool is an int subclass
        raise ConfigError(f"config {key}: expected {_expect(kind)}, got {_describe(value)}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"config {key}: expected a finite number, got {value!r}")
    return value


def _expect(kind: Any) -> str:
    return _EXPECTED.get(kind, getattr(kind, "__name__", str(kind)))


def _parse_text(kind: Any, text: str, key: str) -> Any:
    if kind not in (bool, int, float):
        return text
    try:
        value = _BOOL_TEXT[text.strip().lower()] if kind is bool else kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f"config {key}: expected {_expect(kind)}, got {text!r}") from None
    return convert(kind, value, key)  # the range checks of file values (finite floats)


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    section: str,
    prefix: str,
    title: str,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """Add one flag per field of dataclass ``cls`` (``--{prefix}-{field}``), grouped under ``title``.

    Parsed values land in ``args.{section}__{field}``, read back by ``build``.
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, _ = _base_type(hints[f.name])
        names = [_flag(prefix, f.name), *(aliases or {}).get(f.name, [])]
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        common = {"dest": f"{section}__{f.name}", "default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
            continue
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
        parse = _flag_parser(item, f"{section}.{f.name}")
        metavar = _expect(item).split()[-1].upper() if item in _EXPECTED else "VALUE"
        action = "append" if item is not kind else "store"
        group.add_argument(*names, action=action, type=parse, metavar=metavar, **common)


def _flag_parser(kind: Any, key: str):
    def parse(text: str) -> Any:
        try:
            return convert(kind, text, key, text=True)
        except ConfigError as exc:  # argparse names the flag itself
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None

    parse.__name__ = _expect(kind)  # argparse's "invalid <name> value" fallback
    return parse


def build(
    cls: type, section: str, file_section: Any, args: argparse.Namespace | None = None
) -> Any:
    """An instance of ``cls`` from the config file's section overlaid with the given flags.

    Raises ConfigError for a section that is not a mapping, unknown keys and values of the
    wrong type; the dataclass's own ``__post_init__`` checks ranges (ValueError).
    """
    if file_section is None:
        file_section = {}
    if not isinstance(file_section, dict):
        raise ConfigError(f"config {section}: expected a mapping, got {_describe(file_section)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(file_section) - known)
    if unknown:
        raise ConfigError(
            f"config {section}: unknown keys {unknown} (known: {', '.join(sorted(known))})"
        )
    values = {
        name: convert(hints[name], value, f"{section}.{name}")
        for name, value in file_section.items()
    }
    for name in known:
        dest = f"{section}__{name}"
        if args is not None and hasattr(args, dest):
            flag = getattr(args, dest)  # already parsed by convert (see add_flags)
            values[name] = tuple(flag) if isinstance(flag, list) else flag
    return cls(**values)


def load_file(path: str | None) -> dict[str, Any]:
    """The sections of a YAML or JSON config file; ConfigError for unreadable or bad files."""
    if not path:
        return {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:  # its message spans lines: keep the problem and place
            raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {_describe(data)}")
    return data


def _one_line(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"


def to_dict(config: Any) -> Any:
    """A JSON-ready copy of a (nested) config, for summaries."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config
