"""The exported-encoder file: an encoder's tensors with its config and its lineage.

``python -m training.checkpoint`` and ``python -m training.import_sapiens`` write it;
fine-tuning (``--pretrained``) and curation's semantic dedup read it. It is a ``torch.save``
of plain data, loadable with ``torch.load(..., weights_only=True)``::

    {"format": "humans300m-encoder/1",
     "config": {"preset": "sapiens_0.3b", "image_size": [1024, 1024], "patch_size": 16, ...},
     "lineage": {"dataset": "s3://...", "run_id": ..., "samples_seen": ..., ...},
     "encoder": {"patch_embed.proj.weight": tensor, ...}}

``config`` holds every ``ViTConfig`` field plus the preset name, so a reader builds the model
from the file and never guesses a preset from tensor shapes; files written before a field was
renamed (``img_size``, now ``image_size``) are read under its old name too. This module imports
only torch, the model definitions and the config layer (for those old names), never the training
loops, so curation can read the file.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.vit import PRESETS, ViTConfig
from runtime.config import stored_fields

FORMAT = "humans300m-encoder/1"


class EncoderFileError(ValueError):
    """The file is not an exported encoder of this project (or a damaged one)."""


@dataclass
class EncoderFile:
    config: ViTConfig  # the encoder as it was trained (image size, patch, class token)
    preset: str  # models.vit preset name
    lineage: dict[str, Any]  # what it was made from (training.lineage), {} when unknown
    state: dict[str, Tensor]  # VisionTransformer state dict

    def to_dict(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        config["image_size"] = list(config["image_size"])
        return {"format": FORMAT, "config": {"preset": self.preset, **config},
                "lineage": dict(self.lineage), "encoder": dict(self.state)}  # fmt: skip

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        return buf.getvalue()


def is_encoder_file(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def parse(obj: Any, source: str = "") -> EncoderFile:
    """An ``EncoderFile`` from what ``torch.load`` returned; EncoderFileError when it is not
    one (a bare state dict of an older export included: export it again)."""
    where = f"{source}: " if source else ""
    if not is_encoder_file(obj):
        raise EncoderFileError(
            f"{where}not an exported encoder ({FORMAT}); export one with "
            "'python -m training.checkpoint RUN encoder.pt' or "
            "'python -m training.import_sapiens SAPIENS.pth encoder.pt'"
        )
    fields = dict(obj.get("config") or {})
    name = fields.pop("preset", None)
    if name not in PRESETS:
        raise EncoderFileError(f"{where}unknown preset {name!r} in the encoder's config")
    try:
        config = ViTConfig(**stored_fields(ViTConfig, fields))
    except (TypeError, ValueError) as exc:
        raise EncoderFileError(f"{where}bad encoder config ({exc})") from exc
    state = obj.get("encoder")
    if not isinstance(state, Mapping) or not state:
        raise EncoderFileError(f"{where}the encoder file holds no tensors")
    return EncoderFile(config=config, preset=name, lineage=dict(obj.get("lineage") or {}),
                       state=dict(state))  # fmt: skip


def load(data: bytes | str, source: str = "", *, mmap: bool = False) -> EncoderFile:
    """Read an encoder file from bytes or a local path (``mmap``: tensors stay on disk until
    used, for reading the config of a multi-GB file cheaply)."""
    try:
        if isinstance(data, bytes):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            obj = torch.load(data, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises several kinds for a bad or foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EncoderFileError(f"{source or data}: cannot load ({first})") from exc
    return parse(obj, source)
