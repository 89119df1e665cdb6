"""Meta's Sapiens checkpoint format: its state dicts read and mapped onto this project's names.

Accepted files: ``.pth`` state dicts, bare or in mmengine's ``{"state_dict", "meta", ...}``
wrapper, read with ``torch.load(weights_only=True)``; and the TorchScript "lite" exports
(``torch.jit.load(...).state_dict()``). Keys are Sapiens' mmpretrain / mmpose / mmseg names:

    backbone.patch_embed.projection.{weight,bias}   -> encoder.patch_embed.proj
    backbone.cls_token, backbone.pos_embed          -> encoder.cls_token, encoder.pos_embed
    backbone.layers.N.ln1 / ln2                     -> encoder.blocks.N.norm1 / norm2
    backbone.layers.N.attn.qkv / attn.proj          -> encoder.blocks.N.attn.qkv / attn.proj
    backbone.layers.N.ffn.layers.0.0 / .1           -> encoder.blocks.N.mlp.fc1 / fc2
    backbone.ln1                                    -> encoder.norm
    head.{deconv,conv}_layers.I, head.final_layer   -> head.* (pose, mmpose HeatmapHead)
    decode_head.{deconv,conv}_layers.I              -> head.* (seg, depth, normal, mmseg)
    decode_head.conv_seg                            -> head.final_layer

The ``backbone.`` prefix may be absent (the "clean" pretrained files hold the backbone
alone). The MAE decoder (``neck.*``) is dropped from a pretraining file; nothing else is:
any other key, or one of ours left without a tensor, refuses the file with one line naming
them. The backbone preset is the one whose width, depth, MLP width and patch match the
tensors (the file records no config). Which task a head is comes from its outputs and its
prefix (each ``Task``'s ``head`` and ``sapiens_prefix``).

Apart from the import command (``training.import_sapiens``) so that the task model layer
(``training.tasks.model``), which reads Sapiens files as ``--pretrained``, and the command,
which builds task models, both import it and neither imports the other back.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from models.vit import PRESETS, preset
from training.tasks.registry import TASKS_BY_NAME

# The position table of a task model has no class-token slot and a grid that is not square:
# Sapiens fine-tunes at 1024x768 (height x width), a 4:3 grid.
TASK_ASPECT = (4, 3)
HEAD_PREFIXES = {"head.": "mmpose", "decode_head.": "mmseg"}
DROPPED_PREFIXES = ("neck.",)  # the MAE decoder of a pretraining checkpoint
# mmengine's data preprocessor keeps the ImageNet mean/std as buffers; a traced model may
# carry them. They are the constants our transforms apply already.
PREPROCESSOR_KEYS = ("data_preprocessor.mean", "data_preprocessor.std")

_BLOCK = {
    "ln1": "norm1",
    "ln2": "norm2",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "ffn.layers.0.0": "mlp.fc1",
    "ffn.layers.1": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")
_HEAD_KEY = re.compile(
    r"(deconv_layers|conv_layers)\.(\d+)\.(weight|bias)$|(final_layer|conv_seg)\.(weight|bias)$"
)


class SapiensFormatError(ValueError):
    """The file is not a Sapiens checkpoint this importer can map, or a damaged one."""


@dataclasses.dataclass
class Imported:
    """A Sapiens checkpoint in this project's layout."""

    preset: str  # models.vit preset of the backbone
    encoder: dict[str, Tensor]  # VisionTransformer state dict (cls_token only if stored)
    grid: tuple[int, int]  # the stored position table's grid
    task: str | None = None  # pose / seg / depth / normal, None for a backbone only
    head: dict[str, Tensor] = dataclasses.field(default_factory=dict)  # SapiensHead state
    head_channels: int | None = None


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def is_torchscript(data: bytes) -> bool:
    """Whether ``data`` is a ``torch.jit.save`` archive (rather than a ``torch.save`` one)."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return any(n.endswith("/constants.pkl") for n in archive.namelist())


def read_state_dict(data: bytes, source: str = "") -> dict[str, Tensor]:
    """The tensors of a ``.pth`` (bare or in an mmengine wrapper) or of a TorchScript file."""
    where = source or "checkpoint"
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise SapiensFormatError(f"{where}: not a torch checkpoint (no zip archive)")
    if is_torchscript(data):  # torch.jit.save's layout: a traced model, its parameters inside
        try:
            obj = dict(torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict())
        except Exception as exc:  # torch raises several kinds for a damaged archive
            raise SapiensFormatError(
                f"{where}: unreadable TorchScript ({first_line(exc)})"
            ) from exc
    else:
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses pickled objects (an mmengine meta
            # of numpy or config objects); torch raises several kinds for a damaged file
            raise SapiensFormatError(
                f"{where}: cannot be read with weights_only=True ({first_line(exc)}); "
                "re-save its state_dict alone: torch.save(ckpt['state_dict'], 'clean.pth')"
            ) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # mmengine: {"meta", "state_dict", "message_hub", ...}
    if not isinstance(obj, Mapping) or not obj:
        raise SapiensFormatError(f"{where}: holds no state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise SapiensFormatError(f"{where}: non-tensor entries {bad[:5]}; not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # DDP's prefix, as mmengine


def is_sapiens(state: Mapping[str, Any]) -> bool:
    """Whether a state dict uses Sapiens' (mmpretrain) names rather than ours."""
    return any(
        k.removeprefix("backbone.") in ("patch_embed.projection.weight", "ln1.weight")
        for k in state
    )


