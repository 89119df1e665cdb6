"""The task model: built from a FinetuneConfig through its ``Task``, loaded with pretrained
weights (encoder file, MAE checkpoint or Sapiens file), grouped for the optimiser, and read
back from a fine-tuning run, a task ``.pt`` or a released Sapiens task file.

Below fine-tuning's loop and the evaluate / predict / import commands, which all use it.
"""

from __future__ import annotations

import dataclasses
import io
import os

import torch

from models import encoder_file
from models.vit import VisionTransformer, load_encoder_state, preset
from runtime import storage
from training import checkpoint, sapiens_format
from training.config import FinetuneConfig
from training.optim import param_groups as groups_of
from training.tasks.heads import TaskModel
from training.tasks.registry import TASKS_BY_NAME


def build_model(cfg: FinetuneConfig) -> TaskModel:
    """The task model: a backbone on the patch tokens only (no class token, as Sapiens
    fine-tunes), loaded from ``cfg.pretrained`` when given, and a fresh head. Its
    ``pretrained_lineage`` says what the pretrained weights were made from (None from
    scratch), for the run's lineage."""
    task = TASKS_BY_NAME[cfg.task]
    config = preset(cfg.preset, image_size=cfg.image_size, cls_token=False,
                    patch_padding=cfg.patch_padding)  # fmt: skip
    encoder = VisionTransformer(config)
    lineage = None
    if cfg.pretrained:
        state = read_pretrained(cfg.pretrained)
        load_pretrained(encoder, state)
        stored = state.get("lineage") if isinstance(state, dict) else None
        if encoder_file.is_encoder_file(state):
            stored = encoder_file.parse(state, cfg.pretrained).lineage
        lineage = {"uri": cfg.pretrained, "lineage": dict(stored or {})}
    head = task.build_head(cfg.head, config.embed_dim, cfg.head_channels)
    model = TaskModel(encoder, head, task.output_layer(cfg), cfg.task)
    model.pretrained_lineage = lineage
    return model


def read_pretrained(uri: str) -> dict:
    """What ``torch.load`` (weights only) makes of ``uri``, or the state dict of a
    TorchScript export: for ``load_pretrained``. ValueError (one line) otherwise."""
    data = storage.read_bytes(storage.locate(uri))
    if sapiens_format.is_torchscript(data):
        return sapiens_format.read_state_dict(data, uri)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for a damaged or foreign pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"--pretrained {uri}: cannot be read with weights_only ({first})") from exc


