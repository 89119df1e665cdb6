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


def load_checked(uri: str, named: str) -> Any:
    """``load_file(uri)``, with a missing, damaged or foreign file refused as a one-line
    ValueError that names ``named`` (the path the user gave)."""
    try:
        return load_file(uri)
    except FileNotFoundError:
        raise ValueError(f"{named}: no such checkpoint file {uri}") from None
    except Exception as exc:  # torch raises several kinds for a damaged or foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{named}: not a readable checkpoint file {uri} ({first})") from None


def latest_checked(output: str) -> str | None:
    """``latest(output)``, with a damaged ``latest.json`` refused as a one-line ValueError."""
    try:
        return latest(output)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{output}: unreadable checkpoints/{LATEST} ({exc})") from None


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
    of tensors. ValueError (one line) for a folder that is not a pretraining checkpoint."""
    from models.encoder_file import EncoderFile
    from models.vit import preset
    from training.config import stored_pretrain

    extra = load_checked(f"{folder}/state.pt", folder)
    extra = extra.get("extra") if isinstance(extra, dict) else None
    extra = extra if isinstance(extra, dict) else {}
    run = extra.get("config") if isinstance(extra.get("config"), dict) else {}
    if "task" in run:
        raise ValueError(
            f"{folder} is a fine-tuning ({run['task']}) checkpoint: the encoder to export comes "
            "from a pretraining run (python -m training.pretrain)"
        )
    run = stored_pretrain(run)
    if "preset" not in run or "image_size" not in run:
        raise ValueError(f"{folder}/state.pt records no pretraining config (preset, image_size)")
    model = load_checked(f"{folder}/model.pt", folder)
    state = encoder_state(model) if isinstance(model, dict) else {}
    if not state:
        raise ValueError(f"{folder}/model.pt holds no encoder.* tensors; is it an MAE checkpoint?")
    try:
        config = preset(
            run["preset"], image_size=run["image_size"], drop_path=run.get("drop_path", 0.0)
        )
    except (TypeError, ValueError) as exc:  # a damaged or hand-made record
        raise ValueError(f"{folder}/state.pt records an unusable config: {exc}") from None
    file = EncoderFile(config=config, preset=run["preset"], lineage=extra.get("lineage") or {},
                       state=state)  # fmt: skip
    write_bytes_atomic(locate(out), file.to_bytes())
    return len(state)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.checkpoint --source RUN_OR_CHECKPOINT --output OUT``: export an
    encoder."""
    from training import cli
    from training.config import CheckpointConfig

    def body() -> None:
        about = "Export the encoder of a pretraining checkpoint for fine-tuning."
        parser = cli.parser(CheckpointConfig, "python -m training.checkpoint", about,
                            positional=("source", "output"))  # fmt: skip
        cfg = cli.config(parser.parse_args(argv))
        cli.require(cfg.source, "--source", "folder")
        cli.refuse_folder(cfg.output, "--output")
        folder = latest_checked(cfg.source) or cfg.source.rstrip("/")
        if not exists(locate(folder).join("model.pt")):
            raise cli.InputError(
                f"--source {cfg.source}: no checkpoint (neither checkpoints/{LATEST} nor model.pt)"
            )
        count = export_encoder(folder, cfg.output)
        print(f"{count} encoder tensors from {folder} written to {cfg.output}")

    return cli.run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
