"""The training entry points' command lines, on ``runtime.config``: one config dataclass each
(``training.config``), its flags and ``--config`` file (YAML or JSON, below the flags) from
``runtime.config.command``, and bad input reported as one line (``error: ...``, exit code 2)
before anything runs (``run_main`` and the path checks below).

What older versions of these commands took is still read here, with a deprecation warning:
positional arguments (``training.checkpoint SOURCE OUT``) and ``no_ray`` in config files,
read as ``ray`` inverted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tarfile
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow.fs as pafs

from runtime import config as cli
from runtime import storage


class InputError(ValueError):
    """Input an entry point refuses before it starts work (a missing path, a wrong kind of
    file): reported as one line, exit code 2."""


def parser(cls: type, prog: str, doc: str, positional: Sequence[str] = ()) -> cli.Parser:
    """``runtime.config.command``'s parser for ``cls``, extended by ``extend``."""
    p = cli.command(cls, prog=prog, description=doc)
    extend(p, cls, positional)
    return p


def extend(p: argparse.ArgumentParser, cls: type, positional: Sequence[str] = ()) -> None:
    """Accept the fields named in ``positional`` as the positional arguments of older versions
    (with a warning)."""
    if positional:
        p.add_argument("legacy_positional", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(_config=(cls, tuple(positional)))


def config(args: argparse.Namespace) -> Any:
    """The config of the parsed ``args``: defaults < ``--config`` file < flags.

    Raises ConfigError (or the dataclass's ValueError) with a one-line message.
    """
    cls, positional = args._config
    _take_positional(args, positional)
    file = _no_ray(cls, cli.load_file(args.config))
    return cli.build(cls, "", file, args)


def _take_positional(args: argparse.Namespace, names: Sequence[str]) -> None:
    values = getattr(args, "legacy_positional", None) or []
    if not values:
        return
    if len(values) > len(names):
        raise cli.ConfigError(f"unexpected arguments {values[len(names) :]}; see --help")
    flags = ["--" + n.replace("_", "-") for n in names[: len(values)]]
    cli.deprecated(
        f"positional {' '.join(n.upper() for n in names[: len(values)])}", " ".join(flags)
    )
    for name, value in zip(names, values, strict=False):
        if hasattr(args, f"__{name}"):
            raise cli.ConfigError(f"--{name.replace('_', '-')} given twice (flag and positional)")
        setattr(args, f"__{name}", value)


def _no_ray(cls: type, file: dict[str, Any]) -> dict[str, Any]:
    """An old config file's ``no_ray: true`` read as ``ray: false`` (with a warning)."""
    if "no_ray" not in file or "ray" not in {f.name for f in dataclasses.fields(cls)}:
        return file
    values = dict(file)
    no_ray = cli.convert(bool, values.pop("no_ray"), "no_ray")
    if "ray" in values:
        raise cli.ConfigError("config no_ray: an old name of ray (inverted), which is also given")
    cli.deprecated("config key no_ray", f"ray: {str(not no_ray).lower()}")
    return {**values, "ray": not no_ray}


def run_main(body: Callable[[], int | None]) -> int:
    """``body()``'s exit code, or 2 with one line on stderr for input it refuses."""
    try:
        code = body()
    except (ValueError, OSError, tarfile.TarError) as exc:  # ConfigError, LabelError included
        return cli.fail(exc)
    return 0 if code is None else code


def require(uri: str, flag: str, kind: str = "file") -> storage.Location:
    """``uri`` as a Location, refused unless it exists as a ``kind`` ("file" or "folder")."""
    loc = storage.locate(uri)
    if loc.is_s3:  # a folder is a prefix: it exists when something is stored under it
        found = loc.fs.get_file_info(loc.path).type
        if found == pafs.FileType.NotFound:
            raise InputError(f"{flag} {uri}: no such {kind}")
        if kind == "file" and found != pafs.FileType.File:
            raise InputError(f"{flag} {uri}: is a folder, expected a file")
        return loc
    if not os.path.exists(loc.path):
        raise InputError(f"{flag} {uri}: no such {kind}")
    if kind == "file" and os.path.isdir(loc.path):
        raise InputError(f"{flag} {uri}: is a folder, expected a file")
    if kind == "folder" and not os.path.isdir(loc.path):
        raise InputError(f"{flag} {uri}: is a file, expected a folder")
    return loc


def refuse_file(uri: str, flag: str) -> None:
    """Refuse a local ``uri`` that exists as a file where a folder will be written."""
    loc = storage.locate(uri)
    if not loc.is_s3 and os.path.isfile(loc.path):
        raise InputError(f"{flag} {uri}: is a file, expected a folder (or a new path)")


def refuse_folder(uri: str, flag: str) -> None:
    """Refuse a local ``uri`` that exists as a folder where a file will be written."""
    loc = storage.locate(uri)
    if not loc.is_s3 and os.path.isdir(loc.path):
        raise InputError(f"{flag} {uri}: is a folder, expected a file name")


def require_labelled(uri: str, task: str, image_size: tuple[int, int]) -> None:
    """Refuse ``--dataset uri`` unless it is a labelled dataset (``schemas.labelled``) holding
    at least one sample labelled for ``task`` (its first one is read and prepared at
    ``image_size``): training on none would wait for ever, evaluating none would score NaN."""
    from training.tasks.data import TaskStream
    from training.tasks.shards import describe, shard_uris
    from training.tasks.task import PrepareConfig

    require(uri, "--dataset", "folder")
    tasks = describe(uri)["tasks"]
    if task not in tasks:
        raise InputError(f"--dataset {uri} is labelled for {', '.join(tasks)}, not {task}")
    if not shard_uris(uri):
        raise InputError(f"--dataset {uri} holds no shards")
    stream = TaskStream(uri, PrepareConfig(task=task, input_hw=image_size, train=False))
    try:
        first = next(iter(stream), None)
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:  # a damaged first shard
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"--dataset {uri}: unreadable sample ({type(exc).__name__}: {line})"
        ) from None
    if first is None:
        raise InputError(f"--dataset {uri} holds no samples labelled for {task}")
