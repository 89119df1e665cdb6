"""Command-line flags generated from configuration dataclasses, plus config files.

Each config section is a keyword-only dataclass whose fields carry ``metadata={"help": ...}``.
Precedence: dataclass defaults < the config file (YAML or JSON, one mapping per section) < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


def _flag(prefix: str, name: str) -> str:
    return "--" + (f"{prefix}-{name}" if prefix else name).replace("_", "-")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type a flag parses, whether None is allowed) for a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


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
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            group.add_argument(
                *names, action="append", type=item, metavar=item.__name__.upper(), **common
            )
        else:
            group.add_argument(*names, type=kind, metavar=kind.__name__.upper(), **common)


def build(
    cls: type, section: str, file_section: dict[str, Any] | None, args: argparse.Namespace
) -> Any:
    """An instance of ``cls`` from the config file's section overlaid with the given flags."""
    values = dict(file_section or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"config section {section!r}: unknown keys {sorted(unknown)}")
    for name in known:
        dest = f"{section}__{name}"
        if hasattr(args, dest):
            values[name] = getattr(args, dest)
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


def load_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections")
    return data


def to_dict(config: Any) -> Any:
    """A JSON-ready copy of a (nested) config, for summaries."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config