def _backbone(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Our encoder's tensors from Sapiens' backbone keys; returns (tensors, unmapped keys)."""
    ours, unmapped = {}, []
    for key, value in state.items():
        name = key.removeprefix("backbone.")
        if name in ("cls_token", "pos_embed"):
            ours[name] = value
        elif name.startswith("patch_embed.projection."):
            ours["patch_embed.proj." + name.rsplit(".", 1)[1]] = value
        elif name.startswith("ln1."):
            ours["norm." + name.rsplit(".", 1)[1]] = value
        elif (m := _BLOCK_KEY.fullmatch(name)) and m.group(2) in _BLOCK:
            ours[f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"] = value
        else:
            unmapped.append(key)
    return ours, unmapped


def _preset_of(encoder: Mapping[str, Tensor], wanted: str | None) -> str:
    needed = ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "pos_embed")
    missing = [n for n in needed if n not in encoder]
    if missing:
        raise SapiensFormatError(f"no backbone tensors for {missing}")
    dim, _, patch, _ = encoder["patch_embed.proj.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in encoder if k.startswith("blocks."))
    mlp = encoder["blocks.0.mlp.fc1.weight"].shape[0]
    shape = (dim, depth, mlp, patch)
    fits = [
        n
        for n in PRESETS
        if ((c := preset(n)).embed_dim, c.depth, c.mlp_dim, c.patch_size) == shape
    ]
    if wanted is not None:
        if wanted not in fits:
            raise SapiensFormatError(
                f"width {dim}, depth {depth}, MLP {mlp}, patch {patch} is not preset {wanted!r}"
            )
        return wanted
    if len(fits) != 1:
        raise SapiensFormatError(
            f"width {dim}, depth {depth}, MLP {mlp}, patch {patch} matches "
            f"{'presets ' + str(fits) if fits else 'no preset'} of {sorted(PRESETS)}"
        )
    return fits[0]


def _grid_of(tokens: int) -> tuple[int, int]:
    """The grid of a stored position table: square (pretraining) or 4:3 (task models)."""
    side = math.isqrt(tokens)
    if side * side == tokens:
        return side, side
    a, b = TASK_ASPECT
    rows = math.isqrt(tokens * a // b)
    if rows * (rows * b // a) == tokens and rows * b % a == 0:
        return rows, rows * b // a
    raise SapiensFormatError(f"a position table of {tokens} tokens is neither square nor 4:3")


def _head(state: Mapping[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], list[str]]:
    ours, unmapped = {}, []
    for key, value in state.items():
        name = key.removeprefix(prefix)
        m = _HEAD_KEY.fullmatch(name)
        if m is None:
            unmapped.append(key)
        elif m.group(1):
            ours[f"{m.group(1)}.{m.group(2)}.{m.group(3)}"] = value
        else:
            ours[f"final_layer.{m.group(5)}"] = value
    return ours, unmapped


def _task_of(head: Mapping[str, Tensor], prefix: str, wanted: str | None) -> str:
    """The task whose Sapiens head sits under ``prefix`` with this many outputs."""
    if "final_layer.weight" not in head:
        raise SapiensFormatError("the head has no output layer (final_layer / conv_seg)")
    outputs = head["final_layer.weight"].shape[0]
    family = [t for t in TASKS_BY_NAME.values() if t.sapiens_prefix == prefix]
    fits = [t.name for t in family if t.head.out_channels == outputs]
    if not fits:
        known = ", ".join(f"{t.name} ({t.head.out_channels})" for t in family)
        raise SapiensFormatError(
            f"an {HEAD_PREFIXES[prefix]} head with {outputs} outputs is none of {known}"
        )
    task = fits[0]
    if wanted is not None and wanted != task:
        raise SapiensFormatError(f"the file holds a {task} model, not {wanted}")
    return task


def convert(
    state: Mapping[str, Tensor], *, task: str | None = None, preset_name: str | None = None
) -> Imported:
    """Map a Sapiens state dict to ours; SapiensFormatError names every key it cannot place."""
    state = {k: v for k, v in state.items() if k not in PREPROCESSOR_KEYS}
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    heads = {p: {k: v for k, v in state.items() if k.startswith(p)} for p in HEAD_PREFIXES}
    heads = {p: h for p, h in heads.items() if h}
    if len(heads) > 1:
        raise SapiensFormatError(f"both head kinds present: {sorted(heads)}")
    rest = {k: v for k, v in state.items() if not any(k.startswith(p) for p in heads)}
    encoder, unexpected = _backbone(rest)
    result = Imported(preset="", encoder=encoder, grid=(0, 0))
    if heads:
        prefix, head_state = next(iter(heads.items()))
        head, bad = _head(head_state, prefix)
        unexpected += bad
        result.task = _task_of(head, prefix, task)
        result.head = head
        result.head_channels = head["final_layer.weight"].shape[1]
    elif task is not None:
        raise SapiensFormatError(f"--task {task}: the file holds a backbone only, no head")
    if unexpected:
        raise SapiensFormatError(f"unexpected keys {_names(unexpected)}")
    result.preset = _preset_of(encoder, preset_name)
    extra = int("cls_token" in encoder)
    result.grid = _grid_of(encoder["pos_embed"].shape[1] - extra)
    return result


def sapiens_name(ours: str) -> str:
    """Sapiens' name of one of our encoder keys (for messages about a file's keys)."""
    inverse = {v: k for k, v in _BLOCK.items()}
    parts = ours.split(".")
    if parts[0] == "blocks" and len(parts) >= 4:
        return f"backbone.layers.{parts[1]}.{inverse.get('.'.join(parts[2:-1]), '?')}.{parts[-1]}"
    if parts[0] == "patch_embed":
        return f"backbone.patch_embed.projection.{parts[-1]}"
    if parts[0] == "norm":
        return f"backbone.ln1.{parts[-1]}"
    return f"backbone.{ours}"


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def check_keys(*pairs: tuple[Mapping[str, Tensor], Mapping[str, Tensor], Any]) -> None:
    """Refuse unless each (own, given, name) has ``given`` with exactly ``own``'s keys and
    shapes; ``name`` turns one of our keys into the file's name for it. One error names
    every problem of every pair."""
    missing, unexpected, shapes = [], [], []
    for own, given, name in pairs:
        missing += [name(k) for k in own if k not in given]
        unexpected += [name(k) for k in given if k not in own]
        shapes += [f"{name(k)} {tuple(given[k].shape)}, expected {tuple(v.shape)}"
                   for k, v in own.items() if k in given and given[k].shape != v.shape]  # fmt: skip
    parts = [f"missing keys {_names(missing)}" if missing else "",
             f"unexpected keys {_names(unexpected)}" if unexpected else "",
             f"shape mismatch: {_names(shapes, 3)}" if shapes else ""]  # fmt: skip
    if any(parts):
        raise SapiensFormatError("; ".join(p for p in parts if p))
