"""The one typed config layer: command-line flags and config files from config dataclasses.

Each config section is a keyword-only dataclass whose fields carry ``metadata``:

- ``help``: the flag's help text;
- ``aliases``: old names of the field, still accepted as deprecated spellings: the old flag
  (generated from the old name exactly as the new flag is from the field name) and the old
  config-file key, each with one ``warning: ... is deprecated, use ...`` line on stderr. An
  alias written as a flag (``"--data"``) is read as the field name ``data``;
- ``choices``: the values allowed (checked for flags and file values alike);
- ``positional``: the field is a positional argument (optional when a config file may set it).

A field without a default is required: from a flag or from the config file.
Precedence: dataclass defaults < the config file < flags. A config file is YAML or JSON, local
or ``s3://``: one mapping per section for sectioned commands (``build`` per section), the
fields themselves for single-dataclass commands (``command`` + ``parse``).

Every value, from a file or a flag, goes through ``convert`` against its field's type hint, so
a file cannot turn a guard off with the string ``"false"`` or split ``JPEG`` into characters:
a value of the wrong type is a ``ConfigError`` naming the key, never a coercion. Entry points
wrap their ``main`` in ``entry_point`` so that these errors (and the ones their pre-flight
checks raise) end the program with one ``error: ...`` line and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import types
import typing
from collections.abc import Callable
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
    title: str | None,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """Add one flag per field of dataclass ``cls`` (``--{prefix}-{field}``), grouped under
    ``title`` (None: among the parser's own options). ``aliases`` adds further current names
    (``{"output": ["-o"]}``); deprecated old names come from the fields' metadata.

    Parsed values land in ``args.{section}__{field}``, read back by ``build``.
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            extra = (aliases or {}).get(f.name, [])
            _add_field(group, f, hints[f.name], section, prefix, extra)


def _add_field(
    group: Any, f: dataclasses.Field, hint: Any, section: str, prefix: str, extra: list[str]
) -> None:
    kind, _ = _base_type(hint)
    key, flag, choices = _key(section, f.name), _flag(prefix, f.name), f.metadata.get("choices")
    default = _default(f)
    shown = "required" if default is dataclasses.MISSING else f"default: {default!r}"
    help_text = f"{f.metadata.get('help', '')} ({shown})"
    dest = f"{section}__{f.name}"
    if f.metadata.get("positional"):  # optional to argparse: a config file may give it
        group.add_argument(dest, metavar=f.name.upper(), nargs="?", help=help_text,
                           type=_flag_parser(kind, key, choices), default=argparse.SUPPRESS)  # fmt: skip
        return
    common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    old_flags = [_flag(prefix, old) for old in _old_names(f)]
    if kind is bool:
        group.add_argument(flag, *extra, action=argparse.BooleanOptionalAction, help=help_text,
                           **common)  # fmt: skip
        for old in old_flags:
            group.add_argument(old, action=_DeprecatedBool, use=flag, help=argparse.SUPPRESS,
                               **common)  # fmt: skip
        return
    item = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else kind
    metavar = _expect(item).split()[-1].upper() if item in _EXPECTED else "VALUE"
    if choices:
        metavar = "{" + ",".join(map(str, choices)) + "}"
    common |= {"type": _flag_parser(item, key, choices), "metavar": metavar}
    append = item is not kind  # a tuple field: several values a flag, the flag repeatable
    if append:  # --image-size 1024 768, --image-size 1024,768, --inputs a --inputs b
        common |= {"type": _several(common["type"], item), "nargs": "+"}
    group.add_argument(flag, *extra, action="append" if append else "store", help=help_text,
                       **common)  # fmt: skip
    for old in old_flags:
        group.add_argument(old, action=_DeprecatedValue, use=flag, append=append,
                           help=argparse.SUPPRESS, **common)  # fmt: skip


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _old_names(f: dataclasses.Field) -> list[str]:
    """The field's deprecated old names, as field names (``--data`` is read as ``data``)."""
    return [alias.lstrip("-").replace("-", "_") for alias in f.metadata.get("aliases", ())]


def _key(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def deprecated(old: str, new: str) -> None:
    """Say once, on one stderr line, that ``old`` still works but ``new`` is its name now."""
    print(f"warning: {old} is deprecated, use {new}", file=sys.stderr)


class _DeprecatedValue(argparse.Action):
    """An old spelling of a flag that takes a value: warns, then stores (or appends) as the
    current flag does, into the same destination."""

    def __init__(self, option_strings, dest, *, use: str, append: bool, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use, self.append = use, append

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        deprecated(str(option_string), self.use)
        if self.append:
            values = [*(getattr(namespace, self.dest, None) or []), values]
        setattr(namespace, self.dest, values)


class _DeprecatedBool(argparse.BooleanOptionalAction):
    """An old ``--x/--no-x`` spelling of a boolean flag: warns, then sets it."""

    def __init__(self, option_strings, dest, *, use: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        negative = str(option_string).startswith("--no-")
        deprecated(str(option_string), "--no-" + self.use[2:] if negative else self.use)
        super().__call__(parser, namespace, values, option_string)


def _several(one: Any, item: Any):
    """A tuple flag's value parser: numbers may also come separated by commas."""

    def several(text: str) -> list[Any]:
        return [one(part) for part in (text.split(",") if item in (int, float) else [text])]

    several.__name__ = one.__name__  # argparse's "invalid <name> value" fallback
    return several


def _flatten(value: Any) -> list[Any]:
    """The items of a tuple flag: argparse nests them (each use of the flag, each value)."""
    if not isinstance(value, list):
        return [value]
    return [item for part in value for item in _flatten(part)]


def _flag_parser(kind: Any, key: str, choices: Any = None):
    def parse(text: str) -> Any:
        try:
            return _check_choice(convert(kind, text, key, text=True), key, choices)
        except ConfigError as exc:  # argparse names the flag itself
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None

    parse.__name__ = _expect(kind)  # argparse's "invalid <name> value" fallback
    return parse


def _check_choice(value: Any, key: str, choices: Any) -> Any:
    if choices and value is not None and value not in choices:
        listed = ", ".join(map(str, choices))
        raise ConfigError(f"config {key}: expected one of {listed}, got {_describe(value)}")
    return value


def build(
    cls: type,
    section: str,
    file_section: Any,
    args: argparse.Namespace | None = None,
    *,
    prefix: str = "",
) -> Any:
    """An instance of ``cls`` from the config file's section overlaid with the given flags.

    Raises ConfigError for a section that is not a mapping, unknown keys, values of the wrong
    type and required fields given nowhere (``prefix``: the flags' prefix, to name the flag);
    the dataclass's own ``__post_init__`` checks ranges (ValueError). Old keys (the fields'
    ``aliases``) are read as the new ones, with a warning.
    """
    if file_section is None:
        file_section = {}
    where = f"config {section}" if section else "config file"
    if not isinstance(file_section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(file_section)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    file_section = _renamed(file_section, fields, section)
    hints = typing.get_type_hints(cls)
    unknown = sorted(str(k) for k in set(file_section) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {', '.join(sorted(fields))})")
    values = {
        name: _check_choice(
            convert(hints[name], value, _key(section, name)),
            _key(section, name),
            fields[name].metadata.get("choices"),
        )
        for name, value in file_section.items()
    }
    for name in fields:
        dest = f"{section}__{name}"
        if args is not None and hasattr(args, dest):
            flag = getattr(args, dest)  # already parsed by convert (see add_flags)
            values[name] = tuple(_flatten(flag)) if isinstance(flag, list) else flag
    missing = [
        n for n, f in fields.items() if n not in values and _default(f) is dataclasses.MISSING
    ]
    if missing:
        f = fields[missing[0]]
        flag = f.name.upper() if f.metadata.get("positional") else _flag(prefix, f.name)
        raise ConfigError(
            f"missing {flag}: required (give it on the command line or as "
            f"{_key(section, f.name)} in --config)"
        )
    return cls(**values)


def _renamed(file_section: dict, fields: dict[str, dataclasses.Field], section: str) -> dict:
    """``file_section`` with deprecated keys renamed to their fields' current names."""
    old = {alias: name for name, f in fields.items() for alias in _old_names(f)}
    renamed = {}
    for key, value in file_section.items():
        name = old.get(key, key)
        if name != key:
            if name in file_section:
                raise ConfigError(
                    f"config {_key(section, key)}: an old name of {_key(section, name)}, "
                    "which is also given; keep only one"
                )
            deprecated(f"config key {_key(section, key)}", _key(section, name))
        renamed[name] = value
    return renamed


def stored_fields(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """A record of ``cls`` that a file saved (a checkpoint's config, an encoder file's) under
    today's field names: old names (the fields' ``aliases``) read as the new ones, silently
    (files written before a rename must still load, with nothing for their reader to change),
    and keys ``cls`` no longer has dropped."""
    values = dict(stored)
    fields = dataclasses.fields(cls)
    for f in fields:
        for old in _old_names(f):
            if old in values:
                values.setdefault(f.name, values.pop(old))
    names = {f.name for f in fields}
    return {k: v for k, v in values.items() if k in names}


def load_file(path: str | None) -> dict[str, Any]:
    """The content of a YAML or JSON config file (local path or ``s3://`` URI): a mapping.

    ``.json`` files are read as JSON, anything else as YAML (which also reads JSON).
    Raises ConfigError (one line) for a missing, unreadable or malformed file.
    """
    if path is None:
        return {}
    from runtime.storage import locate, read_bytes

    if not path.strip():
        raise ConfigError("--config is empty: give a YAML or JSON file")
    try:
        text = read_bytes(locate(path)).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text") from None
    except OSError as exc:  # a folder, no permission; S3: no bucket, refused, unreachable
        raise ConfigError(f"cannot read config file {path}: {one_line(exc)}") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:  # its message spans lines: keep the problem and place
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {_describe(data)}")
    return data


def check_sections(file: dict[str, Any], known: list[str], path: str | None) -> None:
    """Refuse sections of a sectioned config file that no part of the command reads."""
    unknown = sorted(str(k) for k in set(file) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown} (known: {', '.join(known)})")


def _yaml_problem(exc: Exception) -> str:
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


def one_line(err: BaseException) -> str:
    """An error message as one line: blank lines and caret diagrams (DuckDB's ``LINE 1: ...``
    with ``^`` under it) dropped, the rest joined."""
    lines = [line.strip() for line in str(err).splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept) or type(err).__name__


def fail(err: BaseException | str) -> int:
    """Print ``error: ...`` (one line) on stderr; returns exit code 2 for ``main`` to return."""
    print(f"error: {err if isinstance(err, str) else one_line(err)}", file=sys.stderr)
    return 2


def entry_point(*errors: type[BaseException]) -> Callable:
    """Decorator for an entry point's ``main(argv) -> int``: ConfigError, ValueError and the
    given exception types (the command's expected failures: a missing dataset, bad SQL, ...)
    end it with one ``error: ...`` line and exit code 2 instead of a traceback."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except (ConfigError, ValueError, *errors) as exc:
                return fail(exc)

        return run

    return wrap


def command(cls: type, *, prog: str, description: str, epilog: str | None = None) -> Parser:
    """The parser of a single-dataclass command: ``--version``, ``--config`` (a file of the
    dataclass's fields) and one flag per field. Read it back with ``parse``."""
    from schemas.version import version_line

    parser = Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line())
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or JSON file (local or s3://) of these settings, "
        "keyed by field name (--max-rows is max_rows); flags given win"
    )  # fmt: skip
    add_flags(parser, cls, "", "", None)
    return parser


def parse(cls: type, parser: argparse.ArgumentParser, argv: list[str] | None) -> Any:
    """The config of a ``command`` parser's arguments (file values overlaid by flags)."""
    args = parser.parse_args(argv)
    return build(cls, "", load_file(args.config), args)
