"""Model weights by name: a local file, an ``s3://`` object, or an Ultralytics model name.

A local path or an S3 object never touches any other network: S3 objects are copied once into
a local cache (per node) and reused while the object's size is unchanged. An Ultralytics name
(``yolo11n.pt``) is looked up in that cache and in Ultralytics' weights folder, and otherwise
downloaded by Ultralytics when it is online. Anything missing and not downloadable raises
``WeightsError`` naming the spec, so the job can refuse to start rather than fail in an actor.

Weights files are untrusted input (a ``.pt`` is a pickle, and pickles run code when loaded):
``load_ultralytics`` loads them in Ultralytics' safe mode, ``torch.load(weights_only=True)``
against its allow-list of model classes, and with its pip auto-install off, so a crafted file
can neither run code nor make Ultralytics install the module names it asks for.
TorchScript models (a semantic-dedup encoder, a torchscript classifier) execute their own
code by design: they are trusted input, like the operator's paths.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

from runtime.storage import is_s3, locate

CACHE_ENV = "HUMANS300M_WEIGHTS_CACHE"
_CONFIG_SUFFIXES = (".yaml", ".yml")


class WeightsError(RuntimeError):
    """Weights (or a label file) cannot be found or fetched."""


def cache_dir() -> Path:
    """Where fetched weights live: ``$HUMANS300M_WEIGHTS_CACHE`` or ``~/.cache/humans300m/weights``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "humans300m", "weights"
    )
    return Path(root)


def resolve_file(spec: str) -> str:
    """Local path of a file given as a local path or an ``s3://`` URI (never a model name)."""
    if is_s3(spec):
        return _fetch_s3(spec)
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise WeightsError(f"file not found: {spec!r}")
    return str(path.resolve())


def resolve_weights(spec: str) -> str:
    """Local path of the weights named by ``spec``; see the module docstring for the rules."""
    spec = spec.strip()
    if not spec:
        raise WeightsError("no weights given")
    if spec.lower().endswith(_CONFIG_SUFFIXES):
        raise WeightsError(
            f"{spec!r} is a model config: built from it, a model has random weights. "
            "Give a weights file (build and save the model first if that is what you want)."
        )
    local = Path(spec.removeprefix("file://")).expanduser()
    if is_s3(spec) or local.exists() or _looks_like_path(spec):
        return resolve_file(spec)
    return _ultralytics_asset(spec)


def load_ultralytics(spec: str, task: str, what: str) -> tuple[Any, str]:
    """(Ultralytics model, local weights path) for weights ``spec``, loaded as untrusted input.

    Only ``.pt`` checkpoints: Ultralytics' other formats (ONNX, TensorRT, saved models...)
    go through backends that install packages or run code of their own. Any load failure is
    a one-line ``WeightsError`` naming ``what`` (e.g. "detector weights").
    """
    path = resolve_weights(spec)
    if not path.endswith(".pt"):
        raise WeightsError(f"{what} {spec!r}: only Ultralytics .pt checkpoints are accepted")
    yolo = _ultralytics_yolo()
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it refuses anyway
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return yolo(path, task=task), path
    except Exception as exc:  # Ultralytics raises many kinds; all mean "not loadable"
        raise WeightsError(f"{what} {spec!r} cannot be loaded: {_first_line(exc)}") from exc


def _ultralytics_yolo() -> type:
    """Ultralytics' YOLO class with safe loading on and auto-install off, in this process.

    Ultralytics reads both switches from the environment when first imported; the module
    attributes are set too, for a process that imported it before (tests, notebooks).
    """
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    import ultralytics.nn.tasks
    import ultralytics.utils.checks
    from ultralytics import YOLO

    ultralytics.nn.tasks.SAFE_LOAD = True  # torch_safe_load's default: weights_only=True
    ultralytics.utils.checks.AUTOINSTALL = False  # check_requirements never runs pip
    if not ultralytics.nn.tasks._SafeLoad.SUPPORTED:  # torch < 2.6: safe mode silently off
        raise WeightsError("Ultralytics safe loading needs torch >= 2.6")
    return YOLO


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text.removeprefix("ERROR ❌️").strip()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.startswith(("~", ".", "file://"))


def _fetch_s3(uri: str) -> str:
    loc = locate(uri)
    try:
        info = loc.fs.get_file_info(loc.path)
    except OSError as exc:
        raise WeightsError(f"cannot reach {uri!r}: {exc}") from exc
    if info.type.name != "File":
        raise WeightsError(f"no such S3 object: {uri!r}")
    # One folder per URI, so that two objects with the same base name never collide.
    target = (
        cache_dir() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16] / loc.path.split("/")[-1]
    )
    if target.is_file() and target.stat().st_size == info.size:
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with loc.fs.open_input_stream(loc.path) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.replace(tmp, target)  # atomic: concurrent actors on one node never read a partial file
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"cannot download {uri!r}: {exc}") from exc
    return str(target)


def _ultralytics_asset(name: str) -> str:
    from ultralytics.utils import SETTINGS, is_online
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    target = cache_dir() / "ultralytics" / name
    for candidate in (target, Path(SETTINGS["weights_dir"]) / name):
        if candidate.is_file():
            return str(candidate)
    if name not in GITHUB_ASSETS_NAMES:
        raise WeightsError(
            f"weights {name!r}: no such file, and not an Ultralytics model name "
            "(give a local path, an s3:// URI, or a name such as yolo11n.pt)"
        )
    if not is_online():
        raise WeightsError(
            f"weights {name!r} are not cached in {target.parent} and cannot be downloaded: "
            "offline (no DNS, or YOLO_OFFLINE is set). Give a local path or an s3:// URI."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = attempt_download_asset(str(target))
    except Exception as exc:  # Ultralytics raises several kinds; all mean "not downloaded"
        raise WeightsError(f"downloading {name!r} failed: {exc}") from exc
    if not Path(path).is_file():
        raise WeightsError(f"downloading {name!r} failed: nothing at {path}")
    return str(path)
