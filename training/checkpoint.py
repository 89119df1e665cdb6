"""Checkpoints on a local path or S3: save at an interval, resume after a kill, export.

Layout under ``<output>/checkpoints/``::

    step_00001000/model.pt   full (unsharded) model state dict
    step_00001000/optim.pt   full optimiser state, keyed by parameter name
    step_00001000/state.pt   scheduler, step, data positions of every rank, config
    latest.json              {"step": 1000, "dir": "step_00001000"}, written last

``latest.json`` is replaced only after every file of a step is published, so a job killed
while saving resumes from the previous complete checkpoint. Full state dicts through
``torch.distributed.checkpoint.state_dict`` work for plain, DDP and FSDP2 models alike.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from runtime.storage import exists, locate, read_bytes, write_bytes_atomic

log = logging.getLogger(__name__)

LATEST = "latest.json"


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized(), **kw)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _save(obj: Any, uri: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(locate(uri), buf.getvalue())


def load_file(uri: str) -> Any:
    """A checkpoint file (tensors and plain data only: weights_only refuses anything else)."""
    return torch.load(io.BytesIO(read_bytes(locate(uri))), map_location="cpu", weights_only=True)


def save(
    output: str,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_position: dict,
    extra: dict | None = None,
) -> str | None:
    """Collective: every rank calls it. Rank 0 writes; returns the step folder URI there."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    positions = [data_position]
    if dist.is_initialized():
        positions = [None] * dist.get_world_size()
        dist.all_gather_object(positions, data_position)
    if _rank() != 0:
        dist.barrier()
        return None
    root = locate(output).join("checkpoints")
    name = f"step_{step:08d}"
    folder = root.join(name)
    _save(model_state, folder.join("model.pt").uri)
    _save(optim_state, folder.join("optim.pt").uri)
    state = {
        "step": step,
        "scheduler": scheduler.state_dict(),
        "data_positions": positions,
        "extra": extra or {},
    }
    _save(state, folder.join("state.pt").uri)
    write_bytes_atomic(root.join(LATEST), json.dumps({"step": step, "dir": name}).encode())
    if dist.is_initialized():
        dist.barrier()
    log.info("checkpoint step %d written to %s", step, folder.uri)
    return folder.uri


def latest(output: str) -> str | None:
    """URI of the newest complete checkpoint folder under ``output``, or None."""
    root = locate(output).join("checkpoints")
    marker = root.join(LATEST)
    if not exists(marker):
        return None
    return root.join(json.loads(read_bytes(marker))["dir"]).uri


def restore(
    folder: str, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict:
    """Load a checkpoint folder into model, optimiser and scheduler; returns its state dict
    (step, data_positions, extra). Every rank reads the files (shared storage)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(
        model,
        optimizer,
        model_state_dict=load_file(f"{folder}/model.pt"),
        optim_state_dict=load_file(f"{folder}/optim.pt"),
        options=_options(),
    )
    state = load_file(f"{folder}/state.pt")
    scheduler.load_state_dict(state["scheduler"])
    return state


def encoder_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors of an MAE state dict, without the ``encoder.`` prefix."""
    prefix = "encoder."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def export_encoder(folder: str, out: str) -> int:
    """Write the encoder of a pretraining checkpoint folder as an encoder file
    (``models.encoder_file``: its tensors, config and lineage); returns the number
    of tensors."""
    from models.encoder_file import EncoderFile
    from models.vit import preset

    state = encoder_state(load_file(f"{folder}/model.pt"))
    if not state:
        raise ValueError(f"{folder}/model.pt holds no encoder.* tensors; is it an MAE checkpoint?")
    extra = load_file(f"{folder}/state.pt").get("extra", {})
    run = extra.get("config") or {}
    if "preset" not in run or "img_size" not in run:
        raise ValueError(f"{folder}/state.pt records no pretraining config (preset, img_size)")
    config = preset(run["preset"], img_size=run["img_size"], drop_path=run.get("drop_path", 0.0))
    file = EncoderFile(config=config, preset=run["preset"], lineage=extra.get("lineage") or {},
                       state=state)  # fmt: skip
    write_bytes_atomic(locate(out), file.to_bytes())
    return len(state)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.checkpoint RUN_OR_CHECKPOINT OUT``: export an encoder."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.checkpoint",
        description="Export the encoder of a pretraining checkpoint for fine-tuning.",
    )
    parser.add_argument("source", help="run folder (its latest checkpoint) or a step_* folder")
    parser.add_argument("out", help="file to write (local or s3://), e.g. encoder.pt")
    args = parser.parse_args(argv)
    folder = latest(args.source) or args.source.rstrip("/")
    count = export_encoder(folder, args.out)
    print(f"{count} encoder tensors from {folder} written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
