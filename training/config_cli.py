"""Typed configs from a YAML/JSON file and command-line flags.

Flags are generated from a keyword-only config dataclass; each flag's help is the comment
on its field, so the dataclass stays the one place that documents an option. Precedence:
defaults < file (``--config``) < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from typing import Any

_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the class source."""
    comments: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        match = _FIELD_COMMENT.match(line)
        if match:
            comments.setdefault(match.group(1), match.group(2).strip())
    return comments


def _parser_for(annotation: Any):
    """A converter from a flag string for a field type."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _parser_for(args[0])
    if annotation is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if origin is tuple:
        return lambda s: tuple(
            int(x) if x.lstrip("-").isdigit() else float(x) for x in s.split(",")
        )
    if annotation in (int, float, str):
        return annotation
    return str


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        default = (
            "required"
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            else f"default {f.default!r}"
            if f.default is not dataclasses.MISSING
            else "default: computed"
        )
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=_parser_for(hints[f.name]),
            default=None,
            metavar=hints[f.name].__name__ if isinstance(hints[f.name], type) else "VALUE",
            help=f"{comments.get(f.name, '')} ({default})",
        )


def read_file(path: str) -> dict[str, Any]:
    from runtime.storage import locate, read_bytes

    text = read_bytes(locate(path)).decode()
    if path.endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def build(cls: type, args: argparse.Namespace, file_values: dict[str, Any] | None = None):
    """The config from file values overridden by the flags that were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(file_values or {})
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(names)}")
    for name in names:
        flag = getattr(args, name, None)
        if flag is not None:
            values[name] = flag
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
            values[name] = tuple(value)
    return cls(**values)
