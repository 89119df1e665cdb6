"""Meta's released Sapiens checkpoints into this project's models.

    python -m training.import_sapiens sapiens_0.3b_epoch_1600_clean.pth encoder.pt
    python -m training.import_sapiens sapiens_1b_goliath_best_goliath_AP_640.pth pose.pt
    python -m training.import_sapiens sapiens_0.3b_seg_..._torchscript.pt2 seg.pt \
        --image-size 1024 768

A pretrained backbone (0.3B-2B, 1024x1024) becomes an encoder file
(``models.encoder_file``) for ``training.finetune --pretrained``; a task model
(pose 308, seg 28, depth, normal) becomes a task model file ``{"model", "config",
"lineage"}`` that ``training.evaluate`` and ``training.predict`` run. Fine-tuning also takes
a Sapiens file directly as ``--pretrained`` (its backbone).

The key mapping and the checks of a file live in ``training.sapiens_format``. The position
table is interpolated to the grid asked for (64x48 for 1024x768). Sapiens' pose and normal
models pad the patch convolution by 2, its seg and depth models do not (each ``Task``'s
``patch_padding``); task models get theirs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys

import torch

from models.vit import preset
from runtime import storage
from training.sapiens_format import (
    Imported,
    SapiensFormatError,
    check_keys,
    convert,
    read_state_dict,
    sapiens_name,
)
from training.tasks.model import from_sapiens


def encoder_file(imported: Imported, lineage: dict):
    """An encoder file (models.encoder_file) of an imported backbone, at its
    stored grid and with its class token when it has one."""
    from models.encoder_file import EncoderFile
    from models.vit import VisionTransformer

    patch = imported.encoder["patch_embed.proj.weight"].shape[-1]
    image_size = (imported.grid[0] * patch, imported.grid[1] * patch)
    config = preset(
        imported.preset, image_size=image_size, cls_token="cls_token" in imported.encoder
    )
    check_keys((VisionTransformer(config).state_dict(), imported.encoder, sapiens_name))
    return EncoderFile(config=config, preset=imported.preset, lineage=lineage,
                       state=dict(imported.encoder))  # fmt: skip


def source_lineage(uri: str, data: bytes) -> dict:
    """Lineage of an imported file: Meta's release, identified by the file's bytes."""
    return {"imported_from": {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(),
                              "origin": "facebookresearch/sapiens release"}}  # fmt: skip


def run(source: str, out: str, *, task: str | None = None, preset_name: str | None = None,
        image_size: tuple[int, int] = (1024, 768)) -> dict:  # fmt: skip
    """Import ``source`` into ``out`` (local or s3://); returns what was written."""
    data = storage.read_bytes(storage.locate(source))
    try:
        imported = convert(read_state_dict(data, source), task=task, preset_name=preset_name)
    except SapiensFormatError as exc:
        raise SapiensFormatError(f"{source}: {exc}") from exc
    lineage = source_lineage(source, data)
    if imported.task is None:
        file = encoder_file(imported, lineage)
        storage.write_bytes_atomic(storage.locate(out), file.to_bytes())
        return {"kind": "backbone", "preset": imported.preset, "grid": list(imported.grid),
                "tensors": len(file.state), "out": out}  # fmt: skip
    model, cfg = from_sapiens(imported, image_size)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                "lineage": lineage}, buf)  # fmt: skip
    storage.write_bytes_atomic(storage.locate(out), buf.getvalue())
    return {"kind": "task", "task": imported.task, "preset": imported.preset,
            "image_size": list(image_size), "tensors": len(model.state_dict()), "out": out}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m training.import_sapiens SOURCE OUTPUT``: one line of JSON saying what was
    written, or one ``error:`` line and exit code 2."""
    import json

    from training import cli
    from training.config import ImportSapiensConfig

    def body() -> None:
        about = ("Import a released Sapiens checkpoint (.pth or TorchScript) into this "
                 "project's format: a backbone as an encoder file, a task model as a task .pt.")  # fmt: skip
        parser = cli.parser(ImportSapiensConfig, "python -m training.import_sapiens", about)
        cfg = cli.config(parser.parse_args(argv))
        cli.require(cfg.source, "SOURCE")
        cli.refuse_folder(cfg.output, "OUTPUT")
        result = run(cfg.source, cfg.output, task=cfg.task, preset_name=cfg.preset,
                     image_size=cfg.image_size)  # fmt: skip
        print(json.dumps(result))

    return cli.run_main(body)


if __name__ == "__main__":
    sys.exit(main())