def load_pretrained(encoder: VisionTransformer, state: dict) -> int:
    """Load pretrained weights into ``encoder``; returns the tensors loaded.

    ``state`` is what ``torch.load`` returned for: an encoder file
    (``models.encoder_file``), a pretraining checkpoint (a bare state dict or one
    under "model" / "state_dict", ``encoder.`` prefixes, the MAE decoder dropped), or a
    Sapiens file (its backbone, mapped by ``training.sapiens_format``; a task model's head
    is dropped). The class token is dropped when ``encoder`` has none, and the position
    table is interpolated to this encoder's grid.
    """
    grid = None
    if encoder_file.is_encoder_file(state):
        stored = encoder_file.parse(state)
        state, grid = stored.state, stored.config.grid
    else:
        for key in ("model", "state_dict", "encoder"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
        if sapiens_format.is_sapiens(state):
            backbone = {
                k: v for k, v in state.items() if not k.startswith(("head.", "decode_head."))
            }
            imported = sapiens_format.convert(backbone)
            state, grid = imported.encoder, imported.grid
    own = set(encoder.state_dict()) | {"cls_token"}  # a stored class token is dropped below
    picked = {k.removeprefix("encoder."): v for k, v in state.items()}
    picked = {k: v for k, v in picked.items() if k in own}
    missing = own - set(picked) - ({"cls_token"} - set(encoder.state_dict()))
    if missing:
        raise ValueError(
            f"pretrained checkpoint lacks {len(missing)} encoder tensors, e.g. "
            f"{sorted(missing)[:3]}; is it a checkpoint of the same preset?"
        )
    with torch.no_grad():
        load_encoder_state(encoder, picked, strict=True, grid=grid)
    return len(picked)


def param_groups(model: TaskModel, cfg: FinetuneConfig) -> list[dict]:
    """AdamW groups (training.optim): the encoder with layer-wise lr decay, the head at
    ``lr x head_lr_scale``. ``model`` is the unwrapped TaskModel (after FSDP sharding, if any)."""
    enc = model.encoder
    encoder = groups_of(enc, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_id=enc.layer_id,
                        num_layers=enc.num_layers, layer_decay=cfg.layer_decay)  # fmt: skip
    head = groups_of(model.head, lr=cfg.lr * cfg.head_lr_scale, weight_decay=cfg.weight_decay)
    for group in head:
        group["lr_scale"] = cfg.head_lr_scale
    return encoder + head


def from_sapiens(
    imported: sapiens_format.Imported, image_size: tuple[int, int]
) -> tuple[TaskModel, FinetuneConfig]:
    """The TaskModel of an imported task checkpoint at ``image_size`` (height, width), with
    every tensor loaded (strictly), and its FinetuneConfig."""
    task = TASKS_BY_NAME[imported.task]
    spec = task.head
    deconvs = {k.split(".")[1] for k in imported.head if k.startswith("deconv_layers.")}
    convs = {k.split(".")[1] for k in imported.head if k.startswith("conv_layers.")}
    if (len(deconvs), len(convs)) != (spec.num_deconv, spec.num_conv):
        raise sapiens_format.SapiensFormatError(
            f"a {imported.task} head of {len(deconvs)} deconvs and {len(convs)} convs; "
            f"Sapiens' (and ours) has {spec.num_deconv} and {spec.num_conv}"
        )
    # Sapiens' depth head regresses depth directly: no softplus on an imported one
    cfg = FinetuneConfig(task=imported.task, dataset="", output="", preset=imported.preset,
                         image_size=image_size, head="sapiens",
                         head_channels=imported.head_channels,
                         depth_output="linear")  # fmt: skip
    model = build_model(cfg)
    own = dict(model.encoder.state_dict())
    stored = imported.encoder
    if "pos_embed" in stored:  # compare the table at the model's grid, as it will be loaded
        own["pos_embed"] = stored["pos_embed"]
    sapiens_format.check_keys((own, stored, sapiens_format.sapiens_name),
                              (model.head.state_dict(), imported.head,
                               lambda k: task.sapiens_prefix + k))  # fmt: skip
    with torch.no_grad():
        load_encoder_state(model.encoder, stored, grid=imported.grid)
        model.head.load_state_dict(imported.head, strict=True)
    return model.eval(), cfg


def load_checkpoint(uri: str) -> tuple[TaskModel, dict]:
    """Model (eval mode, CPU) and its FinetuneConfig fields from a fine-tuning run folder (its
    latest checkpoint), a ``checkpoints/step_*`` folder, or a single ``.pt`` file holding
    ``{"model": state dict, "config": fields}`` (local or S3).

    ValueError (one line) for anything else: a missing path, a pretraining run, a damaged or
    foreign file, a record that is not a config, weights that do not fit their config."""
    uri = uri.rstrip("/")
    if uri.endswith(".pt"):
        state = checkpoint.load_checked(uri, uri)
        if not (isinstance(state, dict) and isinstance(state.get("config"), dict)):
            raise ValueError(f"{uri}: not a task model file ({{'model', 'config'}})")
        weights, config = state.get("model"), state["config"]
    else:
        folder = checkpoint.latest_checked(uri) or uri
        if not storage.exists(storage.locate(f"{folder}/model.pt")):
            raise ValueError(f"no fine-tuning checkpoint at {uri} (no model.pt)")
        weights = checkpoint.load_checked(f"{folder}/model.pt", uri)
        state = checkpoint.load_checked(f"{folder}/state.pt", uri)
        extra = state.get("extra") if isinstance(state, dict) else None
        config = extra.get("config") if isinstance(extra, dict) else None
        if not isinstance(config, dict):
            raise ValueError(f"{uri}: its checkpoint records no config")
    if "task" not in config:
        raise ValueError(
            f"{uri} is a pretraining run, not a fine-tuned one: export its encoder "
            "(python -m training.checkpoint) and fine-tune it (python -m training.finetune)"
        )
    cfg = FinetuneConfig.from_record({**config, "pretrained": None})
    model = build_model(cfg)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{uri}: weights do not fit its config ({first})") from None
    return model.eval(), dataclasses.asdict(cfg)


def load_model(uri: str, image_size: tuple[int, int]) -> tuple[TaskModel, dict]:
    """(model, config fields) of a run, a task ``.pt`` or a released Sapiens task file (read
    at ``image_size``)."""
    loc = storage.locate(uri)
    if loc.is_s3 or not os.path.isdir(loc.path):
        data = storage.read_bytes(loc)
        try:
            state = sapiens_format.read_state_dict(data, uri)
        except sapiens_format.SapiensFormatError:
            state = None  # not a bare state dict: our task .pt ({"model", "config"})
        if state is not None and sapiens_format.is_sapiens(state):
            imported = sapiens_format.convert(state)
            if imported.task is None:
                raise sapiens_format.SapiensFormatError(f"{uri}: a backbone, not a task model")
            model, cfg = from_sapiens(imported, image_size)
            return model, dataclasses.asdict(cfg)
    return load_checkpoint(uri)
